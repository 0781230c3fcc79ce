-- examples/load_balancer.lua through moxy.test. t.run does not run fail_to_connect (an
-- upstream failure goes straight to fail_to_proxy), so the retry is checked here phase by
-- phase with t.phase, and end to end against live origins in
-- spec/integration/examples_spec.lua.
local t = require "moxy.test"
local fake = require "moxy.fake"

local A, B = "127.0.0.1:9001", "127.0.0.1:9002"


describe("examples/load_balancer.lua", function()
    local app

    before_each(function()
        app = t.load("examples/load_balancer.lua")
    end)

    local function ok(req)
        return { status = 200, headers = { ["content-type"] = "text/plain" }, body = req.uri }
    end

    it("alternates between the two origins", function()
        local seen = {}
        for i = 1, 4 do
            local res = t.run(app, t.request { uri = "/r" .. i }, { upstream = ok })
            assert.status(200, res)
            assert.equal("/r" .. i, res.body)
            seen[i] = tostring(res.upstream.peer)
            assert.header("x-upstream", seen[i], res)
            assert.is_nil(res.headers["x-upstream-failed"])
        end
        assert.same({ A, B, A, B }, seen)
    end)

    it("takes its origins from config.origins", function()
        app = t.load("examples/load_balancer.lua", { origins = { "10.0.0.1:80", "10.0.0.2:80",
                                                                 "10.0.0.3:80" } })
        local seen = {}
        for i = 1, 4 do
            seen[i] = tostring(t.run(app, t.request {}).upstream.peer)
        end
        assert.same({ "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.1:80" }, seen)
        app = t.load("examples/load_balancer.lua")
        assert.equal(A, tostring(t.run(app, t.request {}).upstream.peer))
    end)

    it("refuses a bad config.origins", function()
        assert.has_error(function() t.load("examples/load_balancer.lua", { origins = {} }) end)
        assert.has_error(function() t.load("examples/load_balancer.lua", { origins = "x" }) end)
        assert.has_error(function()
            t.load("examples/load_balancer.lua", { origins = { "10.0.0.1" } })
        end)
    end)

    -- The live engine's order on a refused connect: upstream_peer, fail_to_connect (true:
    -- retry), upstream_peer again, and on a second failure fail_to_connect again.
    it("retries once, on the origin after the one that failed", function()
        local s = t.request { uri = "/x" }
        local ctx = {}
        local logs = {}
        fake.sink = logs
        finally(function() fake.sink = fake.logs end)
        assert.equal(A, t.phase(app, "upstream_peer", s, ctx))
        assert.equal(true, t.phase(app, "fail_to_connect", s, { addr = A }, "ECONNREFUSED", ctx))
        assert.equal(B, t.phase(app, "upstream_peer", s, ctx))
        assert.equal(false, t.phase(app, "fail_to_connect", s, { addr = B }, "ECONNREFUSED", ctx))
        assert.equal(1, #logs)
        assert.matches("^%[warn%] .*connecting to 127%.0%.0%.1:9001 failed %(ECONNREFUSED%), "
                       .. "retrying on the next origin$", logs[1])

        -- the retry did not move the shared rotation: the next request gets B
        assert.equal(B, tostring(t.run(app, t.request {}).upstream.peer))
    end)

    it("retries from B to A as well", function()
        assert.equal(A, tostring(t.run(app, t.request {}).upstream.peer))
        local s, ctx = t.request {}, {}
        assert.equal(B, t.phase(app, "upstream_peer", s, ctx))
        assert.equal(true, t.phase(app, "fail_to_connect", s, { addr = B }, "timeout", ctx))
        assert.equal(A, t.phase(app, "upstream_peer", s, ctx))
    end)

    it("names the origin that failed on the response", function()
        local s = t.request { phase = "response_filter", response = { status = 200 } }
        t.phase(app, "response_filter", s, s.resp, { peer = B, failed = A })
        assert.equal(B, s.resp:header("x-upstream"))
        assert.equal(A, s.resp:header("x-upstream-failed"))

        s = t.request { phase = "response_filter", response = { status = 200 } }
        t.phase(app, "response_filter", s, s.resp, { peer = A })
        assert.equal(A, s.resp:header("x-upstream"))
        assert.is_nil(s.resp:header("x-upstream-failed"))
    end)
end)
