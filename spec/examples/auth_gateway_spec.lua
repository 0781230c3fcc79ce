-- examples/auth_gateway.lua through moxy.test (the LUA_API.md example).
local t = require "moxy.test"


describe("examples/auth_gateway.lua", function()
    local app = t.load("examples/auth_gateway.lua")

    it("refuses a request without a token", function()
        local res = t.run(app, t.request { method = "GET", uri = "/x" })
        assert.status(401, res)
        assert.equal("login first\n", res.body)
        assert.header("www-authenticate", "Bearer", res)
        assert.header("x-served-by", "moxy", res)          -- response_filter runs on it too
        assert.is_nil(res.upstream)                        -- never reached an upstream
        assert.logged("^%[info%] examples/auth_gateway.lua:%d+: GET /x 401$", res)
    end)

    it("forwards with the client address", function()
        local res = t.run(app, t.request { uri = "/x", headers = { authorization = "Bearer a" },
                                           client_addr = "10.1.2.3" },
                          { upstream = function(req) return { status = 200, body = "ok" } end })
        assert.status(200, res)
        assert.equal("ok", res.body)
        assert.equal("10.1.2.3", res.upstream.request.headers["x-forwarded-for"])
        assert.equal("Bearer a", res.upstream.request.headers["authorization"])
        assert.equal("127.0.0.1:9001", tostring(res.upstream.peer))
        assert.header("x-served-by", "moxy", res)
        assert.same({}, res.errors)
    end)

    it("replaces a forged x-forwarded-for", function()
        local res = t.run(app, t.request { headers = { authorization = "x",
                                                       ["X-Forwarded-For"] = "6.6.6.6" } })
        assert.equal("127.0.0.1", res.upstream.request.headers["x-forwarded-for"])
    end)

    it("records the start time in ctx", function()
        local clock = t.clock(42)
        local res = t.run(app, t.request { headers = { authorization = "x" } }, { clock = clock })
        assert.equal(42, res.ctx.t0)
    end)
end)
