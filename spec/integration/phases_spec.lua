-- Phases that wait, through both engines (t.each_engine): the fake (t.run) and the live
-- binary must agree on what a script that sleeps in every phase, filters the request
-- body and replaces it produces.
local t = require "moxy.test"

local SCRIPT = "spec/integration/scripts/phases_app.lua"


local function echo_origin(req)
    return { status = 200, headers = { ["content-type"] = "text/plain" },
             body = req.method .. " " .. req.uri .. " " .. req.body }
end


t.each_engine("phases that wait (" .. SCRIPT .. ")", SCRIPT, function(run)
    local res = run { uri = "/A" }
    assert.status(200, res)
    assert.header("x-urf", "slept", res)
    assert.header("x-rf", "slept", res)
    assert.header("x-up", "1 200", res)
    assert.equal("get /a <eos>", res.body)

    -- request_body_filter: upper case, then "|" at the end; the origin echoes it
    res = run { method = "POST", uri = "/B", body = "Hello World" }
    assert.status(200, res)
    assert.equal("post /b hello world|<eos>", res.body)

    res = run { method = "POST", uri = "/C", body_chunks = { "abc", "DEF", "ghi" } }
    assert.equal("post /c abcdefghi|<eos>", res.body)

    -- s.req:set_body(): sent as is, the filter does not run
    res = run { method = "POST", uri = "/D?setbody=Zz", body = "dropped" }
    assert.status(200, res)
    assert.equal("post /d?setbody=zz zz<eos>", res.body)

    -- s.req:body_chunks() in request_filter; the body still goes up (filtered)
    res = run { method = "POST", uri = "/E?pull=1", body = string.rep("x", 5000) }
    assert.header("x-pulled", "5000", res)
    assert.equal("post /e?pull=1 " .. string.rep("x", 5000) .. "|<eos>", res.body)

    -- s.resp:read_body() / s.resp:set_body(): buffered mode, then the body filters
    res = run { uri = "/G?rb=1000" }
    assert.equal("get /g?rb=1000 +<eos>", res.body)
    res = run { uri = "/G?rb=3" }
    assert.header("x-rb", "too_large", res)
    assert.equal("get /g?rb=3 <eos>", res.body)
    -- an error after a wait: a plain 500 page (no body filter on it, in both engines)
    res = run { uri = "/H?boom=1" }
    assert.status(500, res)
    assert.equal("500 Internal Server Error\n", res.body)

    res = run { uri = "/L?local=1" }
    assert.header("x-up", "none", res)
    assert.equal("replaced 12<eos>", res.body)
end, { origin = echo_origin })


describe("phases that wait, live only", function()
    local live = t.live
    if not (live and live.available()) then
        pending("no moxy binary")
        return
    end

    it("a filtered request body goes up chunked, without content-length", function()
        local origin = t.origin(echo_origin)
        local server = t.server { script = SCRIPT, upstream = origin.addr, peer = origin.addr }
        local ok, err = pcall(function()
            local res = server:request { method = "POST", uri = "/F", body = "abc" }
            assert.equal(200, res.status)
            local seen = origin:requests()
            local h = seen[#seen].headers
            assert.is_nil(h["content-length"])
            assert.equal("chunked", h["transfer-encoding"])
        end)
        server:stop()
        origin:stop()
        assert(ok, err)
    end)
end)
