-- moxy.engine: the Lua half of the phase engine (the C half is src/lua/vm.c).
-- C loads each service's script with engine.load() and runs every request in a
-- coroutine running engine.body, resumed with (phase, session, service) for the
-- request's first phase and (phase) for the next. The body yields (true, ok, err)
-- when a phase is done; a handler that waits (moxy.sleep, moxy.tcp...) yields through
-- moxy.sched, and C resumes it with the id of the wait that completed. Timer functions
-- run in coroutines of their own (engine.timer_body), so they may wait too.
local ffi = require "ffi"
local bit = require "bit"
local backend = require "moxy.backend"
local live = require "moxy.live"
local cjson = require "cjson.safe"

backend.set(live)

local session = require "moxy.session"
local sched = require "moxy.sched"

local bor, lshift = bit.bor, bit.lshift
local getinfo = debug.getinfo
local traceback = debug.traceback
local error = error
local loadfile = loadfile
local ipairs = ipairs
local pairs = pairs
local setmetatable = setmetatable
local tostring = tostring
local type = type
local unpack = unpack
local xpcall = xpcall
local yield = coroutine.yield
local running = coroutine.running

local PHASES = live.PHASES          -- ids shared with src/lua/vm.h
local REQUEST_FILTER, UPSTREAM_PEER, UPSTREAM_REQUEST_FILTER = 1, 2, 3
local RESPONSE_FILTER, LOGGING, FAIL_TO_PROXY, RESPONSE_BODY_FILTER = 4, 5, 6, 7
local FAIL_TO_CONNECT, EARLY_REQUEST_FILTER, UPSTREAM_RESPONSE_FILTER = 8, 9, 10
local PROXY_UPSTREAM_FILTER, RESPONSE_TRAILER_FILTER, CONNECTED_TO_UPSTREAM = 11, 12, 13
local UPSTREAM_RESPONSE_BODY_FILTER, REQUEST_BODY_FILTER, ERROR_WHILE_PROXY = 14, 15, 16
local io_t = ffi.typeof("mx_lua_io_t")

local apps = {}                     -- service index -> the script's handler table


local _M = {}

-- s.conn_ctx per downstream connection id; C drops an entry when the connection closes.
local conn_ctxs = {}
_M.conn_ctxs = conn_ctxs


function _M.start(worker_id, worker_count)
    _M.worker_id, _M.worker_count = worker_id, worker_count
    _M.warm()
end


-- The worker stops (C): every script's shutdown(), each protected; errors are logged.
function _M.shutdown()
    for _, app in pairs(apps) do
        if type(app.shutdown) == "function" then
            local ok, err = xpcall(app.shutdown, traceback)
            if not ok then
                live.log("err", "lua shutdown " .. tostring(err):match("^[^\n]*"))
            end
        end
    end
end


local function on_error(e)
    return traceback(tostring(e), 2)
end


-- The handler of entry <e> returned (<ok>, <err>): its threads must end before the phase
-- does; they are waited for, or killed when it failed.
local function settle(e, ok, err)
    if e.nalive > 0 then
        if ok then
            ok, err = xpcall(sched.join, on_error, e)
        end
        if not ok then
            sched.kill_all(e)
        end
    end
    return ok, err
end


-- A moxy.timer fired: C runs this in a new coroutine (a task of its own), so fn(premature,
-- ...) may wait; errors go to the log.
function _M.timer_body(id, premature)
    local t = live.timers[id]
    if t == nil then
        return
    end
    if premature or not t.every then
        live.timers[id] = nil
    end
    local e = sched.enter(running(), nil)
    local ok, err = settle(e, xpcall(t.fn, on_error, premature, unpack(t.args, 1, t.n)))
    sched.leave(e)
    if not ok then
        local msg = tostring(err)
        live.log("err", "lua timer " .. (msg:match("^[^\n]*") or msg))
    end
end


local names = {}                    -- service index -> service name (for handover)


