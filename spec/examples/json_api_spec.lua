-- examples/json_api.lua through moxy.test.
local t = require "moxy.test"
local moxy = require "moxy"

local SEED = '[{"id":1,"name":"apple"},{"id":2,"name":"pear"}]'


describe("examples/json_api.lua", function()
    local app

    before_each(function()
        app = t.load("examples/json_api.lua")
    end)

    local function run(req, opts)
        return t.run(app, t.request(req), opts)
    end

    local function post(body)
        return run { method = "POST", uri = "/api/items", body = body,
                     headers = { ["content-type"] = "application/json" } }
    end

    local function assert_json(status, res)
        assert.status(status, res)
        assert.header("content-type", "application/json", res)
        assert.equal("local", res.source)
        assert.is_nil(res.upstream)
    end

    it("lists the items", function()
        local res = run { uri = "/api/items" }
        assert_json(200, res)
        assert.equal(SEED, res.body)
        assert.equal(SEED, run({ uri = "/api/items/?x=1" }).body)
    end)

    it("gets one item, or 404 with an error", function()
        local res = run { uri = "/api/items/2" }
        assert_json(200, res)
        assert.equal('{"id":2,"name":"pear"}', res.body)

        for _, id in ipairs { "3", "0", "abc", "0x1", "1e0", "99999999999999999999" } do
            res = run { uri = "/api/items/" .. id }
            assert_json(404, res)
            assert.same({ error = "no item " .. id }, moxy.json.decode(res.body))
        end
    end)

    it("creates an item: 201 with it and its location, then lists and gets it", function()
        local res = post '{"name":"kiwi","ignored":true}'
        assert_json(201, res)
        assert.equal('{"id":3,"name":"kiwi"}', res.body)
        assert.header("location", "/api/items/3", res)

        res = post '{"name":"fig \\"d\\" \\u00e9"}'
        assert_json(201, res)
        assert.same({ id = 4, name = 'fig "d" \195\169' }, moxy.json.decode(res.body))

        assert.equal('{"id":3,"name":"kiwi"}', run({ uri = "/api/items/3" }).body)
        local list = moxy.json.decode(run({ uri = "/api/items" }).body)
        assert.equal(4, #list)
        assert.same({ id = 3, name = "kiwi" }, list[3])
    end)

    it("keeps its items per loaded script (per worker VM live)", function()
        post '{"name":"kiwi"}'
        local other = t.load("examples/json_api.lua")
        assert.equal(SEED, t.run(other, t.request { uri = "/api/items" }).body)
        assert.equal(3, #moxy.json.decode(run({ uri = "/api/items" }).body))
    end)

    it("answers 400 with an error on bad JSON, and creates nothing", function()
        for _, body in ipairs { "", "{", "{name:1}", '{"name":"x"} trailing', "nul" } do
            local res = post(body)
            assert_json(400, res)
            assert.matches("^invalid JSON: ", moxy.json.decode(res.body).error, 1, false)
        end
        for _, body in ipairs { "null", "[]", '["x"]', '"x"', "1", '{"name":1}', '{"name":""}',
                                "{}" } do
            local res = post(body)
            assert_json(400, res)
            assert.equal('expected an object with a non-empty string "name"',
                         moxy.json.decode(res.body).error, body)
        end
        assert.equal(SEED, run({ uri = "/api/items" }).body)
    end)

    it("answers 413 past 64 KiB", function()
        local big = '{"name":"' .. string.rep("x", 65536) .. '"}'
        local res = post(big)
        assert_json(413, res)
        assert.same({ error = "body larger than 65536 bytes" }, moxy.json.decode(res.body))
        local fits = '{"name":"' .. string.rep("x", 65536 - 11) .. '"}'
        assert.equal(65536, #fits)
        assert.status(201, post(fits))
    end)

    it("proxies everything else to 127.0.0.1:9001", function()
        local cases = {
            { "GET", "/" }, { "GET", "/api/other" }, { "DELETE", "/api/items" },
            { "PUT", "/api/items/1" }, { "GET", "/api/items/1/parts" }, { "HEAD", "/api/items" },
        }
        for _, c in ipairs(cases) do
            local res = run({ method = c[1], uri = c[2] }, { upstream = function(req)
                return { status = 200, headers = { ["x-origin"] = "yes" },
                         body = req.method .. " " .. req.uri }
            end })
            assert.status(200, res)
            assert.header("x-origin", "yes", res)
            assert.equal("127.0.0.1:9001", tostring(res.upstream.peer))
            assert.equal(c[1] == "HEAD" and "" or c[1] .. " " .. c[2], res.body)
        end
    end)
end)
