-- moxy.sched: waiting and light threads (moxy.thread), shared by both engines.
--
-- An "entry" is a coroutine its engine resumes from the loop: a request's coroutine or a
-- timer function's (C in the live engine, the fake loop of moxy.fake under moxy.test).
-- A waiting call starts its operation with a fresh wait id, then calls sched.wait(id):
--   * in the entry itself, wait() yields to the engine and takes wake-ups (the ids of
--     finished operations) until its own arrives, resuming the thread each other id
--     belongs to;
--   * in a thread, wait() yields to whoever resumed it (the entry's dispatch, or spawn),
--     and is resumed when its id comes.
-- So every wait of every thread of a request comes back through its entry, and a phase
-- (or a timer function) ends only once all its threads have ended: handlers never leave
-- a wait pending across phases. Threads spawned by a handler that raises are killed.
local backend = require "moxy.backend"

local create = coroutine.create
local resume = coroutine.resume
local running = coroutine.running
local status = coroutine.status
local yield = coroutine.yield
local error = error
local find = string.find
local getinfo = debug.getinfo
local getmetatable = getmetatable
local pairs = pairs
local select = select
local setmetatable = setmetatable
local tostring = tostring
local traceback = debug.traceback
local type = type
local unpack = unpack


local _M = {}

-- What an entry yields to its engine, and a thread to its scheduler, when it waits.
local WAIT = setmetatable({}, { __tostring = function() return "moxy.sched.WAIT" end })
_M.WAIT = WAIT

-- The wait id of s.req:body(): the engine resumes the entry with no value for it.
local BODY = 0
_M.BODY = BODY

-- Weak both ways: an entry record and a thread object point back to their coroutine, and
-- LuaJIT has no ephemerons, so a weak-keyed table alone would keep every coroutine alive.
-- Each record is held strongly where it is needed (the entry's own stack, e.alive).
local waiting = setmetatable({}, { __mode = "v" })   -- wait id -> the coroutine waiting
local entries = setmetatable({}, { __mode = "kv" })  -- coroutine -> its entry record
local threads = setmetatable({}, { __mode = "kv" })  -- thread coroutine -> thread object
local seq = 0
local finish_seq = 0

local thread_mt = { __tostring = function(th) return "moxy.thread (" .. tostring(th.co) .. ")" end }
_M.thread_mt = thread_mt


local function pack(...)
    return { n = select("#", ...), ... }
end


-- A new wait id (unique in this VM).
function _M.id()
    seq = seq + 1
    return seq
end


-- Makes <co> an entry; <sp> is the request's session handle (nil for a timer).
function _M.enter(co, sp)
    local e = { co = co, sp = sp, nalive = 0, alive = nil, gen = 0 }  -- alive: made by spawn
    entries[co] = e
    return e
end


-- Reuses entry <e> (a pooled coroutine's) for a new request: threads of the previous
-- one no longer belong to it.
function _M.renew(e, sp)
    e.sp = sp
    e.gen = e.gen + 1
    e.nalive = 0
    e.alive = nil
    return e
end


function _M.leave(e)
    entries[e.co] = nil
end


-- The entry record of the running coroutine (entry or thread), or nil.
function _M.current()
    local co = running()
    return co and entries[co]
end


-- The stack level of the first caller outside moxy's library (tail calls included), so
-- that an error names the user's file:line.
local function user_level()
    local level = 3
    while true do
        local info = getinfo(level, "S")
        if info == nil then
            return 2
        end
        if info.what ~= "C" and info.what ~= "tail" and not find(info.source, "/moxy/", 1, true) then
            return level - 1
        end
        level = level + 1
    end
end


-- Raises unless the running coroutine may wait: <what> names the call.
function _M.check(what)
    local co = running()
    if co == nil or entries[co] == nil then
        error(what .. " cannot wait here: only request handlers, timer functions and "
              .. "moxy.thread threads may wait (not init, load time or a coroutine of your "
              .. "own)", user_level())
    end
end


local run


-- A thread ended: keep its results, wake the threads waiting on it.
local function finish(th, ok, ...)
    th.done = true
    th.ok = ok
    th.res = pack(...)
    finish_seq = finish_seq + 1
    th.seq = finish_seq
    local e = th.entry
    e.nalive = e.nalive - 1
    e.alive[th] = nil
    if not ok and not th.killed then
        local b = backend.current
        if b then
            b.log("err", "lua thread " .. tostring((...)))
        end
    end
    local ws = th.waiters
    th.waiters = nil
    if ws and not e.killing then
        for co in pairs(ws) do
            local w = threads[co]
            if w and not w.done and w.waiting_threads and status(co) == "suspended" then
                run(w)
            end
        end
    end
end


local function first_line(msg)
    msg = tostring(msg)
    return msg:match("^[^\n]*") or msg
end


-- Resumes thread <th> and handles how it stopped: waiting again, finished, or failed.
run = function(th, ...)
    local co = th.co
    local r = pack(resume(co, ...))
    if not r[1] then
        th.trace = traceback(co, r[2])
        finish(th, false, first_line(r[2]))
    elseif status(co) == "dead" then
        finish(th, true, unpack(r, 2, r.n))
    elseif r[2] ~= WAIT then
        finish(th, false, "moxy.thread: a thread yielded outside moxy's waiting calls "
               .. "(coroutine.yield in a thread is not supported)")
    end
end


-- The entry yields to its engine once and passes the wake it gets to its waiter.
local function step(e)
    local id = yield(WAIT)
    if id == nil then
        id = BODY
    end
    local co = waiting[id]
    if co == nil then
        return                      -- the waiter was killed
    end
    waiting[id] = nil
    if co ~= e.co then
        local th = threads[co]
        if th and not th.done then
            run(th)
        end
    end
end


-- Suspends the running coroutine until its engine completes wait <id>. <cancel>(<arg>)
-- stops the operation if the waiting thread is killed.
function _M.wait(id, cancel, arg)
    local co = running()
    local e = co and entries[co]
    if e == nil then
        if cancel then
            cancel(arg)
        end
        error("cannot wait here: only request handlers, timer functions and moxy.thread "
              .. "threads may wait", 3)
    end
    if waiting[id] ~= nil then
        error("wait id " .. tostring(id) .. " is already waited on", 3)
    end
    waiting[id] = co
    if co == e.co then
        repeat
            step(e)
        until waiting[id] == nil
        return
    end
    local th = threads[co]
    th.wait_id, th.cancel, th.cancel_arg = id, cancel, arg
    yield(WAIT)
    th.wait_id, th.cancel, th.cancel_arg = nil, nil, nil
end


-- True when some coroutine waits for the request body.
function _M.body_waited()
    return waiting[BODY] ~= nil
end


-- moxy.thread.spawn(fn, ...): runs fn(...) in a new thread of the running request or timer
-- at once, until it first waits; returns the thread.
function _M.spawn(fn, ...)
    if type(fn) ~= "function" then
        error("bad argument #1 to 'spawn' (function expected, got " .. type(fn) .. ")", 2)
    end
    local parent = running()
    local e = parent and entries[parent]
    if e == nil then
        error("moxy.thread.spawn() can only be called in a request handler, a timer function "
              .. "or a thread", 2)
    end
    local co = create(fn)
    local th = setmetatable({ co = co, entry = e, gen = e.gen }, thread_mt)
    entries[co] = e
    threads[co] = th
    e.nalive = e.nalive + 1
    local alive = e.alive
    if alive == nil then
        alive = {}
        e.alive = alive
    end
    alive[th] = true
    run(th, ...)
    return th
end


local function check_threads(what, e, co, ...)
    local n = select("#", ...)
    if n == 0 then
        error("bad argument #1 to '" .. what .. "' (moxy.thread expected, got no value)", 3)
    end
    for i = 1, n do
        local th = select(i, ...)
        if getmetatable(th) ~= thread_mt then
            error("bad argument #" .. i .. " to '" .. what .. "' (moxy.thread expected, got "
                  .. type(th) .. ")", 3)
        end
        if th.entry ~= e or th.gen ~= e.gen then
            error("moxy.thread." .. what .. "(): the thread belongs to another request or timer",
                  3)
        end
        if th.co == co then
            error("moxy.thread." .. what .. "(): a thread cannot " .. what .. " itself", 3)
        end
    end
    return n
end


-- moxy.thread.wait(t1, ...): waits until one of the threads has ended and returns its
-- results: true, values... or false, err (it raised, or was killed: "killed"). A thread
-- is waited for once: later waits on it return false, "already waited or killed".
function _M.wait_threads(...)
    local co = running()
    local e = co and entries[co]
    if e == nil then
        error("moxy.thread.wait() can only be called in a request handler, a timer function "
              .. "or a thread", 2)
    end
    local n = check_threads("wait", e, co, ...)
    while true do
        local best
        for i = 1, n do
            local th = select(i, ...)
            if th.done and not th.reaped and (best == nil or th.seq < best.seq) then
                best = th
            end
        end
        if best then
            best.reaped = true
            return best.ok, unpack(best.res, 1, best.res.n)
        end
        local any = false
        for i = 1, n do
            any = any or not (select(i, ...)).done
        end
        if not any then
            return false, "already waited or killed"
        end
        if co == e.co then
            step(e)
        else
            local me = threads[co]
            for i = 1, n do
                local th = select(i, ...)
                if not th.done then
                    th.waiters = th.waiters or {}
                    th.waiters[co] = true
                end
            end
            me.waiting_threads = true
            yield(WAIT)
            me.waiting_threads = nil
            for i = 1, n do
                local ws = (select(i, ...)).waiters
                if ws then
                    ws[co] = nil
                end
            end
        end
    end
end


-- Stops thread <th>: its pending operation is cancelled, it never runs again.
local function cancel_thread(th)
    if th.wait_id ~= nil then
        waiting[th.wait_id] = nil
        if th.cancel then
            th.cancel(th.cancel_arg)
        end
        th.wait_id = nil
    end
    th.killed = true
    finish(th, false, "killed")
end


-- moxy.thread.kill(th): true, or nil, err ("already waited or killed", "running").
function _M.kill(th)
    local co = running()
    local e = co and entries[co]
    if e == nil then
        error("moxy.thread.kill() can only be called in a request handler, a timer function "
              .. "or a thread", 2)
    end
    check_threads("kill", e, co, th)
    if th.done then
        return nil, "already waited or killed"
    end
    if status(th.co) ~= "suspended" then
        return nil, "running"
    end
    cancel_thread(th)
    return true
end


-- The entry's handler returned: wait until all its threads have ended.
function _M.join(e)
    while e.nalive > 0 do
        step(e)
    end
end


-- The entry's handler failed: kill every thread still alive.
function _M.kill_all(e)
    e.killing = true
    for th in pairs(e.alive or {}) do
        cancel_thread(th)
    end
    e.killing = nil
end


return _M
