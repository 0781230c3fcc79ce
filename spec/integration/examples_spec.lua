-- The examples through both engines with t.each_engine: every case runs through t.run (the
-- fake engine) and through build/moxy with a real origin, and the two must agree (status,
-- body, the headers of the fake result, whether the upstream was reached).
-- Without build/moxy the live half is pending.
local t = require "moxy.test"


-- The origin of both engines (no upvalues: it also runs in the origin process).
-- /status/NNN answers NNN; everything else 200 with "METHOD URI BODY"; it echoes the
-- x-forwarded-for and authorization it got so the engines' upstream requests are compared.
local function origin(req)
    local code = tonumber(req.uri:match("^/status/(%d%d%d)"))
    local xff, auth = req.headers["x-forwarded-for"], req.headers["authorization"]
    return {
        status = code or 200,
        headers = { ["content-type"] = "text/plain", ["x-origin"] = "yes",
                    ["x-seen-xff"] = type(xff) == "table" and table.concat(xff, ", ") or xff,
                    ["x-seen-auth"] = auth },
        body = (code == 204 or code == 304) and "" or (req.method .. " " .. req.uri .. " "
                                                        .. req.body),
    }
end


t.each_engine("examples/hello.lua", "examples/hello.lua", function(run)
    local res = run { uri = "/hello" }
    assert.status(200, res)
    assert.equal("hello from moxy\n", res.body)
    assert.header("content-type", "text/plain", res)
    assert.is_nil(res.upstream)

    res = run { uri = "/hello?x=1", headers = { ["x-anything"] = "1" } }
    assert.status(200, res)
    assert.equal("hello from moxy\n", res.body)

    res = run { uri = "/hello/more" }
    assert.status(200, res)
    assert.equal("GET /hello/more ", res.body)
    assert.header("x-origin", "yes", res)
    assert.is_table(res.upstream)

    res = run { method = "POST", uri = "/form?a=b", body = "name=moxy",
                headers = { ["content-type"] = "application/x-www-form-urlencoded" } }
    assert.status(200, res)
    assert.equal("POST /form?a=b name=moxy", res.body)

    res = run { method = "PUT", uri = "/chunks", body_chunks = { "ab", "cd", "e" } }
    assert.status(200, res)
    assert.equal("PUT /chunks abcde", res.body)

    res = run { uri = "/status/404" }
    assert.status(404, res)

    res = run { uri = "/status/503" }
    assert.status(503, res)

    res = run { method = "DELETE", uri = "/status/204" }
    assert.status(204, res)
    assert.equal("", res.body)
end, { origin = origin })


t.each_engine("examples/auth_gateway.lua", "examples/auth_gateway.lua", function(run)
    local res = run { uri = "/x" }
    assert.status(401, res)
    assert.equal("login first\n", res.body)
    assert.header("www-authenticate", "Bearer", res)
    assert.header("x-served-by", "moxy", res)
    assert.is_nil(res.upstream)

    res = run { method = "POST", uri = "/x", body = "payload" }
    assert.status(401, res)

    res = run { uri = "/api/items?page=2", headers = { authorization = "Bearer a" } }
    assert.status(200, res)
    assert.equal("GET /api/items?page=2 ", res.body)
    assert.header("x-served-by", "moxy", res)
    assert.header("x-origin", "yes", res)
    assert.header("x-seen-auth", "Bearer a", res)
    assert.header("x-seen-xff", "127.0.0.1", res)

    res = run { uri = "/status/500", headers = { authorization = "Bearer a" } }
    assert.status(500, res)
    assert.header("x-served-by", "moxy", res)

    res = run { method = "POST", uri = "/submit", body = "abc",
                headers = { authorization = "Bearer b" } }
    assert.status(200, res)
    assert.equal("POST /submit abc", res.body)
end, { origin = origin })


-- A forged X-Forwarded-For: the script replaces it (req:set_header) in both engines.
t.each_engine("examples/auth_gateway.lua forged x-forwarded-for", "examples/auth_gateway.lua",
              function(run)
    local res = run { uri = "/x", headers = { authorization = "x",
                                              ["X-Forwarded-For"] = "6.6.6.6" } }
    assert.status(200, res)
    assert.header("x-seen-xff", "127.0.0.1", res)
end, { origin = origin })


