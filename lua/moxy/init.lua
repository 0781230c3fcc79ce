-- moxy: the module scripts require. Everything here goes through moxy.backend.current,
-- set by the live engine or by moxy.test.
local backend = require "moxy.backend"
local cjson = require "cjson"
local cjson_safe = require "cjson.safe"

local concat = table.concat
local error = error
local find = string.find
local format = string.format
local getinfo = debug.getinfo
local getmetatable = getmetatable
local match = string.match
local pairs = pairs
local select = select
local setmetatable = setmetatable
local tonumber = tonumber
local tostring = tostring
local type = type


local _M = { _VERSION = "0.1.0" }


local function engine()
    local b = backend.current
    if not b then
        error("moxy: no engine (running outside moxy? require \"moxy.test\" in specs)", 3)
    end
    return b
end


-- peers ------------------------------------------------------------------------------------

local peer_mt = {
    __tostring = function(p)
        if p.unix then
            return "unix:" .. p.unix
        end
        if find(p.host, ":", 1, true) then
            return "[" .. p.host .. "]:" .. p.port
        end
        return p.host .. ":" .. p.port
    end,
}
_M._PEER_MT = peer_mt

local PEER_KEYS = {
    host = "string", port = "number", unix = "string", tls = "boolean", sni = "string",
    verify = "boolean", alpn = "table", connect_timeout = "number", read_timeout = "number",
    write_timeout = "number", idle_timeout = "number",
}

local TIMEOUTS = { "connect_timeout", "read_timeout", "write_timeout", "idle_timeout" }


local function check_port(port, level)
    if type(port) ~= "number" or port % 1 ~= 0 or port < 1 or port > 65535 then
        error("moxy.peer: port must be an integer in 1..65535, got " .. tostring(port),
              level)
    end
end


-- Makes a peer for upstream_peer: { host =, port = } or { unix = }; timeouts in seconds.
-- TLS upstreams are not supported yet. Phases: all (and load time).
function _M.peer(opts)
    if type(opts) ~= "table" then
        error("bad argument #1 to 'peer' (table expected, got " .. type(opts) .. ")", 2)
    end
    local p = {}
    for k, v in pairs(opts) do
        local want = PEER_KEYS[k]
        if not want then
            error("moxy.peer: unknown option " .. tostring(k), 2)
        end
        if type(v) ~= want then
            error(format("moxy.peer: %s must be a %s, got %s", k, want, type(v)), 2)
        end
        p[k] = v
    end
    if p.tls or p.sni or p.verify ~= nil or p.alpn then
        error("moxy.peer: TLS upstreams are not supported yet", 2)
    end
    if p.unix then
        if p.host or p.port then
            error("moxy.peer: give either unix or host and port, not both", 2)
        end
        if p.unix == "" then
            error("moxy.peer: empty unix socket path", 2)
        end
    else
        if not p.host or p.host == "" then
            error("moxy.peer: host and port (or unix) required", 2)
        end
        check_port(p.port, 3)
        p.host = match(p.host, "^%[(.*)%]$") or p.host
    end
    for i = 1, #TIMEOUTS do
        local v = p[TIMEOUTS[i]]
        if v and v <= 0 then
            error("moxy.peer: " .. TIMEOUTS[i] .. " must be > 0 (seconds)", 2)
        end
    end
    p.tls = false
    return setmetatable(p, peer_mt)
end


-- YAML upstream groups and moxy.balancer (lua/moxy/balancer.lua) ---------------------------

local balancer = require "moxy.balancer"
_M.balancer = { new = balancer.new }
_M.upstream = balancer.upstream
local group_peer_mt = balancer.PEER_MT


-- Turns what upstream_peer returned into a peer: a moxy.peer{} table, "host:port",
-- "[v6]:port" or "unix:/path", or a balancer's selection. Returns nil, reason otherwise.
-- Engines only.
function _M._to_peer(v)
    local tv = type(v)
    if tv == "table" and (getmetatable(v) == peer_mt or getmetatable(v) == group_peer_mt) then
        return v
    end
    if tv ~= "string" then
        return nil, "upstream_peer returned " .. tv
            .. " (expected moxy.peer{...} or a \"host:port\" string)"
    end
    local path = match(v, "^unix:(/.+)$")
    if path then
        return setmetatable({ unix = path, tls = false }, peer_mt)
    end
    local host, port = match(v, "^%[([^%]]+)%]:(%d+)$")
    if not host then
        host, port = match(v, "^([^:%[%]%s]+):(%d+)$")
    end
    port = tonumber(port)
    if not host or port < 1 or port > 65535 then
        return nil, format("upstream_peer returned %q (expected \"host:port\")", v)
    end
    return setmetatable({ host = host, port = port, tls = false }, peer_mt)
