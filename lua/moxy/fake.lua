-- moxy.fake: the backend contract in plain Lua, for moxy.test. A session handle `sp` is a
-- table made by fake.new_sp{...}; headers are lists of { name, value } in wire order.
--
-- Time: fake.clock (a t.clock) drives now(). The fake has a loop of its own, like the
-- live worker's: a request run by t.run / t.phase, and each moxy.timer function, is an
-- "entry" coroutine (moxy.sched); moxy.sleep and a fake moxy.http call with a delay
-- register a wait due at some clock time, and the loop (run_until) moves the clock to the
-- earliest wait or timer and resumes its entry. So parallel moxy.thread threads overlap in
-- fake time as they would live, and nothing ever waits for real time. Outside any entry
-- moxy.sleep advances the clock directly.
local sched = require "moxy.sched"

local co_create = coroutine.create
local co_resume = coroutine.resume
local co_status = coroutine.status
local select = select
local error = error
local lower = string.lower
local ipairs = ipairs
local pairs = pairs
local pcall = pcall
local unpack = unpack
local remove = table.remove
local setmetatable = setmetatable
local sort = table.sort
local tostring = tostring
local type = type
local traceback = debug.traceback


local _M = {}


local LEVELS = { debug = true, info = true, notice = true, warn = true, err = true }

-- clock ------------------------------------------------------------------------------------

local Clock = {}
local clock_mt = { __index = Clock }


-- Moves the clock forward by <seconds>, running what falls due on the way (moxy.timer
-- functions, waits of entries), in time order, each with the clock at its due time.
function Clock.advance(self, seconds)
    if type(seconds) ~= "number" or seconds < 0 then
        error("bad argument #1 to 'advance' (seconds >= 0 expected)", 2)
    end
    local target = self.now + seconds
    _M.run_until(nil, target)
    self.now = target
    return self.now
end


-- the fake loop -------------------------------------------------------------------------------

local function pack(...)
    return { n = select("#", ...), ... }
end


local fe_of = setmetatable({}, { __mode = "kv" })   -- sched entry record -> fake entry


-- Resumes fake entry <fe> and records how it stopped: waiting, finished or failed.
local function fe_resume(fe, ...)
    local r = pack(co_resume(fe.co, ...))
    if not r[1] then
        fe.done, fe.ok, fe.err = true, false, traceback(fe.co, r[2])
    elseif co_status(fe.co) == "dead" then
        fe.done, fe.ok, fe.res = true, true, r
    elseif r[2] ~= sched.WAIT then
        fe.done, fe.ok = true, false
        fe.err = "a handler yielded " .. tostring(r[2])
            .. " (only moxy's waiting calls may yield)"
    elseif fe.nwaits == 0 then
        fe.done, fe.ok = true, false
        fe.err = "a handler waits on nothing that can end (moxy.thread.wait on threads that "
            .. "wait on each other?)"
    end
    if fe.done then
        sched.leave(fe.e)
        if fe.on_done then
            fe.on_done(fe)
        end
    end
end


-- Starts <fn>(...) as an entry of the fake loop (a request's or a timer's coroutine) and
-- runs it until it first waits or ends. Returns the entry: .done, .ok, .res (pcall-like
-- packed results), .err (with a traceback).
function _M.start_entry(fn, on_done, ...)
    local co = co_create(fn)
    local fe = { co = co, nwaits = 0, on_done = on_done }
    fe.e = sched.enter(co, nil)
    fe_of[fe.e] = fe
    fe_resume(fe, ...)
    return fe
end


-- The earliest wait or timer due at or before <limit> (nil: any): "wait", id or "timer", t.
local function earliest(limit)
    local kind, x, due
    for id, w in pairs(_M.waits) do
        if due == nil or w.due < due or (w.due == due and kind == "wait" and id < x) then
            kind, x, due = "wait", id, w.due
        end
    end
    for t in pairs(_M.timers) do
        if due == nil or t.due < due then
            kind, x, due = "timer", t, t.due
        end
    end
    if due == nil or (limit ~= nil and due > limit) then
        return nil
    end
    return kind, x, due
end