-- A reload replaces this VM generation (C): each script's handover() returns plain data
-- (strings, numbers, booleans, tables of them) for the next generation's
-- init(config, previous). Returns it as JSON text keyed by service name, or nil.
function _M.handover()
    local out, any = {}, false
    for svc, app in pairs(apps) do
        if type(app.handover) == "function" then
            local ok, res = xpcall(app.handover, traceback)
            if not ok then
                live.log("err", "lua handover " .. tostring(res):match("^[^\n]*"))
            elseif res ~= nil then
                local json, err = cjson.encode(res)
                if json == nil then
                    live.log("err", "lua handover of service \"" .. tostring(names[svc])
                             .. "\": cannot carry the returned value: " .. tostring(err))
                else
                    out[names[svc]] = json
                    any = true
                end
            end
        end
    end
    if not any then
        return nil
    end
    local parts = {}
    for name, json in pairs(out) do
        parts[#parts + 1] = cjson.encode(name) .. ":" .. json
    end
    return "{" .. table.concat(parts, ",") .. "}"
end


-- Loads the script of service <svc> and runs its init(config, previous), <config_json>
-- being the service's `config:` mapping and <previous_json> what the generation before
-- handed over (keyed by service <name>); returns the bitmask of the phases it handles.
function _M.load(svc, path, config_json, name, previous_json)
    local chunk, err = loadfile(path)
    if chunk == nil then
        error(err, 0)
    end
    local app = chunk()
    if type(app) ~= "table" then
        error(path .. ": a script must return a table of phase handlers, got " .. type(app), 0)
    end
    names[svc] = name
    if type(app.init) == "function" then
        local previous
        if previous_json ~= nil then
            local all = cjson.decode(previous_json)
            previous = type(all) == "table" and all[name] or nil
        end
        app.init(config_json and cjson.decode(config_json) or {}, previous)
    end
    local mask = 0
    session.check_app(app, path)
    for id = REQUEST_FILTER, ERROR_WHILE_PROXY do
        if type(app[PHASES[id]]) == "function" then
            mask = bor(mask, lshift(1, id))
        end
    end
    apps[svc] = app
    return mask
end


-- fail_to_connect's err: its text, and err:set_retry(true) to try another peer.
local err_mt = {
    __tostring = function(e) return e.message or "" end,
    __index = {
        set_retry = function(e, retry) live.set_retry(e.sp, retry ~= false) end,
    },
}


-- "file:line" of a handler, for errors about what it returned.
local function where(fn)
    local info = getinfo(fn, "S")
    return info.short_src .. ":" .. info.linedefined
end


-- Turns upstream_peer's answer into the peer C connects to.
local function set_peer(sp, peer, handler)
    local t = type(peer)
    if t == "string" then
        return live.set_peer(sp, peer)
    end
    if t == "table" then
        if peer.group then
            return live.set_group_peer(sp, peer)
        end
        if peer.upstream then
            return live.set_upstream(sp, peer.upstream)
        end
        if peer.connect_timeout or peer.read_timeout or peer.write_timeout
                or peer.idle_timeout then
            live.set_peer_timeouts(sp, peer.connect_timeout, peer.read_timeout,
                                   peer.write_timeout, peer.idle_timeout)
        end
        if peer.unix then
            return live.set_peer(sp, "unix:" .. peer.unix)
        end
        if peer.host and peer.port then
            local host = tostring(peer.host)
            if host:find(":", 1, true) then
                host = "[" .. host .. "]"
            end
            return live.set_peer(sp, host .. ":" .. tostring(peer.port))
        end
    end
    error(where(handler) .. ": upstream_peer must return moxy.peer{...} or a \"host:port\""
          .. " string, got " .. (t == "table" and "a table without host/port" or t), 0)
end


-- One runner per phase: runners[phase](app, s, ctx) calls the script's handler with the
-- phase's arguments and applies what it returned.
local runners = {}

runners[REQUEST_FILTER] = function(app, s, ctx)
    local handler = app.request_filter
    local r = handler(s, ctx)
    if r == true and not s:responded() then
        error(where(handler) .. ": request_filter returned true without s:respond()", 0)
    end
end

runners[UPSTREAM_PEER] = function(app, s, ctx)
    local handler = app.upstream_peer
    local peer = handler(s, ctx)
    if not s:responded() then
        set_peer(s.sp, peer, handler)
    end
end

runners[UPSTREAM_REQUEST_FILTER] = function(app, s, ctx)
    app.upstream_request_filter(s, s.req, ctx)
end

runners[RESPONSE_FILTER] = function(app, s, ctx)
    app.response_filter(s, s.resp, ctx)
end

runners[UPSTREAM_RESPONSE_FILTER] = function(app, s, ctx)
    app.upstream_response_filter(s, s.resp, ctx)
end

runners[EARLY_REQUEST_FILTER] = function(app, s, ctx)
    app.early_request_filter(s, ctx)
end

runners[CONNECTED_TO_UPSTREAM] = function(app, s, ctx)
    app.connected_to_upstream(s, live.upstream_reused(s.sp), live.peer(s.sp), ctx)
end

runners[RESPONSE_TRAILER_FILTER] = function(app, s, ctx)
    app.response_trailer_filter(s, session.trailers(s.sp, s.b), ctx)
end

runners[PROXY_UPSTREAM_FILTER] = function(app, s, ctx)
    if app.proxy_upstream_filter(s, ctx) == false then
        live.no_proxy(s.sp)
    end
end

runners[LOGGING] = function(app, s, ctx)
    app.logging(s, live.error(s.sp), ctx)
end

local function body_runner(name)
    return function(app, s, ctx)
        local handler = app[name]
        local chunk, eos = live.body_chunk(s.sp)
        local out = handler(s, chunk, eos, ctx)
        if out ~= nil then
            if type(out) ~= "string" then
                error(where(handler) .. ": " .. name .. " must return a string or nil, got "
                      .. type(out), 0)
            end
            live.body_replace(s.sp, out)
        end
    end
end

runners[RESPONSE_BODY_FILTER] = body_runner("response_body_filter")
runners[UPSTREAM_RESPONSE_BODY_FILTER] = body_runner("upstream_response_body_filter")
runners[REQUEST_BODY_FILTER] = body_runner("request_body_filter")

local function retry_runner(name)
    return function(app, s, ctx)
        local sp = s.sp
        local err = setmetatable({ message = live.error(sp), sp = sp }, err_mt)
        local r = app[name](s, live.peer(sp), err, ctx)
        if r == true or r == false then         -- nil keeps the default (failover or not)
            live.set_retry(sp, r)
        end
    end
end

runners[FAIL_TO_CONNECT] = retry_runner("fail_to_connect")
runners[ERROR_WHILE_PROXY] = retry_runner("error_while_proxy")

runners[FAIL_TO_PROXY] = function(app, s, ctx)
    local handler = app.fail_to_proxy
    local status = handler(s, live.error(s.sp), ctx)
    if status ~= nil then
        if type(status) ~= "number" then
            error(where(handler) .. ": fail_to_proxy must return a status number or nil, got "
                  .. type(status), 0)
        end
        live.fail_status(s.sp, status)
    end
end


-- The request's ctx: {} or what the script's new_ctx() returns; on failure nil and the
-- error every phase of the request reports.
local function new_ctx(app)
    local ok, r = xpcall(app.new_ctx, on_error)
    if not ok then
        return nil, r
    elseif type(r) ~= "table" then
        return nil, where(app.new_ctx) .. ": new_ctx must return a table, got " .. type(r)
    end
    return r
end


-- Runs phase <runner> of entry <e>'s request and marks it done in <io>: nil (io.done 1),
-- or the error (io.done 2). When new_ctx failed (<ctx_err>) every phase but logging
-- fails with its error.
local function run(io, runner, app, s, ctx, e, ctx_err)
    local ok, err
    if ctx_err and runner ~= runners[LOGGING] then
        ok, err = false, ctx_err
    else
        ok, err = xpcall(runner, on_error, app, s, ctx)
        if e.nalive > 0 then
            ok, err = settle(e, ok, err)
        end
    end
    if ok then
        io.done = 1
        return nil
    end
    io.done = 2
    return err
end


-- The phases body() runs in this order, each with its own yield; the others (failure
-- hooks, trailers) share one.
local chained = {}
for _, p in ipairs({EARLY_REQUEST_FILTER, REQUEST_FILTER, REQUEST_BODY_FILTER, UPSTREAM_PEER,
                    PROXY_UPSTREAM_FILTER, CONNECTED_TO_UPSTREAM, UPSTREAM_REQUEST_FILTER,
                    UPSTREAM_RESPONSE_FILTER, RESPONSE_FILTER, UPSTREAM_RESPONSE_BODY_FILTER,
                    RESPONSE_BODY_FILTER, LOGGING}) do
    chained[p] = true
end


-- The coroutine body: one request at a time, all its phases, then the next request.
-- C resumes it with no arguments: the phase to run is in the coroutine's io block
-- (mx_lua_io_t, src/lua/vm.h), with io.start set and the service and connection id
-- when a request starts. A phase ends with io.done = 1 and a yield(), or io.done = 2
-- and a yield of the error. The session objects and the sched entry stay with the
-- coroutine, reused for each request: they hold the io block, whose session C sets
-- when a request starts and empties when it ends (no resume, no allocation per
-- request).
--
-- The phases are tested in the order a request meets them, each with its own yield,
-- and the test of the next phase follows that yield. LuaJIT cannot compile a yield: it
-- ends a trace and the one recorded after it (a stitched trace) goes on from there.
-- With one yield for all phases every phase went through one trace that called
-- runners[phase] and then through a chain of side traces, one per handler; here the
-- trace after a phase's yield runs the next phase's code straight (docs/performance.md).
-- A phase met out of this order (a body filter again, a failure hook) loops back.
function _M.body(warm_io)
    local io = warm_io or ffi.new(io_t)
    if warm_io == nil then
        live.register_io(io)
    end
    local s = session.new(io, false, false, live)
    local e = sched.enter(running(), io)
    while true do
        io.start = 0
        local svc, cid = io.svc, io.cid
        local app = apps[svc]
        local conn_ctx = conn_ctxs[cid]
        if conn_ctx == nil then
            conn_ctx = {}
            if cid ~= 0 then
                conn_ctxs[cid] = conn_ctx
            end
        end
        local ctx, ctx_err
        if app.new_ctx then
            ctx, ctx_err = new_ctx(app)
        end
        ctx = ctx or {}
        session.attach(s, ctx, conn_ctx)
        sched.renew(e, io)
        -- After each yield: the next phase of this request, or -1 when C started the
        -- next request (io.start).
        local phase = io.phase
        repeat
            if phase == EARLY_REQUEST_FILTER then
                local err = run(io, runners[EARLY_REQUEST_FILTER], app, s, ctx, e, ctx_err)
                if err == nil then yield() else yield(err) end
                phase = io.start == 0 and io.phase or -1
            end
            if phase == REQUEST_FILTER then
                local err = run(io, runners[REQUEST_FILTER], app, s, ctx, e, ctx_err)
                if err == nil then yield() else yield(err) end
                phase = io.start == 0 and io.phase or -1
            end
            if phase == REQUEST_BODY_FILTER then
                local err = run(io, runners[REQUEST_BODY_FILTER], app, s, ctx, e, ctx_err)
                if err == nil then yield() else yield(err) end
                phase = io.start == 0 and io.phase or -1
            end
            if phase == UPSTREAM_PEER then
                local err = run(io, runners[UPSTREAM_PEER], app, s, ctx, e, ctx_err)
                if err == nil then yield() else yield(err) end
                phase = io.start == 0 and io.phase or -1
            end
            if phase == PROXY_UPSTREAM_FILTER then
                local err = run(io, runners[PROXY_UPSTREAM_FILTER], app, s, ctx, e, ctx_err)
                if err == nil then yield() else yield(err) end
                phase = io.start == 0 and io.phase or -1
            end
            if phase == CONNECTED_TO_UPSTREAM then
                local err = run(io, runners[CONNECTED_TO_UPSTREAM], app, s, ctx, e, ctx_err)
                if err == nil then yield() else yield(err) end
                phase = io.start == 0 and io.phase or -1
            end
            if phase == UPSTREAM_REQUEST_FILTER then
                local err = run(io, runners[UPSTREAM_REQUEST_FILTER], app, s, ctx, e, ctx_err)
                if err == nil then yield() else yield(err) end
                phase = io.start == 0 and io.phase or -1
            end
            if phase == UPSTREAM_RESPONSE_FILTER then
                local err = run(io, runners[UPSTREAM_RESPONSE_FILTER], app, s, ctx, e, ctx_err)
                if err == nil then yield() else yield(err) end
                phase = io.start == 0 and io.phase or -1
            end
            if phase == RESPONSE_FILTER then
                local err = run(io, runners[RESPONSE_FILTER], app, s, ctx, e, ctx_err)
                if err == nil then yield() else yield(err) end
                phase = io.start == 0 and io.phase or -1
            end
            if phase == UPSTREAM_RESPONSE_BODY_FILTER then
                local err = run(io, runners[UPSTREAM_RESPONSE_BODY_FILTER], app, s, ctx, e, ctx_err)
                if err == nil then yield() else yield(err) end
                phase = io.start == 0 and io.phase or -1
            end
            if phase == RESPONSE_BODY_FILTER then
                local err = run(io, runners[RESPONSE_BODY_FILTER], app, s, ctx, e, ctx_err)
                if err == nil then yield() else yield(err) end
                phase = io.start == 0 and io.phase or -1
            end
            if phase == LOGGING then
                local err = run(io, runners[LOGGING], app, s, ctx, e, ctx_err)
                if err == nil then yield() else yield(err) end
                phase = io.start == 0 and io.phase or -1
            end
            if phase > 0 and not chained[phase] then
                local err = run(io, runners[phase], app, s, ctx, e, ctx_err)
                if err == nil then yield() else yield(err) end
                phase = io.start == 0 and io.phase or -1
            end
        until phase < 0
    end
end

-- LuaJIT cannot compile a yield: it ends the trace, and the trace recorded after it (a
-- stitched trace) goes on to the next yield and stitches again. A chain of them ends only
-- where it meets a compiled loop: the body's phase loop. If some function the body calls
-- (run, a session method) gets hot first, a trace of it goes on into the body, and the
-- chain it starts stitches phase after phase, past the loop, which the interpreter no
-- longer reaches, so it never gets its trace: a new trace every few requests, for good
-- (seen in about one worker in fifteen: 6,000 traces and 12 MiB of machine code after a
-- few minutes, 15% more CPU per request; docs/performance.md). So the VM runs the body
-- on a request of its own when it starts, before any real one, until the phase loop has
-- its trace. Returns true when it has, false without the JIT (or when it did not get one).
local WARM_SVC = -1

-- jit.util and the number of the JLOOP bytecode, or nil without them.
local jutil, JLOOP
do
    local ok, vmdef
    ok, jutil = pcall(require, "jit.util")
    if ok then
        ok, vmdef = pcall(require, "jit.vmdef")
    end
    local at = ok and vmdef.bcnames:find("JLOOP", 1, true)
    if at then
        JLOOP = (at - 1) / 6                -- bcnames: 6 characters per bytecode
    else
        jutil = nil
    end
end

-- Whether the body's phase loop has its trace (its LOOP bytecode became JLOOP).
function _M.body_loop_compiled()
    if jutil == nil then
        return false
    end
    local pc = 1
    while true do
        local ins = jutil.funcbc(_M.body, pc)
        if ins == nil then
            return false
        end
        if bit.band(ins, 0xff) == JLOOP then
            return true
        end
        pc = pc + 1
    end
end

function _M.warm()
    if jutil == nil or not jit.status() then
        _M.warmed = false
        return false
    end
    local io = ffi.new(io_t)
    io.svc, io.phase, io.start = WARM_SVC, EARLY_REQUEST_FILTER, 1
    apps[WARM_SVC] = { early_request_filter = function() end }
    local co = coroutine.create(_M.body)
    local done = false
    for _ = 1, 500 do
        if not coroutine.resume(co, io) then
            break
        end
        io.start = 1
        if _M.body_loop_compiled() then
            done = true
            break
        end
    end
    apps[WARM_SVC] = nil
    sched.leave({ co = co })               -- the entry the body made: leave() needs its co
    _M.warmed = done
    return done
end

return _M
