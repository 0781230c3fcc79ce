-- examples/hello.lua through moxy.test.
local t = require "moxy.test"


describe("examples/hello.lua", function()
    local app

    before_each(function()
        app = t.load("examples/hello.lua")
    end)

    it("answers /hello from Lua", function()
        local res = t.run(app, t.request { uri = "/hello?x=1" })
        assert.status(200, res)
        assert.equal("hello from moxy\n", res.body)
        assert.header("content-type", "text/plain", res)
        assert.equal("local", res.source)
        assert.is_nil(res.upstream)
    end)

    it("proxies anything else to 127.0.0.1:9001", function()
        local res = t.run(app, t.request { uri = "/hello/more" }, { upstream = function(req)
            return { status = 200, headers = { ["x-origin"] = "yes" }, body = req.uri }
        end })
        assert.status(200, res)
        assert.equal("/hello/more", res.body)
        assert.header("x-origin", "yes", res)
        assert.equal("127.0.0.1", res.upstream.peer.host)
        assert.equal(9001, res.upstream.peer.port)
    end)

    it("takes the upstream from config.upstream", function()
        app = t.load("examples/hello.lua", { upstream = "10.1.1.1:8000" })
        local res = t.run(app, t.request { uri = "/" })
        assert.equal("10.1.1.1:8000", tostring(res.upstream.peer))
        assert.has_error(function() t.load("examples/hello.lua", { upstream = 1 }) end)
    end)
end)
