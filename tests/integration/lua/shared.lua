-- moxy.shared.dict, live (tests/integration/test_shared.py) and fake (spec/unit/
-- shared_spec.lua loads this same script with t.load): every request answers locally.
--   /incr            counters:incr("hits", 1, 0) -> the new count (x-worker: worker id)
--   /set?k=&v=&ttl=  scratch:set(k, v, ttl)      /get?k=  scratch:get(k) (404 when absent)
--   /selftest        the method set's semantics on dict "selftest" (clock-free cases):
--                    200 "ok", or 500 with the first failed check
-- Config: shared_dicts: { counters: 1m, scratch: 1m, selftest: 1m, tiny: 8k }.
local moxy = require "moxy"

local concat = table.concat
local format = string.format
local rep = string.rep
local sort = table.sort
local tostring = tostring


local app = {}


local function show(...)
    local n = select("#", ...)
    local parts = { ... }
    for i = 1, n do
        parts[i] = type(parts[i]) == "string" and format("%q", parts[i]) or tostring(parts[i])
    end
    return "(" .. concat(parts, ", ", 1, n) .. ")"
end


-- Raises unless the results of a call equal <want> (a list), position by position.
local function check(what, want, ...)
    local n = select("#", ...)
    local got = { ... }
    for i = 1, math.max(#want, n) do
        if got[i] ~= want[i] then
            error(what .. ": got " .. show(...) .. ", want " .. show(unpack(want)), 0)
        end
    end
end


local function selftest()
    local d = moxy.shared.dict("selftest")
    d:flush_all()
    check("capacity", { 1048576 }, d:capacity())

    -- set / get of every value type; nil deletes
    check("set string", { true, nil, false }, d:set("s", "hello"))
    check("get string", { "hello" }, d:get("s"))
    check("set number", { true, nil, false }, d:set("n", 1.5))
    check("get number", { 1.5 }, d:get("n"))
    check("set true", { true, nil, false }, d:set("t", true))
    check("get true", { true }, d:get("t"))
    check("set false", { true, nil, false }, d:set("f", false))
    check("get false", { false }, d:get("f"))
    check("set empty", { true, nil, false }, d:set("e", ""))
    check("get empty", { "" }, d:get("e"))
    check("get absent", { nil }, d:get("nope"))
    check("set nil", { true, nil, false }, d:set("s", nil))
    check("get deleted", { nil }, d:get("s"))
    check("delete", { true, nil, false }, d:delete("n"))
    check("get deleted 2", { nil }, d:get("n"))
    check("number key", { true, nil, false }, d:set(7, "seven"))
    check("number key get", { "seven" }, d:get("7"))
    local big = rep("0123456789", 10000)
    check("set big", { true, nil, false }, d:set("big", big))
    check("get big", { true }, d:get("big") == big)

    -- add / replace / safe variants
    check("add new", { true, nil, false }, d:add("a", 1))
    check("add exists", { false, "exists", false }, d:add("a", 2))
    check("safe_add exists", { false, "exists", false }, d:safe_add("a", 2))
    check("replace", { true, nil, false }, d:replace("a", 3))
    check("get replaced", { 3 }, d:get("a"))
    check("replace absent", { false, "not found", false }, d:replace("zz", 1))
    check("safe_set", { true, nil, false }, d:safe_set("ss", "v"))

    -- incr
    check("incr absent", { nil, "not found", false }, d:incr("c", 1))
    check("incr init", { 11, nil, false }, d:incr("c", 1, 10))
    check("incr", { 16, nil, false }, d:incr("c", 5))
    check("incr negative", { 15.5, nil, false }, d:incr("c", -0.5))
    check("incr string", { nil, "not a number", false }, d:incr("e", 1))
    check("incr boolean", { nil, "not a number", false }, d:incr("t", 1, 0))

    -- ttl / expire (no waiting here: the specs and test_shared.py wait)
    check("ttl forever", { 0 }, d:ttl("a"))
    check("ttl absent", { nil, "not found" }, d:ttl("nope"))
    d:set("x", 1, 100)
    local left = d:ttl("x")
    check("ttl set", { true }, left > 99 and left <= 100)
    check("expire", { true }, d:expire("x", 0))
    check("ttl after expire 0", { 0 }, d:ttl("x"))
    check("expire absent", { nil, "not found" }, d:expire("nope", 1))
    check("incr keeps ttl", { true, 2 }, d:expire("c", 50), d:incr("c", 0) and 2)
    check("incr keeps ttl 2", { true }, d:ttl("c") > 49)

    -- lists
    check("rpush", { 1 }, d:rpush("l", "a"))
    check("rpush 2", { 2 }, d:rpush("l", 2))
    check("lpush", { 3 }, d:lpush("l", "c"))
    check("llen", { 3 }, d:llen("l"))
    check("get list", { nil, "value is a list" }, d:get("l"))
    check("lpop", { "c" }, d:lpop("l"))
    check("rpop", { 2 }, d:rpop("l"))
    check("lpop last", { "a" }, d:lpop("l"))
    check("lpop empty", { nil }, d:lpop("l"))
    check("llen gone", { 0 }, d:llen("l"))
    check("push on string", { nil, "value not a list" }, d:lpush("e", "x"))
    check("pop on string", { nil, "value not a list" }, d:rpop("e"))
    check("llen on string", { nil, "value not a list" }, d:llen("e"))
    check("push boolean", { nil, "bad value type" }, d:rpush("l2", true))
    check("big item", { 1 }, d:rpush("l3", big))
    check("pop big item", { true }, d:rpop("l3") == big)

    -- keys and arguments
    d:flush_all()
    check("keys empty", { 0 }, #d:keys())
    d:set("k1", 1)
    d:set("k2", 2)
    local keys = d:keys()
    sort(keys)
    check("keys", { "k1", "k2" }, unpack(keys))
    check("keys max", { 1 }, #d:keys(1))
    check("nil key", { nil, "nil key" }, d:get(nil))
    check("empty key", { nil, "empty key", false }, d:set("", 1))
    check("long key", { nil, "key too long" }, d:get(rep("k", 65536)))
    check("max key", { true, nil, false }, d:set(rep("k", 65535), 1))
    check("bad value", { nil, "bad value type", false }, d:set("k", {}))
    check("flush_expired none", { 0 }, d:flush_expired())
    check("free space", { true }, d:free_space() < d:capacity())
    d:flush_all()
    check("free space empty", { 1048576 }, d:free_space())

    -- eviction in an 8 KiB dict: entries of 112 + 4 + 100 bytes, 37 fit
    local tiny = moxy.shared.dict("tiny")
    tiny:flush_all()
    local value = rep("v", 100)
    local forced = 0
    for i = 1, 100 do
        local ok, err, forcible = tiny:set(format("k%03d", i), value)
        check("tiny set " .. i, { true, nil }, ok, err)
        forced = forced + (forcible and 1 or 0)
    end
    check("forced", { 63 }, forced)
    check("oldest evicted", { nil }, tiny:get("k001"))
    check("newest kept", { value }, tiny:get("k100"))
    check("safe_set full", { false, "no memory", false }, tiny:safe_set("new", value))
    check("too big", { false, "no memory", false }, tiny:set("huge", rep("x", 9000)))
    -- a read makes an entry recently used: k064 survives the next eviction, k065 does not
    tiny:get("k064")
    tiny:set("k101", value)
    check("read kept", { value }, tiny:get("k064"))
    check("lru evicted", { nil }, tiny:get("k065"))
    return "ok"
end


function app.request_filter(s)
    local path = s.req:path()
    if path == "/incr" then
        local n, err = moxy.shared.dict("counters"):incr("hits", 1, 0)
        return s:respond(n and 200 or 500, tostring(n or err),
                         { ["x-worker"] = tostring(moxy.worker.id()) })
    elseif path == "/set" then
        local ttl = tonumber(s.req:arg("ttl") or "0")
        local ok, err = moxy.shared.dict("scratch"):set(s.req:arg("k"), s.req:arg("v"), ttl)
        return s:respond(ok and 200 or 500, ok and "stored" or err)
    elseif path == "/get" then
        local v = moxy.shared.dict("scratch"):get(s.req:arg("k"))
        return s:respond(v == nil and 404 or 200, v == nil and "absent" or tostring(v))
    elseif path == "/selftest" then
        local ok, err = pcall(selftest)
        return s:respond(ok and 200 or 500, ok and "ok" or tostring(err))
    elseif path == "/undeclared" then
        local ok, err = pcall(moxy.shared.dict, "nosuch")
        return s:respond(200, ok and "no error" or tostring(err))
    end
    return s:respond(404, "no such test endpoint")
end


return app
