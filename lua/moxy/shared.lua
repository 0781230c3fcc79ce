-- moxy.shared: shared dicts, moxy.shared.dict(name) -> a dict with OpenResty's
-- ngx.shared.DICT methods and return conventions, over src/lua/ffi/shdict_api.c. Dicts are
-- declared under `shared_dicts:` in the config and shared by every worker. Under moxy.test
-- (the fake backend) dict() hands out moxy.shared_fake's plain-Lua twin instead.
--
-- Differences from OpenResty: no flags (get returns the value alone; get_stale returns
-- value, nil, stale so that OpenResty's positions hold); flush_all frees the entries
-- (get_stale does not see them afterwards); keys() lists most recently used first.
-- Phases: all, and load time (init).
local ffi = require "ffi"
local backend = require "moxy.backend"
local args = require "moxy.shared_args"
local key_of, check_ttl, check_number = args.key_of, args.check_ttl, args.check_number


local function check_self(self, method, level)
    args.check_self(self, method, level, "p")
end


local C = ffi.C
local ffi_cast = ffi.cast
local ffi_new = ffi.new
local ffi_str = ffi.string
local error = error
local format = string.format
local setmetatable = setmetatable
local tonumber = tonumber
local tostring = tostring
local type = type


local OK, AGAIN, DECLINED = 0, 1, 2                   -- src/core/errors.h
local NIL, BOOLEAN, NUMBER, STRING = 0, 1, 2, 3       -- mx_shdict_type_t
local SET, SAFE_SET, ADD, SAFE_ADD, REPLACE = 0, 1, 2, 3, 4
local ERRORS = {                                      -- MX_SHDICT_E* in src/lua/shdict.h
    [DECLINED] = "not found",
    [-5201] = "exists",
    [-5202] = "no memory",
    [-5203] = "not a number",
    [-5204] = "value not a list",
    [-5205] = "value is a list",
}
local BUF_SIZE = 4096         -- the VM's buffer for values; larger ones get one of their own

local _M = { _VERSION = "0.1.0" }

local dicts = {}              -- name -> dict object (the C dicts live as long as the process)
local val, forcible, num_out, count_out, buf, u32p


-- The cdefs, on the first live dict (so that the fake path never needs the binary's
-- symbols, and a second load of this module does not redefine them).
local function declare()
    if val then
        return
    end
    if not pcall(ffi.typeof, "mx_shdict_val_t") then
        ffi.cdef[[
typedef struct mx_shdict_s mx_shdict_t;
typedef struct {
    int type;
    int stale;
    double num;
    const char *data;
    size_t len;
} mx_shdict_val_t;
mx_shdict_t *moxy_shdict_lookup(const char *name, size_t len);
int moxy_shdict_get(mx_shdict_t *d, const char *k, size_t kl, int stale_ok,
                    mx_shdict_val_t *out, char *buf, size_t buflen);
int moxy_shdict_set(mx_shdict_t *d, int mode, const char *k, size_t kl,
                    const mx_shdict_val_t *v, double ttl, int *forcible);
int moxy_shdict_incr(mx_shdict_t *d, const char *k, size_t kl, double n, int has_init,
                     double init, double init_ttl, double *out, int *forcible);
int moxy_shdict_ttl(mx_shdict_t *d, const char *k, size_t kl, double *out);
int moxy_shdict_expire(mx_shdict_t *d, const char *k, size_t kl, double ttl);
double moxy_shdict_push(mx_shdict_t *d, int left, const char *k, size_t kl,
                        const mx_shdict_val_t *v);
int moxy_shdict_pop(mx_shdict_t *d, int left, const char *k, size_t kl, mx_shdict_val_t *out,
                    char *buf, size_t buflen);
double moxy_shdict_llen(mx_shdict_t *d, const char *k, size_t kl);
double moxy_shdict_keys(mx_shdict_t *d, int max, char *buf, size_t buflen, int *count);
void moxy_shdict_flush_all(mx_shdict_t *d);
int moxy_shdict_flush_expired(mx_shdict_t *d, int max);
double moxy_shdict_capacity(mx_shdict_t *d);
double moxy_shdict_free_space(mx_shdict_t *d);
]]
    end
    val = ffi_new("mx_shdict_val_t[1]")
    forcible = ffi_new("int[1]")
    num_out = ffi_new("double[1]")
    count_out = ffi_new("int[1]")
    buf = ffi_new("char[?]", BUF_SIZE)
    u32p = ffi.typeof("const uint32_t *")
end


-- Arguments: what OpenResty returns nil, err for, and what is misuse (raised) -----------








-- Fills val[0] with <value>; false for a type a dict cannot hold.
local function put_value(value, lists)
    local v = val[0]
    local tv = type(value)
    v.data, v.len = nil, 0
    if tv == "string" then
        v.type, v.data, v.len = STRING, value, #value
    elseif tv == "number" then
        v.type, v.num = NUMBER, value
    elseif tv == "boolean" and not lists then
        v.type, v.num = BOOLEAN, value and 1 or 0
    elseif value == nil and not lists then
        v.type = NIL
    else
        return false
    end
    return true
end


local function value_of(v)
    local t = v.type
    if t == STRING then
        return ffi_str(v.data, v.len)
    elseif t == NUMBER then
        return tonumber(v.num)
    elseif t == BOOLEAN then
        return v.num ~= 0
    end
    return nil
end


-- Calls fn(d, a, k, kl, val, buf, size) (get or pop) until the value fits the buffer.
local function fetch(fn, p, a, k)
    local b, size = buf, BUF_SIZE
    local rc = fn(p, k, #k, a, val, b, size)
    while rc == AGAIN do
        size = tonumber(val[0].len)
        b = ffi_new("char[?]", size)
        rc = fn(p, k, #k, a, val, b, size)
    end
    return rc
end


local function c_get(p, k, kl, stale, v, b, size)
    return C.moxy_shdict_get(p, k, kl, stale, v, b, size)
end


local function c_lpop(p, k, kl, _, v, b, size)
    return C.moxy_shdict_pop(p, 1, k, kl, v, b, size)
end


local function c_rpop(p, k, kl, _, v, b, size)
    return C.moxy_shdict_pop(p, 0, k, kl, v, b, size)
end


-- The dict methods -------------------------------------------------------------------------

local Dict = {}
local dict_mt = { __index = Dict, __tostring = function(d)
    return "moxy.shared.dict(\"" .. d.name .. "\")"
end }


-- Returns the value stored under <key>, or nil when absent or expired (nil, "value is a
-- list" for a list).
function Dict.get(self, key)
    check_self(self, "get")
    local k, err = key_of(key)
    if not k then
        return nil, err
    end
    local rc = fetch(c_get, self.p, 0, k)
    if rc == OK then
        return value_of(val[0])
    elseif rc == DECLINED then
        return nil
    end
    return nil, ERRORS[rc] or ("error " .. rc)
end


-- Like get, but an expired entry not yet evicted is returned too: value, nil, stale.
function Dict.get_stale(self, key)
    check_self(self, "get_stale")
    local k, err = key_of(key)
    if not k then
        return nil, err
    end
    local rc = fetch(c_get, self.p, 1, k)
    if rc == OK then
        return value_of(val[0]), nil, val[0].stale ~= 0
    elseif rc == DECLINED then
        return nil
    end
    return nil, ERRORS[rc] or ("error " .. rc)
end


local function store(self, mode, method, key, value, ttl)
    check_self(self, method)
    local k, err = key_of(key)
    if not k then
        return nil, err, false
    end
    ttl = check_ttl(ttl, method, 3)
    if not put_value(value, false) then
        return nil, "bad value type", false
    end
    local rc = C.moxy_shdict_set(self.p, mode, k, #k, val, ttl, forcible)
    val[0].data = nil
    if rc == OK then
        return true, nil, forcible[0] ~= 0
    end
    return false, ERRORS[rc] or ("error " .. rc), forcible[0] ~= 0
end


-- set(key, value, ttl) -> ok, err, forcible. value: string, number or boolean (nil
-- deletes); ttl in seconds, 0 or nil: never expires. A full dict evicts the least
-- recently used entries (forcible = true).
function Dict.set(self, key, value, ttl)
    return store(self, SET, "set", key, value, ttl)
end


-- As set, but never evicts a live entry: false, "no memory" instead.
function Dict.safe_set(self, key, value, ttl)
    return store(self, SAFE_SET, "safe_set", key, value, ttl)
end


-- As set, only when the key is absent (or expired): else false, "exists".
function Dict.add(self, key, value, ttl)
    return store(self, ADD, "add", key, value, ttl)
end


function Dict.safe_add(self, key, value, ttl)
    return store(self, SAFE_ADD, "safe_add", key, value, ttl)
end


-- As set, only when the key is present: else false, "not found".
function Dict.replace(self, key, value, ttl)
    return store(self, REPLACE, "replace", key, value, ttl)
end


function Dict.delete(self, key)
    return store(self, SET, "delete", key, nil, 0)
end


-- incr(key, n, init, init_ttl) -> new value, nil, forcible; or nil, "not found" (absent
-- and no init) or nil, "not a number". The key keeps its TTL; init_ttl applies when
-- init creates it.
function Dict.incr(self, key, n, init, init_ttl)
    check_self(self, "incr")
    local k, err = key_of(key)
    if not k then
        return nil, err
    end
    check_number(n, "incr", 2, "value")
    local has_init = init ~= nil
    if has_init then
        check_number(init, "incr", 3, "init")
    end
    init_ttl = check_ttl(init_ttl, "incr", 4)
    local rc = C.moxy_shdict_incr(self.p, k, #k, n, has_init and 1 or 0, init or 0, init_ttl,
                                  num_out, forcible)
    if rc == OK then
        return tonumber(num_out[0]), nil, forcible[0] ~= 0
    end
    return nil, ERRORS[rc] or ("error " .. rc), forcible[0] ~= 0
end


-- Seconds left (0: never expires), or nil, "not found".
function Dict.ttl(self, key)
    check_self(self, "ttl")
    local k, err = key_of(key)
    if not k then
        return nil, err
    end
    if C.moxy_shdict_ttl(self.p, k, #k, num_out) == OK then
        return tonumber(num_out[0])
    end
    return nil, "not found"
end


-- Sets a live key's TTL (0: never): true, or nil, "not found".
function Dict.expire(self, key, ttl)
    check_self(self, "expire")
    local k, err = key_of(key)
    if not k then
        return nil, err
    end
    ttl = check_ttl(ttl, "expire", 2)
    if C.moxy_shdict_expire(self.p, k, #k, ttl) == OK then
        return true
    end
    return nil, "not found"
end


local function push(self, left, method, key, value)
    check_self(self, method)
    local k, err = key_of(key)
    if not k then
        return nil, err
    end
    if not put_value(value, true) then
        return nil, "bad value type"
    end
    local n = C.moxy_shdict_push(self.p, left, k, #k, val)
    val[0].data = nil
    if n >= 0 then
        return n
    end
    return nil, ERRORS[n] or ("error " .. n)
end


-- lpush/rpush(key, value) -> the list's new length, or nil, "value not a list" | "no
-- memory". value: string or number.
function Dict.lpush(self, key, value)
    return push(self, 1, "lpush", key, value)
end


function Dict.rpush(self, key, value)
    return push(self, 0, "rpush", key, value)
end


local function pop(self, fn, method, key)
    check_self(self, method)
    local k, err = key_of(key)
    if not k then
        return nil, err
    end
    local rc = fetch(fn, self.p, 0, k)
    if rc == OK then
        return value_of(val[0])
    elseif rc == DECLINED then
        return nil
    end
    return nil, ERRORS[rc] or ("error " .. rc)
end


-- lpop/rpop(key) -> the head's (tail's) value, nil when empty or absent, or nil,
-- "value not a list".
function Dict.lpop(self, key)
    return pop(self, c_lpop, "lpop", key)
end


function Dict.rpop(self, key)
    return pop(self, c_rpop, "rpop", key)
end


-- The list's length (0 when absent), or nil, "value not a list".
function Dict.llen(self, key)
    check_self(self, "llen")
    local k, err = key_of(key)
    if not k then
        return nil, err
    end
    local n = C.moxy_shdict_llen(self.p, k, #k)
    if n >= 0 then
        return n
    end
    return nil, ERRORS[n] or ("error " .. n)
end


-- Up to <max> live keys (default 1024, 0: all; mind that a big dict makes a big table).
function Dict.keys(self, max)
    check_self(self, "keys")
    if max == nil then
        max = 1024
    end
    check_number(max, "keys", 1, "max")
    local b, size = buf, BUF_SIZE
    local need = C.moxy_shdict_keys(self.p, max, b, size, count_out)
    while need > size do
        size = need
        b = ffi_new("char[?]", size)
        need = C.moxy_shdict_keys(self.p, max, b, size, count_out)
    end
    local out, off = {}, 0
    for i = 1, count_out[0] do
        local n = tonumber(ffi_cast(u32p, b + off)[0])
        out[i] = ffi_str(b + off + 4, n)
        off = off + 4 + n
    end
    return out
end


function Dict.flush_all(self)
    check_self(self, "flush_all")
    C.moxy_shdict_flush_all(self.p)
end


-- Removes up to <max> (default 0: all) expired entries; returns how many.
function Dict.flush_expired(self, max)
    check_self(self, "flush_expired")
    return C.moxy_shdict_flush_expired(self.p, max and check_number(max, "flush_expired", 1,
                                                                    "max") or 0)
end


-- Bytes not taken by entries (an estimate, as OpenResty's).
function Dict.free_space(self)
    check_self(self, "free_space")
    return C.moxy_shdict_free_space(self.p)
end


-- The size declared in the config, in bytes.
function Dict.capacity(self)
    check_self(self, "capacity")
    return C.moxy_shdict_capacity(self.p)
end


-- The dict declared as <name> under shared_dicts:. Phases: all, and load time.
function _M.dict(name)
    if type(name) ~= "string" then
        error("bad argument #1 to 'dict' (string expected, got " .. type(name) .. ")", 2)
    end
    local b = backend.current
    if b == nil then
        error("moxy: no engine (running outside moxy? require \"moxy.test\" in specs)", 2)
    end
    if b.name == "fake" then
        return require("moxy.shared_fake").dict(name, 3)
    end
    local d = dicts[name]
    if d then
        return d
    end
    declare()
    local p = C.moxy_shdict_lookup(name, #name)
    if p == nil then
        error(format("no shared dict %q (declare it under shared_dicts: in the config)", name), 2)
    end
    d = setmetatable({ p = p, name = name }, dict_mt)
    dicts[name] = d
    return d
end


return _M
