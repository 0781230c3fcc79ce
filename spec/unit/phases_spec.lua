-- The fake engine (t.run) for what issue 3's phase work added: waits in every phase,
-- request_body_filter, error_while_proxy / fail_to_connect retries, s.req:set_body(),
-- s.req:body_chunks(), s:upstream(), s:downstream_reused().
local t = require "moxy.test"
local moxy = require "moxy"


describe("every phase may wait (fake engine)", function()
    it("moxy.sleep in response, body, trailer and logging phases advances the clock", function()
        local clock = t.clock(1000)
        local seen = {}
        local app = {}
        local function nap(name)
            return function()
                moxy.sleep(1)
                seen[#seen + 1] = name .. "@" .. (moxy.now() - 1000)
            end
        end
        app.upstream_response_filter = nap("urf")
        app.response_filter = nap("rf")
        app.response_body_filter = function(s, chunk, eos) nap("rbf")() end
        app.response_trailer_filter = nap("rtf")
        app.logging = nap("log")
        local res = t.run(app, t.request { uri = "/x" }, {
            clock = clock,
            upstream = function() return { status = 200, body = "b", trailers = { t1 = "v" } } end,
        })
        assert.status(200, res)
        assert.equal("b", res.body)
        assert.same({ "urf@1", "rf@2", "rbf@3", "rbf@4", "rtf@5", "log@6" }, seen)
    end)
end)


describe("request_body_filter (fake engine)", function()
    local function app_with(filter)
        return { request_body_filter = filter }
    end

    it("sees each chunk then eos, and its results go up chunked", function()
        local calls = {}
        local app = app_with(function(s, chunk, eos, ctx)
            calls[#calls + 1] = { chunk, eos }
            if chunk == "drop" then return "" end
            if not eos then return chunk:upper() end
        end)
        local res = t.run(app, t.request { method = "POST", uri = "/u",
                                           body_chunks = { "ab", "drop", "cd" } })
        assert.status(200, res)
        assert.same({ { "ab", false }, { "drop", false }, { "cd", false }, { "", true } }, calls)
        local req = res.upstream.request
        assert.equal("ABCD", req.body)
        assert.is_nil(req.headers["content-length"])
        assert.equal("chunked", req.headers["transfer-encoding"])
    end)

    it("does not run without a body", function()
        local n = 0
        local res = t.run(app_with(function() n = n + 1 end), t.request { uri = "/" })
        assert.status(200, res)
        assert.equal(0, n)
    end)

    it("an error is a 500 and the upstream is not asked", function()
        local asked = false
        local res = t.run(app_with(function() error("no") end),
                          t.request { method = "POST", body = "x" },
                          { upstream = function() asked = true; return { status = 200 } end })
        assert.status(500, res)
        assert.is_false(asked)
        assert.logged("lua request_body_filter .*: no", res)
    end)

    it("a wrong return type is an error", function()
        local res = t.run(app_with(function() return 5 end),
                          t.request { method = "POST", body = "x" })
        assert.status(500, res)
        assert.logged("request_body_filter returned number", res)
    end)

    it("s.req:set_body() replaces the body and skips the filter", function()
        local n = 0
        local app = app_with(function() n = n + 1 end)
        app.request_filter = function(s) s.req:set_body("new body") end
        local res = t.run(app, t.request { method = "POST", body = "old" })
        assert.equal(0, n)
        assert.equal("new body", res.upstream.request.body)
        assert.equal("8", res.upstream.request.headers["content-length"])
    end)

    it("s.req:set_body() is refused after proxying started", function()
        local app = { response_filter = function(s) s.req:set_body("x") end }
        local res = t.run(app, t.request { method = "POST", body = "old" })
        assert.status(500, res)
        assert.logged("set_body%(%) cannot be called in response_filter", res)
    end)

    it("s.req:body_chunks() pulls the chunks in order", function()
        local got = {}
        local app = { request_filter = function(s)
            for c in s.req:body_chunks() do got[#got + 1] = c end
        end }
        t.run(app, t.request { method = "POST", body_chunks = { "a", "bb", "ccc" } })
        assert.same({ "a", "bb", "ccc" }, got)
    end)
end)


describe("error_while_proxy and fail_to_connect (fake engine)", function()
    local function flaky(first_err)
        local n = 0
        return function(req)
            n = n + 1
            if n == 1 then return nil, first_err end
            return { status = 200, body = "try " .. n }
        end
    end

    it("error_while_proxy may retry an idempotent request", function()
        local peers = {}
        local app = {
            upstream_peer = function(s, ctx)
                peers[#peers + 1] = true
                return #peers == 1 and "10.0.0.1:80" or "10.0.0.2:80"
            end,
            error_while_proxy = function(s, peer, err, ctx)
                ctx.err = tostring(err) .. " at " .. peer.addr
                err:set_retry(true)
            end,
            logging = function(s, err, ctx)
                ctx.up = s:upstream()
            end,
        }
        local res = t.run(app, t.request { uri = "/r" }, { upstream = flaky("reset") })
        assert.status(200, res)
        assert.equal("try 2", res.body)
        assert.equal("upstream: reset at 10.0.0.1:80", res.ctx.err)
        assert.equal(2, res.upstream.tries)
        assert.equal("10.0.0.2:80", res.ctx.up.addr)
        assert.equal(2, res.ctx.up.tries)
        assert.equal(200, res.ctx.up.status)
    end)

    it("error_while_proxy cannot resend a streamed body", function()
        local app = { error_while_proxy = function() return true end }
        local res = t.run(app, t.request { method = "POST", body = "b" },
                          { upstream = flaky("reset") })
        assert.status(502, res)
        assert.logged("cannot be resent", res)
    end)

    it("fail_to_connect runs for a connect failure and may retry", function()
        local n = 0
        local app = { fail_to_connect = function(s, peer, err) n = n + 1; return true end }
        local res = t.run(app, t.request { uri = "/" }, { upstream = flaky("connect") })
        assert.status(200, res)
        assert.equal(1, n)
    end)

    it("without a retry the failure is a 502 (504 for a timeout)", function()
        local app = { error_while_proxy = function() end }
        assert.status(504, t.run(app, t.request {}, { upstream = flaky("timeout") }))
        assert.status(502, t.run(app, t.request {}, { upstream = flaky("reset") }))
    end)
end)


describe("s:downstream_reused() and s:upstream() (fake engine)", function()
    it("follow t.request and the run", function()
        local app = { response_filter = function(s, resp, ctx)
            ctx.reused = s:downstream_reused()
            ctx.up = s:upstream()
        end }
        local res = t.run(app, t.request { downstream_reused = true })
        assert.is_true(res.ctx.reused)
        assert.equal(1, res.ctx.up.tries)
        res = t.run({ request_filter = function(s, ctx) ctx.up = s:upstream() or "none" end },
                    t.request {})
        assert.equal("none", res.ctx.up)
    end)
end)


describe("s.resp:read_body() and s.resp:set_body() (fake engine)", function()
    local function origin() return { status = 200, body = { "ab", "cd", "ef" } } end

    it("read_body gives the whole body, which goes on as one chunk", function()
        local chunks = {}
        local app = {
            upstream_response_filter = function(s, resp, ctx)
                ctx.body = resp:read_body()
                ctx.small = { resp:read_body { max = 3 } }
            end,
            response_body_filter = function(s, chunk, eos) chunks[#chunks + 1] = chunk end,
        }
        local res = t.run(app, t.request {}, { upstream = origin })
        assert.equal("abcdef", res.ctx.body)
        assert.same({ nil, "too_large" }, res.ctx.small)
        assert.same({ "abcdef", "" }, chunks)
        assert.equal("abcdef", res.body)
    end)

    it("set_body replaces the body with its length; the body filters still run", function()
        local app = {
            response_filter = function(s, resp) resp:set_body("new") end,
            response_body_filter = function(s, chunk, eos)
                if not eos then return chunk .. "!" end
            end,
        }
        local res = t.run(app, t.request {}, { upstream = origin })
        assert.equal("new!", res.body)
    end)

    it("set_body on a local answer", function()
        local app = {
            request_filter = function(s) return s:respond(200, "old") end,
            response_filter = function(s, resp) resp:set_body("brand new") end,
        }
        local res = t.run(app, t.request {})
        assert.equal("brand new", res.body)
        assert.header("content-length", "9", res)
    end)

    it("both are refused outside the response head phases", function()
        local app = { request_filter = function(s) s.resp:read_body() end }
        local res = t.run(app, t.request {})
        assert.status(500, res)
        assert.logged("read_body%(%) cannot be called in request_filter", res)
    end)
end)
