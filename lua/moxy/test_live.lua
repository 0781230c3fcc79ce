-- moxy.test_live: the live half of moxy.test: t.origin, t.server, t.each_engine.
-- Uses luasocket for every socket (all with timeouts) and plain shell commands to start
-- and stop processes, by PID only (never by name). See LUA_API.md "Testing handlers with
-- busted". Summary:
--
-- t.origin(handler) -> { addr, host, port, pid, :requests(), :output(), :stop() }
--   A real HTTP/1.1 origin: a separate `luajit` process (moxy/test_origin.lua; $MOXY_TEST_LUA
--   overrides the interpreter) on 127.0.0.1 and a kernel-picked port. handler(req) ->
--   { status, headers = { name = value | {values} } or { {name, value}, ... },
--     body = string | { chunk, ... } (sent chunked), close = true (Connection: close) };
--   req = { method, uri, version, headers (lower-case keys, repeats as lists), header_list,
--   body (always a string) }. handler is EITHER a function without upvalues (it is
--   string.dump'ed into the other process: globals and require() inside it work, locals of
--   the spec do not; one with upvalues is refused), OR the path of a Lua file returning the
--   handler (that file may keep state in its own locals), OR nil (200 "METHOD URI").
--   :requests() lists what it received, oldest first, same shape as req (also after stop).
--   The process exits on SIGTERM or by itself when the test process is gone.
--
-- t.server{ script, upstream = "host:port", yaml | config, service, env, peer, init,
--           timeout } -> { addr, host, port, pid, dir, conf_file, :request{}, :logs(),
--           :wait_log(pattern, timeout), :output(), :stop() }
--   Starts $MOXY_BIN (default <repo>/build/moxy) in moxy's current directory = ours (so a
--   relative script path is kept as written and error lines name it so). Generated config:
--   threads 1, a free port, grace_period_seconds 0, error_log and upgrade_sock in a temp
--   dir, the script, an upstream group "origin" from `upstream` (the service's default).
--   `config` is deep-merged into that top level, `service` into the service entry. `yaml`
--   instead is a template: ${port} ${addr} ${dir} ${error_log} ${script} ${upstream}.
--   `env` = { NAME = value } for moxy's environment. `peer` = "host:port": a generated
--   wrapper sends every well-formed peer the script's upstream_peer returns there; `init` =
--   the table the wrapper passes to the script's init (the live engine passes {}).
--   Waits at most 5 s (timeout) for the port. :request{ method, uri, headers, body |
--   body_chunks, version, timeout } -> { status, reason, headers (lower-case keys),
--   header_list, body, chunked } on a new connection, 5 s per socket operation.
--   :logs() is the error log (written asynchronously by moxy: use :wait_log). :stop()
--   sends SIGTERM by PID, waits at most 5 s, then SIGKILL; returns true on a clean exit;
--   idempotent; :logs() still works after it. :reload{ script | config | service | yaml }
--   rewrites the config with those options merged over the first ones, sends SIGHUP and
--   returns when the new generation serves (raises with moxy's line when it is rejected).
--
-- t.each_engine(name, script, fn, { origin = handler, config = init's table })
--   describe(name) with it("[fake engine]") and it("[live engine]") (pending without the
--   binary). fn(run, engine) holds the cases; run(req) takes t.request's table. Fake: t.run
--   over t.load(script, config) with the origin handler as opts.upstream. Live: one
--   t.origin(handler) and one t.server{ script, upstream = origin, peer = origin, init =
--   config }; each run(req) runs the fake AND the live request, fails on any difference,
--   and returns the live result (with .fake, and .upstream = { request = what the origin
--   got } when it got one). Compared (t.live.compare): the status; the body; every header
--   of the fake result (lower-case; repeated values as ordered lists) except the framing
--   ones, content-length, transfer-encoding, connection and keep-alive; and whether the
--   upstream was reached. Headers only the live response has (via, date, ...) are not.
--   req.client_addr, conn_ctx and tls are not reproduced live.
local socket = require "socket"

local concat = table.concat
local find = string.find
local format = string.format
local gsub = string.gsub
local lower = string.lower
local sub = string.sub
local match = string.match

local _M = {}

local START_TIMEOUT = 5     -- seconds to wait for a process to listen
local STOP_TIMEOUT = 5      -- seconds to wait for a process to exit after SIGTERM
local IO_TIMEOUT = 5        -- seconds per socket operation of :request


-- helpers ----------------------------------------------------------------------------------

local function shq(s)
    return "'" .. gsub(tostring(s), "'", "'\\''") .. "'"
end


local function read_file(path)
    local f = io.open(path, "rb")
    if not f then
        return nil
    end
    local s = f:read("*a")
    f:close()
    return s
end


local function write_file(path, data)
    local f = assert(io.open(path, "wb"))
    f:write(data)
    f:close()
end


local function sh_out(cmd)
    local p = assert(io.popen(cmd, "r"))
    local out = p:read("*a")
    p:close()
    return (gsub(out, "%s+$", ""))
end


local cwd_cache
local function cwd()
    cwd_cache = cwd_cache or os.getenv("PWD") or sh_out("pwd")
    return cwd_cache
end


local function abspath(p)
    if sub(p, 1, 1) == "/" then
        return p
    end
    return cwd() .. "/" .. gsub(p, "^%./", "")
end


-- The repository root: two levels above the directory holding moxy/test.lua.
local root_cache
function _M.root()
    if root_cache then
        return root_cache
    end
    local path = package.searchpath("moxy.test", package.path)
    if path then
        local root = path:match("^(.*)/lua/moxy/test%.lua$")
            or (path:match("^%.?/?lua/moxy/test%.lua$") and cwd())
        if root then
            root_cache = abspath(root)
            return root_cache
        end
    end
    root_cache = cwd()
    return root_cache
end


-- The moxy binary: $MOXY_BIN, else build/moxy under the repository root.
function _M.binary()
    local bin = os.getenv("MOXY_BIN")
    if bin and bin ~= "" then
        return abspath(bin)
    end
    return _M.root() .. "/build/moxy"
end


-- true when the binary exists and is executable (specs skip the live part otherwise).
function _M.available()
    return os.execute("test -x " .. shq(_M.binary())) == 0
end


local my_pid_cache
local function my_pid()
    if not my_pid_cache then
        local st = read_file("/proc/self/stat")
        my_pid_cache = st and st:match("^(%d+)") or ""
    end
    return my_pid_cache
end


local function tmpdir()
    local d = sh_out("mktemp -d /tmp/moxy-test.XXXXXX")
    if not find(d, "^/tmp/moxy%-test%.") then
        error("moxy.test: mktemp failed: " .. d, 3)
    end
    return d
end


local function rmdir(d)
    if d and find(d, "^/tmp/moxy%-test%.[%w]+$") and not os.getenv("MOXY_TEST_KEEP") then
        os.execute("rm -rf " .. shq(d))
    end
end


-- Starts <cmd> in the background with stdout and stderr to <out>; returns its PID.
local function spawn(cmd, out)
    local p = assert(io.popen(cmd .. " >" .. shq(out) .. " 2>&1 </dev/null & echo $!", "r"))
    local pid = p:read("*l")
    p:close()
    pid = pid and pid:match("^%s*(%d+)%s*$")
    if not pid then
        error("moxy.test: could not start " .. cmd, 3)
    end
    return pid
end


-- Alive: /proc/PID exists and is not a zombie.
local function alive(pid)
    local st = read_file("/proc/" .. pid .. "/stat")
    return st ~= nil and not find(st, "^%d+ %b() [ZX]")
end

_M.alive = alive


local function wait_gone(pid, timeout)
    local deadline = socket.gettime() + timeout
    while alive(pid) do
        if socket.gettime() > deadline then
            return false
        end
        socket.sleep(0.02)
    end
    return true
end


-- SIGTERM, wait (bounded), then SIGKILL. Returns true when the process is gone.
local function terminate(pid, timeout)
    if not alive(pid) then
        return true
    end
    os.execute("kill -TERM " .. pid .. " 2>/dev/null")
    if wait_gone(pid, timeout or STOP_TIMEOUT) then
        return true
    end
    os.execute("kill -KILL " .. pid .. " 2>/dev/null")
    return wait_gone(pid, 2)
end


-- A port nobody listens on now (the kernel's pick; a tiny race with other programs).
local function free_port()
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    return tonumber(port)
end

_M.free_port = free_port


local function wait_listening(host, port, pid, timeout)
    local deadline = socket.gettime() + timeout
    while socket.gettime() < deadline do
        if not alive(pid) then
            return false, "exited"
        end
        local c = socket.tcp()
        c:settimeout(0.2)
        local ok = c:connect(host, port)
        c:close()
        if ok then
            return true
        end
        socket.sleep(0.02)
    end
    return false, "did not listen within " .. timeout .. " s"
end


-- Serializes a plain value (nil, boolean, number, string, table of those) as Lua source.
local function serialize(v)
    local t = type(v)
    if t == "string" then
        return format("%q", v)
    elseif t == "number" or t == "boolean" or t == "nil" then
        return tostring(v)
    elseif t == "table" then
        local parts = {}
        for k, x in pairs(v) do
            parts[#parts + 1] = "[" .. serialize(k) .. "]=" .. serialize(x)
        end
        return "{" .. concat(parts, ",") .. "}"
    end
    error("moxy.test: cannot serialize a " .. t, 3)
end

_M.serialize = serialize


-- YAML flow style (JSON-like) for the generated config.
local function yaml_string(s)
    s = gsub(s, "[%c\"\\]", function(c)
        if c == "\"" then return "\\\"" end
        if c == "\\" then return "\\\\" end
        return format("\\x%02x", c:byte())
    end)
    return "\"" .. s .. "\""
end


local function yaml(v)
    local t = type(v)
    if t == "string" then
        return yaml_string(v)
    elseif t == "number" or t == "boolean" then
        return tostring(v)
    elseif t == "table" then
        if next(v) == nil then
            return "{}"
        end
        if #v > 0 then
            local parts = {}
            for i = 1, #v do
                parts[i] = yaml(v[i])
            end
            return "[" .. concat(parts, ", ") .. "]"
        end
        local keys = {}
        for k in pairs(v) do
            keys[#keys + 1] = tostring(k)
        end
        table.sort(keys)
        local parts = {}
        for i = 1, #keys do
            parts[i] = yaml_string(keys[i]) .. ": " .. yaml(v[keys[i]])
        end
        return "{" .. concat(parts, ", ") .. "}"
    end
    error("moxy.test: cannot write a " .. t .. " in YAML", 3)
end

_M.yaml = yaml


local function merge(dst, src)
    for k, v in pairs(src) do
        if type(v) == "table" and type(dst[k]) == "table" and #v == 0 and next(v) ~= nil then
            merge(dst[k], v)
        else
            dst[k] = v
        end
    end
    return dst
end


-- HTTP client -----------------------------------------------------------------------------

local function header_list_of(h)
    local list = {}
    if h == nil then
        return list
    end
    if #h > 0 then
        for i = 1, #h do
            list[#list + 1] = { h[i][1], tostring(h[i][2]) }
        end
    else
        local keys = {}
        for k in pairs(h) do
            keys[#keys + 1] = k
        end
        table.sort(keys)
        for _, k in ipairs(keys) do
            local v = h[k]
            if type(v) == "table" then
                for i = 1, #v do
                    list[#list + 1] = { k, tostring(v[i]) }
                end
            else
                list[#list + 1] = { k, tostring(v) }
            end
        end
    end
    return list
end


local header_map = require("moxy.http").header_map   -- lower-case keys, lists when repeated


local function has_header(list, name)
    for i = 1, #list do
        if lower(list[i][1]) == name then
            return true
        end
    end
    return false
end


local function recv(c, pattern, what)
    local data, err, partial = c:receive(pattern)
    if not data then
        error(format("moxy.test: reading the response %s: %s (got %q)", what, tostring(err),
                     tostring(partial)), 0)
    end
    return data
end


-- One request on a new connection: { method, uri, headers (map or list), body |
-- body_chunks, version = "1.1" | "1.0", timeout } -> { status, reason, headers (lower-case
-- keys; repeated names give lists), header_list, body }. Errors on timeout or bad framing.
local function http_request(host, port, o)
    o = o or {}
    local method = o.method or "GET"
    local uri = o.uri or "/"
    local version = o.version or "1.1"
    local list = header_list_of(o.headers)
    if not has_header(list, "host") and version == "1.1" then
        table.insert(list, 1, { "host", "localhost" })
    end
    local body = o.body
    local payload = ""
    if o.body_chunks then
        if not has_header(list, "transfer-encoding") then
            list[#list + 1] = { "transfer-encoding", "chunked" }
        end
        local parts = {}
        for i = 1, #o.body_chunks do
            local part = o.body_chunks[i]
            if #part > 0 then
                parts[#parts + 1] = format("%x\r\n%s\r\n", #part, part)
            end
        end
        parts[#parts + 1] = "0\r\n\r\n"
        payload = concat(parts)
    elseif body ~= nil then
        body = tostring(body)
        if not has_header(list, "content-length") and not has_header(list, "transfer-encoding")
                and body ~= "" then
            list[#list + 1] = { "content-length", tostring(#body) }
        end
        payload = body
    end
    local lines = { method .. " " .. uri .. " HTTP/" .. version .. "\r\n" }
    for i = 1, #list do
        lines[#lines + 1] = list[i][1] .. ": " .. list[i][2] .. "\r\n"
    end
    lines[#lines + 1] = "\r\n"
    lines[#lines + 1] = payload

    local c = socket.tcp()
    c:settimeout(o.timeout or IO_TIMEOUT)
    local ok, err = c:connect(host, port)
    if not ok then
        c:close()
        error(format("moxy.test: connect to %s:%s: %s", host, port, tostring(err)), 0)
    end
    local res
    ok, err = pcall(function()
        local sent, serr = c:send(concat(lines))
        if not sent then
            error("moxy.test: sending the request: " .. tostring(serr), 0)
        end
        local status_line
        repeat              -- skip 1xx interim responses
            status_line = recv(c, "*l", "status line")
            local v, code, reason = status_line:match("^HTTP/(%d%.%d) (%d%d%d) ?(.*)$")
            if not v then
                error("moxy.test: bad status line " .. format("%q", status_line), 0)
            end
            res = { status = tonumber(code), reason = reason, version = v, header_list = {} }
            while true do
                local line = recv(c, "*l", "headers")
                if line == "" then
                    break
                end
                local name, value = line:match("^([^:]+):[ \t]*(.-)[ \t]*$")
                if name then
                    res.header_list[#res.header_list + 1] = { name, value }
                end
            end
        until res.status >= 200 or res.status == 101
        res.headers = header_map(res.header_list)
        local h = res.headers
        if method == "HEAD" or res.status == 204 or res.status == 304 or res.status < 200 then
            res.body = ""
        elseif type(h["transfer-encoding"]) == "string"
                and find(lower(h["transfer-encoding"]), "chunked", 1, true) then
            local parts = {}
            while true do
                local size_line = recv(c, "*l", "chunk size")
                local size = tonumber(size_line:match("^%x+"), 16)
                if not size then
                    error("moxy.test: bad chunk size " .. format("%q", size_line), 0)
                end
                if size == 0 then
                    repeat until recv(c, "*l", "trailers") == ""
                    break
                end
                parts[#parts + 1] = recv(c, size, "chunk")
                recv(c, "*l", "chunk end")
            end
            res.body = concat(parts)
            res.chunked = true
        elseif h["content-length"] then
            local n = tonumber(type(h["content-length"]) == "table" and h["content-length"][1]
                               or h["content-length"])
            res.body = n > 0 and recv(c, n, "body") or ""
        else
            res.body = recv(c, "*a", "body (until close)")
        end
    end)
    c:close()
    if not ok then
        error(err, 0)
    end
    return res
end

_M.http_request = http_request


local function split_addr(addr)
    local host, port = tostring(addr):match("^(.*):(%d+)$")
    if not host then
        error("moxy.test: bad address " .. tostring(addr) .. " (want \"host:port\")", 3)
    end
    return host, tonumber(port)
end


-- t.origin ---------------------------------------------------------------------------------

local Origin = {}
Origin.__index = Origin


-- Writes the handler to <path> as something test_origin.lua can loadfile.
local function write_handler(fn, path)
    local t = type(fn)
    if fn == nil then
        write_file(path, "return function(req) return { status = 200, headers = "
                   .. "{ [\"content-type\"] = \"text/plain\" }, body = req.method .. \" \" .. "
                   .. "req.uri } end\n")
        return "file"
    elseif t == "function" then
        local name = debug.getupvalue(fn, 1)
        if name ~= nil then
            error("t.origin: the handler must not use upvalues (it runs in another process; "
                  .. "found upvalue '" .. name .. "'); use globals, require() inside it, "
                  .. "or give a file path", 3)
        end
        write_file(path, string.dump(fn))
        return "dumped"
    elseif t == "string" then
        local chunk, err = loadfile(fn)
        if not chunk then
            error("t.origin: " .. tostring(err), 3)
        end
        write_file(path, "return dofile(" .. format("%q", abspath(fn)) .. ")\n")
        return "file"
    else
        error("bad argument #1 to 'origin' (function or file path expected, got " .. t .. ")", 3)
    end
end


-- Starts an origin: fn(req) -> { status, headers, body | { chunks } } where req is
-- { method, uri, version, headers (lower-case keys), header_list, body }. fn is a function
-- WITHOUT upvalues (it is string.dump'ed into another process) or the path of a Lua file
-- returning such a function (which may use upvalues of its own). nil: answers 200 with
-- "METHOD URI". Returns { addr, host, port, pid, :requests(), :stop() }.
function _M.origin(fn)
    local dir = tmpdir()
    local o = setmetatable({ dir = dir }, Origin)
    local ok, err = pcall(function()
        local hfile = dir .. "/handler.lua"
        local kind = write_handler(fn, hfile)
        o.port_file = dir .. "/port"
        o.requests_file = dir .. "/requests.lua"
        o.out_file = dir .. "/origin.out"
        write_file(o.requests_file, "")
        local script = _M.root() .. "/lua/moxy/test_origin.lua"
        local lua = os.getenv("MOXY_TEST_LUA") or "luajit"
        o.pid = spawn(format("LUA_PATH=%s %s %s %s %s %s %s %s", shq(package.path), shq(lua),
                             shq(script), shq(hfile), shq(o.port_file), shq(o.requests_file),
                             shq(my_pid()), kind), o.out_file)
        local deadline = socket.gettime() + START_TIMEOUT
        while true do
            local port = read_file(o.port_file)
            if port and tonumber(port) then
                o.port = tonumber(port)
                break
            end
            if not alive(o.pid) or socket.gettime() > deadline then
                error("t.origin: the origin did not start: " .. (read_file(o.out_file) or ""), 0)
            end
            socket.sleep(0.01)
        end
    end)
    if not ok then
        o:stop()
        error(err, 2)
    end
    o.host = "127.0.0.1"
    o.addr = "127.0.0.1:" .. o.port
    return o
end


-- Every request the origin received so far, oldest first: { method, uri, version,
-- headers (lower-case keys; repeated names give lists), header_list, body }.
function Origin:requests()
    if self.saved_requests then
        return self.saved_requests
    end
    local text = read_file(self.requests_file) or ""
    local list = {}
    local chunk = assert(loadstring(text, "=origin requests"))
    setfenv(chunk, { R = function(r)
        r.headers = header_map(r.header_list)
        list[#list + 1] = r
    end })
    chunk()
    return list
end


-- What the origin process wrote (handler errors).
function Origin:output()
    return self.out or read_file(self.out_file or "") or ""
end


-- Stops the origin (SIGTERM by PID, bounded wait, then SIGKILL); idempotent.
function Origin:stop()
    if self.pid then
        terminate(self.pid)
        self.pid = nil
    end
    if self.dir then
        self.out = read_file(self.out_file or "") or ""
        local ok, list = pcall(Origin.requests, self)
        self.saved_requests = ok and list or {}
        rmdir(self.dir)
        self.dir = nil
    end
end


-- t.server ---------------------------------------------------------------------------------

local Server = {}
Server.__index = Server


-- A wrapper script: loads <script>, runs init with <init> (when given) and sends every
-- well-formed peer upstream_peer picks ("host:port", moxy.peer{}) to <peer> (when given);
-- anything else it returns is passed on, so the engine's errors stay the same.
local function write_wrapper(path, script, init, peer)
    local src = {
        "-- generated by moxy.test (t.server): wraps " .. script,
        "local app = dofile(" .. format("%q", script) .. ")",
    }
    if init ~= nil then
        src[#src + 1] = "local config = " .. serialize(init)
        src[#src + 1] = "local init = app.init"
        src[#src + 1] = "if init then app.init = function() return init(config) end end"
    end
    if peer ~= nil then
        src[#src + 1] = "local pick, PEER = app.upstream_peer, " .. format("%q", peer)
        src[#src + 1] = "if type(pick) == 'function' then app.upstream_peer = function(s, ctx)"
        src[#src + 1] = "  local p = pick(s, ctx)"
        src[#src + 1] = "  local ok = type(p) == 'string' and p:find(':', 1, true)"
        src[#src + 1] = "    or type(p) == 'table' and (p.unix or (p.host and p.port))"
        src[#src + 1] = "  if ok and not s:responded() then return PEER end"
        src[#src + 1] = "  return p"
        src[#src + 1] = "end end"
    end
    src[#src + 1] = "return app"
    write_file(path, concat(src, "\n") .. "\n")
end


-- The config text for server <srv> started (or reloaded) with options <o>.
local function config_text(srv, o)
    local dir = srv.dir
    local script = o.script
    if script ~= nil and (o.peer ~= nil or o.init ~= nil) then
        srv.nscripts = (srv.nscripts or 0) + 1
        local w = dir .. "/script" .. srv.nscripts .. ".lua"
        write_wrapper(w, script, o.init, o.peer)
        script = w
    end
    local text
    if o.yaml then
        local vars = { port = tostring(srv.port), addr = srv.addr, dir = dir,
                       error_log = srv.error_log, script = script or "",
                       upstream = o.upstream or "" }
        text = gsub(o.yaml, "%${([%w_]+)}", function(k)
            if vars[k] == nil then
                error("t.server: unknown ${" .. k .. "} in yaml", 0)
            end
            return vars[k]
        end)
    else
        local svc = { name = "test", listeners = { srv.addr }, script = script }
        local conf = {
            version = 1, threads = 1, grace_period_seconds = 0,
            graceful_shutdown_timeout_seconds = 2, error_log = srv.error_log,
            upgrade_sock = dir .. "/upgrade.sock",
            services = { svc },
        }
        if o.upstream then
            conf.upstreams = { origin = { backends = { o.upstream } } }
            svc.upstream = "origin"
        end
        if o.service then
            merge(svc, o.service)
        end
        if o.config then
            merge(conf, o.config)
        end
        text = "# generated by moxy.test (t.server)\n" .. yaml(conf) .. "\n"
    end
    return text
end


-- Starts build/moxy (or $MOXY_BIN) on a free port: o = { script, upstream = "host:port",
-- yaml | config, service, env, peer, init, timeout }. See LUA_API.md. Returns
-- { addr, host, port, pid, dir, :request{}, :logs(), :output(), :stop() }.
function _M.server(o)
    if type(o) ~= "table" then
        error("bad argument #1 to 'server' (table expected, got " .. type(o) .. ")", 2)
    end
    local bin = _M.binary()
    if not _M.available() then
        error("t.server: no moxy binary at " .. bin .. " (run make, or set MOXY_BIN)", 2)
    end
    local dir = tmpdir()
    local srv = setmetatable({ dir = dir, host = "127.0.0.1", opts = o, generation = 1 }, Server)
    local ok, err = pcall(function()
        srv.port = free_port()
        srv.addr = "127.0.0.1:" .. srv.port
        srv.error_log = dir .. "/error.log"
        srv.out_file = dir .. "/moxy.out"
        srv.conf_file = dir .. "/moxy.yaml"
        write_file(srv.conf_file, config_text(srv, o))
        local env = {}

        for k, v in pairs(o.env or {}) do
            env[#env + 1] = shq(k .. "=" .. tostring(v))
        end
        local cmd = shq(bin) .. " -c " .. shq(srv.conf_file)
        if #env > 0 then
            cmd = "env " .. concat(env, " ") .. " " .. cmd
        end
        srv.pid = spawn(cmd, srv.out_file)
        -- a watchdog: stops moxy if this test process dies without calling :stop()
        os.execute(format("sh -c 'while kill -0 %s 2>/dev/null && kill -0 %s 2>/dev/null; "
                          .. "do sleep 1; done; kill -TERM %s 2>/dev/null' >/dev/null 2>&1 "
                          .. "</dev/null &", my_pid(), srv.pid, srv.pid))
        local up, why = wait_listening(srv.host, srv.port, srv.pid, o.timeout or START_TIMEOUT)
        if not up then
            error(format("t.server: moxy %s (%s):\n%s%s", why, srv.conf_file,
                         read_file(srv.out_file) or "", read_file(srv.error_log) or ""), 0)
        end
    end)
    if not ok then
        srv:stop()
        error(err, 2)
    end
    return srv
end


-- One request: { method, uri, headers, body | body_chunks, version, timeout } ->
-- { status, headers (lower-case keys), header_list, body }.
function Server:request(o)
    if not self.pid then
        error("t.server: request after stop", 2)
    end
    return http_request(self.host, self.port, o)
end


-- The error log's text so far (kept after :stop()).
function Server:logs()
    if self.saved_logs then
        return self.saved_logs
    end
    return read_file(self.error_log or "") or ""
end


-- The error log is written asynchronously: waits (bounded, default 2 s) until a line
-- matches the Lua pattern <pattern>; returns the log text, or nil and the text.
function Server:wait_log(pattern, timeout)
    local deadline = socket.gettime() + (timeout or 2)
    while true do
        local text = self:logs()
        if find(text, pattern) then
            return text
        end
        if socket.gettime() > deadline or not self.dir then
            return nil, text
        end
        socket.sleep(0.02)
    end
end


-- Reloads the running server in place (SIGHUP) with options <o> merged over the ones it
-- started with (script, config, service, yaml, peer, init); returns once every worker serves
-- the new generation (bounded by o.timeout, default 10 s). A config or script the server
-- rejects raises with moxy's error line; the old generation keeps serving.
function Server:reload(o)
    if type(o) ~= "table" then
        error("bad argument #1 to 'reload' (table expected, got " .. type(o) .. ")", 2)
    end
    if not self.pid then
        error("t.server:reload: the server is stopped", 2)
    end
    local opts = {}
    for k, v in pairs(self.opts) do
        opts[k] = v
    end
    for k, v in pairs(o) do
        opts[k] = v
    end
    write_file(self.conf_file, config_text(self, opts))
    local since = #self:logs()
    os.execute("kill -HUP " .. tonumber(self.pid))
    local want = self.generation + 1
    local deadline = socket.gettime() + (o.timeout or 10)
    while true do
        local text = sub(self:logs(), since + 1)
        if find(text, "generation " .. want .. " serving on all", 1, true) then
            self.generation, self.opts = want, opts
            return self
        end
        local line = match(text, "[^\n]*reload rejected[^\n]*")
            or match(text, "[^\n]*generation " .. want .. " serving on %d+ of[^\n]*")
        if line then
            error("t.server:reload: " .. line, 2)
        end
        if socket.gettime() > deadline then
            error("t.server:reload: no new generation within " .. (o.timeout or 10) .. " s:\n"
                  .. text, 2)
        end
        socket.sleep(0.02)
    end
end


-- What moxy wrote to stdout and stderr.
function Server:output()
    if self.saved_out then
        return self.saved_out
    end
    return read_file(self.out_file or "") or ""
end


-- SIGTERM by PID, wait (bounded) until it is gone, SIGKILL if needed; idempotent.
-- Returns true when the process exited within the grace period.
function Server:stop()
    local clean = true
    if self.pid then
        clean = terminate(self.pid)
        self.stopped_pid, self.pid = self.pid, nil
    end
    if self.dir then
        self.saved_logs = read_file(self.error_log or "") or ""
        self.saved_out = read_file(self.out_file or "") or ""
        rmdir(self.dir)
        self.dir = nil
    end
    return clean
end


-- t.each_engine ----------------------------------------------------------------------------

-- Headers the engines frame for themselves; not compared.
local FRAMING = { ["content-length"] = true, ["transfer-encoding"] = true,
                  connection = true, ["keep-alive"] = true }
_M.NOT_COMPARED = FRAMING


local function show(v)
    if type(v) == "table" then
        local parts = {}
        for i = 1, #v do
            parts[i] = format("%q", tostring(v[i]))
        end
        return "{ " .. concat(parts, ", ") .. " }"
    end
    return v == nil and "(absent)" or format("%q", tostring(v))
end


local function same(a, b)
    if type(a) == "table" and type(b) == "table" then
        if #a ~= #b then
            return false
        end
        for i = 1, #a do
            if a[i] ~= b[i] then
                return false
            end
        end
        return true
    end
    return a == b
end


-- The differences between a fake result and a live one (a list of lines, empty if none).
function _M.compare(fake, live)
    local diffs = {}
    if fake.status ~= live.status then
        diffs[#diffs + 1] = format("status: fake %s, live %s", tostring(fake.status),
                                   tostring(live.status))
    end
    local names = {}
    for k in pairs(fake.headers or {}) do
        if not FRAMING[k] then
            names[#names + 1] = k
        end
    end
    table.sort(names)
    for _, k in ipairs(names) do
        local f, l = fake.headers[k], live.headers[k]
        if not same(f, l) then
            diffs[#diffs + 1] = format("header %s: fake %s, live %s", k, show(f), show(l))
        end
    end
    if fake.body ~= live.body then
        diffs[#diffs + 1] = format("body: fake %s, live %s", show(fake.body), show(live.body))
    end
    local fu, lu = fake.upstream ~= nil, live.upstream ~= nil
    if fu ~= lu then
        diffs[#diffs + 1] = format("reached the upstream: fake %s, live %s", tostring(fu),
                                   tostring(lu))
    end
    return diffs
end


local function describe_req(req)
    local parts = { (req.method or "GET") .. " " .. (req.uri or "/") }
    for _, h in ipairs(header_list_of(req.headers)) do
        parts[#parts + 1] = h[1] .. ": " .. h[2]
    end
    if req.body then
        parts[#parts + 1] = "body " .. format("%q", req.body)
    end
    return concat(parts, "; ")
end


-- Runs the cases of <fn> through both engines. See LUA_API.md.
-- opts: { origin = fn | path (the upstream, for both engines; default "METHOD URI"),
--         config = the table init gets (both engines) }
function _M.each_engine(name, script, fn, opts)
    local t = require "moxy.test"
    if type(name) ~= "string" or type(script) ~= "string" or type(fn) ~= "function" then
        error("usage: t.each_engine(name, script, fn(run [, engine]) [, opts])", 2)
    end
    opts = opts or {}
    local env = getfenv(2)
    local describe = env.describe or _G.describe
    local it = env.it or _G.it
    local pending = env.pending or _G.pending
    local teardown = env.teardown or _G.teardown
    if not (describe and it and pending and teardown) then
        error("t.each_engine must be called from a busted spec", 2)
    end

    -- the origin handler, in this process for the fake engine
    local handler = opts.origin
    if type(handler) == "string" then
        handler = dofile(handler)
    elseif handler == nil then
        handler = function(req)
            return { status = 200, headers = { ["content-type"] = "text/plain" },
                     body = req.method .. " " .. req.uri }
        end
    end

    -- the origin process always gives the handler a body string; so does the fake one
    local function upstream(req)
        req.body = req.body or ""
        return handler(req)
    end

    local function fake_runner()
        local app = t.load(script, opts.config)
        return function(req)
            return t.run(app, t.request(req), { upstream = upstream, config = opts.run_config })
        end
    end

    describe(name, function()
        it("[fake engine]", function()
            fn(fake_runner(), "fake")
        end)

        if not _M.available() then
            pending("[live engine]: no moxy binary at " .. _M.binary())
            return
        end

        local origin, server
        local function stop_all()
            if server then server:stop() end
            if origin then origin:stop() end
            server, origin = nil, nil
        end
        teardown(stop_all)

        it("[live engine]", function()
            origin = t.origin(opts.origin)
            server = t.server { script = script, upstream = origin.addr, peer = origin.addr,
                                init = opts.config or {} }
            local fake = fake_runner()
            local ok, err = pcall(fn, function(req)
                req = req or {}
                local f = fake(req)
                local before = #origin:requests()
                local l = server:request(req)
                local seen = origin:requests()
                if #seen > before then
                    l.upstream = { request = seen[#seen] }
                end
                local diffs = _M.compare(f, l)
                if #diffs > 0 then
                    error(format("%s: the engines differ for %s\n  %s\n-- fake:\n%s\n-- live "
                                 .. "error log:\n%s", script, describe_req(req),
                                 concat(diffs, "\n  "), t.describe(f), server:logs()), 2)
                end
                l.fake = f
                return l
            end, "live")
            stop_all()
            if not ok then
                error(err, 0)
            end
        end)
    end)
end


return _M
