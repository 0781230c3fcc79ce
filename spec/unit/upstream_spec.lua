-- moxy.upstream(name) under moxy.test: groups come from t.load's config.
local t = require "moxy.test"


describe("moxy.upstream (fake engine)", function()
    local app

    setup(function()
        app = t.load("tests/integration/lua/groups.lua", { upstreams = {
            green = { { address = "10.0.0.2:80", weight = 3 } }, blue = { "10.0.0.1:80" } } })
    end)

    it("select() gives a peer: the group and the backend chosen", function()
        local res = t.run(app, t.request { uri = "/x?color=green" })
        assert.status(200, res)
        assert.equal("green", res.upstream.peer.upstream)
        assert.equal("10.0.0.2:80", tostring(res.upstream.peer))
        res = t.run(app, t.request { uri = "/x" })
        assert.equal("blue", res.upstream.peer.upstream)
        assert.equal("10.0.0.1:80", tostring(res.upstream.peer))
    end)

    it("backends() lists the group", function()
        local res = t.run(app, t.request { uri = "/backends" })
        assert.equal("10.0.0.2:80/3", res.body)
    end)

    it("an unknown group is an error", function()
        local moxy = require "moxy"
        assert.has_error(function() moxy.upstream("nope") end,
                         "no upstream group \"nope\" (declare it under upstreams: in the config)")
    end)
end)
