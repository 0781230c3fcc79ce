-- moxy.test: run a script's handlers without a server, over the fake backend (moxy.fake).
-- Requiring it installs the fake backend. See LUA_API.md "Testing handlers with busted".
local backend = require "moxy.backend"
local fake = require "moxy.fake"
local moxy = require "moxy"
local session = require "moxy.session"
local sched = require "moxy.sched"

local concat = table.concat
local error = error
local find = string.find
local format = string.format
local getinfo = debug.getinfo
local gsub = string.gsub
local lower = string.lower
local pairs = pairs
local pcall = pcall
local select = select
local setmetatable = setmetatable
local tostring = tostring
local traceback = debug.traceback
local type = type
local unpack = unpack

local to_peer = moxy._to_peer


local _M = { _VERSION = moxy._VERSION }

backend.set(fake.backend)


local REASON = {
    [400] = "Bad Request", [403] = "Forbidden", [404] = "Not Found",
    [500] = "Internal Server Error", [502] = "Bad Gateway", [503] = "Service Unavailable",
    [504] = "Gateway Timeout",
}


local function deep_copy(v)
    if type(v) ~= "table" then
        return v
    end
    local c = {}
    for k, x in pairs(v) do
        c[deep_copy(k)] = deep_copy(x)
    end
    return c
end


-- Header list -> table keyed by lower-case name; a repeated name gives a list of values
-- (the one moxy.http uses for its responses).
local header_map = require("moxy.http").header_map

_M.header_map = header_map