end


-- time -------------------------------------------------------------------------------------

-- Cached loop time in seconds (float). Phases: all.
function _M.now()
    return engine().now()
end


-- Suspends the running request handler, timer function or thread for <seconds>.
-- Phases: those that may wait (see docs/lua-api.md), timers, threads.
function _M.sleep(seconds)
    if type(seconds) ~= "number" or seconds < 0 or seconds ~= seconds then
        error("bad argument #1 to 'sleep' (seconds >= 0 expected, got "
              .. tostring(seconds) .. ")", 2)
    end
    return engine().sleep(seconds)
end


-- log --------------------------------------------------------------------------------------

local function logger(level)
    -- Logs the arguments (tostring each, joined), prefixed with the caller's file:line.
    -- Phases: all.
    return function(...)
        local n = select("#", ...)
        local msg
        if n == 1 then
            msg = tostring((...))
        else
            local parts = { ... }
            for i = 1, n do
                parts[i] = tostring(parts[i])
            end
            msg = concat(parts, "", 1, n)
        end
        local info = getinfo(2, "Sl")
        if info then
            msg = info.short_src .. ":" .. (info.currentline or 0) .. ": " .. msg
        end
        engine().log(level, msg)
    end
end


_M.log = {
    debug = logger("debug"),
    info = logger("info"),
    notice = logger("notice"),
    warn = logger("warn"),
    err = logger("err"),
}


-- timers -------------------------------------------------------------------------------------

local timer_mt = { __index = {
    -- Stops a pending timer; true, or nil, "not found" when it already ran or was cancelled.
    cancel = function(self) return engine().timer_cancel(self) end,
} }


local function new_timer(every, delay, fn, ...)
    if type(delay) ~= "number" or delay < 0 or delay ~= delay or (every and delay <= 0) then
        error("bad argument #1 to '" .. (every and "every" or "at") .. "' (seconds "
              .. (every and "> 0" or ">= 0") .. " expected, got " .. tostring(delay) .. ")", 3)
    end
    if type(fn) ~= "function" then
        error("bad argument #2 to '" .. (every and "every" or "at") .. "' (function expected, got "
              .. type(fn) .. ")", 3)
    end
    local t = setmetatable({ fn = fn, args = { ... }, n = select("#", ...), every = every,
                             delay = delay }, timer_mt)
    engine().timer_start(t)
    return t
end


-- moxy.timer.at(delay, fn, ...) / moxy.timer.every(interval, fn, ...): fn(premature, ...)
-- runs in the worker after <delay> seconds (every <interval>), outside any request, in a
-- coroutine of its own: it may wait (moxy.sleep, moxy.tcp, moxy.http, moxy.thread);
-- premature is true when the worker is stopping. Returns a handle with :cancel().
-- Phases: all, and init.
_M.timer = {
    at = function(delay, fn, ...) return new_timer(false, delay, fn, ...) end,
    every = function(interval, fn, ...) return new_timer(true, interval, fn, ...) end,
}


-- json and worker --------------------------------------------------------------------------

-- lua-cjson instances of moxy's own (configuring them does not change require "cjson").
_M.json = cjson.new()
_M.json.safe = cjson_safe.new()


_M.worker = {
    -- This worker's index, 0-based. Phases: all.
    id = function()
        return engine().worker_id()
    end,
    -- Number of workers. Phases: all.
    count = function()
        return engine().worker_count()
    end,
    -- This worker's connections: { connections, idle_connections, idle_buffer_bytes,
    -- free_read_buffers_bytes }. Walks its connection list. Phases: all.
    stats = function()
        return engine().worker_stats()
    end,
}


-- moxy.stats(): counters summed over all workers since start, a fresh table:
-- { requests, connections_accepted, connections_open, upstream_requests, upstream_reused }.
-- Phases: all.
function _M.stats()
    return engine().stats()
end


-- I/O ------------------------------------------------------------------------------------------

-- moxy.tcp(): a yielding TCP / unix socket like ngx.socket.tcp (moxy.tcp; live engine only).
function _M.tcp()
    return engine().tcp()
end


-- moxy.http.request{...}: an HTTP/1.1 client (moxy.http).
_M.http = require "moxy.http"

-- moxy.thread.spawn(fn, ...) / wait(t, ...) / kill(t): light threads (moxy.sched).
do
    local sched = require "moxy.sched"
    _M.thread = { spawn = sched.spawn, wait = sched.wait_threads, kill = sched.kill }
end


-- moxy.shared.dict(name): shared dicts (moxy.shared), required on first use.
_M.shared = setmetatable({}, { __index = function(t, k)
    local v = require("moxy.shared")[k]
    rawset(t, k, v)
    return v
end })


return _M
