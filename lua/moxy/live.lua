-- moxy.live: the live backend, thin FFI calls into the moxy binary (src/lua/ffi/api.c).
-- It implements the backend contract that moxy.session and moxy are written over;
-- moxy.fake is the plain-Lua twin moxy.test uses.
local ffi = require "ffi"

local C = ffi.C
local ffi_str = ffi.string
local error = error
local find = string.find
local getinfo = debug.getinfo
local pairs = pairs
local tostring = tostring
local type = type
local setmetatable = setmetatable
local sched = require "moxy.sched"


ffi.cdef[[
typedef struct mx_session_s mx_session_t;
typedef struct { const char *data; size_t len; } moxy_str_t;
int moxy_abi_version(void);
const char *moxy_phase_name(int phase);
int moxy_last_error(char *buf, size_t len);
int moxy_req_str(mx_session_t *s, int what, moxy_str_t *out);
int moxy_header_get(mx_session_t *s, int resp, const char *n, size_t nl, moxy_str_t *out);
int moxy_header_count(mx_session_t *s, int resp);
int moxy_header_at(mx_session_t *s, int resp, int i, moxy_str_t *name, moxy_str_t *value);
int moxy_header_set(mx_session_t *s, int resp, int mode, const char *n, size_t nl,
                    const char *v, size_t vl);
int moxy_req_set(mx_session_t *s, int what, const char *v, size_t vl);
int moxy_resp_status(mx_session_t *s);
int moxy_resp_set_status(mx_session_t *s, int status);
int moxy_respond(mx_session_t *s, int status, const char *body, size_t len);
int moxy_responded(mx_session_t *s);
int moxy_resp_source(mx_session_t *s);
int moxy_conn_str(mx_session_t *s, int what, moxy_str_t *out);
int moxy_conn_num(mx_session_t *s, int what);
double moxy_session_num(mx_session_t *s, int what);
int moxy_session_phase(mx_session_t *s);
int moxy_set_peer(mx_session_t *s, const char *addr, size_t len);
int moxy_set_upstream(mx_session_t *s, const char *name, size_t len);
int moxy_session_error(mx_session_t *s, char *buf, size_t len);
int moxy_body_chunk(mx_session_t *s, moxy_str_t *out);
int moxy_body_replace(mx_session_t *s, const char *p, size_t len);
int moxy_fail_status(mx_session_t *s, int status);
int moxy_set_retry(mx_session_t *s, int retry);
int moxy_peer_str(mx_session_t *s, moxy_str_t *out);
int moxy_no_proxy(mx_session_t *s);
int moxy_upstream_reused(mx_session_t *s);
int moxy_timer_start(double id, double seconds, int every);
int moxy_timer_cancel(double id);
typedef struct {
    mx_session_t *s;
    double cid;
    int32_t phase, svc, start, done;
} mx_lua_io_t;
void moxy_lua_io(mx_lua_io_t *io);
int moxy_log_field(mx_session_t *s, const char *k, size_t kl, const char *v, size_t vl);
int moxy_req_body(mx_session_t *s, size_t max, moxy_str_t *out);
double moxy_now(void);
int moxy_wait_sleep(double id, double seconds);
int moxy_wait_cancel(double id);
int moxy_wait_check(void);
int moxy_set_peer_timeouts(mx_session_t *s, double connect, double read, double write,
                           double idle);
int moxy_req_set_body(mx_session_t *s, const char *p, size_t len);
int moxy_req_body_chunk(mx_session_t *s, size_t pos, moxy_str_t *out);
int moxy_downstream_reused(mx_session_t *s);
double moxy_upstream_num(mx_session_t *s, int what);
int moxy_resp_read_body(mx_session_t *s, size_t max, moxy_str_t *out);
int moxy_resp_set_body(mx_session_t *s, const char *p, size_t len);
void moxy_log(int level, const char *msg, size_t len);
int moxy_worker_id(void);
int moxy_worker_count(void);
int moxy_stats(double *out, int n);
int moxy_worker_stats(double *out, int n);
]]

local ABI_VERSION = 1
if C.moxy_abi_version() ~= ABI_VERSION then
    error("moxy.live: the binary's ABI is " .. C.moxy_abi_version() .. ", this library's is "
          .. ABI_VERSION)
end

-- Return codes, as in src/core/errors.h.
local OK, AGAIN, DECLINED = 0, 1, 2
local E_BAD_PHASE, E_BAD_ARG, E_TOO_LARGE, E_CLIENT = -5015, -5016, -5004, -5010

