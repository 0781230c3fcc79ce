-- moxy.fake: the backend contract in plain Lua, for moxy.test. A session handle `sp` is a
-- table made by fake.new_sp{...}; headers are lists of { name, value } in wire order.
--
-- Time: fake.clock (a t.clock) drives now(). sleep(seconds) inside a t.run request
-- yields the request's coroutine to the runner, which advances the clock by <seconds>
-- and resumes it (so sleeping across a C boundary fails as it would live); outside a
-- run it advances the clock directly. Nothing ever waits for real time.
local coroutine_running = coroutine.running
local coroutine_yield = coroutine.yield
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


local _M = {}


local LEVELS = { debug = true, info = true, notice = true, warn = true, err = true }

_M.SLEEP = setmetatable({}, { __tostring = function() return "moxy.fake.SLEEP" end })


-- clock ------------------------------------------------------------------------------------

local Clock = {}
local clock_mt = { __index = Clock }


-- Moves the clock forward by <seconds>, running the moxy.timer timers that fall due on
-- the way, in time order, each with the clock at its due time.
function Clock.advance(self, seconds)
    if type(seconds) ~= "number" or seconds < 0 then
        error("bad argument #1 to 'advance' (seconds >= 0 expected)", 2)
    end
    local target = self.now + seconds
    while true do
        local next_t
        for t in pairs(_M.timers) do
            if t.due <= target and (next_t == nil or t.due < next_t.due) then
                next_t = t
            end
        end
        if next_t == nil then
            break
        end
        self.now = next_t.due
        if next_t.every then
            next_t.due = next_t.due + next_t.delay
        else
            _M.timers[next_t] = nil
        end
        local ok, err = pcall(next_t.fn, false, unpack(next_t.args, 1, next_t.n))
        if not ok then
            local sink = _M.sink
            sink[#sink + 1] = "[err] lua timer " .. tostring(err)
        end
    end
    self.now = target
    return self.now
end


function _M.new_clock(start)
    if start ~= nil and type(start) ~= "number" then
        error("bad argument #1 to 'clock' (number expected, got " .. type(start) .. ")", 3)
    end
    return setmetatable({ now = start or 1700000000.0 }, clock_mt)
end


_M.clock = _M.new_clock()
_M.timers = {}          -- pending moxy.timer handles (set of tables)
_M.upstreams = {}       -- YAML-like groups for moxy.upstream(): name -> { "host:port" | { address, weight } }
_M.co = nil             -- the coroutine of the running t.run request, if any
_M.logs = {}            -- log lines written outside a run (t.run collects into res.logs)
_M.sink = _M.logs
_M.worker = { id = 0, count = 1 }


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


function B.sleep(seconds)
    local co = coroutine_running()
    if co and co == _M.co then
        coroutine_yield(_M.SLEEP, seconds)
    else
        _M.clock:advance(seconds)
    end
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
