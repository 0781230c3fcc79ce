-- examples/health.lua: the status page lists the group's backends with the health checks'
-- verdict. Through moxy.test (no checks run there: every backend is up), then live: a
-- backend whose /health answers 503 is shown down and gets no traffic (pending without
-- build/moxy).
local t = require "moxy.test"
local moxy = require "moxy"

local json = moxy.json


describe("examples/health.lua", function()
    it("lists the group's backends, all usable before any check", function()
        local app = t.load("examples/health.lua",
                           { upstreams = { origin = { "10.0.0.1:80", "10.0.0.2:80 weight=2" } } })
        local res = t.run(app, t.request { uri = "/upstreams" })
        assert.status(200, res)
        assert.header("cache-control", "no-store", res)
        local doc = json.decode(res.body)
        assert.equal(2, doc.usable)
        assert.same({ addr = "10.0.0.1:80", healthy = true, usable = true, inflight = 0 },
                     doc.backends[1])
        assert.equal("10.0.0.2:80", doc.backends[2].addr)
    end)

    describe("live", function()
        local good, sick, srv

        after_each(function()
            for _, p in ipairs({ srv, good, sick }) do
                if p then p:stop() end
            end
            srv, good, sick = nil, nil, nil
        end)

        it("shows a backend that fails its check as down and sends it nothing", function()
            if not (t.live and t.live.available()) then
                pending("no moxy binary or no luasocket (make)")
                return
            end
            good = t.origin(function() return { status = 200, body = "good" } end)
            sick = t.origin(function(req)
                if req.uri == "/health" then
                    return { status = 503, body = "not ready" }
                end
                return { status = 200, body = "sick" }
            end)
            srv = t.server {
                script = "examples/health.lua",
                service = { upstream = "origin" },
                config = { upstreams = { origin = {
                    backends = { good.addr, sick.addr },
                    health_check = { type = "http", path = "/health", interval = 0.1, fall = 1 },
                } } },
            }
            local doc
            for _ = 1, 100 do
                doc = json.decode(srv:request { uri = "/upstreams" }.body)
                if doc.usable == 1 then break end
                os.execute("sleep 0.05")
            end
            assert.equal(1, doc.usable)
            assert.same({ true, false }, { doc.backends[1].healthy, doc.backends[2].healthy })
            for i = 1, 6 do
                local res = srv:request { uri = "/page" .. i }
                assert.status(200, res)
                assert.equal("good", res.body)
            end
            local down = "upstream origin backend " .. sick.addr:gsub("%p", "%%%0")
                         .. " is down %(http check: status 503, 1 fail%)"
            assert.truthy(srv:wait_log(down), srv:logs())
        end)
    end)
end)
