-- moxy.tcp: a yielding TCP / unix-socket client like OpenResty's ngx.socket.tcp (the C
-- half is src/lua/ffi/tcp.c). Live engine only. Methods return OpenResty's values:
-- 1 or the data on success, nil, err (and the partial data for receive) on failure, with
-- err "timeout", "closed", "connection refused", "<host> could not be resolved (...)"...
-- Misuse (bad arguments, a busy socket, a socket of another request) raises.
local ffi = require "ffi"
local live = require "moxy.live"       -- declares moxy_str_t
local sched = require "moxy.sched"

local C = ffi.C
local ffi_gc = ffi.gc
local ffi_str = ffi.string
local concat = table.concat
local error = error
local floor = math.floor
local getmetatable = getmetatable
local setmetatable = setmetatable
local sub = string.sub
local tostring = tostring
local type = type


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
local E_TOO_LARGE = -5004
local E_TIMEDOUT, E_EOF, E_CANCELED = -110, -4095, -125
local RECV_LINE, RECV_ALL, RECV_BYTES, RECV_ANY, RECV_UNTIL = 0, 1, 2, 3, 4
local DEFAULT_TIMEOUT = 60000           -- ms, as OpenResty's lua_socket_*_timeout
local DEFAULT_IDLE, DEFAULT_POOL = 60000, 30
local MAX_LINE = 16 * 1024 * 1024       -- what "*l" or a pattern buffers at most

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


local Sock = {}
local sock_mt = { __index = Sock, __tostring = function() return "moxy.tcp socket" end }


local function check_self(self, what)
    if getmetatable(self) ~= sock_mt then
        error("bad argument #1 to '" .. what .. "' (moxy.tcp socket expected; use sock:"
              .. what .. "())", 3)
    end
end


-- Stops the socket's operation when the moxy.thread waiting on it is killed.
local function cancel(self)
    C.moxy_tcp_close(self.t, 1)
end


-- moxy.tcp() -> a socket, not connected. Phases: any (connect needs one that can wait).
local function new()
    C.moxy_tcp_new(new_out)
    local t = ffi_gc(new_out[0], C.moxy_tcp_free)
    return setmetatable({ t = t, ct = DEFAULT_TIMEOUT, st = DEFAULT_TIMEOUT,
                          rt = DEFAULT_TIMEOUT }, sock_mt)
end


local function check_timeout(v, i, what)
    if type(v) ~= "number" or v < 0 or v ~= v then
        error("bad argument #" .. i .. " to '" .. what .. "' (milliseconds >= 0 expected, got "
              .. tostring(v) .. ")", 3)
    end
    return v
end


-- sock:settimeout(ms): the connect, send and read timeouts at once (0: none).
function Sock.settimeout(self, ms)
    check_self(self, "settimeout")
    check_timeout(ms, 1, "settimeout")
    self.ct, self.st, self.rt = ms, ms, ms
end


-- sock:settimeouts(connect_ms, send_ms, read_ms). The read timeout runs between arrivals.
function Sock.settimeouts(self, c, s, r)
    check_self(self, "settimeouts")
    self.ct = check_timeout(c, 1, "settimeouts")
    self.st = check_timeout(s, 2, "settimeouts")
    self.rt = check_timeout(r, 3, "settimeouts")
end