-- Runs <fn> as an entry of the fake loop (a coroutine playing the request's): what it
-- waits on (moxy.sleep, fake moxy.http delays) moves <clock>, and timers that fall due
-- meanwhile run. Returns pcall-like results.
local drive_fn


local function drive(clock, fn, ...)
    fake.clock = clock
    local fe = fake.start_entry(drive_fn, nil, fn, ...)
    if not fe.done and not fake.run_until(function() return fe.done end) then
        return false, "the handler waits on something that never happens"
    end
    if not fe.ok then
        return false, fe.err
    end
    return unpack(fe.res, 1, fe.res.n)
end


-- A handler returned (<ok>, <r>): as live, its moxy.thread threads end before the phase
-- does (waited for; killed when it failed).
local function settle(ok, r)
    local e = sched.current()
    if e and e.nalive > 0 then
        if ok then
            local jok, jerr = pcall(sched.join, e)
            if not jok then
                ok, r = false, jerr
            end
        end
        if not ok then
            sched.kill_all(e)
        end
    end
    return ok, r
end


local function pack(...)
    return { n = select("#", ...), ... }
end


-- The entry of drive(): <fn>(...), then (as live at a phase's end) its threads end too.
drive_fn = function(fn, ...)
    local r = pack(xpcall(fn, traceback, ...))
    local ok, err = settle(r[1], r[2])
    if not ok then
        error(err, 0)
    end
    return unpack(r, 2, r.n)
end


-- Makes a clock starting at <start> (seconds, default 1700000000) and makes it drive
-- moxy.now and moxy.sleep; :advance(seconds) moves it.
function _M.clock(start)
    local c = fake.new_clock(start)
    fake.clock = c
    fake.timers = {}            -- a new timeline: timers, waits and pooled fake sockets of an
    fake.waits = {}             -- earlier clock go
    fake.tcp_pool = {}
    return c
end


-- Loads a script as the server would and runs its init(config); returns the app table.
-- config.shared_dicts = { name = size } declares moxy.shared dicts (see moxy.shared_fake).
function _M.load(path, config, previous)
    if type(path) ~= "string" then
        error("bad argument #1 to 'load' (string expected, got " .. type(path) .. ")", 2)
    end
    backend.set(fake.backend)
    local chunk, err = loadfile(path)
    if not chunk then
        error(err, 2)
    end
    if type(config) == "table" and config.upstreams ~= nil then
        fake.upstreams = deep_copy(config.upstreams)    -- groups for moxy.upstream(name)
    end
    if type(config) == "table" and config.shared_dicts ~= nil then
        require("moxy.shared_fake").declare(config.shared_dicts)   -- made anew, empty
    end
    local app = chunk()
    if type(app) ~= "table" then
        error(path .. " must return a table of handlers, got " .. type(app), 2)
    end
    if app.init ~= nil then
        app.init(deep_copy(config or {}), previous ~= nil and deep_copy(previous) or nil)
    end
    return app
end


-- Builds a fake session: { method = "GET", uri = "/", headers = { name = value } or
-- { { name, value }, ... }, body, client_addr = "127.0.0.1", client_port, server_addr,
-- server_port, version = "1.1", conn_ctx, phase = "request_filter",
-- response = { status, headers, body } (a response already there, for t.phase) }.
-- A 1.1 request without Host gets "host: localhost" first; a body gets content-length.
function _M.request(o)
    o = o or {}
    if type(o) ~= "table" then
        error("bad argument #1 to 'request' (table expected, got " .. type(o) .. ")", 2)
    end
    if o.tls ~= nil then
        error("t.request: tls is not supported yet", 2)
    end
    if o.method ~= nil and (type(o.method) ~= "string"
            or not find(o.method, "^[%w!#$%%&'*+%-.^_`|~]+$")) then
        error("t.request: method must be a token string", 2)
    end
    if o.uri ~= nil and (type(o.uri) ~= "string" or not (find(o.uri, "^/")
            or find(o.uri, "^https?://"))) then
        error("t.request: uri must start with \"/\" or be absolute (http://...)", 2)
    end
    if o.version ~= nil and o.version ~= "1.1" and o.version ~= "1.0" then
        error("t.request: version must be \"1.1\" or \"1.0\"", 2)
    end
    local body = o.body
    if o.body_chunks ~= nil then
        if body ~= nil or type(o.body_chunks) ~= "table" then
            error("t.request: body_chunks must be a list of strings, without body", 2)
        end
        o = deep_copy(o)
        o.body = concat(o.body_chunks)
    elseif body ~= nil and type(body) ~= "string" then
        error("t.request: body must be a string", 2)
    end
    local sp = fake.new_sp(o)
    return session.new(sp, nil, o.conn_ctx, fake.backend)
end


-- Where a handler was defined, for "wrong return type" messages.
local function where(h)
    local info = getinfo(h, "S")
    return info.short_src .. ":" .. info.linedefined
end


local function check_filter_return(r)
    if r ~= nil and r ~= true and r ~= false then
        return type(r) .. " (expected nil, true or false)"
    end
end


local function check_chunk_return(r)
    if r ~= nil and type(r) ~= "string" then
        return type(r) .. " (expected a string or nil)"
    end
end


local function check_ctx_return(r)
    if r ~= nil and type(r) ~= "table" then
        return type(r) .. " (expected a table)"
    end
end


-- fail_to_connect's / error_while_proxy's err, as live: tostring() and :set_retry().
local retry_err_mt = {
    __tostring = function(e) return e.message end,
    __index = { set_retry = function(e, retry) e.retry = retry ~= false end },
}

local IDEMPOTENT = { GET = true, HEAD = true, OPTIONS = true, TRACE = true, PUT = true,
                     DELETE = true }


local function default_upstream()
    return { status = 200, headers = {}, body = "" }
end


local function run_request(app, s, opts, res)
    local sp = s.sp
    local phases, errors, logs = res.phases, res.errors, res.logs
    local fail_open = opts.config and opts.config.lua_error_policy == "fail_open"
    local err                   -- what logging(s, err, ctx) gets
    local ctx = s.ctx

    local function record(line)
        errors[#errors + 1] = line
        local path = session.split_uri(sp.uri)
        logs[#logs + 1] = format("[error] %s (request %d, %s %s)", line, sp.id, sp.method,
                                 path)
        err = err or line
    end

    -- Runs handler <phase> if there is one; returns ok, result (ok true when absent).
    local function run(phase, check, ...)
        local h = app[phase]
        if h == nil then
            return true, nil
        end
        sp.phase = phase
        phases[#phases + 1] = phase
        local ok, r
        if type(h) ~= "function" then
            ok, r = false, "app." .. phase .. " is a " .. type(h) .. ", not a function"
        else
            ok, r = settle(pcall(h, ...))
            if ok and check then
                local bad = check(r)
                if bad then
                    ok, r = false, where(h) .. ": " .. phase .. " returned " .. bad
                end
            end
        end
        if not ok then
            record("lua " .. phase .. " " .. tostring(r))
            if fail_open and phase ~= "logging" then
                return true, nil
            end
            return false, r
        end
        return true, r
    end

    local function error_response(status)
        sp.status = status
        sp.resp_headers = { { "Content-Type", "text/plain" } }
        sp.resp_body = status .. " " .. (REASON[status] or "Error") .. "\n"
        sp.source = "error"
    end

    local ended = false         -- answered without Lua: not proxied, upstream failed

    -- Not proxied (no Lua error): fail_to_proxy may choose the status.
    local function fail_to_proxy(why, status)
        err = err or why
        local ok, r = run("fail_to_proxy", nil, s, why, ctx)
        if ok and type(r) == "number" and r % 1 == 0 and r >= 400 and r <= 599 then
            status = r
        end
        error_response(status)
        ended = true
    end

    local ok, r
    if app.new_ctx ~= nil then
        ok, r = run("new_ctx", check_ctx_return)
        ctx = ok and r or {}
        s.ctx = ctx
    end
    local failed = ok == false

    -- request phases: a response, a failure or an end stops them
    local function go_on()
        return not failed and not ended and not sp.responded
    end

    if not failed then
        failed = not run("early_request_filter", nil, s, ctx)
    end
    if go_on() then
        ok, r = run("request_filter", check_filter_return, s, ctx)
        if not ok then
            failed = true
        elseif r == true and not sp.responded then
            record("lua request_filter " .. where(app.request_filter)
                   .. ": request_filter returned true without s:respond()")
            failed = not fail_open
        end
    end
    local proxy = true
    if go_on() then
        ok, r = run("proxy_upstream_filter", check_filter_return, s, ctx)
        failed = not ok
        proxy = r ~= false
    end
    if go_on() and not proxy then
        fail_to_proxy("proxy_upstream_filter returned false", 502)
    end

    local peer
    if go_on() and proxy then
        if app.upstream_peer == nil then
            -- As the live engine: the service's YAML upstream group (opts.peer names it).
            peer = opts.peer or "(service upstream)"
        else
            ok, r = run("upstream_peer", nil, s, ctx)
            if not ok then
                failed = true
            elseif not sp.responded then
                local why
                peer, why = to_peer(r)
                if peer then
                    -- A balancer's selection keyed by hash_key: the key comes from s now.
                    peer = require("moxy.balancer").resolve(peer, s)
                    why = "the balancer has no backend"
                end
                if not peer then
                    record("lua upstream_peer " .. where(app.upstream_peer) .. ": " .. why)
                    failed = true
                end
            end
        end
    end

    local base_headers = peer and deep_copy(sp.headers)  -- before upstream_request_filter

    if go_on() and peer then
        failed = not run("upstream_request_filter", nil, s, s.req, ctx)
    end

    local tries = 0
    while go_on() and peer do
        tries = tries + 1
        if app.connected_to_upstream then
            -- As live: after upstream_request_filter, once connected (never reused here).
            run("connected_to_upstream", nil, s, false, { addr = tostring(peer) }, ctx)
        end
        local headers = deep_copy(sp.headers)
        local body = sp.body
        if sp.body_set then
            -- As live: s.req:set_body() goes up with its length; the filter does not run.
            fake.h_remove(headers, "transfer-encoding")
            fake.h_set(headers, "content-length", tostring(#body))
        elseif app.request_body_filter and body and body ~= "" then
            -- As live: each chunk, then ("", eos = true); the result goes up chunked.
            local list = sp.body_chunks or { body }
            local parts = {}
            for i = 1, #list + 1 do
                local chunk, eos = list[i] or "", i > #list
                local r
                ok, r = run("request_body_filter", check_chunk_return, s, chunk, eos, ctx)
                if not ok then
                    failed = true
                    break
                end
                parts[#parts + 1] = r == nil and chunk or r
            end
            body = concat(parts)
            fake.h_remove(headers, "content-length")
            fake.h_set(headers, "transfer-encoding", "chunked")
        end
        if failed then
            break
        end
        local req = {
            method = sp.method,
            uri = sp.uri,
            headers = header_map(headers),
            header_list = headers,
            body = body,
        }
        res.upstream = { peer = peer, request = req, tries = tries }
        sp.upstream_info = { addr = tostring(peer), tries = tries, reused = false,
                             connect_ms = 0, bytes_in = 0, bytes_out = body and #body or 0 }
        local phase = sp.phase
        sp.phase = "upstream"
        local up, uerr = (opts.upstream or default_upstream)(deep_copy(req))
        sp.phase = phase
        if up == nil then
            uerr = tostring(uerr or "upstream returned nothing")
            logs[#logs + 1] = "[error] upstream " .. tostring(peer) .. ": " .. uerr
            -- "connect": connecting failed (fail_to_connect); else the exchange broke
            -- after it (error_while_proxy), as live.
            local hook = uerr == "connect" and "fail_to_connect" or "error_while_proxy"
            local retry = false
            if app[hook] and tries < 4 then
                local e = setmetatable({ message = "upstream: " .. uerr }, retry_err_mt)
                local r
                ok, r = run(hook, nil, s, { addr = tostring(peer) }, e, ctx)
                retry = ok and (r == true or e.retry == true)
                if retry and hook == "error_while_proxy" and not (IDEMPOTENT[sp.method]
                        and (not sp.body or sp.body == "" or sp.body_set)) then
                    logs[#logs + 1] = "[info] error_while_proxy asked for a retry, but the "
                        .. "request cannot be resent"
                    retry = false
                end
            end
            if not retry then
                fail_to_proxy("upstream: " .. uerr, uerr == "timeout" and 504 or 502)
                break
            end
            -- As live: upstream_peer again, then upstream_request_filter on the headers
            -- as they were before the first try's filter.
            local why
            ok, r = run("upstream_peer", nil, s, ctx)
            if app.upstream_peer and not ok then
                failed = true
                break
            end
            if app.upstream_peer and not sp.responded then
                peer, why = to_peer(r)
                if peer then
                    -- A balancer's selection keyed by hash_key: the key comes from s now.
                    peer = require("moxy.balancer").resolve(peer, s)
                    why = "the balancer has no backend"
                end
                if not peer then
                    record("lua upstream_peer " .. where(app.upstream_peer) .. ": " .. why)
                    failed = true
                    break
                end
            end
            sp.headers = deep_copy(base_headers)
            if go_on() then
                failed = not run("upstream_request_filter", nil, s, s.req, ctx)
            end
        else
            if type(up) ~= "table" or type(up.status) ~= "number" then
                error("t.run: opts.upstream must return { status = n, headers, body } or "
                      .. "nil, err", 0)
            end
            sp.status = up.status
            sp.resp_headers = fake.header_list(up.headers, "upstream response")
            sp.trailers = up.trailers and fake.header_list(up.trailers, "upstream trailers") or {}
            sp.resp_body = up.body or ""
            sp.source = "upstream"
            local info = sp.upstream_info
            info.status, info.header_ms = up.status, 0
            local rb = sp.resp_body
            info.bytes_in = type(rb) == "table" and #concat(rb) or #rb
            if not run("upstream_response_filter", nil, s, s.resp, ctx) then
                error_response(502)
            end
            break
        end
    end
    if failed and not sp.source then
        error_response(500)
    end

    -- response phases, for every kind of response
    local headers_ok = run("response_filter", nil, s, s.resp, ctx)
    if not headers_ok then
        error_response(500)
    end

    local body = sp.resp_body
    local chunks = type(body) == "table" and body or { body or "" }
    if #chunks == 0 then
        chunks = { "" }
    end
    local filter = headers_ok and sp.source ~= "error" and app.response_body_filter
    local up_filter = headers_ok and sp.source == "upstream" and app.upstream_response_body_filter
    if filter or up_filter then
        fake.h_remove(sp.resp_headers, "content-length")   -- the engine sends it chunked
    end
    local no_body = sp.method == "HEAD" or sp.status == 204 or sp.status == 304
    local out = {}
    -- As the live engine: each chunk with eos = false, then one last call ("", true).
    if not no_body then
        chunks[#chunks + 1] = false
    end
    for i = 1, no_body and 0 or #chunks do
        local chunk, eos = chunks[i], chunks[i] == false
        if eos then
            chunk = ""
        end
        if up_filter then
            -- As live: upstream responses pass upstream_response_body_filter first.
            ok, r = run("upstream_response_body_filter", check_chunk_return, s, chunk, eos, ctx)
            if not ok then
                res.aborted = true
                break
            end
            if r ~= nil then
                chunk = r
            end
        end
        if filter then
            ok, r = run("response_body_filter", check_chunk_return, s, chunk, eos, ctx)
            if not ok then
                res.aborted = true
                break
            end
            if r ~= nil then
                chunk = r
            end
        end
        out[#out + 1] = chunk
    end

    -- As live: the origin's trailers pass response_trailer_filter after the body.
    if sp.trailers and #sp.trailers > 0 and not res.aborted and not no_body then
        if app.response_trailer_filter and
            not run("response_trailer_filter", nil, s, session.trailers(sp, s.b), ctx) then
            res.aborted = true
        end
        res.trailers = header_map(sp.trailers)
    end

    res.status = sp.status
    res.headers = header_map(sp.resp_headers)
    res.body = concat(out)
    res.source = sp.source
    res.err = err
    res.ctx = ctx

    run("logging", nil, s, err, ctx)
    res.log_fields = s.log_fields or {}
end


-- Runs the phases of <app> for session <s> in the live order and returns
-- { status, headers, body, source, upstream = { peer, request }, phases, logs, errors,
-- log_fields, aborted, err, ctx, http }. opts: upstream = fn(req) -> { status, headers,
-- body | { chunks } } or nil, "timeout" | "connect" (default: 200, empty); http = fn(req)
-- -> { status, headers, body, delay } or nil, err, answering moxy.http.request (req: method,
-- url, scheme, host, port, path, headers (lower-case keys), body; res.http lists them);
-- tcp = fn(host, port) -> serve(data) -> reply, closes (moxy.tcp's fake servers; see
-- moxy.tcp_fake; res.tcp lists the connections); clock; config (lua_error_policy =
-- "fail_open" skips a failing phase).
function _M.run(app, s, opts)
    if type(app) ~= "table" then
        error("bad argument #1 to 'run' (app table expected, got " .. type(app) .. ")", 2)
    end
    if type(s) ~= "table" or type(s.sp) ~= "table" or s.b ~= fake.backend then
        error("bad argument #2 to 'run' (session from t.request expected)", 2)
    end
    if s.sp.ran then
        error("t.run: this session already ran; make a new one with t.request", 2)
    end
    session.check_app(app)          -- refused as the live engine refuses it at load
    opts = opts or {}
    if opts.upstream ~= nil and type(opts.upstream) ~= "function" then
        error("t.run: opts.upstream must be a function", 2)
    end
    if opts.http ~= nil and type(opts.http) ~= "function" then
        error("t.run: opts.http must be a function", 2)
    end
    if opts.tcp ~= nil and type(opts.tcp) ~= "function" then
        error("t.run: opts.tcp must be a function", 2)
    end
    backend.set(fake.backend)
    local clock = opts.clock or fake.clock
    fake.clock = clock
    s.sp.ran = true
    s.sp.start_time = clock.now
    local res = { phases = {}, logs = {}, errors = {}, http = {}, tcp = {} }
    local prev = { fake.sink, fake.http, fake.http_calls, fake.tcp, fake.tcp_calls }
    fake.sink, fake.http, fake.http_calls = res.logs, opts.http, res.http
    fake.tcp, fake.tcp_calls = opts.tcp, res.tcp
    local ok, e = drive(clock, run_request, app, s, opts, res)
    fake.sink, fake.http, fake.http_calls, fake.tcp, fake.tcp_calls = unpack(prev, 1, 5)
    if not ok then
        error(e, 0)
    end
    return res
end


local DEFAULT_ARGS = {
    upstream_request_filter = "req",
    upstream_response_filter = "resp",
    response_filter = "resp",
}


-- Runs one handler and returns what it returned (errors propagate). With no extra
-- arguments: (s, ctx), (s, s.req, ctx) or (s, s.resp, ctx), (s, nil, ctx) for logging.
function _M.phase(app, name, s, ...)
    if type(app) ~= "table" or type(name) ~= "string" then
        error("usage: t.phase(app, name, s, ...)", 2)
    end
    local h = app[name]
    if type(h) ~= "function" then
        error("t.phase: the app has no " .. name .. " handler", 2)
    end
    if type(s) ~= "table" or type(s.sp) ~= "table" then
        error("bad argument #3 to 'phase' (session from t.request expected)", 2)
    end
    backend.set(fake.backend)
    s.sp.phase = name
    local res
    if select("#", ...) > 0 then
        res = { drive(fake.clock, h, s, ...) }
    elseif DEFAULT_ARGS[name] then
        res = { drive(fake.clock, h, s, s[DEFAULT_ARGS[name]], s.ctx) }
    elseif name == "logging" then
        res = { drive(fake.clock, h, s, nil, s.ctx) }
    else
        res = { drive(fake.clock, h, s, s.ctx) }
    end
    if not res[1] then
        error(res[2], 0)
    end
    return unpack(res, 2, table.maxn(res))
end


-- busted assertions ------------------------------------------------------------------------

local function describe_res(res)
    if type(res) ~= "table" then
        return "(not a t.run result: " .. tostring(res) .. ")"
    end
    local lines = { "status " .. tostring(res.status) }
    lines[#lines + 1] = "body: " .. gsub(format("%q", tostring(res.body)), "\\\n", "\\n")
    if res.errors and #res.errors > 0 then
        lines[#lines + 1] = "errors:\n  " .. concat(res.errors, "\n  ")
    end
    if res.logs and #res.logs > 0 then
        lines[#lines + 1] = "logs:\n  " .. concat(res.logs, "\n  ")
    end
    return concat(lines, "\n")
end

_M.describe = describe_res


local function register_assertions()

    local has, assert = pcall(require, "luassert")
    local has_say, say = pcall(require, "say")
    if not has or not has_say then
        return
    end

    say:set("assertion.moxy_status.positive", "Expected status %s, got:\n%s")
    say:set("assertion.moxy_status.negative", "Expected a status other than %s, got:\n%s")
    assert:register("assertion", "status", function(_, args)
        local n, res = args[1], args[2]
        local ok = type(res) == "table" and res.status == n
        args[1], args[2] = tostring(n), describe_res(res)
        args.n, args.nofmt = 2, { true, true }
        return ok
    end, "assertion.moxy_status.positive", "assertion.moxy_status.negative")

    say:set("assertion.moxy_header.positive", "Expected header %s, got:\n%s")
    say:set("assertion.moxy_header.negative", "Expected header not %s, got:\n%s")
    assert:register("assertion", "header", function(_, args)
        local name, value, res = args[1], args[2], args[3]
        local got = type(res) == "table" and type(res.headers) == "table"
            and res.headers[lower(tostring(name))]
        if got == false then
            got = nil
        end
        local ok
        if type(value) == "table" and type(got) == "table" then
            ok = #value == #got
            for i = 1, #value do
                ok = ok and value[i] == got[i]
            end
        else
            ok = got == value
        end
        local function show(v)
            if type(v) == "table" then
                return "{ " .. concat(v, ", ") .. " }"
            end
            return tostring(v)
        end
        args[1] = tostring(name) .. ": " .. show(value)
        args[2] = tostring(name) .. ": " .. show(got) .. "\n" .. describe_res(res)
        args.n, args.nofmt = 2, { true, true }
        return ok
    end, "assertion.moxy_header.positive", "assertion.moxy_header.negative")

    say:set("assertion.moxy_logged.positive", "Expected a log line matching %s, got:\n%s")
    say:set("assertion.moxy_logged.negative", "Expected no log line matching %s, got:\n%s")
    assert:register("assertion", "logged", function(_, args)
        local pattern, res = args[1], args[2]
        local ok = false
        if type(res) == "table" and type(pattern) == "string" then
            for _, list in pairs { res.logs or {}, res.errors or {} } do
                for i = 1, #list do
                    if find(list[i], pattern) then
                        ok = true
                    end
                end
            end
        end
        args[1], args[2] = format("%q", tostring(pattern)), describe_res(res)
        args.n, args.nofmt = 2, { true, true }
        return ok
    end, "assertion.moxy_logged.positive", "assertion.moxy_logged.negative")
end


register_assertions()


-- The live half (real processes): t.origin, t.server, t.each_engine (moxy.test_live).
do
    local ok, live = pcall(require, "moxy.test_live")
    if ok then
        _M.origin, _M.server, _M.each_engine = live.origin, live.server, live.each_engine
        _M.live = live
    else
        local why = tostring(live)
        local function missing()
            error("moxy.test: the live helpers need luasocket: " .. why, 2)
        end
        _M.origin, _M.server, _M.each_engine = missing, missing, missing
    end
end


return _M
