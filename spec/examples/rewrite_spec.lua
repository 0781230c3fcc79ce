-- examples/rewrite.lua through moxy.test: headers both ways, and the body rewritten as
-- it streams (opts.upstream's body given as a list of chunks: one response_body_filter
-- call each, then the final ("", eos)).
local t = require "moxy.test"


describe("examples/rewrite.lua", function()
    local app

    before_each(function()
        app = t.load("examples/rewrite.lua")
    end)

    -- An upstream answering <chunks> as <ctype> with a server header.
    local function upstream(chunks, ctype)
        return function(req)
            return { status = 200, headers = { ["content-type"] = ctype or "text/html",
                                               server = "origin/1.0" }, body = chunks }
        end
    end

    it("adds x-request-id and removes cookie and accept-encoding upstream", function()
        local s = t.request { uri = "/page", headers = { cookie = "sid=secret; x=1",
                                                         ["accept-encoding"] = "gzip",
                                                         ["x-keep"] = "yes" } }
        local res = t.run(app, s, { upstream = upstream("ok") })
        assert.status(200, res)
        local sent = res.upstream.request.headers
        assert.equal(tostring(s:id()), sent["x-request-id"])
        assert.matches("^%d+$", sent["x-request-id"])
        assert.is_nil(sent.cookie)
        assert.is_nil(sent["accept-encoding"])
        assert.equal("yes", sent["x-keep"])
        assert.equal("127.0.0.1:9001", tostring(res.upstream.peer))
    end)

    it("gives each request its own x-request-id", function()
        local r1 = t.run(app, t.request {})
        local r2 = t.run(app, t.request {})
        assert.are_not.equal(r1.upstream.request.headers["x-request-id"],
                             r2.upstream.request.headers["x-request-id"])
    end)

    it("sets x-frame-options and removes server downstream", function()
        local res = t.run(app, t.request {}, { upstream = upstream("hi") })
        assert.header("x-frame-options", "DENY", res)
        assert.is_nil(res.headers.server)
        assert.header("content-type", "text/html", res)
        assert.equal("hi", res.body)
    end)

    it("rewrites http:// in a one-chunk body", function()
        local res = t.run(app, t.request {}, { upstream = upstream(
            { 'a <a href="http://x.test/">x</a> http://y.test https://z.test' }) })
        assert.equal('a <a href="https://x.test/">x</a> https://y.test https://z.test', res.body)
    end)

    it("rewrites http:// split across chunks at every position", function()
        local text = "see http://a.test and http://b.test/http://c"
        local want = "see https://a.test and https://b.test/https://c"
        for cut = 1, #text - 1 do
            local res = t.run(app, t.request {}, { upstream = upstream(
                { text:sub(1, cut), text:sub(cut + 1) }) })
            assert.equal(want, res.body, "cut at " .. cut)
        end
        -- one byte per chunk
        local bytes = {}
        for i = 1, #text do bytes[i] = text:sub(i, i) end
        assert.equal(want, t.run(app, t.request {}, { upstream = upstream(bytes) }).body)
    end)

    it("holds back only a possible start of http://, and sends it at the end", function()
        local res = t.run(app, t.request {}, { upstream = upstream({ "ends with htt", "" }) })
        assert.equal("ends with htt", res.body)
        res = t.run(app, t.request {}, { upstream = upstream({ "ends with h", "ttpx" }) })
        assert.equal("ends with httpx", res.body)
        res = t.run(app, t.request {}, { upstream = upstream({ "htt", "p:", "/", "/x" }) })
        assert.equal("https://x", res.body)
    end)

    it("streams: each chunk comes out as soon as it cannot start a match", function()
        local out = {}
        local s = t.request { phase = "response_body_filter", response = { status = 200 } }
        local ctx = { rewrite = true, carry = "" }
        local function feed(chunk, eos)
            out[#out + 1] = t.phase(app, "response_body_filter", s, chunk, eos, ctx)
        end
        feed("go to http://a ", false)
        feed("or htt", false)
        feed("p://b", false)
        feed("", true)
        assert.same({ "go to https://a ", "or ", "https://b", "" }, out)
    end)

    it("leaves other content types alone", function()
        local body = { "http://a", "\0http://b" }
        local res = t.run(app, t.request {}, { upstream = upstream(body, "image/png") })
        assert.equal("http://a\0http://b", res.body)
        assert.header("x-frame-options", "DENY", res)
        res = t.run(app, t.request {}, { upstream = upstream({ "http://a" },
                                                             "application/json; charset=utf-8") })
        assert.equal("https://a", res.body)
    end)

    it("leaves compressed bodies alone", function()
        local res = t.run(app, t.request {}, { upstream = function()
            return { status = 200, headers = { ["content-type"] = "text/html",
                                               ["content-encoding"] = "br" },
                     body = { "http://a" } }
        end })
        assert.equal("http://a", res.body)
    end)
end)
