-- moxy.tcp_fake: moxy.tcp's socket backend under moxy.test. t.run's opts.tcp plays the
-- servers: opts.tcp(host, port) (port nil for "unix:/path") returns serve(data), or nil,
-- err to refuse ("connection refused" by default). serve is called with the bytes of each
-- send and returns what the server answers (a string, or nil for nothing) and, second,
-- true when it then closes the connection (false alone closes without an answer). A
-- receive that needs more than the server answered waits the socket's read timeout on
-- the fake clock and fails with "timeout" (so a server that never answers is a timeout,
-- as live). setkeepalive pools the connection (serve and all) under its key, and a later
-- connect takes it back (getreusedtimes counts). res.tcp lists the connections:
-- { host, port, sent = { data... } }.
local fake = require "moxy.fake"
local tcp = require "moxy.tcp"

local error = error
local find = string.find
local remove = table.remove
local sub = string.sub
local type = type

local RECV_LINE, RECV_ALL, RECV_BYTES, RECV_ANY, RECV_UNTIL =
    tcp.RECV_LINE, tcp.RECV_ALL, tcp.RECV_BYTES, tcp.RECV_ANY, tcp.RECV_UNTIL


local _M = {}


function _M.new()
    return {}
end


local function conn_of(sock)
    return sock.h.conn
end


function _M.connect(sock, host, port, key)
    sock.h.conn = nil
    local idle = fake.tcp_pool[key]
    if idle and #idle > 0 then
        local c = remove(idle)
        c.reused = c.reused + 1
        sock.h.conn = c
        return 1
    end
    local handler = fake.tcp
    if handler == nil then
        error("moxy.tcp under moxy.test: pass t.run(app, s, { tcp = function(host, port) "
              .. "return function(data) return \"reply\" end end })", 0)
    end
    local unix = sub(host, 1, 5) == "unix:"
    local serve, err = handler(host, not unix and port or nil)
    if type(serve) ~= "function" then
        if serve ~= nil then
            error("t.run: opts.tcp must return a function serve(data) or nil, err", 0)
        end
        return nil, err or "connection refused"
    end
    local rec = { host = host, port = not unix and port or nil, sent = {} }
    local calls = fake.tcp_calls
    if calls then
        calls[#calls + 1] = rec
    end
    sock.h.conn = { serve = serve, key = key, reused = 0, buf = "", eof = false, rec = rec }
    return 1
end


function _M.send(sock, data)
    local c = conn_of(sock)
    if c == nil then
        return nil, "closed"
    end
    if c.eof then
        sock.h.conn = nil
        return nil, "closed"
    end
    local sent = c.rec.sent
    sent[#sent + 1] = data
    local reply, closes = c.serve(data)
    if type(reply) == "string" then
        c.buf = c.buf .. reply
    elseif reply ~= nil and reply ~= false then
        error("t.run: opts.tcp's serve(data) must return a string, nil or false", 0)
    end
    if reply == false or closes then
        c.eof = true
    end
    return #data
end


-- How much of <buf> completes the receive: length, bytes to drop after it, pattern hit.
local function satisfied(buf, mode, n, pat)
    local have = #buf
    if mode == RECV_LINE then
        local nl = find(buf, "\n", 1, true)
        if not nl then
            return nil
        end
        local len = nl - 1
        if len > 0 and sub(buf, len, len) == "\r" then
            return len - 1, 2
        end
        return len, 1
    elseif mode == RECV_BYTES then
        if have >= n then
            return n, 0
        end
    elseif mode == RECV_ANY then
        if have > 0 then
            return have < n and have or n, 0
        end
    elseif mode == RECV_UNTIL then
        local at = find(buf, pat, 1, true)
        if at and (n == 0 or at - 1 <= n) then
            return at - 1, #pat, true
        end
        if n > 0 and (at or have >= n + #pat - 1) then
            return n, 0
        end
    end
    return nil
end


function _M.receive(sock, what, mode, n, max, pat)
    local c = conn_of(sock)
    if c == nil then
        return nil, "closed", ""
    end
    local len, skip, hit = satisfied(c.buf, mode, n, pat)
    if len then
        local data = sub(c.buf, 1, len)
        c.buf = sub(c.buf, len + skip + 1)
        return data, hit == true
    end
    local partial = c.buf
    if max > 0 and #partial > max then
        c.buf = ""
        return nil, "too large", partial
    end
    if c.eof then
        sock.h.conn = nil
        if mode == RECV_ALL then
            return partial, false
        end
        return nil, "closed", partial
    end
    -- Nothing more will come before the next send: the read timeout passes.
    if sock.rt <= 0 then
        error(what .. " (moxy.test): waits forever (no read timeout, and the fake server "
              .. "answered nothing more)", 0)
    end
    fake.wait_for(sock.rt / 1000)
    c.buf = ""
    return nil, "timeout", partial
end


function _M.setkeepalive(sock, idle, size)
    local c = conn_of(sock)
    if c == nil then
        return nil, "closed"
    end
    sock.h.conn = nil
    if #c.buf > 0 then
        return nil, "unread data in buffer"
    end
    if c.eof then
        return nil, "closed"
    end
    local list = fake.tcp_pool[c.key]
    if list == nil then
        list = {}
        fake.tcp_pool[c.key] = list
    end
    if #list >= size then
        remove(list, 1)
    end
    list[#list + 1] = c
    return 1
end


function _M.close(sock)
    if conn_of(sock) == nil then
        return nil, "closed"
    end
    sock.h.conn = nil
    return 1
end


function _M.reused(sock)
    local c = conn_of(sock)
    if c == nil then
        return nil, "closed"
    end
    return c.reused
end


return _M
