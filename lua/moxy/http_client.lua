-- moxy.http_client: the live engine's HTTP/1.1 exchange for moxy.http.request, over
-- moxy.tcp and its per-worker keepalive pool. Strict like moxy's proxy (RFC 9112): CRLF
-- line ends, no obs-fold, one Content-Length value, Transfer-Encoding only "chunked" and
-- never with Content-Length, chunk sizes in hex with CRLF after each chunk's data; a body
-- is read by Content-Length, by chunks, or until the close (then the connection is not
-- reused). A reused connection that the server closed before answering is retried once
-- on a fresh one for idempotent methods.
--
-- Why Lua over moxy.tcp rather than C over the proxy's upstream connector (upconn.c): the
-- connector is built around a session (its callbacks are mx_session_on_*), so a client
-- for timers and threads would have needed a second state machine in C; over moxy.tcp the
-- exchange is plain sequential code that waits like any other Lua, inherits cancellation
-- (a request that ends closes its sockets) and the keepalive pool, and costs a few string
-- scans per response head, which is noise next to a network round trip. TLS will come to
-- both through the socket layer.
local tcp = require "moxy.tcp"
local tcp_live = require "moxy.tcp_live"
local live = require "moxy.live"

local concat = table.concat
local find = string.find
local lower = string.lower
local match = string.match
local tonumber = tonumber
local tostring = tostring

local now = live.now


local _M = {}

local MAX_LINE = 8192           -- a status line, a field line, a chunk-size line
local MAX_HEAD = 64 * 1024
local MAX_FIELDS = 100
local IDLE_MS, POOL_SIZE = 60000, 30
local IDEMPOTENT = { GET = true, HEAD = true, PUT = true, DELETE = true, OPTIONS = true,
                     TRACE = true }


-- What the caller gets for a socket error while talking to the server.
local function io_err(err)
    if err == "timeout" then
        return "timeout"
    elseif err == "too large" then
        return "bad_response"
    end
    return "closed"
end