local function timer_done(fe)
    if not fe.ok then
        local sink = _M.sink
        sink[#sink + 1] = "[err] lua timer " .. (tostring(fe.err):match("^[^\n]*") or "")
    end
end


-- The timer function in its entry: it may wait; its threads end with it.
local function timer_body(t)
    local e = sched.current()
    local ok, err = pcall(t.fn, false, unpack(t.args, 1, t.n))
    if ok and e.nalive > 0 then
        ok, err = pcall(sched.join, e)
    end
    if not ok then
        sched.kill_all(e)
        error(err, 0)
    end
end


-- Runs the loop until done() is true (nil: never) or nothing is due at or before <limit>
-- (nil: no limit). Returns true when done() became true.
function _M.run_until(done, limit)
    local clock = _M.clock
    while not (done and done()) do
        local kind, x, due = earliest(limit)
        if kind == nil then
            return false
        end
        if due > clock.now then
            clock.now = due
        end
        if kind == "wait" then
            local w = _M.waits[x]
            _M.waits[x] = nil
            w.fe.nwaits = w.fe.nwaits - 1
            fe_resume(w.fe, x)
        else
            if x.every then
                x.due = x.due + x.delay
            else
                _M.timers[x] = nil
            end
            _M.start_entry(timer_body, timer_done, x)
        end
    end
    return true
end


local function wait_cancel(id)
    local w = _M.waits[id]
    if w then
        _M.waits[id] = nil
        w.fe.nwaits = w.fe.nwaits - 1
    end
end


-- Waits <seconds> of fake time in the running entry or thread (returns false outside any:
-- the caller advances the clock itself).
function _M.wait_for(seconds)
    local e = sched.current()
    local fe = e and fe_of[e]
    if fe == nil then
        return false
    end
    local id = sched.id()
    _M.waits[id] = { due = _M.clock.now + seconds, fe = fe }
    fe.nwaits = fe.nwaits + 1
    sched.wait(id, wait_cancel, id)
    return true
end


function _M.new_clock(start)
    if start ~= nil and type(start) ~= "number" then
        error("bad argument #1 to 'clock' (number expected, got " .. type(start) .. ")", 3)
    end
    return setmetatable({ now = start or 1700000000.0 }, clock_mt)
end


_M.clock = _M.new_clock()
_M.timers = {}          -- pending moxy.timer handles (set of tables)
_M.waits = {}           -- wait id -> { due = clock time, fe = fake entry }
_M.http = nil           -- t.run's opts.http while it runs
_M.tcp = nil            -- t.run's opts.tcp while it runs
_M.tcp_pool = {}        -- moxy.tcp keepalive pool: key -> idle fake connections
_M.upstreams = {}       -- YAML-like groups for moxy.upstream(): name -> { "host:port" | { address, weight } }
_M.logs = {}            -- log lines written outside a run (t.run collects into res.logs)
_M.sink = _M.logs
_M.worker = { id = 0, count = 1 }
_M.stats = { requests = 0, connections_accepted = 0, connections_open = 0,
             upstream_requests = 0, upstream_reused = 0 }
_M.worker_stats = { connections = 0, idle_connections = 0, idle_buffer_bytes = 0,
                    free_read_buffers_bytes = 0 }


-- header lists -----------------------------------------------------------------------------

local function h_get(list, name)
    name = lower(name)
    for i = 1, #list do
        local f = list[i]
        if lower(f[1]) == name then
            return f[2]
        end
    end
    return nil
end


local function h_remove(list, name, from)
    name = lower(name)
    local i = from or 1
    while i <= #list do
        if lower(list[i][1]) == name then
            remove(list, i)
        else
            i = i + 1
        end
    end
end


-- Replaces all fields <name>: the first keeps its position and takes the new name case.
local function h_set(list, name, value)
    local lname = lower(name)
    for i = 1, #list do
        if lower(list[i][1]) == lname then
            list[i] = { name, value }
            h_remove(list, name, i + 1)
            return
        end
    end
    list[#list + 1] = { name, value }
end


local function h_add(list, name, value)
    list[#list + 1] = { name, value }
end


-- Turns { name = value | {values} } (names sorted, for a stable order) or a list of
-- { name, value } into a header list.
function _M.header_list(h, what)
    local list = {}
    if h == nil then
        return list
    end
    if type(h) ~= "table" then
        error(what .. ": headers must be a table", 3)
    end
    if h[1] ~= nil then
        for i = 1, #h do
            local f = h[i]
            if type(f) ~= "table" or type(f[1]) ~= "string" then
                error(what .. ": headers list entries must be { name, value }", 3)
            end
            list[i] = { f[1], tostring(f[2]) }
        end
        return list
    end
    local names = {}
    for k in pairs(h) do
        if type(k) ~= "string" then
            error(what .. ": header names must be strings", 3)
        end
        names[#names + 1] = k
    end
    sort(names)
    for i = 1, #names do
        local k = names[i]
        local v = h[k]
        if type(v) == "table" then
            for j = 1, #v do
                list[#list + 1] = { k, tostring(v[j]) }
            end
        else
            list[#list + 1] = { k, tostring(v) }
        end
    end
    return list
end


_M.h_get = h_get
_M.h_set = h_set
_M.h_add = h_add
_M.h_remove = h_remove


-- the backend ------------------------------------------------------------------------------

local B = { name = "fake" }
_M.backend = B


function B.req_method(sp) return sp.method end
function B.req_uri(sp) return sp.uri end
function B.req_version(sp) return sp.version end
function B.req_scheme(sp) return "http" end
function B.req_header(sp, name) return h_get(sp.headers, name) end
function B.req_header_count(sp) return #sp.headers end


function B.req_header_at(sp, i)
    local f = sp.headers[i]
    if f then
        return f[1], f[2]
    end
end


function B.req_set_header(sp, name, value) h_set(sp.headers, name, value) end
function B.req_add_header(sp, name, value) h_add(sp.headers, name, value) end
function B.req_remove_header(sp, name) h_remove(sp.headers, name) end
function B.req_set_uri(sp, uri) sp.uri = uri end
function B.req_set_method(sp, method) sp.method = method end
function B.req_body(sp, max)
    local body = sp.body or ""
    if #body > max then return nil, "too_large" end
    return body
end
-- s.req:body_chunks(): the rest of the chunk (of t.request's body_chunks) holding <pos>.
function B.req_body_chunk(sp, pos)
    local body = sp.body or ""
    if pos >= #body then return nil end
    local list = sp.body_chunks or { body }
    local at = 0
    for i = 1, #list do
        local n = #list[i]
        if pos < at + n then
            return list[i]:sub(pos - at + 1)
        end
        at = at + n
    end
    return body:sub(pos + 1)
end
function B.req_set_body(sp, body)
    sp.body = body
    sp.body_chunks = nil
    sp.body_set = true
end
-- s.resp:read_body(): the whole body, which then goes on as one chunk (as live).
function B.resp_read_body(sp, max)
    if sp.source == "error" then return "" end
    local body = sp.resp_body or ""
    if type(body) == "table" then body = table.concat(body) end
    if #body > max then return nil, "too_large" end
    sp.resp_body = body
    return body
end
function B.resp_set_body(sp, body)
    if sp.source == "error" then
        error("s.resp:set_body(): moxy's error page cannot be replaced (use fail_to_proxy)", 3)
    end
    sp.resp_body = body
    h_remove(sp.resp_headers, "transfer-encoding")
    if sp.status ~= 204 and sp.status ~= 304 then
        h_set(sp.resp_headers, "content-length", tostring(#body))
    end
end
function B.downstream_reused(sp) return sp.downstream_reused == true end
function B.upstream_info(sp)
    local u = sp.upstream_info
    if u == nil then return nil end
    local copy = {}
    for k, v in pairs(u) do copy[k] = v end
    return copy
end
function B.resp_status(sp) return sp.status end
function B.resp_set_status(sp, n) sp.status = n end
function B.resp_header(sp, name) return h_get(sp.resp_headers, name) end
function B.resp_header_count(sp) return #sp.resp_headers end


function B.resp_header_at(sp, i)
    local f = sp.resp_headers[i]
    if f then
        return f[1], f[2]
    end
end


function B.trailer_header(sp, name) return h_get(sp.trailers, name) end
function B.trailer_header_count(sp) return #sp.trailers end
function B.trailer_header_at(sp, i)
    local f = sp.trailers[i]
    if f then return f[1], f[2] end
end
function B.trailer_set_header(sp, name, value) h_set(sp.trailers, name, value) end
function B.trailer_add_header(sp, name, value) h_add(sp.trailers, name, value) end
function B.trailer_remove_header(sp, name) h_remove(sp.trailers, name) end
function B.resp_set_header(sp, name, value) h_set(sp.resp_headers, name, value) end
function B.resp_add_header(sp, name, value) h_add(sp.resp_headers, name, value) end
function B.resp_remove_header(sp, name) h_remove(sp.resp_headers, name) end


-- headers: name -> value or list of values (already checked by moxy.session).
function B.respond(sp, status, body, headers)
    sp.status = status
    sp.resp_headers = _M.header_list(headers, "respond")
    sp.resp_body = body or ""
    sp.source = "local"
    sp.responded = true
end


function B.responded(sp) return sp.responded end
function B.resp_source(sp) return sp.source end
function B.client_addr(sp) return sp.client_addr end
function B.client_port(sp) return sp.client_port end
function B.server_addr(sp) return sp.server_addr end
function B.server_port(sp) return sp.server_port end
function B.id(sp) return sp.id end
function B.start_time(sp) return sp.start_time end
function B.phase(sp) return sp.phase end
function B.now() return _M.clock.now end
for k, v in pairs(require "moxy.lb_fake") do
    B[k] = v                -- load balancing: group_upstream, group_new, group_select...
end
function B.timer_start(t)
    t.due = _M.clock.now + t.delay
    _M.timers[t] = true
end
function B.timer_cancel(t)
    if not _M.timers[t] then return nil, "not found" end
    _M.timers[t] = nil
    return true
end
function B.worker_id() return _M.worker.id end
function B.worker_count() return _M.worker.count end
-- moxy.stats() / moxy.worker.stats(): copies of fake.stats / fake.worker_stats, which a spec
-- sets to what it wants the script to see (nothing here counts).
local function copy(t)
    local r = {}
    for k, v in pairs(t) do r[k] = v end
    return r
end
function B.stats() return copy(_M.stats) end
function B.worker_stats() return copy(_M.worker_stats) end


function B.sleep(seconds)
    if not _M.wait_for(seconds) then
        _M.clock:advance(seconds)
    end
end


-- moxy.tcp() over moxy.tcp_fake: t.run's opts.tcp plays the servers.
function B.tcp()
    return require("moxy.tcp").new(require "moxy.tcp_fake")
end


-- moxy.http.request under t.run: opts.http(req) answers { status, headers, body, delay }
-- or nil, err; <delay> seconds pass on the fake clock (a timeout past it: "timeout").
function B.http_request(r)
    local handler = _M.http
    if handler == nil then
        error("moxy.http.request() under moxy.test: pass t.run(app, s, { http = function(req) "
              .. "return { status = 200, body = \"...\" } end })", 3)
    end
    local headers = {}
    for i = 1, #r.headers do
        local k = lower(r.headers[i][1])
        headers[k] = headers[k] and headers[k] .. ", " .. r.headers[i][2] or r.headers[i][2]
    end
    local req = { method = r.method, url = r.url, scheme = r.scheme, host = r.host,
                  port = r.port, path = r.path, headers = headers, body = r.body }
    local calls = _M.http_calls
    if calls then
        calls[#calls + 1] = req
    end
    local res, err = handler(req)
    if res == nil then
        return nil, tostring(err or "connect")
    end
    if type(res) ~= "table" or type(res.status) ~= "number" then
        error("t.run: opts.http must return { status = n, headers, body, delay } or nil, err", 0)
    end
    local delay = res.delay or 0
    if delay > r.timeout then
        B.sleep(r.timeout)
        return nil, "timeout"
    end
    if delay > 0 then
        B.sleep(delay)
    end
    local body = res.body or ""
    if #body > r.max_body then
        return nil, "too_large"
    end
    local list = _M.header_list(res.headers, "opts.http response")
    return { status = res.status, header_list = list, body = body }
end


function B.log(level, msg)
    if not LEVELS[level] then
        error("bad log level " .. tostring(level), 2)
    end
    local sink = _M.sink
    sink[#sink + 1] = "[" .. level .. "] " .. msg
end


-- session handles --------------------------------------------------------------------------

local next_id = 0


-- Makes a session handle from t.request{} options (checked by moxy.test).
function _M.new_sp(o)
    next_id = next_id + 1
    local headers = _M.header_list(o.headers, "t.request")
    if o.version ~= "1.0" and not h_get(headers, "host") then
        table.insert(headers, 1, { "host", "localhost" })
    end
    if o.body and o.body ~= "" and not h_get(headers, "content-length")
            and not h_get(headers, "transfer-encoding") then
        headers[#headers + 1] = { "content-length", tostring(#o.body) }
    end
    local sp = {
        id = next_id,
        method = o.method or "GET",
        uri = o.uri or "/",
        version = o.version or "1.1",
        headers = headers,
        body = o.body,
        body_chunks = o.body_chunks,
        downstream_reused = o.downstream_reused,
        client_addr = o.client_addr or "127.0.0.1",
        client_port = o.client_port or 50000 + next_id % 10000,
        server_addr = o.server_addr or "127.0.0.1",
        server_port = o.server_port or 8080,
        start_time = _M.clock.now,
        phase = o.phase or "request_filter",
        status = nil,
        resp_headers = {},
        resp_body = nil,
        source = nil,
        responded = false,
    }
    if o.response then
        local r = o.response
        sp.status = r.status or 200
        sp.resp_headers = _M.header_list(r.headers, "t.request response")
        sp.resp_body = r.body or ""
        sp.source = r.source or "upstream"
    end
    return sp
end


return _M
