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
local RELEASE = 17
local session_ptr = ffi.typeof("mx_session_t *")

local apps = {}                     -- service index -> the script's handler table

-- The backend of a session whose request ended: every call raises.
local ENDED = setmetatable({}, { __index = function(_, name)
    return function()
        error("s:" .. name .. "(): the request this session belonged to has ended", 2)
    end
end })

local _M = {}

-- s.conn_ctx per downstream connection id; C drops an entry when the connection closes.
local conn_ctxs = {}
_M.conn_ctxs = conn_ctxs


function _M.start(worker_id, worker_count)
    _M.worker_id, _M.worker_count = worker_id, worker_count
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


local function run(app, phase, s, ctx)
    local name = PHASES[phase]
    local handler = app[name]
    if phase == REQUEST_FILTER then
        local r = handler(s, ctx)
        if r == true and not s:responded() then
            error(where(handler) .. ": request_filter returned true without s:respond()", 0)
        end
    elseif phase == UPSTREAM_PEER then
        local peer = handler(s, ctx)
        if not s:responded() then
            set_peer(s.sp, peer, handler)
        end
    elseif phase == UPSTREAM_REQUEST_FILTER then
        handler(s, s.req, ctx)
    elseif phase == RESPONSE_FILTER or phase == UPSTREAM_RESPONSE_FILTER then
        handler(s, s.resp, ctx)
    elseif phase == EARLY_REQUEST_FILTER then
        handler(s, ctx)
    elseif phase == CONNECTED_TO_UPSTREAM then
        handler(s, live.upstream_reused(s.sp), live.peer(s.sp), ctx)
    elseif phase == RESPONSE_TRAILER_FILTER then
        handler(s, session.trailers(s.sp, s.b), ctx)
    elseif phase == PROXY_UPSTREAM_FILTER then
        if handler(s, ctx) == false then
            live.no_proxy(s.sp)
        end
    elseif phase == LOGGING then
        handler(s, live.error(s.sp), ctx)
    elseif phase == RESPONSE_BODY_FILTER or phase == UPSTREAM_RESPONSE_BODY_FILTER
            or phase == REQUEST_BODY_FILTER then
        local chunk, eos = live.body_chunk(s.sp)
        local out = handler(s, chunk, eos, ctx)
        if out ~= nil then
            if type(out) ~= "string" then
                error(where(handler) .. ": " .. name .. " must return a string or nil, got "
                      .. type(out), 0)
            end
            live.body_replace(s.sp, out)
        end
    elseif phase == FAIL_TO_CONNECT or phase == ERROR_WHILE_PROXY then
        local err = setmetatable({ message = live.error(s.sp), sp = s.sp }, err_mt)
        local r = handler(s, live.peer(s.sp), err, ctx)
        if r == true or r == false then         -- nil keeps the default (failover or not)
            live.set_retry(s.sp, r)
        end
    elseif phase == FAIL_TO_PROXY then
        local status = handler(s, live.error(s.sp), ctx)
        if status ~= nil then
            if type(status) ~= "number" then
                error(where(handler) .. ": fail_to_proxy must return a status number or nil, got "
                      .. type(status), 0)
            end
            live.fail_status(s.sp, status)
        end
    end
end


-- The coroutine body: one request at a time, all its phases, then pooled again.
function _M.body(phase, p, svc)
    local e                         -- this coroutine's sched entry, renewed per request
    while true do
        local app = apps[svc]
        local sp = ffi.cast(session_ptr, p)
        local ctx, ctx_err = {}, nil
        if app.new_ctx then
            local ok, r = xpcall(app.new_ctx, on_error)
            if not ok then
                ctx_err = r             -- every phase of this request reports it
            elseif type(r) ~= "table" then
                ctx_err = where(app.new_ctx) .. ": new_ctx must return a table, got " .. type(r)
            else
                ctx = r
            end
        end
        local cid = live.conn_id(sp)
        local conn_ctx = conn_ctxs[cid]
        if conn_ctx == nil then
            conn_ctx = {}
            conn_ctxs[cid] = conn_ctx
        end
        local s = session.new(sp, ctx, conn_ctx)
        e = e and sched.renew(e, sp) or sched.enter(running(), sp)
        while phase ~= RELEASE do
            local ok, err
            if ctx_err and phase ~= LOGGING then
                ok, err = false, ctx_err
            else
                ok, err = settle(e, xpcall(run, on_error, app, phase, s, ctx))
            end
            phase = yield(true, ok, err)
        end
        e.sp = nil                  -- the entry stays with this pooled coroutine
        -- A session kept past its request must not reach freed C memory.
        s.b, s.req.b, s.resp.b = ENDED, ENDED, ENDED
        phase, p, svc = yield(true, true, nil)
    end
end


return _M
