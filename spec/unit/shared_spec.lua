-- moxy.shared.dict under moxy.test (moxy.shared_fake): the clock-free cases of
-- tests/integration/lua/shared.lua (the live suite runs the same script, test_shared.py),
-- then what needs the test clock: TTL expiry, stale reads, expired entries making room.
local t = require "moxy.test"
local moxy = require "moxy"
local shared_fake = require "moxy.shared_fake"

local SCRIPT = "tests/integration/lua/shared.lua"
local DICTS = { counters = "1m", scratch = 1048576, selftest = "1m", tiny = "8k" }


describe("moxy.shared.dict (fake)", function()
    local app, clock

    before_each(function()
        shared_fake.reset()
        clock = t.clock()
        app = t.load(SCRIPT, { shared_dicts = DICTS })
    end)

    local function get(uri)
        return t.run(app, t.request { uri = uri }, { clock = clock })
    end

    it("passes the same self-test as the live dicts", function()
        local res = get("/selftest")
        assert.status(200, res)
        assert.equal("ok", res.body)
    end)

    it("counts across requests and shares values between them", function()
        for i = 1, 5 do
            assert.equal(tostring(i), get("/incr").body)
        end
        assert.status(404, get("/get?k=a"))
        assert.status(200, get("/set?k=a&v=one"))
        assert.equal("one", get("/get?k=a").body)
    end)

    it("expires entries by the test clock", function()
        assert.status(200, get("/set?k=a&v=one&ttl=2"))
        clock:advance(1.999)
        assert.equal("one", get("/get?k=a").body)
        clock:advance(0.001)
        assert.status(404, get("/get?k=a"))
    end)

    it("ttl, expire, get_stale and flush_expired follow the clock", function()
        local d = moxy.shared.dict("scratch")
        assert.same({ true, nil, false }, { d:set("k", "v", 10) })
        assert.equal(10, d:ttl("k"))
        clock:advance(4)
        assert.equal(6, d:ttl("k"))
        assert.is_true(d:expire("k", 1))
        clock:advance(1)
        assert.same({}, { d:get("k") })
        assert.same({ nil, "not found" }, { d:ttl("k") })
        assert.same({ "v", nil, true }, { d:get_stale("k") })
        assert.same({ nil, "not found" }, { d:expire("k", 5) })
        assert.same({ false, "not found", false }, { d:replace("k", 1) })
        assert.same({ true, nil, false }, { d:add("k", 1) })
        assert.same({ 1, nil, false }, { d:get_stale("k") })
        d:set("gone", 1, 0.5)
        clock:advance(1)
        assert.same({ "k" }, d:keys())
        assert.equal(1, d:flush_expired())
        assert.same({}, { d:get_stale("gone") })
    end)

    it("incr's init_ttl applies when init creates the key", function()
        local d = moxy.shared.dict("scratch")
        assert.equal(1, d:incr("c", 1, 0, 5))
        assert.equal(2, d:incr("c", 1, 0, 5))
        clock:advance(5)
        assert.same({ nil, "not found", false }, { d:incr("c", 1) })
        assert.equal(11, d:incr("c", 1, 10))
    end)

    it("expired entries make room before live ones are evicted", function()
        local d = moxy.shared.dict("tiny")
        local value = string.rep("v", 100)
        for i = 1, 37 do
            assert.same({ true, nil, false }, { d:set(string.format("k%03d", i), value) })
        end
        d:expire("k037", 1)
        clock:advance(1)
        assert.same({ true, nil, false }, { d:safe_set("new", value) })
        assert.equal(value, d:get("k001"))    -- now the most recently used
        assert.same({ false, "no memory", false }, { d:safe_set("new2", value) })
        local ok, err, forcible = d:set("new2", value)
        assert.same({ true, nil, true }, { ok, err, forcible })
        assert.is_nil(d:get("k002"))
        assert.equal(value, d:get("k001"))
    end)

    it("an undeclared name is made on first use, with 1 MiB", function()
        local d = moxy.shared.dict("adhoc")
        assert.equal(1048576, d:capacity())
        assert.equal(d, moxy.shared.dict("adhoc"))
    end)

    it("raises on misuse and rejects bad declarations", function()
        local d = moxy.shared.dict("scratch")
        assert.has_error(function() d.get("k") end)
        assert.has_error(function() d:set("k", 1, -1) end)
        assert.has_error(function() d:incr("k", "1") end)
        assert.has_error(function() moxy.shared.dict(1) end)
        assert.has_error(function() shared_fake.declare({ small = 100 }) end)
        assert.has_error(function() shared_fake.declare({ bad = "1.5m" }) end)
    end)
end)
