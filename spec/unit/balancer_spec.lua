-- moxy.balancer.new{} and moxy.upstream(name) under moxy.test (the fake engine and its
-- moxy.lb twin; spec/integration/balancer_spec.lua compares the twin with the C side).
local t = require "moxy.test"
local moxy = require "moxy"
local lb = require "moxy.lb"

local B3 = { "10.0.0.1:80", "10.0.0.2:80 weight=2", "10.0.0.3:80" }


describe("moxy.balancer.new", function()
    it("refuses bad options with a clear message", function()
        local cases = {
            { { backends = B3, algorithm = "fastest" }, "unknown algorithm \"fastest\"" },
            { { backends = {} }, "backends must be a non-empty list" },
            { { backends = { "10.0.0.1:80 weight=0" } }, "backends[1] must be" },
            { { backends = { "10.0.0.1:80 weight=x" } }, "unknown option \"weight=x\"" },
            { { backends = { "example.com:80" } }, "use an IP address" },
            { { backends = { "10.0.0.1" } }, "expected \"ip:port\"" },
            { { backends = B3, hash_key = "query" }, "unknown hash_key \"query\"" },
            { { backends = B3, timeout = 1 }, "unknown option timeout" },
            { { backends = B3, health_check = { type = "udp" } }, "health_check.type" },
            { { backends = B3, health_check = { rise = 0 } }, "health_check.rise" },
            { { backends = B3, health_check = { every = 1 } }, "health_check.every" },
            { { backends = B3, health_check = 1 }, "health_check must be a table" },
            { { backends = B3, max_retries = 17 }, "max_retries must be an integer 0..16" },
            { { backends = B3, passive_health = { max_fails = -1 } }, "max_fails must be" },
            { { backends = B3, passive_health = { on_5xx = 1 } }, "passive_health.on_5xx" },
            { { backends = B3, passive_health = { fails = 1 } }, "passive_health.fails" },
        }
        for _, c in ipairs(cases) do
            local ok, err = pcall(moxy.balancer.new, c[1])
            assert.is_false(ok)
            assert.matches(c[2], err, 1, true)
        end
    end)

    it("accepts a health_check (the fake runs no checks: every backend stays healthy)",
       function()
        local pool = moxy.balancer.new { backends = B3, health_check = {
            type = "http", path = "/health", interval = 0.3, rise = 2, fall = 1,
            expected_statuses = { 200, "2xx" } } }
        for _, b in ipairs(pool:backends()) do
            assert.is_true(b.healthy)
        end
        assert.matches("^10%.0%.0%.%d:80$", tostring(pool:select()))
    end)

    it("select(key) is stable for fnv and ketama and names the backend", function()
        for _, alg in ipairs { "fnv", "ketama" } do
            local pool = moxy.balancer.new { backends = B3, algorithm = alg }
            for i = 1, 50 do
                local a = pool:select("key" .. i)
                assert.equal(tostring(a), tostring(pool:select("key" .. i)))
                assert.matches("^10%.0%.0%.%d:80$", tostring(a))
                assert.equal(tostring(a), a.addr)
            end
        end
    end)

    it("round robin and weighted cycle as nginx does", function()
        local rr = moxy.balancer.new { backends = B3 }
        local got = {}
        for i = 1, 6 do got[i] = tostring(rr:select()) end
        assert.same({ "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80",
                      "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80" }, got)
        local w = moxy.balancer.new { backends = { "10.0.0.1:80 weight=5", "10.0.0.2:80",
                                                   "10.0.0.3:80" }, algorithm = "weighted" }
        got = {}
        for i = 1, 7 do got[i] = tostring(w:select()):sub(-4, -4) end
        assert.equal("1121311", table.concat(got))
    end)

    it("backends() lists address, weight and health", function()
        local pool = moxy.balancer.new { backends = B3, algorithm = "least_conn" }
        local list = pool:backends()
        assert.equal(3, #list)
        assert.same({ addr = "10.0.0.2:80", weight = 2, healthy = true, usable = true,
                      inflight = 0, fails = 0 }, list[2])
    end)

    it("accepts { addr =, weight = } tables and unix sockets", function()
        local pool = moxy.balancer.new { backends = { { addr = "unix:/run/a.sock", weight = 2 },
                                                      "[::1]:8080" } }
        assert.equal("unix:/run/a.sock", tostring(pool:select()))
        assert.equal("[::1]:8080", tostring(pool:select()))
    end)
end)


describe("the twin's hashes", function()
    it("match the standard vectors", function()
        assert.equal(0xcbf43926, lb.crc32(0, "123456789"))
        assert.equal(0xcbf43926, lb.crc32(lb.crc32(0, "1234"), "56789"))
        assert.equal(0xe40c292c, lb.fnv1a("a"))
        assert.equal(0xbf9cf968, lb.fnv1a("foobar"))
    end)
end)


describe("a selection from upstream_peer", function()
    local app

    setup(function()
        app = t.load("spec/integration/scripts/balancer_peer.lua", {
            upstreams = { origin = { backends = B3, algorithm = "ketama", hash_key = "arg:k" } },
        })
    end)

    it("takes its key from hash_key when select() got none", function()
        local pool = moxy.balancer.new { backends = B3, algorithm = "fnv" }
        for i = 1, 20 do
            local res = t.run(app, t.request { uri = "/lua", headers = { ["x-user"] = "u" .. i } })
            assert.status(200, res)
            assert.equal(tostring(pool:select("u" .. i)), tostring(res.upstream.peer))
        end
    end)

    it("uses the YAML group's algorithm and hash_key", function()
        local ring = moxy.balancer.new { backends = B3, algorithm = "ketama" }
        for i = 1, 20 do
            local res = t.run(app, t.request { uri = "/yaml?k=" .. i .. "&other=1" })
            assert.status(200, res)
            assert.equal("origin", res.upstream.peer.upstream)
            assert.equal(tostring(ring:select(tostring(i))), tostring(res.upstream.peer))
        end
    end)
end)
