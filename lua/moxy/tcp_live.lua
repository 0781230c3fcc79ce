-- moxy.tcp_live: the live engine's socket backend for moxy.tcp (the C half is
-- src/lua/ffi/tcp.c): each operation calls C, and waits (moxy.sched) when C returns AGAIN.
-- moxy.tcp checks the arguments; this returns OpenResty's values or raises C's refusals.
local ffi = require "ffi"
local live = require "moxy.live"       -- declares moxy_str_t
local sched = require "moxy.sched"

local C = ffi.C
local ffi_gc = ffi.gc
local ffi_str = ffi.string
local floor = math.floor
local tostring = tostring


ffi.cdef[[
typedef struct mx_lua_tcp_s moxy_tcp_t;
int moxy_tcp_new(moxy_tcp_t **out);
void moxy_tcp_free(moxy_tcp_t *t);
int moxy_tcp_connect(moxy_tcp_t *t, double id, const char *host, size_t hl, int port,
                     const char *key, size_t kl, double timeout_ms);
int moxy_tcp_send(moxy_tcp_t *t, double id, const char *p, size_t n, double timeout_ms);
int moxy_tcp_receive(moxy_tcp_t *t, double id, int mode, size_t n, size_t max, const char *pat,
                     size_t pl, double timeout_ms, moxy_str_t *out);
int moxy_tcp_take(moxy_tcp_t *t);
int moxy_tcp_setkeepalive(moxy_tcp_t *t, double idle_ms, int pool_size);
int moxy_tcp_close(moxy_tcp_t *t, int force);
int moxy_tcp_reused(moxy_tcp_t *t);
int moxy_tcp_pool_count(const char *key, size_t kl);
const char *moxy_tcp_strerror(int rc);
]]

local OK, AGAIN, DONE = 0, 1, 3
local E_TOO_LARGE, E_BAD_ARG = -5004, -5016
local E_TIMEDOUT, E_EOF, E_CANCELED = -110, -4095, -125

local out1 = ffi.new("moxy_str_t[1]")
local new_out = ffi.new("moxy_tcp_t *[1]")

local raise = live.raise


local function errstr(rc, host)
    if rc == E_TIMEDOUT then
        return "timeout"
    elseif rc == E_EOF or rc == E_CANCELED then
        return "closed"
    elseif rc == E_TOO_LARGE then
        return "too large"
    elseif rc <= -3000 and rc >= -3014 then         -- UV_EAI_*: name resolution
        return tostring(host) .. " could not be resolved (" .. ffi_str(C.moxy_tcp_strerror(rc))
            .. ")"
    end
    return ffi_str(C.moxy_tcp_strerror(rc))
end


local _M = {}


-- Stops the socket's operation when the moxy.thread waiting on it is killed.
local function cancel(sock)
    C.moxy_tcp_close(sock.h, 1)
end


function _M.new()
    C.moxy_tcp_new(new_out)
    return ffi_gc(new_out[0], C.moxy_tcp_free)
end


function _M.connect(sock, host, port, key)
    local id = sched.id()
    local t = sock.h
    local rc = C.moxy_tcp_connect(t, id, host, #host, port, key, #key, sock.ct)
    if rc == AGAIN then
        sched.wait(id, cancel, sock)
        rc = C.moxy_tcp_take(t)
    end
    if rc == OK then
        return 1
    end
    if rc < -5000 then
        raise(rc, "sock:connect()")
    end
    return nil, errstr(rc, host)
end


function _M.send(sock, data)
    local id = sched.id()
    local t = sock.h
    local rc = C.moxy_tcp_send(t, id, data, #data, sock.st)
    if rc == AGAIN then
        sched.wait(id, cancel, sock)
        rc = C.moxy_tcp_take(t)
    end
    if rc == OK then
        return #data
    end
    if rc < -5000 then
        raise(rc, "sock:send()")
    end
    return nil, errstr(rc)
end


-- data, hit (a RECV_UNTIL pattern was reached) or nil, err, partial.
function _M.receive(sock, what, mode, n, max, pat)
    local id = sched.id()
    local t = sock.h
    local pl = pat and #pat or 0
    while true do
        local rc = C.moxy_tcp_receive(t, id, mode, n, max, pat, pl, sock.rt, out1)
        if rc == OK or rc == DONE then
            return ffi_str(out1[0].data, out1[0].len), rc == DONE
        elseif rc == AGAIN then
            sched.wait(id, cancel, sock)
        elseif rc < -5000 and rc ~= E_TOO_LARGE then
            raise(rc, what)
        else
            return nil, errstr(rc), ffi_str(out1[0].data, out1[0].len)
        end
    end
end


function _M.setkeepalive(sock, idle, size)
    local rc = C.moxy_tcp_setkeepalive(sock.h, idle, floor(size))
    if rc == OK then
        return 1
    end
    if rc == E_BAD_ARG then                 -- unread data, or busy
        local why = live.last_error()
        if why == "unread data in buffer" then
            return nil, why
        end
        raise(rc, "sock:setkeepalive()")
    end
    return nil, errstr(rc)
end


function _M.close(sock)
    local rc = C.moxy_tcp_close(sock.h, 0)
    if rc == OK then
        return 1
    elseif rc < -5000 then
        raise(rc, "sock:close()")
    end
    return nil, "closed"
end


function _M.reused(sock)
    local n = C.moxy_tcp_reused(sock.h)
    if n < 0 then
        return nil, "closed"
    end
    return n
end


-- Idle pooled connections of this worker under <key> (for specs).
function _M.pool_count(key)
    return C.moxy_tcp_pool_count(key, #key)
end


return _M
