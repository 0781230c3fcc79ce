-- moxy.tcp: a yielding TCP / unix-socket client like OpenResty's ngx.socket.tcp. This
-- module checks arguments and keeps the method set; the socket backend does the I/O:
-- moxy.tcp_live (FFI, src/lua/ffi/tcp.c) or moxy.tcp_fake (t.run's opts.tcp). Methods
-- return OpenResty's values:
-- 1 or the data on success, nil, err (and the partial data for receive) on failure, with
-- err "timeout", "closed", "connection refused", "<host> could not be resolved (...)"...
-- Misuse (bad arguments, a busy socket, a socket of another request) raises.
local sched = require "moxy.sched"

local concat = table.concat
local error = error
local getmetatable = getmetatable
local setmetatable = setmetatable
local sub = string.sub
local tostring = tostring
local type = type


-- What receive asks its backend for (the values of src/lua/ffi/tcp.c).
local RECV_LINE, RECV_ALL, RECV_BYTES, RECV_ANY, RECV_UNTIL = 0, 1, 2, 3, 4
local DEFAULT_TIMEOUT = 60000           -- ms, as OpenResty's lua_socket_*_timeout
local DEFAULT_IDLE, DEFAULT_POOL = 60000, 30
local MAX_LINE = 16 * 1024 * 1024       -- what "*l" or a pattern buffers at most


local Sock = {}
local sock_mt = { __index = Sock, __tostring = function() return "moxy.tcp socket" end }


local function check_self(self, what)
    if getmetatable(self) ~= sock_mt then
        error("bad argument #1 to '" .. what .. "' (moxy.tcp socket expected; use sock:"
              .. what .. "())", 3)
    end
end


-- A socket, not connected, over socket backend <b> (moxy.tcp_live or moxy.tcp_fake: new,
-- connect, send, receive, setkeepalive, close, reused). Phases: any (connect needs one
-- that can wait).
local function new(b)
    return setmetatable({ b = b, h = b.new(), ct = DEFAULT_TIMEOUT, st = DEFAULT_TIMEOUT,
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
    return self.b.connect(self, host, port, key)
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
    return self.b.send(self, data)
end


-- data, hit (a RECV_UNTIL pattern was reached), or nil, err, partial.
local function receive(self, what, mode, n, max, pat)
    sched.check(what)
    return self.b.receive(self, what, mode, n, max, pat)
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
    return self.b.setkeepalive(self, idle, size)
end


-- sock:close(): 1, or nil, "closed" when it was not connected.
function Sock.close(self)
    check_self(self, "close")
    return self.b.close(self)
end


-- sock:getreusedtimes(): how many times this connection came from the pool (0 when new),
-- or nil, "closed".
function Sock.getreusedtimes(self)
    check_self(self, "getreusedtimes")
    return self.b.reused(self)
end


-- TLS is not built yet.
function Sock.sslhandshake()
    return nil, "tls not supported by this moxy yet"
end


return {
    new = new,
    RECV_LINE = RECV_LINE, RECV_ALL = RECV_ALL, RECV_BYTES = RECV_BYTES, RECV_ANY = RECV_ANY,
    RECV_UNTIL = RECV_UNTIL,
}
