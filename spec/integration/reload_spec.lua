-- t.server:reload{}: a live moxy reloads its script in place (SIGHUP) and the call returns
-- once the new generation serves; a broken script is refused and the old one keeps serving.
-- Pending when there is no binary.
local t = require "moxy.test"

local DIR = "spec/integration/scripts/"


describe("t.server:reload", function()
    if not t.live.available() then
        pending("no moxy binary (run make)")
        return
    end

    local origin, proxy
    setup(function()
        origin = t.origin(function(req) return { status = 200, body = req.uri } end)
        proxy = t.server { script = DIR .. "reload_v1.lua", upstream = origin.addr,
                           config = { log_level = "info" } }
    end)
    teardown(function()
        if proxy then proxy:stop() end
        if origin then origin:stop() end
    end)

    it("serves the new script as soon as it returns, with what the old one handed over", function()
        for _ = 1, 3 do
            assert.equal("1", proxy:request { uri = "/a" }.headers["x-version"])
        end
        assert.equal(proxy, proxy:reload { script = DIR .. "reload_v2.lua" })
        local res = proxy:request { uri = "/b" }
        assert.equal(200, res.status)
        assert.equal("/b", res.body)
        assert.equal("2", res.headers["x-version"])
        assert.equal("3", res.headers["x-previous-n"])
        assert.truthy(proxy:wait_log("generation 1 retired"))
    end)

    it("raises with moxy's file:line when the script is broken; the old one keeps serving",
       function()
        local ok, err = pcall(proxy.reload, proxy, { script = DIR .. "reload_broken.lua" })
        assert.is_false(ok)
        assert.matches("reload rejected", err)
        assert.matches("reload_broken%.lua:4:", err)
        assert.equal("2", proxy:request { uri = "/c" }.headers["x-version"])
    end)
end)
