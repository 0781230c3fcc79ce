-- examples/ab_routing.lua through moxy.test.
local t = require "moxy.test"

local A, B = "127.0.0.1:9001", "127.0.0.1:9002"
local ATTRS = "; Path=/; Max-Age=2592000; SameSite=Lax"


describe("examples/ab_routing.lua", function()
    local app

    before_each(function()
        app = t.load("examples/ab_routing.lua")
    end)

    local function run(req, opts)
        return t.run(app, t.request(req), opts)
    end

    it("sends cookie ab=a to origin A and ab=b to origin B, without a new cookie", function()
        local res = run { headers = { cookie = "ab=a" } }
        assert.status(200, res)
        assert.equal(A, tostring(res.upstream.peer))
        assert.header("x-ab-group", "a", res)
        assert.is_nil(res.headers["set-cookie"])
        assert.equal("a", res.upstream.request.headers["x-ab-group"])

        res = run { headers = { cookie = "ab=b" } }
        assert.equal(B, tostring(res.upstream.peer))
        assert.header("x-ab-group", "b", res)
        assert.is_nil(res.headers["set-cookie"])
        assert.equal("b", res.upstream.request.headers["x-ab-group"])
    end)

    it("parses the cookie among others, in any Cookie header, quoted or spaced", function()
        local cases = {
            { "sid=1; ab=b; theme=dark", "b" },
            { "sid=1;ab=b", "b" },
            { "ab = b", "b" },
            { 'ab="b"', "b" },
            { "xab=b; ab=a", "a" },           -- not fooled by a longer name
            { "abc=b", nil },
            { { "sid=1", "ab=b" }, "b" },     -- two Cookie fields
        }
        for _, c in ipairs(cases) do
            local res = run { client_addr = "127.0.0.1", headers = { cookie = c[1] } }
            local want = c[2] or "a"          -- 127.0.0.1 hashes to a
            assert.header("x-ab-group", want, res)
            assert.equal(c[2] == nil, res.headers["set-cookie"] ~= nil,
                         "set-cookie for " .. tostring(c[1]))
        end
    end)

    it("assigns a new client by a stable hash of its address and sets the cookie", function()
        local res = run { client_addr = "127.0.0.1" }
        assert.header("x-ab-group", "a", res)
        assert.header("set-cookie", "ab=a" .. ATTRS, res)
        assert.equal(A, tostring(res.upstream.peer))

        res = run { client_addr = "::1" }
        assert.header("x-ab-group", "b", res)
        assert.header("set-cookie", "ab=b" .. ATTRS, res)
        assert.equal(B, tostring(res.upstream.peer))

        -- stable: the same address, the same group, every time
        for _ = 1, 3 do
            assert.header("x-ab-group", "b", run { client_addr = "::1" })
        end
    end)

    it("spreads new clients over both groups", function()
        local count = { a = 0, b = 0 }
        for i = 1, 200 do
            local g = app._group_for("10." .. (i % 7) .. "." .. (i * 13 % 256) .. "." .. i)
            count[g] = count[g] + 1
        end
        assert.is_true(count.a > 60 and count.b > 60, "a " .. count.a .. ", b " .. count.b)
    end)

    it("replaces an unknown group, and keeps the upstream's own set-cookie", function()
        local res = run({ client_addr = "::1", headers = { cookie = "ab=c" } }, {
            upstream = function()
                return { status = 200, headers = { ["set-cookie"] = "sid=9" }, body = "" }
            end })
        assert.header("x-ab-group", "b", res)
        assert.header("set-cookie", { "sid=9", "ab=b" .. ATTRS }, res)
    end)

    it("marks local error pages too", function()
        local res = run({ headers = { cookie = "ab=b" } }, { upstream = function()
            return nil, "connect"
        end })
        assert.status(502, res)
        assert.header("x-ab-group", "b", res)
    end)

    it("takes groups and b_percent from the config", function()
        app = t.load("examples/ab_routing.lua", { groups = { a = "10.0.0.1:80",
                                                             b = "10.0.0.2:80" },
                                                  b_percent = 100 })
        local res = run { client_addr = "127.0.0.1" }
        assert.header("x-ab-group", "b", res)
        assert.equal("10.0.0.2:80", tostring(res.upstream.peer))
        res = run { headers = { cookie = "ab=a" } }
        assert.equal("10.0.0.1:80", tostring(res.upstream.peer))

        app = t.load("examples/ab_routing.lua", { b_percent = 0 })
        assert.header("x-ab-group", "a", run { client_addr = "::1" })

        assert.has_error(function() t.load("examples/ab_routing.lua", { groups = { a = "x" } }) end)
        assert.has_error(function() t.load("examples/ab_routing.lua", { b_percent = 101 }) end)
    end)
end)
