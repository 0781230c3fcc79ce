-- examples/sticky.lua through moxy.test: a sid sticks to one origin, sids spread over the
-- origins as moxy.balancer's ketama puts them, a client without a sid goes round robin
-- and gets one.
local t = require "moxy.test"
local moxy = require "moxy"

local ORIGINS = { "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80 weight=2" }


describe("examples/sticky.lua", function()
    local app

    before_each(function()
        app = t.load("examples/sticky.lua", { origins = ORIGINS })
    end)

    local function get(cookie)
        local res = t.run(app, t.request { uri = "/", headers = { cookie = cookie } })
        assert.status(200, res)
        return res
    end

    it("keeps a session on one origin, where ketama puts it", function()
        local ring = moxy.balancer.new { backends = ORIGINS, algorithm = "ketama" }
        local seen = {}
        for i = 1, 40 do
            local sid = "s" .. i
            local first = get("theme=dark; sid=" .. sid).headers["x-upstream"]
            assert.equal(tostring(ring:select(sid)), first)
            for _ = 1, 3 do
                assert.equal(first, get("sid=" .. sid).headers["x-upstream"])
            end
            assert.is_nil(get("sid=" .. sid).headers["set-cookie"])
            seen[first] = true
        end
        assert.truthy(seen["10.0.0.1:80"] and seen["10.0.0.2:80"] and seen["10.0.0.3:80"])
    end)

    it("gives a client without a sid one, going round robin by weight", function()
        local got = {}
        for i = 1, 8 do
            local res = get(nil)
            assert.matches("^sid=[%w%-]+; Path=/; HttpOnly$", res.headers["set-cookie"])
            local up = res.headers["x-upstream"]
            got[up] = (got[up] or 0) + 1
        end
        assert.same({ ["10.0.0.1:80"] = 2, ["10.0.0.2:80"] = 2, ["10.0.0.3:80"] = 4 }, got)
    end)

    it("the sid it gives then sticks", function()
        local res = get(nil)
        local sid = res.headers["set-cookie"]:match("^sid=([^;]+)")
        local home = get("sid=" .. sid).headers["x-upstream"]
        for _ = 1, 5 do
            assert.equal(home, get("sid=" .. sid).headers["x-upstream"])
        end
    end)
end)
