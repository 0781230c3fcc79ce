-- examples/subrequest.lua: through moxy.test's fake engine (opts.http answers the auth
-- service and the backends), then live with a real origin playing all three.
local t = require "moxy.test"


-- The auth service and the backends of the fake runs: /auth knows the token "good"
-- (x-user alice); /a and /b answer after <delay> seconds of fake time.
local function services(delay_a, delay_b)
    return function(req)
        if req.path == "/auth" then
            if req.headers["authorization"] == "Bearer good" then
                return { status = 200, headers = { ["x-user"] = "alice" } }
            end
            return { status = 401 }
        elseif req.path == "/a" then
            return { status = 200, body = "from a", delay = delay_a }
        elseif req.path == "/b" then
            return { status = 200, body = "from b", delay = delay_b }
        end
        return { status = 404 }
    end
end


describe("examples/subrequest.lua", function()
    local app = t.load("examples/subrequest.lua", { auth_url = "http://auth.test/auth",
                                                    backend_url = "http://backend.test" })

    it("asks for a token before calling anyone", function()
        local res = t.run(app, t.request { uri = "/x" }, { http = services(0, 0) })
        assert.status(401, res)
        assert.header("www-authenticate", "Bearer", res)
        assert.same({}, res.http)
        assert.is_nil(res.upstream)
    end)

    it("forwards the token to the auth service and the user upstream", function()
        local res = t.run(app, t.request { uri = "/x", headers = { authorization = "Bearer good" } },
                          { http = services(0, 0) })
        assert.status(200, res)
        assert.equal("http://auth.test/auth", res.http[1].url)
        assert.equal("Bearer good", res.http[1].headers["authorization"])
        assert.equal("alice", res.upstream.request.headers["x-user"])
        assert.is_nil(res.upstream.request.headers["authorization"])
    end)

    it("refuses what the auth service refuses", function()
        local res = t.run(app, t.request { headers = { authorization = "Bearer bad" } },
                          { http = services(0, 0) })
        assert.status(403, res)
        assert.is_nil(res.upstream)
    end)

    it("answers 503 when the auth service cannot be reached", function()
        local res = t.run(app, t.request { headers = { authorization = "Bearer good" } },
                          { http = function() return nil, "connect" end })
        assert.status(503, res)
        assert.logged("auth service: connect", res)
    end)

    it("builds /aggregate from two parallel calls: the max of their times", function()
        local clock = t.clock(0)
        local res = t.run(app, t.request { uri = "/aggregate",
                                           headers = { authorization = "Bearer good" } },
                          { http = services(1, 1.5), clock = clock })
        assert.status(200, res)
        assert.same({ user = "alice", a = "from a", b = "from b" }, require("cjson").decode(res.body))
        assert.equal(1.5, clock.now)          -- 1.5, not 1 + 1.5
        assert.is_nil(res.upstream)
    end)
end)


describe("examples/subrequest.lua live", function()
    if not t.live.available() then
        pending("no moxy binary (run make)")
        return
    end
    local origin, proxy
    setup(function()
        -- One origin plays the auth service, the backends and the proxied upstream.
        origin = t.origin(function(req)
            if req.uri == "/auth" then
                if req.headers["authorization"] == "Bearer good" then
                    return { status = 200, headers = { ["x-user"] = "alice" } }
                end
                return { status = 401 }
            elseif req.uri == "/a" or req.uri == "/b" then
                return { status = 200, body = "from " .. req.uri:sub(2) }
            end
            return { status = 200, body = "user=" .. tostring(req.headers["x-user"]) }
        end)
        local base = "http://" .. origin.addr
        proxy = t.server { script = "examples/subrequest.lua", upstream = origin.addr,
                           init = { auth_url = base .. "/auth", backend_url = base } }
    end)
    teardown(function()
        if proxy then proxy:stop() end
        if origin then origin:stop() end
    end)

    it("checks with the auth service, then proxies with x-user", function()
        local res = proxy:request { uri = "/page", headers = { authorization = "Bearer good" } }
        assert.equal(200, res.status)
        assert.equal("user=alice", res.body)
        res = proxy:request { uri = "/page", headers = { authorization = "Bearer bad" } }
        assert.equal(403, res.status)
        res = proxy:request { uri = "/page" }
        assert.equal(401, res.status)
    end)

    it("answers /aggregate from two calls", function()
        local res = proxy:request { uri = "/aggregate", headers = { authorization = "Bearer good" } }
        assert.equal(200, res.status)
        assert.same({ user = "alice", a = "from a", b = "from b" }, require("cjson").decode(res.body))
    end)
end)