local PHASES = { [0] = "init", "request_filter", "upstream_peer", "upstream_request_filter",
                 "response_filter", "logging", "fail_to_proxy", "response_body_filter",
                 "fail_to_connect", "early_request_filter", "upstream_response_filter",
                 "proxy_upstream_filter", "response_trailer_filter", "connected_to_upstream",
                 "upstream_response_body_filter", "request_body_filter", "error_while_proxy",
                 "release" }
for id = 0, #PHASES do
    local name = ffi_str(C.moxy_phase_name(id))
    if name ~= PHASES[id] then
        error("moxy.live: phase " .. id .. " is \"" .. name .. "\" in the binary but \""
              .. PHASES[id] .. "\" in this library (rebuild moxy, or use its own lua/)")
    end
end

local LEVELS = { debug = 0, info = 1, notice = 1, warn = 2, err = 3 }
local SOURCES = { [0] = "upstream", "local", "error" }

local str1 = ffi.new("moxy_str_t[1]")   -- filled and copied with no yield in between
local str2 = ffi.new("moxy_str_t[1]")
local errbuf = ffi.new("char[256]")

local _M = { _VERSION = "0.1.0", PHASES = PHASES }


-- The stack level of the first caller outside moxy's own library, so that an error
-- names the user's file:line however deep the library's call chain is.
local function user_level()
    local level = 3
    while true do
        local info = getinfo(level, "S")
        if info == nil then
            return 2
        end
        if info.what ~= "C" and not find(info.source, "/moxy/", 1, true) then
            return level - 1
        end
        level = level + 1
    end
end


-- Raises the C side's reason for <rc>, blaming the caller of the API method.
local function raise(rc, what)
    local n = C.moxy_last_error(errbuf, 256)
    local why = ffi_str(errbuf, n)
    if rc == E_BAD_PHASE then
        error(what .. " cannot be called " .. why, user_level())
    end
    error(what .. ": " .. (n > 0 and why or ("error " .. tostring(rc))), user_level())
end


-- The session of <sp>: session objects hold their coroutine's io block (engine.lua,
-- src/lua/vm.h), whose session C empties when the request ends; one kept past it raises
-- here.
local function S(sp)
    local s = sp.s
    if s == nil then
        error("this session's request has ended (s, s.req and s.resp are valid only "
              .. "while their request runs)", user_level())
    end
    return s
end


-- The request coroutine's body registers its io block once (C fills it per request;
-- src/lua/vm.h says how).
function _M.register_io(io)
    C.moxy_lua_io(io)
end


local function req_str(sp, what)
    C.moxy_req_str(S(sp), what, str1)
    return ffi_str(str1[0].data, str1[0].len)
end


function _M.req_method(sp) return req_str(sp, 0) end
function _M.req_uri(sp) return req_str(sp, 1) end
function _M.req_version(sp) return req_str(sp, 2) end
function _M.req_scheme(sp) return req_str(sp, 3) end