-- Live origins and servers of the examples' own tests below (pending without build/moxy).
local live = t.live
local function live_it(name, fn)
    if not (live and live.available()) then
        pending(name .. ": no moxy binary at " .. (live and live.binary() or "(no luasocket)"))
        return
    end
    it(name, fn)
end


-- Starts moxy on <script> with init(<config>); stops it (and <origins>) after fn(server).
local function with_server(script, config, origins, fn)
    local server
    local ok, err = pcall(function()
        server = t.server { script = script, init = config }
        fn(server)
    end)
    if server then server:stop() end
    for _, o in ipairs(origins) do o:stop() end
    if not ok then
        error(err, 0)
    end
    return server
end


-- load_balancer: the script's choice shows in x-upstream; t.each_engine's live server
-- sends every peer to its one origin, so the two real origins are checked below.
t.each_engine("examples/load_balancer.lua", "examples/load_balancer.lua", function(run)
    local seen = {}
    for i = 1, 4 do
        local res = run { uri = "/lb/" .. i }
        assert.status(200, res)
        assert.equal("GET /lb/" .. i .. " ", res.body)
        assert.is_nil(res.headers["x-upstream-failed"])
        seen[i] = res.headers["x-upstream"]
    end
    assert.same({ "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9001", "127.0.0.1:9002" }, seen)

    local res = run { method = "POST", uri = "/status/503", body = "x" }
    assert.status(503, res)
    assert.header("x-upstream", "127.0.0.1:9001", res)
end, { origin = origin })


