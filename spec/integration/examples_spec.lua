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