local function header(sp, resp, name, what)
    local rc = C.moxy_header_get(S(sp), resp, name, #name, str1)
    if rc == OK then
        return ffi_str(str1[0].data, str1[0].len)
    elseif rc == DECLINED then
        return nil
    end
    raise(rc, what)
end


local function header_count(sp, resp, what)
    local n = C.moxy_header_count(S(sp), resp)
    if n < 0 then
        raise(n, what)
    end
    return n
end


local function header_at(sp, resp, i)
    if C.moxy_header_at(S(sp), resp, i - 1, str1, str2) ~= OK then
        return nil
    end
    return ffi_str(str1[0].data, str1[0].len), ffi_str(str2[0].data, str2[0].len)
end


local function header_set(sp, resp, mode, name, value, what)
    value = value ~= nil and tostring(value) or ""
    local rc = C.moxy_header_set(S(sp), resp, mode, name, #name, value, #value)
    if rc ~= OK then
        raise(rc, what)
    end
end


-- set (mode 0) or add (1) a string value: true when C took it, false when it refused
-- (bad phase, name or value), leaving session.lua to say why. Never raises.
function _M.req_try_header(sp, mode, n, v)
    return C.moxy_header_set(S(sp), 0, mode, n, #n, v, #v) == OK
end
function _M.resp_try_header(sp, mode, n, v)
    return C.moxy_header_set(S(sp), 1, mode, n, #n, v, #v) == OK
end
function _M.trailer_try_header(sp, mode, n, v)
    return C.moxy_header_set(S(sp), 2, mode, n, #n, v, #v) == OK
end


function _M.req_header(sp, name) return header(sp, 0, name, "s.req:header()") end
function _M.req_header_count(sp) return header_count(sp, 0, "s.req:headers()") end
function _M.req_header_at(sp, i) return header_at(sp, 0, i) end
function _M.req_set_header(sp, n, v) header_set(sp, 0, 0, n, v, "s.req:set_header()") end
function _M.req_add_header(sp, n, v) header_set(sp, 0, 1, n, v, "s.req:add_header()") end
function _M.req_remove_header(sp, n) header_set(sp, 0, 2, n, nil, "s.req:remove_header()") end
function _M.resp_header(sp, name) return header(sp, 1, name, "s.resp:header()") end
function _M.resp_header_count(sp) return header_count(sp, 1, "s.resp:headers()") end
function _M.resp_header_at(sp, i) return header_at(sp, 1, i) end
function _M.resp_set_header(sp, n, v) header_set(sp, 1, 0, n, v, "s.resp:set_header()") end
function _M.resp_add_header(sp, n, v) header_set(sp, 1, 1, n, v, "s.resp:add_header()") end
function _M.resp_remove_header(sp, n) header_set(sp, 1, 2, n, nil, "s.resp:remove_header()") end


function _M.trailer_header(sp, name) return header(sp, 2, name, "trailers:header()") end
function _M.trailer_header_count(sp) return header_count(sp, 2, "trailers:headers()") end
function _M.trailer_header_at(sp, i) return header_at(sp, 2, i) end
function _M.trailer_set_header(sp, n, v) header_set(sp, 2, 0, n, v, "trailers:set_header()") end
function _M.trailer_add_header(sp, n, v) header_set(sp, 2, 1, n, v, "trailers:add_header()") end
function _M.trailer_remove_header(sp, n) header_set(sp, 2, 2, n, nil, "trailers:remove_header()") end


function _M.req_set_method(sp, m)
    local rc = C.moxy_req_set(S(sp), 0, m, #m)
    if rc ~= OK then raise(rc, "s.req:set_method()") end
end


function _M.req_set_uri(sp, uri)
    local rc = C.moxy_req_set(S(sp), 1, uri, #uri)
    if rc ~= OK then raise(rc, "s.req:set_uri()") end
end


function _M.resp_status(sp)
    local n = C.moxy_resp_status(S(sp))
    if n < 0 then raise(n, "s.resp:status()") end
    return n
end


function _M.resp_set_status(sp, n)
    local rc = C.moxy_resp_set_status(S(sp), n)
    if rc ~= OK then raise(rc, "s.resp:set_status()") end
end


-- A local answer; the engine sends it once the phase returns.
function _M.respond(sp, status, body, headers)
    local rc = C.moxy_respond(S(sp), status, body, body and #body or 0)
    if rc ~= OK then raise(rc, "s:respond()") end
    if headers then
        for k, v in pairs(headers) do
            header_set(sp, 1, 0, k, v, "s:respond()")
        end
    end
end


function _M.responded(sp) return C.moxy_responded(S(sp)) ~= 0 end
function _M.resp_source(sp) return SOURCES[C.moxy_resp_source(S(sp))] end


local function conn_str(sp, what)
    if C.moxy_conn_str(S(sp), what, str1) ~= OK then
        return nil
    end
    return ffi_str(str1[0].data, str1[0].len)
end


function _M.client_addr(sp) return conn_str(sp, 0) end
function _M.server_addr(sp) return conn_str(sp, 1) end
function _M.client_port(sp) return C.moxy_conn_num(S(sp), 0) end
function _M.server_port(sp) return C.moxy_conn_num(S(sp), 1) end
function _M.id(sp) return C.moxy_session_num(S(sp), 0) end
function _M.start_time(sp) return C.moxy_session_num(S(sp), 1) end
function _M.phase(sp) return PHASES[C.moxy_session_phase(S(sp))] or "none" end
function _M.now() return C.moxy_now() end
function _M.worker_id() return C.moxy_worker_id() end
function _M.worker_count() return C.moxy_worker_count() end

-- moxy.stats() / moxy.worker.stats(): fresh tables, in src/core/stats.h's order.
local STATS = { "requests", "connections_accepted", "connections_open", "upstream_requests",
                "upstream_reused" }
local WORKER_STATS = { "connections", "idle_connections", "idle_buffer_bytes",
                       "free_read_buffers_bytes" }
local stats_buf = ffi.new("double[8]")
local function stats_table(names, n)
    local t = {}
    for i = 1, n do t[names[i]] = stats_buf[i - 1] end
    return t
end
function _M.stats() return stats_table(STATS, C.moxy_stats(stats_buf, #STATS)) end
function _M.worker_stats()
    return stats_table(WORKER_STATS, C.moxy_worker_stats(stats_buf, #WORKER_STATS))
end


-- A log line: inside a request it carries the request id, like moxy's own lines.
function _M.log(level, msg)
    msg = tostring(msg)
    local e = sched.current()
    local s = e and e.sp and e.sp.s
    if s ~= nil then
        msg = "#" .. tostring(C.moxy_session_num(s, 0)) .. " " .. msg
    end
    C.moxy_log(LEVELS[level] or 1, msg, #msg)
end


local function sleep_cancel(id)
    C.moxy_wait_cancel(id)
end


-- Suspends the running request, timer or thread until <seconds> passed (C wakes it).
function _M.sleep(seconds)
    sched.check("moxy.sleep()")
    if type(seconds) ~= "number" then
        error("bad argument #1 to 'sleep' (number expected, got " .. type(seconds) .. ")", 3)
    end
    local id = sched.id()
    local rc = C.moxy_wait_sleep(id, seconds)
    if rc == AGAIN then
        return sched.wait(id, sleep_cancel, id)
    end
    raise(rc, "moxy.sleep()")
end


-- The whole request body, waiting until it arrived; nil, "too_large" past max.
function _M.req_body(sp, max)
    while true do
        local rc = C.moxy_req_body(S(sp), max, str1)
        if rc == OK then
            return ffi_str(str1[0].data, str1[0].len)
        elseif rc == AGAIN then
            if sched.body_waited() then
                error("s.req:body() is already waited for by another thread", user_level())
            end
            sched.wait(sched.BODY)
        elseif rc == E_TOO_LARGE then
            return nil, "too_large"
        elseif rc == E_CLIENT then
            return nil, "client_closed"
        else
            raise(rc, "s.req:body()")
        end
    end
end


-- The rest of the request body from byte <pos> as it arrives: a string, or nil at the
-- end (waits, yielding, for more).
function _M.req_body_chunk(sp, pos)
    while true do
        local rc = C.moxy_req_body_chunk(S(sp), pos, str1)
        if rc == OK then
            return ffi_str(str1[0].data, str1[0].len)
        elseif rc == DECLINED then
            return nil
        elseif rc == AGAIN then
            if sched.body_waited() then
                error("s.req:body_chunks() is already waited for by another thread", user_level())
            end
            sched.wait(sched.BODY)
        elseif rc == E_CLIENT then
            return nil, "client_closed"
        else
            raise(rc, "s.req:body_chunks()")
        end
    end
end


-- The whole response body (upstream_response_filter / response_filter), waiting for it;
-- nil, "too_large" past max (the body then streams as usual after the phases).
function _M.resp_read_body(sp, max)
    while true do
        local rc = C.moxy_resp_read_body(S(sp), max, str1)
        if rc == OK then
            return ffi_str(str1[0].data, str1[0].len)
        elseif rc == AGAIN then
            if sched.body_waited() then
                error("s.resp:read_body() is already waited for by another thread", user_level())
            end
            sched.wait(sched.BODY)
        elseif rc == E_TOO_LARGE then
            return nil, "too_large"
        else
            raise(rc, "s.resp:read_body()")
        end
    end
end


function _M.resp_set_body(sp, body)
    local rc = C.moxy_resp_set_body(S(sp), body, #body)
    if rc ~= OK then raise(rc, "s.resp:set_body()") end
end


function _M.req_set_body(sp, body)
    local rc = C.moxy_req_set_body(S(sp), body, #body)
    if rc ~= OK then raise(rc, "s.req:set_body()") end
end


function _M.downstream_reused(sp)
    return C.moxy_downstream_reused(S(sp)) ~= 0
end


-- s:upstream(): what moxy knows about the upstream exchange, or nil before a peer.
function _M.upstream_info(sp)
    if C.moxy_peer_str(S(sp), str1) ~= OK then
        return nil
    end
    local function num(i)
        local v = C.moxy_upstream_num(S(sp), i)
        if v < 0 then return nil end
        return v
    end
    return {
        addr = ffi_str(str1[0].data, str1[0].len),
        status = num(0),
        tries = num(1),
        reused = num(2) == 1,
        connect_ms = num(3),
        header_ms = num(4),
        bytes_in = num(5),
        bytes_out = num(6),
    }
end


function _M.set_peer_timeouts(sp, c, r, w, i)
    local rc = C.moxy_set_peer_timeouts(S(sp), c or -1, r or -1, w or -1, i or -1)
    if rc ~= OK then raise(rc, "upstream_peer") end
end


-- upstream_peer's answer.
function _M.set_peer(sp, addr)
    local rc = C.moxy_set_peer(S(sp), addr, #addr)
    if rc ~= OK then raise(rc, "upstream_peer") end
end


-- What went wrong in this request, or nil (logging's and fail_to_proxy's err).
function _M.error(sp)
    local n = C.moxy_session_error(S(sp), errbuf, 256)
    if n <= 0 then
        return nil
    end
    return ffi_str(errbuf, n < 256 and n or 255)
end


-- response_body_filter's chunk and whether it is the last call (eos).
function _M.body_chunk(sp)
    local eos = C.moxy_body_chunk(S(sp), str1)
    if eos < 0 then raise(eos, "response_body_filter") end
    return ffi_str(str1[0].data, str1[0].len), eos == 1
end


function _M.body_replace(sp, chunk)
    C.moxy_body_replace(S(sp), chunk, #chunk)
end


-- The peer tried, as { addr = "host:port" | "unix:/path" } (fail_to_connect's peer).
function _M.peer(sp)
    if C.moxy_peer_str(S(sp), str1) ~= OK then
        return nil
    end
    return { addr = ffi_str(str1[0].data, str1[0].len) }
end


function _M.log_field(sp, key, value)
    value = value == nil and "" or tostring(value)
    local rc = C.moxy_log_field(S(sp), key, #key, value, #value)
    if rc ~= OK then raise(rc, "s:log_field()") end
end


-- moxy.timer handles by id; engine.timer_body runs them when C's timer fires.
local timers = {}
local timer_seq = 0
_M.timers = timers


function _M.timer_start(t)
    timer_seq = timer_seq + 1
    t.id = timer_seq
    timers[timer_seq] = t
    local rc = C.moxy_timer_start(timer_seq, t.delay, t.every and 1 or 0)
    if rc ~= OK then
        timers[timer_seq] = nil
        raise(rc, "moxy.timer")
    end
end


function _M.timer_cancel(t)
    if t.id == nil or timers[t.id] == nil then
        return nil, "not found"
    end
    timers[t.id] = nil
    C.moxy_timer_cancel(t.id)
    return true
end


-- Load balancing: moxy.lb_live's functions are part of this backend.
for k, v in pairs(require "moxy.lb_live") do
    _M[k] = v
end


function _M.upstream_reused(sp)
    return C.moxy_upstream_reused(S(sp)) ~= 0
end


function _M.no_proxy(sp)
    local rc = C.moxy_no_proxy(S(sp))
    if rc ~= OK then raise(rc, "proxy_upstream_filter") end
end


function _M.set_retry(sp, retry)
    local rc = C.moxy_set_retry(S(sp), retry and 1 or 0)
    if rc ~= OK then raise(rc, "err:set_retry()") end
end


function _M.fail_status(sp, status)
    local rc = C.moxy_fail_status(S(sp), status)
    if rc ~= OK then raise(rc, "fail_to_proxy") end
end


function _M.set_upstream(sp, name)
    local rc = C.moxy_set_upstream(S(sp), name, #name)
    if rc ~= OK then raise(rc, "upstream_peer") end
end


-- moxy.tcp() and moxy.http.request(): sockets over src/lua/ffi/tcp.c, HTTP in Lua.
function _M.tcp()
    return require("moxy.tcp").new(require "moxy.tcp_live")
end


function _M.http_request(r)
    local rc = C.moxy_wait_check()
    if rc ~= OK then
        raise(rc, "moxy.http.request()")
    end
    return require("moxy.http_client").request(r)
end


-- The text of the last FFI error (moxy_last_error).
function _M.last_error()
    local n = C.moxy_last_error(errbuf, 256)
    return ffi_str(errbuf, n < 256 and n or 255)
end


_M.raise = raise
_M.E_BAD_ARG = E_BAD_ARG
return _M
