-- moxy.test_origin: the origin process t.origin() starts (see moxy.test_live).
-- Run as: luajit test_origin.lua HANDLER_FILE PORT_FILE REQUESTS_FILE PARENT_PID [dumped]
-- HANDLER_FILE is Lua source returning function(req) -> { status, headers, body }, or with
-- "dumped" the string.dump of that function itself
-- (body a string, or a list of strings sent chunked). It listens on 127.0.0.1 and a port
-- the kernel picks, writes that port to PORT_FILE, serves HTTP/1.1 (keep-alive,
-- Content-Length and chunked request bodies, several connections at once, one thread)
-- and appends every request to REQUESTS_FILE as a Lua line `R{...}` before answering it.
-- It exits on SIGTERM, or by itself once PARENT_PID is gone.
local socket = require "socket"

local handler_file, port_file, requests_file, parent_pid = arg[1], arg[2], arg[3], arg[4]
local handler_kind = arg[5]     -- "dumped": the file is the handler itself (string.dump)

local concat, format, lower, find, sub = table.concat, string.format, string.lower,
    string.find, string.sub

local REASON = {
    [200] = "OK", [201] = "Created", [204] = "No Content", [301] = "Moved Permanently",
    [302] = "Found", [304] = "Not Modified", [400] = "Bad Request", [401] = "Unauthorized",
    [403] = "Forbidden", [404] = "Not Found", [500] = "Internal Server Error",
    [502] = "Bad Gateway", [503] = "Service Unavailable",
}

local chunk, lerr = loadfile(handler_file)
if not chunk then
    io.stderr:write("test_origin: ", tostring(lerr), "\n")
    os.exit(1)
end
local handler = handler_kind == "dumped" and chunk or chunk()
if type(handler) ~= "function" then
    io.stderr:write("test_origin: ", handler_file, " must return a function\n")
    os.exit(1)
end

local server = assert(socket.bind("127.0.0.1", 0))
server:settimeout(0)
local _, port = server:getsockname()
do
    local tmp = port_file .. ".tmp"
    local f = assert(io.open(tmp, "w"))
    f:write(tostring(port))
    f:close()
    assert(os.rename(tmp, port_file))
end

local log = assert(io.open(requests_file, "a"))


local function parent_alive()
    if not parent_pid or parent_pid == "" then
        return true
    end
    local f = io.open("/proc/" .. parent_pid .. "/stat")
    if not f then
        return false
    end
    local st = f:read("*a") or ""
    f:close()
    return not find(st, "^%d+ %b() [ZX]")
end


local function q(s)
    return format("%q", s)
end