describe("examples/load_balancer.lua over two live origins", function()
    local function origin_a(req)
        return { status = 200, headers = { ["content-type"] = "text/plain" }, body = "A " .. req.uri }
    end
    local function origin_b(req)
        return { status = 200, headers = { ["content-type"] = "text/plain" }, body = "B " .. req.uri }
    end

    live_it("alternates between them", function()
        local a, b = t.origin(origin_a), t.origin(origin_b)
        with_server("examples/load_balancer.lua", { origins = { a.addr, b.addr } }, { a, b },
                    function(server)
            local bodies, ups = {}, {}
            for i = 1, 4 do
                local res = server:request { uri = "/" .. i }
                assert.equal(200, res.status)
                bodies[i], ups[i] = res.body, res.headers["x-upstream"]
            end
            assert.same({ "A /1", "B /2", "A /3", "B /4" }, bodies)
            assert.same({ a.addr, b.addr, a.addr, b.addr }, ups)
            assert.equal(2, #a:requests())
            assert.equal(2, #b:requests())
        end)
    end)

    live_it("retries once on the other origin when one refuses connections", function()
        local a = t.origin(origin_a)
        local dead = "127.0.0.1:" .. live.free_port()        -- nobody listens there
        with_server("examples/load_balancer.lua", { origins = { a.addr, dead } }, { a },
                    function(server)
            local res = server:request { uri = "/1" }
            assert.equal(200, res.status)
            assert.equal("A /1", res.body)
            assert.is_nil(res.headers["x-upstream-failed"])

            res = server:request { uri = "/2" }                  -- dead's turn
            assert.equal(200, res.status)
            assert.equal("A /2", res.body)
            assert.equal(a.addr, res.headers["x-upstream"])
            assert.equal(dead, res.headers["x-upstream-failed"])
            assert.equal(2, #a:requests())
            assert.truthy(server:wait_log("connecting to " .. dead:gsub("%p", "%%%0")
                                          .. " failed %(.*%), retrying on the next origin"))
            assert.truthy(server:wait_log("fail_to_connect asked for a retry"))
        end)
    end)

    live_it("gives up after one retry: 502", function()
        local dead1 = "127.0.0.1:" .. live.free_port()
        local dead2 = "127.0.0.1:" .. live.free_port()
        with_server("examples/load_balancer.lua", { origins = { dead1, dead2 } }, {},
                    function(server)
            local res = server:request { uri = "/1" }
            assert.equal(502, res.status)
            assert.equal(dead2, res.headers["x-upstream"])
            assert.equal(dead1, res.headers["x-upstream-failed"])
        end)
    end)
end)


-- rewrite: an origin with a server header and chunked bodies that split "http://"; it
-- reports whether it got a cookie, and whether x-request-id was a number (the ids differ:
-- the fake counts sessions across the whole busted run, moxy per worker).
local function rewrite_origin(req)
    local rid = req.headers["x-request-id"]
    local h = { ["content-type"] = req.uri:match("^/bin") and "application/octet-stream"
                                   or "text/html",
                server = "origin/1.0",
                ["x-seen-cookie"] = req.headers.cookie and "yes" or "no",
                ["x-seen-rid"] = type(rid) == "string" and rid:match("^%d+$") and "number"
                                 or tostring(rid) }
    if req.uri == "/split" or req.uri == "/bin" then
        return { status = 200, headers = h,
                 body = { '<a href="htt', 'p://a.test/">a</a> http', "://b.test h", "ttp:/",
                          "/c.test htt" } }
    end
    return { status = 200, headers = h, body = "GET " .. req.uri .. " http://x.test/" }
end


t.each_engine("examples/rewrite.lua", "examples/rewrite.lua", function(run)
    local res = run { uri = "/split", headers = { cookie = "sid=1" } }
    assert.status(200, res)
    assert.equal('<a href="https://a.test/">a</a> https://b.test https://c.test htt', res.body)
    assert.header("x-frame-options", "DENY", res)
    assert.header("x-seen-cookie", "no", res)
    assert.header("x-seen-rid", "number", res)
    assert.is_nil(res.headers.server)

    res = run { uri = "/plain" }
    assert.status(200, res)
    assert.equal("GET /plain https://x.test/", res.body)
    assert.is_nil(res.headers.server)

    res = run { uri = "/bin" }
    assert.equal('<a href="http://a.test/">a</a> http://b.test http://c.test htt', res.body)
    assert.header("x-frame-options", "DENY", res)
end, { origin = rewrite_origin })


-- ab_routing: the group in x-ab-group (t.each_engine's live server sends every peer to its
-- one origin; the two real origins are checked below). Both engines' client is 127.0.0.1,
-- which hashes to group a.
local function ab_origin(req)
    return { status = 200, headers = { ["content-type"] = "text/plain",
                                       ["x-seen-group"] = req.headers["x-ab-group"] or "none" },
             body = req.method .. " " .. req.uri }
end

local AB_ATTRS = "; Path=/; Max-Age=2592000; SameSite=Lax"

t.each_engine("examples/ab_routing.lua", "examples/ab_routing.lua", function(run)
    local res = run { uri = "/new" }
    assert.status(200, res)
    assert.equal("GET /new", res.body)
    assert.header("x-ab-group", "a", res)
    assert.header("x-seen-group", "a", res)
    assert.header("set-cookie", "ab=a" .. AB_ATTRS, res)

    res = run { uri = "/returning", headers = { cookie = "sid=1; ab=b" } }
    assert.header("x-ab-group", "b", res)
    assert.header("x-seen-group", "b", res)
    assert.is_nil(res.headers["set-cookie"])

    res = run { uri = "/unknown", headers = { cookie = "ab=zz" } }
    assert.header("x-ab-group", "a", res)
    assert.header("set-cookie", "ab=a" .. AB_ATTRS, res)
end, { origin = ab_origin })


describe("examples/ab_routing.lua over two live origins", function()
    live_it("sends each group to its origin", function()
        local a = t.origin(function(req) return { status = 200, body = "A " .. req.uri } end)
        local b = t.origin(function(req) return { status = 200, body = "B " .. req.uri } end)
        with_server("examples/ab_routing.lua", { groups = { a = a.addr, b = b.addr } }, { a, b },
                    function(server)
            local res = server:request { uri = "/1", headers = { cookie = "ab=b" } }
            assert.equal("B /1", res.body)
            assert.equal("b", res.headers["x-ab-group"])
            res = server:request { uri = "/2", headers = { cookie = "ab=a" } }
            assert.equal("A /2", res.body)
            res = server:request { uri = "/3" }
            assert.equal("A /3", res.body)
            assert.equal("ab=a" .. AB_ATTRS, res.headers["set-cookie"])
            assert.equal(1, #b:requests())
            assert.equal("b", b:requests()[1].headers["x-ab-group"])
            assert.equal(2, #a:requests())
        end)
    end)
end)


-- json_api: one state per engine (a fresh t.load for the fake, a fresh moxy live), so
-- the ids agree.
t.each_engine("examples/json_api.lua", "examples/json_api.lua", function(run)
    local seed = '[{"id":1,"name":"apple"},{"id":2,"name":"pear"}]'
    local res = run { uri = "/api/items" }
    assert.status(200, res)
    assert.equal(seed, res.body)
    assert.header("content-type", "application/json", res)
    assert.is_nil(res.upstream)

    res = run { uri = "/api/items/1" }
    assert.status(200, res)
    assert.equal('{"id":1,"name":"apple"}', res.body)

    res = run { uri = "/api/items/7" }
    assert.status(404, res)
    assert.equal('{"error":"no item 7"}', res.body)
    assert.header("content-type", "application/json", res)

    res = run { method = "POST", uri = "/api/items", body = '{"name":"kiwi"}',
                headers = { ["content-type"] = "application/json" } }
    assert.status(201, res)
    assert.equal('{"id":3,"name":"kiwi"}', res.body)
    assert.header("location", "/api/items/3", res)

    res = run { method = "POST", uri = "/api/items", body_chunks = { '{"na', 'me":"f', 'ig"}' } }
    assert.status(201, res)
    assert.equal('{"id":4,"name":"fig"}', res.body)

    res = run { method = "POST", uri = "/api/items", body = '{"name":' }
    assert.status(400, res)
    assert.matches('^{"error":"invalid JSON: ', res.body)

    res = run { method = "POST", uri = "/api/items", body = '{"name":"' .. ("x"):rep(70000) .. '"}' }
    assert.status(413, res)
    assert.equal('{"error":"body larger than 65536 bytes"}', res.body)

    res = run { uri = "/api/items" }
    assert.equal('[{"id":1,"name":"apple"},{"id":2,"name":"pear"},{"id":3,"name":"kiwi"},'
                 .. '{"id":4,"name":"fig"}]', res.body)

    res = run { method = "DELETE", uri = "/api/items/1", body = "x" }
    assert.status(200, res)
    assert.equal("DELETE /api/items/1 x", res.body)
    assert.header("x-origin", "yes", res)
    assert.is_table(res.upstream)
end, { origin = origin })


describe("examples/sticky.lua over two live origins", function()
    local function origin_a(req)
        return { status = 200, headers = { ["content-type"] = "text/plain" }, body = "A " .. req.uri }
    end
    local function origin_b(req)
        return { status = 200, headers = { ["content-type"] = "text/plain" }, body = "B " .. req.uri }
    end

    live_it("keeps each sid on one origin, the one x-upstream names", function()
        local a, b = t.origin(origin_a), t.origin(origin_b)
        local by_addr = { [a.addr] = "A", [b.addr] = "B" }
        with_server("examples/sticky.lua", { origins = { a.addr, b.addr } }, { a, b },
                    function(server)
            local seen = {}
            for i = 1, 12 do
                local home
                for j = 1, 3 do
                    local res = server:request { uri = "/" .. j,
                                                 headers = { cookie = "sid=user" .. i } }
                    assert.equal(200, res.status)
                    local who = res.body:sub(1, 1)
                    assert.equal(by_addr[res.headers["x-upstream"]], who)
                    home = home or who
                    assert.equal(home, who)
                end
                seen[home] = true
            end
            assert.truthy(seen.A and seen.B)
            local res = server:request { uri = "/new" }
            assert.matches("^sid=", res.headers["set-cookie"])
        end)
    end)

    live_it("fails over to the other origin when a session's origin is down", function()
        local a = t.origin(origin_a)
        local dead = "127.0.0.1:" .. live.free_port()
        with_server("examples/sticky.lua", { origins = { a.addr, dead } }, { a },
                    function(server)
            for i = 1, 10 do
                local res = server:request { uri = "/", headers = { cookie = "sid=u" .. i } }
                assert.equal(200, res.status)
                assert.equal(a.addr, res.headers["x-upstream"])
            end
        end)
    end)
end)