-- sock:connect(host, port, opts?) or sock:connect("unix:/path", opts?): 1 or nil, err.
-- A name is resolved with getaddrinfo (off the loop). opts.pool names the keepalive pool
-- (default "host:port"). A connection from the pool is taken without waiting.
function Sock.connect(self, host, port, opts)
    check_self(self, "connect")
    if type(host) ~= "string" or host == "" then
        error("bad argument #1 to 'connect' (host string expected, got " .. type(host) .. ")", 2)
    end
    local unix = sub(host, 1, 5) == "unix:"
    if unix then
        if type(port) == "table" then
            opts = port
        end
        port = 0
    elseif type(port) ~= "number" or port % 1 ~= 0 or port < 1 or port > 65535 then
        error("bad argument #2 to 'connect' (port 1..65535 expected, got " .. tostring(port)
              .. ")", 2)
    end
    local key = unix and host or host .. ":" .. port
    if opts ~= nil then
        if type(opts) ~= "table" then
            error("bad argument #3 to 'connect' (table expected, got " .. type(opts) .. ")", 2)
        end
        if opts.pool ~= nil then
            if type(opts.pool) ~= "string" then
                error("connect: opts.pool must be a string", 2)
            end
            key = opts.pool
        end
    end
    sched.check("sock:connect()")
    local id = sched.id()
    local t = self.t
    local rc = C.moxy_tcp_connect(t, id, host, #host, port, key, #key, self.ct)
    if rc == AGAIN then
        sched.wait(id, cancel, self)
        rc = C.moxy_tcp_take(t)
    end
    if rc == OK then
        return 1
    end
    if rc < -5000 then
        raise(rc, "sock:connect()")
    end
    return nil, errstr(rc, unix and host or host)
end


-- sock:send(data): data a string, a number or a list of strings; bytes sent, or nil, err
-- (the connection is then closed).
function Sock.send(self, data)
    check_self(self, "send")
    local ty = type(data)
    if ty == "table" then
        data = concat(data)
    elseif ty == "number" then
        data = tostring(data)
    elseif ty ~= "string" then
        error("bad argument #1 to 'send' (string expected, got " .. ty .. ")", 2)
    end
    sched.check("sock:send()")
    local id = sched.id()
    local t = self.t
    local rc = C.moxy_tcp_send(t, id, data, #data, self.st)
    if rc == AGAIN then
        sched.wait(id, cancel, self)
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


local function receive(self, what, mode, n, max, pat)
    sched.check(what)
    local id = sched.id()
    local t = self.t
    local pl = pat and #pat or 0
    while true do
        local rc = C.moxy_tcp_receive(t, id, mode, n, max, pat, pl, self.rt, out1)
        if rc == OK or rc == DONE then
            return ffi_str(out1[0].data, out1[0].len), rc == DONE
        elseif rc == AGAIN then
            sched.wait(id, cancel, self)
        elseif rc < -5000 and rc ~= E_TOO_LARGE then
            raise(rc, what)
        else
            return nil, errstr(rc), ffi_str(out1[0].data, out1[0].len)
        end
    end
end


-- sock:receive(pattern?): "*l" (default: a line without its LF or CRLF), "*a" (all until
-- the peer closes; "" when it already did) or a byte count. data, or nil, err, partial
-- ("closed" closes the socket; after "timeout" it stays usable).
function Sock.receive(self, pattern)
    check_self(self, "receive")
    local data, err, partial
    if pattern == nil or pattern == "*l" then
        data, err, partial = receive(self, "sock:receive()", RECV_LINE, 0, MAX_LINE)
    elseif pattern == "*a" then
        data, err, partial = receive(self, "sock:receive()", RECV_ALL, 0, 0)
    elseif type(pattern) == "number" and pattern >= 0 and pattern % 1 == 0 then
        data, err, partial = receive(self, "sock:receive()", RECV_BYTES, pattern, 0)
    else
        error("bad argument #1 to 'receive' (\"*l\", \"*a\" or a byte count expected, got "
              .. tostring(pattern) .. ")", 2)
    end
    if data then
        return data
    end
    return nil, err, partial
end



-- sock:receiveany(max): whatever arrived, 1..max bytes, waiting for at least one.
function Sock.receiveany(self, max)
    check_self(self, "receiveany")
    if type(max) ~= "number" or max < 1 or max % 1 ~= 0 then
        error("bad argument #1 to 'receiveany' (byte count >= 1 expected)", 2)
    end
    local data, err, partial = receive(self, "sock:receiveany()", RECV_ANY, max, 0)
    if data then
        return data
    end
    return nil, err, partial
end


-- sock:receiveuntil(pattern, { inclusive = false }) -> reader. reader() returns the data
-- before the next <pattern> (dropped, or kept with inclusive), or nil, err, partial.
-- reader(size) streams it: at most <size> bytes per call, then nil (no error) once the
-- pattern was reached; the call after that looks for the next one.
function Sock.receiveuntil(self, pattern, opts)
    check_self(self, "receiveuntil")
    if type(pattern) ~= "string" or pattern == "" then
        error("bad argument #1 to 'receiveuntil' (non-empty string expected)", 2)
    end
    local inclusive = type(opts) == "table" and opts.inclusive
    local ended = false
    return function(size)
        if size ~= nil and (type(size) ~= "number" or size < 1 or size % 1 ~= 0) then
            error("bad argument #1 to 'reader' (byte count >= 1 expected)", 2)
        end
        if ended then
            ended = false
            return nil
        end
        local data, hit, partial = receive(self, "reader()", RECV_UNTIL, size or 0, MAX_LINE,
                                           pattern)
        if data == nil then
            return nil, hit, partial
        end
        if hit and inclusive then
            data = data .. pattern
        end
        if size and hit then
            if data == "" then
                return nil                  -- the pattern right away: the end
            end
            ended = true                    -- this chunk, then nil
        end
        return data
    end
end


-- Internal (moxy.http_client): everything until the close, at most <max> bytes (more is
-- nil, "too large").
function Sock._all(self, max)
    local data, err, partial = receive(self, "sock:receive()", RECV_ALL, 0, max)
    if data then
        return data
    end
    return nil, err, partial
end


-- Internal (moxy.http_client): a line ending in CRLF exactly, at most <max> bytes.
function Sock._line(self, max)
    local data, err = receive(self, "sock:receive()", RECV_UNTIL, 0, max, "\r\n")
    if data then
        return data
    end
    return nil, err
end


-- sock:setkeepalive(idle_ms?, pool_size?): puts the connection in this worker's pool
-- (idle_ms default 60000, 0: no idle timeout; pool_size default 30 per pool key, the
-- oldest idle connection goes past it) and closes the socket. 1, or nil, err ("closed",
-- or "unread data in buffer", and the connection is closed).
function Sock.setkeepalive(self, idle, size)
    check_self(self, "setkeepalive")
    idle = idle or DEFAULT_IDLE
    size = size or DEFAULT_POOL
    if type(idle) ~= "number" or idle < 0 then
        error("bad argument #1 to 'setkeepalive' (milliseconds >= 0 expected)", 2)
    end
    if type(size) ~= "number" or size < 1 then
        error("bad argument #2 to 'setkeepalive' (pool size >= 1 expected)", 2)
    end
    local rc = C.moxy_tcp_setkeepalive(self.t, idle, floor(size))
    if rc == OK then
        return 1
    end
    if rc == -5016 then                     -- E_BAD_ARG: unread data, or busy
        local why = live.last_error()
        if why == "unread data in buffer" then
            return nil, why
        end
        raise(rc, "sock:setkeepalive()")
    end
    return nil, errstr(rc)
end


-- sock:close(): 1, or nil, "closed" when it was not connected.
function Sock.close(self)
    check_self(self, "close")
    local rc = C.moxy_tcp_close(self.t, 0)
    if rc == OK then
        return 1
    elseif rc < -5000 then
        raise(rc, "sock:close()")
    end
    return nil, "closed"
end


-- sock:getreusedtimes(): how many times this connection came from the pool (0 when new),
-- or nil, "closed".
function Sock.getreusedtimes(self)
    check_self(self, "getreusedtimes")
    local n = C.moxy_tcp_reused(self.t)
    if n < 0 then
        return nil, "closed"
    end
    return n
end


-- TLS is not built yet.
function Sock.sslhandshake()
    return nil, "tls not supported by this moxy yet"
end


return {
    new = new,
    -- Idle pooled connections of this worker under <key> (for specs).
    pool_count = function(key) return C.moxy_tcp_pool_count(key, #key) end,
}