local function record(req)
    local hs = {}
    for i = 1, #req.header_list do
        local h = req.header_list[i]
        hs[#hs + 1] = "{" .. q(h[1]) .. "," .. q(h[2]) .. "}"
    end
    log:write("R{method=", q(req.method), ",uri=", q(req.uri), ",version=", q(req.version),
              ",body=", q(req.body), ",header_list={", concat(hs, ","), "}}\n")
    log:flush()
end


-- Parses one request from <buf>; returns req, rest, or nil (incomplete), or false, why.
local function parse(buf)
    local e = find(buf, "\r\n\r\n", 1, true)
    if not e then
        if #buf > 65536 then
            return false, "header too large"
        end
        return nil
    end
    local head = sub(buf, 1, e - 1)
    local pos = e + 4
    local line_end = find(head, "\r\n", 1, true) or #head + 1
    local method, uri, version = sub(head, 1, line_end - 1):match("^(%S+) (%S+) HTTP/(%d%.%d)$")
    if not method then
        return false, "bad request line"
    end
    local req = { method = method, uri = uri, version = version, headers = {},
                  header_list = {} }
    for name, value in sub(head, line_end + 2):gmatch("([^:\r\n]+):[ \t]*([^\r\n]*)") do
        value = value:gsub("[ \t]+$", "")
        req.header_list[#req.header_list + 1] = { name, value }
        local k = lower(name)
        local old = req.headers[k]
        if old == nil then
            req.headers[k] = value
        elseif type(old) == "table" then
            old[#old + 1] = value
        else
            req.headers[k] = { old, value }
        end
    end
    local te = req.headers["transfer-encoding"]
    if type(te) == "string" and find(lower(te), "chunked", 1, true) then
        local parts = {}
        while true do
            local le = find(buf, "\r\n", pos, true)
            if not le then
                return nil
            end
            local size = tonumber(sub(buf, pos, le - 1):match("^%x+"), 16)
            if not size then
                return false, "bad chunk size"
            end
            pos = le + 2
            if size == 0 then
                -- trailers, up to an empty line
                while true do
                    local te2 = find(buf, "\r\n", pos, true)
                    if not te2 then
                        return nil
                    end
                    local empty = te2 == pos
                    pos = te2 + 2
                    if empty then
                        break
                    end
                end
                break
            end
            if #buf < pos + size + 1 then
                return nil
            end
            parts[#parts + 1] = sub(buf, pos, pos + size - 1)
            pos = pos + size + 2
        end
        req.body = concat(parts)
    else
        local cl = tonumber(type(req.headers["content-length"]) == "string"
                            and req.headers["content-length"] or "0") or 0
        if #buf < pos + cl - 1 then
            return nil
        end
        req.body = sub(buf, pos, pos + cl - 1)
        pos = pos + cl
    end
    return req, sub(buf, pos)
end


local function send_all(c, data)
    c:settimeout(5)
    local ok, err = c:send(data)
    c:settimeout(0)
    return ok, err
end


local function answer(c, req)
    record(req)
    local ok, res = pcall(handler, {
        method = req.method, uri = req.uri, headers = req.headers,
        header_list = req.header_list, body = req.body, version = req.version,
    })
    if not ok then
        io.stderr:write("test_origin: handler error: ", tostring(res), "\n")
        res = { status = 500, headers = { ["content-type"] = "text/plain" },
                body = "origin handler error: " .. tostring(res) .. "\n" }
    elseif type(res) ~= "table" then
        res = { status = 500, body = "origin handler returned " .. type(res) .. "\n" }
    end
    local status = tonumber(res.status) or 200
    local lines = { format("HTTP/1.1 %d %s\r\n", status, REASON[status] or "Status") }
    local has = {}
    local hdrs = res.headers or {}
    local function add(k, v)
        has[lower(k)] = true
        lines[#lines + 1] = k .. ": " .. tostring(v) .. "\r\n"
    end
    if #hdrs > 0 then
        for i = 1, #hdrs do
            add(hdrs[i][1], hdrs[i][2])
        end
    else
        for k, v in pairs(hdrs) do
            if type(v) == "table" then
                for i = 1, #v do
                    add(k, v[i])
                end
            else
                add(k, v)
            end
        end
    end
    local body = res.body or ""
    local no_body = req.method == "HEAD" or status == 204 or status == 304
        or (status >= 100 and status < 200)
    local close = lower(tostring(req.headers.connection or "")) == "close"
        or (req.version == "1.0" and lower(tostring(req.headers.connection or ""))
            ~= "keep-alive")
        or res.close == true
    if close and not has.connection then
        add("Connection", "close")
    end
    local payload
    if type(body) == "table" then
        if not has["transfer-encoding"] and not no_body then
            add("Transfer-Encoding", "chunked")
        end
        local parts = {}
        for i = 1, #body do
            local part = tostring(body[i])
            if #part > 0 then
                parts[#parts + 1] = format("%x\r\n%s\r\n", #part, part)
            end
        end
        parts[#parts + 1] = "0\r\n\r\n"
        payload = concat(parts)
    else
        body = tostring(body)
        if not has["content-length"] and status ~= 204 and status ~= 304 then
            add("Content-Length", #body)
        end
        payload = body
    end
    if no_body then
        payload = ""
    end
    lines[#lines + 1] = "\r\n"
    lines[#lines + 1] = payload
    local sent = send_all(c, concat(lines))
    return sent and not close
end


local conns = {}        -- socket -> { buf = "" }
local list = {}         -- sockets to select on


local function rebuild()
    list = { server }
    for c in pairs(conns) do
        list[#list + 1] = c
    end
end


local function drop(c)
    conns[c] = nil
    c:close()
    rebuild()
end

rebuild()
local last_check = socket.gettime()
while true do
    local readable = socket.select(list, nil, 1)
    for _, s in ipairs(readable or {}) do
        if s == server then
            local c = server:accept()
            if c then
                c:settimeout(0)
                c:setoption("tcp-nodelay", true)
                conns[c] = { buf = "" }
                rebuild()
            end
        elseif conns[s] then
            local st = conns[s]
            local data, err, partial = s:receive(65536)
            data = data or partial
            if data and #data > 0 then
                st.buf = st.buf .. data
            end
            local closed = err == "closed"
            local alive = true
            while alive do
                local req, rest = parse(st.buf)
                if req == nil then
                    break
                elseif req == false then
                    send_all(s, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                             .. "Connection: close\r\n\r\n")
                    alive = false
                    break
                end
                st.buf = rest
                alive = answer(s, req)
            end
            if closed or not alive then
                drop(s)
            end
        end
    end
    local now = socket.gettime()
    if now - last_check > 1 then
        last_check = now
        if not parent_alive() then
            os.exit(0)
        end
    end
end
