-- The moxy module: peers, time, logging, json, worker, over the fake backend.
local t = require "moxy.test"
local moxy = require "moxy"
local backend = require "moxy.backend"
local fake = require "moxy.fake"


describe("moxy.peer", function()
    it("makes a host/port peer", function()
        local p = moxy.peer { host = "10.0.0.1", port = 8080, connect_timeout = 1.5 }
        assert.equal("10.0.0.1", p.host)
        assert.equal(8080, p.port)
        assert.equal(1.5, p.connect_timeout)
        assert.is_false(p.tls)
        assert.equal("10.0.0.1:8080", tostring(p))
    end)

    it("makes a unix peer and an IPv6 one", function()
        local u = moxy.peer { unix = "/run/app.sock" }
        assert.equal("/run/app.sock", u.unix)
        assert.equal("unix:/run/app.sock", tostring(u))
        local v6 = moxy.peer { host = "[::1]", port = 80 }
        assert.equal("::1", v6.host)
        assert.equal("[::1]:80", tostring(v6))
    end)

    it("refuses TLS for now", function()
        assert.has_error(function() moxy.peer { host = "a", port = 443, tls = true } end,
            "moxy.peer: TLS upstreams are not supported yet")
        assert.has_error(function() moxy.peer { host = "a", port = 443, sni = "a" } end,
            "moxy.peer: TLS upstreams are not supported yet")
    end)

    it("validates", function()
        assert.has_error(function() moxy.peer() end,
            "bad argument #1 to 'peer' (table expected, got nil)")
        assert.has_error(function() moxy.peer { host = "a" } end,
            "moxy.peer: port must be an integer in 1..65535, got nil")
        assert.has_error(function() moxy.peer { port = 80 } end,
            "moxy.peer: host and port (or unix) required")
        assert.has_error(function() moxy.peer { host = "a", port = 70000 } end)
        assert.has_error(function() moxy.peer { host = "a", port = 80.5 } end)
        assert.has_error(function() moxy.peer { host = "a", port = "80" } end,
            "moxy.peer: port must be a number, got string")
        assert.has_error(function() moxy.peer { host = "a", port = 80, hots = 1 } end,
            "moxy.peer: unknown option hots")
        assert.has_error(function() moxy.peer { unix = "/x", host = "a", port = 1 } end,
            "moxy.peer: give either unix or host and port, not both")
        assert.has_error(function() moxy.peer { host = "a", port = 1, read_timeout = 0 } end,
            "moxy.peer: read_timeout must be > 0 (seconds)")
    end)

    it("raises at the caller", function()
        local ok, err = pcall(function() moxy.peer { host = "a" } end)
        assert.is_false(ok)
        assert.matches("moxy_spec.lua:%d+: moxy.peer", err)
    end)
end)


describe("moxy._to_peer", function()
    it("accepts peers and host:port strings", function()
        local p = moxy.peer { host = "a", port = 1 }
        assert.equal(p, moxy._to_peer(p))
        local s = moxy._to_peer("127.0.0.1:9001")
        assert.equal("127.0.0.1", s.host)
        assert.equal(9001, s.port)
        assert.equal("::1", moxy._to_peer("[::1]:80").host)
        assert.equal("/x.sock", moxy._to_peer("unix:/x.sock").unix)
    end)

    it("refuses the rest with a reason", function()
        for _, v in ipairs { 9001, "127.0.0.1", "a:0", "a:99999", "a b:1", ":80" } do
            local p, why = moxy._to_peer(v)
            assert.is_nil(p)
            assert.is_string(why)
        end
        local _, why = moxy._to_peer(nil)
        assert.equal('upstream_peer returned nil (expected moxy.peer{...} or a "host:port" '
                     .. "string)", why)
        assert.is_nil(moxy._to_peer({ host = "a", port = 1 }))   -- not made by moxy.peer
    end)
end)


describe("moxy.now and moxy.sleep", function()
    it("follow the fake clock", function()
        local c = t.clock(500)
        assert.equal(500, moxy.now())
        c:advance(2.5)
        assert.equal(502.5, moxy.now())
        moxy.sleep(1)                                      -- outside a run: advances
        assert.equal(503.5, moxy.now())
    end)

    it("sleep checks its argument", function()
        assert.has_error(function() moxy.sleep(-1) end)
        assert.has_error(function() moxy.sleep("1") end,
            "bad argument #1 to 'sleep' (seconds >= 0 expected, got 1)")
        assert.has_error(function() moxy.sleep(0 / 0) end)
    end)

    it("without an engine, say so", function()
        local prev = backend.current
        backend.current = nil
        local ok, err = pcall(moxy.now)
        backend.current = prev
        assert.is_false(ok)
        assert.matches("moxy: no engine", err)
    end)
end)


describe("moxy.log", function()
    before_each(function()
        fake.logs = {}
        fake.sink = fake.logs
    end)

    it("joins the arguments with tostring and prefixes the caller's file:line", function()
        local line = debug.getinfo(1, "l").currentline + 1
        moxy.log.info("a", 1, " ", nil, true)
        assert.equal("[info] spec/unit/moxy_spec.lua:" .. line .. ": a1 niltrue", fake.logs[1])
    end)

    it("has every level", function()
        for _, level in ipairs { "debug", "info", "notice", "warn", "err" } do
            moxy.log[level]("x")
        end
        assert.equal(5, #fake.logs)
        assert.matches("^%[debug%] ", fake.logs[1])
        assert.matches("^%[err%] ", fake.logs[5])
    end)

    it("a single argument is tostring'd", function()
        moxy.log.warn({} == nil)
        assert.matches(": false$", fake.logs[1])
    end)
end)


describe("moxy.json", function()
    it("encodes and decodes", function()
        assert.equal('{"a":[1,2]}', moxy.json.encode { a = { 1, 2 } })
        assert.same({ b = "c" }, moxy.json.decode('{"b":"c"}'))
        assert.has_error(function() moxy.json.decode("{") end)
    end)

    it("safe returns nil, err", function()
        local v, err = moxy.json.safe.decode("{")
        assert.is_nil(v)
        assert.is_string(err)
        assert.equal(moxy.json.null, require("cjson").null)
    end)
end)


describe("the interpreter", function()
    it("is OpenResty's LuaJIT (as .busted asks)", function()
        assert.is_table(jit)
        assert.is_function(require "table.new")
        assert.is_function(require "table.clear")
    end)
end)


describe("moxy.worker and _VERSION", function()
    it("report the fake worker", function()
        assert.equal(0, moxy.worker.id())
        assert.equal(1, moxy.worker.count())
        assert.matches("^%d+%.%d+%.%d+$", moxy._VERSION)
    end)
end)


describe("moxy.stats and moxy.worker.stats", function()
    it("return copies of the fake's figures, zero unless a spec sets them", function()
        local s = moxy.stats()
        assert.same({ requests = 0, connections_accepted = 0, connections_open = 0,
                      upstream_requests = 0, upstream_reused = 0 }, s)
        s.requests = 99                     -- a copy: the fake keeps its own
        assert.equal(0, moxy.stats().requests)
        local saved = fake.stats.upstream_reused
        fake.stats.upstream_reused = 7
        assert.equal(7, moxy.stats().upstream_reused)
        fake.stats.upstream_reused = saved
        assert.equal(0, moxy.worker.stats().idle_buffer_bytes)
    end)
end)


describe("absent until implemented", function()
    it("has no limit, metrics", function()
        for _, name in ipairs { "limit", "metrics" } do
            assert.is_nil(moxy[name], name)
        end
    end)
end)
