-- moxy.lb_live: the load-balancing part of the live backend (src/lua/ffi/lb_api.c): YAML
-- groups by name, balancers made by moxy.balancer.new{} as C groups owned by this VM
-- (ffi.gc frees them), selection by the C algorithms. moxy.live merges it in.
local ffi = require "ffi"
local lb = require "moxy.lb"

local C = ffi.C
local ffi_str = ffi.string
local error = error
local tonumber = tonumber


ffi.cdef[[
void *moxy_upstream_group(const char *name, size_t len);
void *moxy_balancer_new(int algorithm, int hash_key, const char *hash_name, const char **names,
                        const int *weights, int n, const double *opts, const char *health,
                        char *err, size_t errlen);
void moxy_balancer_free(void *g);
int moxy_group_info(void *g, int *out);
int moxy_group_select(void *g, const char *key, size_t len, int *index, double *gen, char *buf,
                      size_t buflen);
int moxy_group_backend(void *g, int i, char *buf, size_t buflen, int *out);
int moxy_set_group_peer(mx_session_t *s, void *g, int index, double gen, const char *key,
                        size_t len);
]]


local _M = {}
local OK, E_BAD_PHASE = 0, -5015
local buf = ffi.new("char[512]")
local ints = ffi.new("int[8]")
local index1 = ffi.new("int[1]")
local gen1 = ffi.new("double[1]")


-- YAML group <name>: handle, algorithm name, hash_key kind; nil when there is none.
function _M.group_upstream(name)
    local g = C.moxy_upstream_group(name, #name)
    if g == nil then
        return nil
    end
    C.moxy_group_info(g, ints)
    return g, lb.ALGORITHMS[ints[0] + 1], lb.HASH_KEYS[ints[2] + 1]
end


-- A C group for moxy.balancer.new{}; nil, reason on a bad backend or health_check. <o>:
-- max_retries, max_fails, fail_timeout, on_5xx. <health>: health_check as a YAML flow
-- mapping (nil: none), checked in C by the config's rules. Equal definitions share one
-- group process-wide (lb_api.c); each handle is released by ffi.gc.
function _M.group_new(algorithm, hash_kind, hash_name, names, weights, o, health)
    local n = #names
    local cnames = ffi.new("const char *[?]", n)
    local cweights = ffi.new("int[?]", n)
    for i = 1, n do
        cnames[i - 1] = names[i]
        cweights[i - 1] = weights[i]
    end
    local copts = ffi.new("double[4]", o.max_retries, o.max_fails, o.fail_timeout,
                          o.on_5xx and 1 or 0)
    local g = C.moxy_balancer_new(algorithm, hash_kind, hash_name, cnames, cweights, n, copts,
                                  health, buf, 512)
    if g == nil then
        return nil, ffi_str(buf)
    end
    return ffi.gc(g, C.moxy_balancer_free)
end


-- index (0-based), list generation, address; nil when no backend can be chosen.
function _M.group_select(g, key)
    local n = C.moxy_group_select(g, key, key and #key or 0, index1, gen1, buf, 512)
    if n < 0 then
        return nil
    end
    return index1[0], gen1[0], ffi_str(buf, n)
end


function _M.group_backends(g)
    local n = C.moxy_group_backend(g, -1, buf, 512, ints)
    local list = {}
    for i = 0, n - 1 do
        local len = C.moxy_group_backend(g, i, buf, 512, ints)
        if len < 0 then
            break                           -- the list shrank meanwhile
        end
        list[#list + 1] = { addr = ffi_str(buf, len), weight = ints[0], healthy = ints[1] ~= 0,
                            usable = ints[2] ~= 0, inflight = ints[3], fails = ints[4] }
    end
    return list
end


-- upstream_peer returned a selection <p> (moxy.balancer's peer).
function _M.set_group_peer(sp, p)
    local rc = C.moxy_set_group_peer(sp.s, p.group, p.index or -1, p.gen or 0, p.key,
                                     p.key and #p.key or 0)
    if rc == E_BAD_PHASE then
        error("a balancer's selection can only be used in upstream_peer", 3)
    elseif rc ~= OK then
        error("moxy_set_group_peer() returned " .. tonumber(rc), 3)
    end
end


return _M