local function request_bytes(r)
    local host = r.host
    if find(host, ":", 1, true) then
        host = "[" .. host .. "]"
    end
    if r.port ~= 80 then
        host = host .. ":" .. r.port
    end
    local out = { r.method, " ", r.path, " HTTP/1.1\r\n" }
    local has_host, has_ua = false, false
    for i = 1, #r.headers do
        local k, v = r.headers[i][1], r.headers[i][2]
        local lk = lower(k)
        has_host = has_host or lk == "host"
        has_ua = has_ua or lk == "user-agent"
        out[#out + 1] = k .. ": " .. v .. "\r\n"
    end
    if not has_host then
        out[#out + 1] = "Host: " .. host .. "\r\n"
    end
    if not has_ua then
        out[#out + 1] = "User-Agent: moxy\r\n"
    end
    local body = r.body
    if body ~= nil or r.method == "POST" or r.method == "PUT" or r.method == "PATCH" then
        out[#out + 1] = "Content-Length: " .. #(body or "") .. "\r\n"
    end
    if not r.keepalive then
        out[#out + 1] = "Connection: close\r\n"
    end
    out[#out + 1] = "\r\n"
    if body then
        out[#out + 1] = body
    end
    return concat(out)
end


-- Milliseconds left before <deadline> (at least 1: 0 would mean "no timeout").
local function left(deadline)
    local ms = (deadline - now()) * 1000
    return ms >= 1 and ms or 1
end


-- Every timeout of <sock> becomes what is left before <deadline> (moxy.tcp's fields).
local function arm(sock, deadline)
    local ms = left(deadline)
    sock.ct, sock.st, sock.rt = ms, ms, ms
end


-- Reads the response head: status, reason, header list, or nil, err, detail.
local function read_head(sock, deadline)
    local total = 0
    while true do
        arm(sock, deadline)
        local line, err = sock:_line(MAX_LINE)
        if not line then
            return nil, io_err(err), "reading the status line: " .. tostring(err)
        end
        local minor, status, reason = match(line, "^HTTP/1%.([01]) (%d%d%d) ?([^\r\n]*)$")
        status = tonumber(status)
        if not status then
            return nil, "bad_response", "bad status line " .. ("%q"):format(line:sub(1, 80))
        end
        local list = {}
        while true do
            local f, ferr = sock:_line(MAX_LINE)
            if not f then
                return nil, io_err(ferr), "reading the header: " .. tostring(ferr)
            end
            total = total + #f + 2
            if f == "" then
                break
            end
            if total > MAX_HEAD or #list >= MAX_FIELDS then
                return nil, "bad_response", "response head too large"
            end
            local k, v = match(f, "^([!#$%%&'*+%-.^_`|~%w]+):[ \t]*(.-)[ \t]*$")
            if not k or find(v, "[%z\r\n]") then
                return nil, "bad_response", "bad header line " .. ("%q"):format(f:sub(1, 80))
            end
            list[#list + 1] = { k, v }
        end
        if status >= 200 then
            return status, reason, list, minor
        elseif status == 101 then
            return nil, "bad_response", "101 Switching Protocols is not supported"
        end
        -- 1xx: informational, another head follows
    end
end


-- All values of header <name> in <list>, comma-joined, or nil.
local function field(list, name)
    local v
    for i = 1, #list do
        if lower(list[i][1]) == name then
            v = v and v .. "," .. list[i][2] or list[i][2]
        end
    end
    return v
end


local function read_chunked(sock, deadline, max)
    local parts, total = {}, 0
    while true do
        arm(sock, deadline)
        local line, err = sock:_line(MAX_LINE)
        if not line then
            return nil, io_err(err), "reading a chunk size: " .. tostring(err)
        end
        local hex = match(line, "^(%x+)$") or match(line, "^(%x+)[ \t]*;")
        if not hex or #hex > 15 then
            return nil, "bad_response", "bad chunk size line " .. ("%q"):format(line:sub(1, 40))
        end
        local size = tonumber(hex, 16)
        if size == 0 then
            while true do                      -- trailer fields, dropped
                local t, terr = sock:_line(MAX_LINE)
                if not t then
                    return nil, io_err(terr), "reading the trailers: " .. tostring(terr)
                end
                if t == "" then
                    return concat(parts)
                end
            end
        end
        total = total + size
        if total > max then
            return nil, "too_large", "the body is over max_body (" .. max .. " bytes)"
        end
        local data, derr = sock:receive(size)
        if not data then
            return nil, io_err(derr), "reading a chunk: " .. tostring(derr)
        end
        parts[#parts + 1] = data
        local crlf, cerr = sock:receive(2)
        if crlf ~= "\r\n" then
            return nil, crlf and "bad_response" or io_err(cerr), "no CRLF after chunk data"
        end
    end
end


-- One exchange on <sock>: res (with .reusable), or nil, err, detail, sent_nothing_back.
local function exchange(sock, r, deadline)
    arm(sock, deadline)
    local ok, err = sock:send(request_bytes(r))
    if not ok then
        return nil, io_err(err), "sending the request: " .. tostring(err), true
    end
    local status, reason, list, minor = read_head(sock, deadline)
    if not status then
        return nil, reason, list, reason == "closed"
    end
    local te, cl = field(list, "transfer-encoding"), field(list, "content-length")
    local conn = lower(field(list, "connection") or "")
    local reusable = minor == "1" and not find(conn, "close", 1, true)
    local body
    if r.method == "HEAD" or status == 204 or status == 304 then
        body = ""
    elseif te then
        if cl then
            return nil, "bad_response", "both Transfer-Encoding and Content-Length"
        end
        if lower(te) ~= "chunked" then
            return nil, "bad_response", "unsupported Transfer-Encoding " .. te
        end
        body, err, reason = read_chunked(sock, deadline, r.max_body)
        if not body then
            return nil, err, reason
        end
    elseif cl then
        local n = match(cl, "^(%d+)$")
        if not n then                          -- "5,5" is one value repeated; "5,6" is not
            local first = match(cl, "^(%d+)")
            for v in cl:gmatch("[^,]+") do
                v = match(v, "^[ \t]*(.-)[ \t]*$")
                if v ~= first then
                    return nil, "bad_response", "bad Content-Length " .. cl
                end
            end
            n = first
        end
        if #n > 15 then
            return nil, "bad_response", "bad Content-Length " .. cl
        end
        n = tonumber(n)
        if n > r.max_body then
            return nil, "too_large", "Content-Length " .. n .. " is over max_body"
        end
        arm(sock, deadline)
        body, err = sock:receive(n)
        if not body then
            return nil, io_err(err), "reading the body: " .. tostring(err)
        end
    else
        reusable = false                       -- delimited by the close
        arm(sock, deadline)
        local data, rerr, partial = sock:_all(r.max_body > 0 and r.max_body or 1)
        body = data
        if not data then
            if rerr == "too large" or #(partial or "") > r.max_body then
                return nil, "too_large", "the body is over max_body"
            end
            return nil, io_err(rerr), "reading the body: " .. tostring(rerr)
        end
        if #body > r.max_body then
            return nil, "too_large", "the body is over max_body"
        end
    end
    return { status = status, reason = reason, header_list = list, body = body,
             reusable = reusable }
end


-- moxy.http.request's live half: <r> as moxy.http checked it.
function _M.request(r)
    local deadline = now() + r.timeout
    for _ = 1, 2 do
        local sock = tcp.new(tcp_live)
        arm(sock, deadline)
        local ok, err = sock:connect(r.host, r.port)
        if not ok then
            return nil, err == "timeout" and "timeout" or "connect", err
        end
        local reused = sock:getreusedtimes() > 0
        local res, rerr, detail, nothing_back = exchange(sock, r, deadline)
        if res then
            if res.reusable and r.keepalive then
                sock:setkeepalive(IDLE_MS, POOL_SIZE)
            else
                sock:close()
            end
            res.reusable = nil
            return res
        end
        sock:close()
        -- A pooled connection the server closed meanwhile: once more on a new one.
        if not (reused and nothing_back and rerr == "closed" and IDEMPOTENT[r.method]) then
            return nil, rerr, detail
        end
    end
    return nil, "closed", "the server closed the connection twice"
end


return _M
