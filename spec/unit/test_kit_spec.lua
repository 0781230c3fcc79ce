-- moxy.test: t.load, t.request, t.run (order, results, error rules), t.phase, t.clock and
-- the busted assertions.
local t = require "moxy.test"
local moxy = require "moxy"


local function echo(req)
    return { status = 200, headers = { ["content-type"] = "text/plain" }, body = req.uri }
end


local function proxy_to(peer)
    return function() return peer end
end


-- An app recording every phase it sees.
local function recorder()
    local app, seen = {}, {}
    for _, name in ipairs { "early_request_filter", "request_filter", "proxy_upstream_filter",
                            "upstream_peer", "upstream_request_filter",
                            "upstream_response_filter", "response_filter",
                            "response_body_filter", "logging" } do
        app[name] = function(s)
            seen[#seen + 1] = name .. "/" .. s:phase()
            if name == "upstream_peer" then
                return "127.0.0.1:9001"
            end
        end
    end
    return app, seen
end


describe("t.run order and results", function()
    it("runs the phases in the live order and proxies", function()
        local app, seen = recorder()
        local res = t.run(app, t.request { uri = "/x?y=1" }, { upstream = echo })
        assert.same({ "early_request_filter", "request_filter", "proxy_upstream_filter",
                      "upstream_peer", "upstream_request_filter", "upstream_response_filter",
                      "response_filter", "response_body_filter", "response_body_filter",
                      "logging" }, res.phases)    -- the body filter: the chunk, then eos
        for i, name in ipairs(res.phases) do
            assert.equal(name .. "/" .. name, seen[i])   -- s:phase() agrees
        end
        assert.equal(200, res.status)
        assert.equal("/x?y=1", res.body)
        assert.equal("text/plain", res.headers["content-type"])
        assert.equal("upstream", res.source)
        assert.equal("127.0.0.1:9001", tostring(res.upstream.peer))
        assert.equal("GET", res.upstream.request.method)
        assert.equal("/x?y=1", res.upstream.request.uri)
        assert.same({}, res.errors)
        assert.is_nil(res.err)
    end)

    it("lists only the handlers that exist", function()
        local res = t.run({ upstream_peer = proxy_to("a:1") }, t.request())
        assert.same({ "upstream_peer" }, res.phases)
        assert.equal(200, res.status)                    -- the default upstream
        assert.equal("", res.body)
    end)

    it("new_ctx makes the ctx every handler gets", function()
        local got = {}
        local app = {
            new_ctx = function() return { n = 1 } end,
            request_filter = function(s, ctx) got[1] = ctx; ctx.n = ctx.n + 1 end,
            upstream_peer = function(s, ctx) got[2] = ctx; return "a:1" end,
            upstream_request_filter = function(s, req, ctx) got[3] = ctx end,
            response_filter = function(s, resp, ctx) got[4] = ctx end,
            logging = function(s, err, ctx) got[5] = ctx end,
        }
        local s = t.request()
        local res = t.run(app, s)
        assert.equal(2, res.ctx.n)
        assert.equal(s.ctx, res.ctx)
        for i = 1, 5 do
            assert.equal(res.ctx, got[i])
        end
    end)

    it("upstream_request_filter gets the request as it goes upstream", function()
        local app = {
            request_filter = function(s) s.req:set_path("/rewritten") end,
            upstream_peer = proxy_to("a:1"),
            upstream_request_filter = function(s, req, ctx)
                assert.equal(s.req, req)
                req:set_header("X-Added", "1")
                req:add_header("x-multi", "a")
                req:add_header("x-multi", "b")
                req:remove_header("user-agent")
                req:set_method("PUT")
            end,
        }
        local seen
        local res = t.run(app, t.request { uri = "/orig?q=1", body = "abc",
                                             headers = { ["user-agent"] = "curl" } },
                          { upstream = function(req) seen = req; return { status = 204 } end })
        assert.equal("/rewritten?q=1", seen.uri)
        assert.equal("PUT", seen.method)
        assert.equal("1", seen.headers["x-added"])
        assert.same({ "a", "b" }, seen.headers["x-multi"])
        assert.is_nil(seen.headers["user-agent"])
        assert.equal("3", seen.headers["content-length"])
        assert.equal("abc", seen.body)
        assert.same(seen.headers, res.upstream.request.headers)
        assert.equal(204, res.status)
    end)

    it("response phases edit the upstream response", function()
        local app = {
            upstream_peer = proxy_to("a:1"),
            upstream_response_filter = function(s, resp) resp:set_header("x-u", "1") end,
            response_filter = function(s, resp)
                assert.equal("upstream", resp:source())
                resp:set_status(203)
                resp:remove_header("server")
            end,
        }
        local res = t.run(app, t.request(), { upstream = function()
            return { status = 200, headers = { { "Server", "origin" }, { "Set-Cookie", "a" },
                                               { "Set-Cookie", "b" } }, body = "x" }
        end })
        assert.equal(203, res.status)
        assert.equal("1", res.headers["x-u"])
        assert.is_nil(res.headers.server)
        assert.same({ "a", "b" }, res.headers["set-cookie"])
    end)

    it("response_body_filter replaces chunks and sees eos; content-length goes", function()
        local calls = {}
        local app = {
            upstream_peer = proxy_to("a:1"),
            response_body_filter = function(s, chunk, eos)
                calls[#calls + 1] = { chunk, eos }
                if chunk == "b" then
                    return "B!"
                end
            end,
        }
        local res = t.run(app, t.request(), { upstream = function()
            return { status = 200, headers = { ["content-length"] = "3" },
                     body = { "a", "b", "c" } }
        end })
        assert.equal("aB!c", res.body)
        -- As live: every chunk with eos = false, then a last call ("", true).
        assert.same({ { "a", false }, { "b", false }, { "c", false }, { "", true } }, calls)
        assert.is_nil(res.headers["content-length"])
        local res2 = t.run({ upstream_peer = proxy_to("a:1") }, t.request(), { upstream =
            function() return { status = 200, headers = { ["content-length"] = "1" },
                                body = "z" } end })
        assert.equal("1", res2.headers["content-length"])   -- kept without a body filter
    end)

    it("logging runs last with err nil, and log_field is returned", function()
        local args
        local app = {
            upstream_peer = proxy_to("a:1"),
            logging = function(s, err, ctx)
                args = { err = err, status = s.resp:status() }
                s:log_field("user", "bob")
                moxy.log.info("done ", s.resp:status())
            end,
        }
        local res = t.run(app, t.request())
        assert.is_nil(args.err)
        assert.equal(200, args.status)
        assert.same({ user = "bob" }, res.log_fields)
        assert.logged("%[info%] spec/unit/test_kit_spec.lua:%d+: done 200", res)
    end)

    it("refuses to run a session twice", function()
        local s = t.request()
        t.run({ upstream_peer = proxy_to("a:1") }, s)
        assert.has_error(function() t.run({}, s) end,
            "t.run: this session already ran; make a new one with t.request")
    end)
end)


describe("t.run local answers", function()
    it("respond in request_filter ends the request phases; response phases still run", function()
        local app, seen = recorder()
        app.request_filter = function(s)
            return s:respond(401, "no\n", { ["www-authenticate"] = "Bearer" })
        end
        app.response_filter = function(s, resp)
            assert.equal("local", resp:source())
            resp:set_header("x-served-by", "moxy")
        end
        local res = t.run(app, t.request())
        assert.same({ "early_request_filter", "request_filter", "response_filter",
                      "response_body_filter", "response_body_filter", "logging" }, res.phases)
        assert.status(401, res)
        assert.equal("no\n", res.body)
        assert.header("www-authenticate", "Bearer", res)
        assert.header("x-served-by", "moxy", res)
        assert.equal("local", res.source)
        assert.is_nil(res.upstream)
        assert.same({ "early_request_filter/early_request_filter",
                      "response_body_filter/response_body_filter",
                      "response_body_filter/response_body_filter", "logging/logging" }, seen)
    end)

    it("respond in early_request_filter skips request_filter", function()
        local res = t.run({
            early_request_filter = function(s) s:respond(204) end,
            request_filter = function() error("must not run") end,
        }, t.request())
        assert.status(204, res)
        assert.same({ "early_request_filter" }, res.phases)
    end)

    it("respond in upstream_peer needs no peer", function()
        local res = t.run({ upstream_peer = function(s) return s:respond(503, "down") end },
                          t.request())
        assert.status(503, res)
        assert.is_nil(res.upstream)
        assert.same({}, res.errors)
    end)

    it("proxy_upstream_filter false: 502, or what fail_to_proxy says", function()
        local app = { proxy_upstream_filter = function() return false end,
                      upstream_peer = function() error("must not run") end }
        local res = t.run(app, t.request())
        assert.status(502, res)
        assert.equal("502 Bad Gateway\n", res.body)
        assert.equal("error", res.source)
        assert.equal("proxy_upstream_filter returned false", res.err)
        app.fail_to_proxy = function(s, err, ctx) return 403 end
        assert.status(403, t.run(app, t.request()))
    end)

    it("a JSON answer", function()
        local res = t.run({ request_filter = function(s) return s:respond(200, { a = 1 }) end },
                          t.request())
        assert.equal('{"a":1}', res.body)
        assert.header("content-type", "application/json", res)
    end)
end)


describe("t.run error rules", function()
    it("a Lua error in a request phase is a 500, logged once with file:line", function()
        local app = { request_filter = function() error("boom") end,
                      upstream_peer = function() error("must not run") end }
        local res = t.run(app, t.request { uri = "/p?q" })
        assert.status(500, res)
        assert.equal("500 Internal Server Error\n", res.body)
        assert.header("content-type", "text/plain", res)
        assert.equal("error", res.source)
        assert.equal(1, #res.errors)
        assert.matches("^lua request_filter spec/unit/test_kit_spec.lua:%d+: boom$",
                       res.errors[1])
        assert.logged("^%[error%] lua request_filter .*: boom %(request %d+, GET /p%)$", res)
        assert.is_nil(res.upstream)
    end)

    it("error responses still go through response_filter and logging", function()
        local err_seen
        local res = t.run({
            request_filter = function() error("x") end,
            response_filter = function(s, resp)
                assert.equal("error", resp:source())
                resp:set_header("x-f", "1")
            end,
            logging = function(s, err) err_seen = err end,
        }, t.request())
        assert.header("x-f", "1", res)
        assert.matches("^lua request_filter .*: x$", err_seen)
    end)

    it("a wrong return type is an error naming the handler", function()
        local res = t.run({ request_filter = function() return "yes" end }, t.request())
        assert.status(500, res)
        assert.matches("^lua request_filter spec/unit/test_kit_spec.lua:%d+: request_filter "
                       .. "returned string %(expected nil, true or false%)$", res.errors[1])
    end)

    it("request_filter returning true without a response is an error", function()
        local res = t.run({ request_filter = function() return true end }, t.request())
        assert.status(500, res)
        assert.logged("returned true without s:respond%(%)", res)
    end)

    it("upstream_peer must return a peer or host:port", function()
        for _, bad in ipairs { 9001, false, {} } do
            local res = t.run({ upstream_peer = function() return bad end }, t.request())
            assert.status(500, res)
            assert.matches("^lua upstream_peer spec/unit/test_kit_spec.lua:%d+: "
                           .. "upstream_peer returned", res.errors[1])
        end
        local res = t.run({ upstream_peer = function() end }, t.request())
        assert.status(500, res)
        assert.logged("upstream_peer returned nil", res)
        local ok = t.run({ upstream_peer = function()
            return moxy.peer { host = "10.0.0.9", port = 81 }
        end }, t.request())
        assert.status(200, ok)
        assert.equal(81, ok.upstream.peer.port)
    end)

    it("no upstream_peer: the service's YAML upstream group is used, as live", function()
        local res = t.run({}, t.request())
        assert.status(200, res)
        assert.equal("(service upstream)", tostring(res.upstream.peer))
        local res2 = t.run({}, t.request(), { peer = "10.0.0.1:80" })
        assert.equal("10.0.0.1:80", tostring(res2.upstream.peer))
    end)

    it("an error in upstream_response_filter is a 502", function()
        local res = t.run({ upstream_peer = proxy_to("a:1"),
                            upstream_response_filter = function() error("bad resp") end },
                          t.request(), { upstream = echo })
        assert.status(502, res)
        assert.equal("502 Bad Gateway\n", res.body)
        assert.logged("lua upstream_response_filter .*: bad resp", res)
    end)

    it("an error in response_filter is a 500 without running it again", function()
        local n = 0
        local res = t.run({ upstream_peer = proxy_to("a:1"),
                            response_filter = function() n = n + 1; error("rf") end,
                            response_body_filter = function() error("must not run") end },
                          t.request(), { upstream = echo })
        assert.status(500, res)
        assert.equal(1, n)
        assert.equal(1, #res.errors)
    end)

    it("an error in response_body_filter aborts the stream", function()
        local res = t.run({ upstream_peer = proxy_to("a:1"),
                            response_body_filter = function(s, chunk)
                                if chunk == "2" then error("mid") end
                            end },
                          t.request(), { upstream = function()
                              return { status = 200, body = { "1", "2", "3" } } end })
        assert.status(200, res)
        assert.is_true(res.aborted)
        assert.equal("1", res.body)
        assert.logged("lua response_body_filter .*: mid", res)
        local bad = t.run({ upstream_peer = proxy_to("a:1"),
                            response_body_filter = function() return 1 end }, t.request())
        assert.is_true(bad.aborted)
        assert.logged("returned number %(expected a string or nil%)", bad)
    end)

    it("an error in logging is only logged", function()
        local res = t.run({ upstream_peer = proxy_to("a:1"),
                            logging = function() error("log fail") end }, t.request())
        assert.status(200, res)
        assert.logged("lua logging .*: log fail", res)
    end)

    it("fail_open skips a failing phase", function()
        local app = { request_filter = function() error("skip me") end,
                      upstream_peer = proxy_to("a:1") }
        local res = t.run(app, t.request(), { config = { lua_error_policy = "fail_open" } })
        assert.status(200, res)
        assert.logged("skip me", res)
    end)

    it("an upstream failure is a 502, a timeout a 504", function()
        local app = { upstream_peer = proxy_to("a:1") }
        local res = t.run(app, t.request(), { upstream = function() return nil, "connect" end })
        assert.status(502, res)
        assert.equal("upstream: connect", res.err)
        assert.logged("upstream a:1: connect", res)
        assert.status(504, t.run(app, t.request(),
                                 { upstream = function() return nil, "timeout" end }))
    end)

    it("a broken opts.upstream is the test's error", function()
        assert.has_error(function()
            t.run({ upstream_peer = proxy_to("a:1") }, t.request(),
                  { upstream = function() return 200 end })
        end)
    end)
end)


describe("time", function()
    it("moxy.sleep inside a run advances the clock through the runner", function()
        local clock = t.clock(100)
        local seen = {}
        local app = {
            request_filter = function(s, ctx)
                seen[1] = moxy.now()
                moxy.sleep(2)
                seen[2] = moxy.now()
            end,
            upstream_peer = proxy_to("a:1"),
            logging = function(s) seen[3] = moxy.now() - s:start_time() end,
        }
        local res = t.run(app, t.request(), {
            clock = clock,
            upstream = function(req) moxy.sleep(0.5); return { status = 200 } end,
        })
        assert.status(200, res)
        assert.same({ 100, 102, 2.5 }, seen)
        assert.equal(102.5, clock.now)
    end)

    it("sleeping where live could not yield fails the same way", function()
        local app = { request_filter = function()
            table.sort({ 2, 1 }, function(a, b) moxy.sleep(1); return a < b end)
        end }
        local res = t.run(app, t.request())
        assert.status(500, res)
        assert.logged("yield across", res)
    end)

    it("a stray yield is reported", function()
        assert.has_error(function()
            t.run({ request_filter = function() coroutine.yield("x") end }, t.request())
        end)
    end)
end)


describe("t.phase", function()
    it("runs one handler with default arguments and returns its results", function()
        local app = {
            request_filter = function(s, ctx) ctx.hit = true; return true, "two" end,
            upstream_request_filter = function(s, req, ctx)
                req:set_header("x", "1")
                return req == s.req
            end,
            response_filter = function(s, resp) resp:set_header("y", "2") end,
            logging = function(s, err, ctx) return err, ctx end,
        }
        local s = t.request()
        local a, b = t.phase(app, "request_filter", s)
        assert.is_true(a)
        assert.equal("two", b)
        assert.is_true(s.ctx.hit)
        assert.is_true(t.phase(app, "upstream_request_filter", s))
        assert.equal("1", s.req:header("x"))
        local s2 = t.request { response = { status = 200 } }
        t.phase(app, "response_filter", s2)
        assert.equal("2", s2.resp:header("y"))
        local e, ctx = t.phase(app, "logging", s)
        assert.is_nil(e)
        assert.equal(s.ctx, ctx)
    end)

    it("passes explicit arguments and raises the handler's error", function()
        local app = { response_body_filter = function(s, chunk, eos) return chunk:upper() end,
                      request_filter = function() error("bad") end }
        assert.equal("AB", t.phase(app, "response_body_filter", t.request(), "ab", true))
        assert.has_error(function() t.phase(app, "request_filter", t.request()) end)
        assert.has_error(function() t.phase(app, "nope", t.request()) end,
            "t.phase: the app has no nope handler")
    end)

    it("checks phases like the engine", function()
        local app = { request_filter = function(s) s.resp:set_header("x", "1") end }
        local ok, err = pcall(t.phase, app, "request_filter", t.request())
        assert.is_false(ok)
        assert.matches("cannot be called in request_filter", err)
    end)
end)


describe("t.load and t.request", function()
    local path = os.tmpname()

    teardown(function() os.remove(path) end)

    it("passes a copy of what the old generation handed over to init's previous", function()
        local f = assert(io.open(path, "w"))
        f:write([[
local app = { n = 0 }
function app.init(config, previous) app.n = previous and previous.n or 0 end
function app.handover() return { n = app.n + 1 } end
return app
]])
        f:close()
        local first = t.load(path)
        assert.equal(0, first.n)
        local handed = first.handover()
        local second = t.load(path, {}, handed)
        assert.equal(1, second.n)
        handed.n = 99
        assert.equal(1, second.n)
        assert.equal(2, t.load(path, {}, second.handover()).n)
    end)

    it("loads a script and runs init with a copy of the config", function()
        local f = assert(io.open(path, "w"))
        f:write([[
local app = { seen = nil }
function app.init(config) app.seen = config; config.changed = true end
return app
]])
        f:close()
        local config = { upstream = "x:1", nested = { a = 1 } }
        local app = t.load(path, config)
        assert.same({ upstream = "x:1", nested = { a = 1 }, changed = true }, app.seen)
        assert.is_nil(config.changed)
    end)

    it("refuses a script that does not return a table, or does not parse", function()
        local f = assert(io.open(path, "w"))
        f:write("return 1")
        f:close()
        assert.has_error(function() t.load(path) end)
        f = assert(io.open(path, "w"))
        f:write("return {")
        f:close()
        assert.has_error(function() t.load(path) end)
        assert.has_error(function() t.load("/nonexistent.lua") end)
    end)

    it("checks request options", function()
        assert.has_error(function() t.request { uri = "x" } end)
        assert.has_error(function() t.request { method = "G T" } end)
        assert.has_error(function() t.request { version = "2" } end)
        assert.has_error(function() t.request { tls = {} } end,
            "t.request: tls is not supported yet")
        assert.has_error(function() t.request { body = 1 } end)
        assert.has_error(function() t.request { headers = "x" } end)
    end)

    it("headers as a map (sorted) or a list (as given); body_chunks join", function()
        local s = t.request { headers = { b = "2", a = { "1", "3" } } }
        assert.same({ { "host", "localhost" }, { "a", "1" }, { "a", "3" }, { "b", "2" } },
                    s.req:headers())
        local s2 = t.request { headers = { { "Host", "h" }, { "Z", "1" }, { "A", "2" } } }
        assert.same({ { "Host", "h" }, { "Z", "1" }, { "A", "2" } }, s2.req:headers())
        local seen
        t.run({ upstream_peer = proxy_to("a:1") }, t.request { body_chunks = { "a", "b" } },
              { upstream = function(req) seen = req.body; return { status = 200 } end })
        assert.equal("ab", seen)
    end)
end)


describe("assertions", function()
    local res = { status = 404, body = "nope", headers = { a = "1", l = { "x", "y" } },
                  logs = { "[info] f.lua:1: hi" }, errors = { "lua request_filter f.lua:2: e" } }

    it("status passes and fails with the body and errors in the message", function()
        assert.status(404, res)
        assert.no.status(200, res)
        local ok, err = pcall(assert.status, 200, res)
        assert.is_false(ok)
        err = tostring(err)
        assert.matches("Expected status 200", err, 1, true)
        assert.matches("status 404", err, 1, true)
        assert.matches('"nope"', err, 1, true)
        assert.matches("lua request_filter f.lua:2: e", err, 1, true)
    end)

    it("header compares strings, lists and absence", function()
        assert.header("A", "1", res)
        assert.header("l", { "x", "y" }, res)
        assert.header("missing", nil, res)
        assert.has_error(function() assert.header("a", "2", res) end)
        assert.has_error(function() assert.header("l", { "x" }, res) end)
        assert.has_error(function() assert.header("a", nil, res) end)
    end)

    it("logged searches logs and errors with a Lua pattern", function()
        assert.logged("^%[info%] f%.lua:1: hi$", res)
        assert.logged("request_filter", res)
        assert.no.logged("nothing like this", res)
        assert.has_error(function() assert.logged("absent", res) end)
    end)
end)


describe("t.run response_trailer_filter", function()
    it("edits the origin's trailers, as live", function()
        local app = {
            upstream_peer = function() return "127.0.0.1:1" end,
            response_trailer_filter = function(s, trailers)
                trailers:set_header("grpc-status", "0")
                trailers:remove_header("x-drop")
            end,
        }
        local res = t.run(app, t.request(), { upstream = function()
            return { status = 200, body = "x", trailers = { ["grpc-status"] = "13", ["x-drop"] = "1" } }
        end })
        assert.equal("0", res.trailers["grpc-status"])
        assert.is_nil(res.trailers["x-drop"])
    end)

    it("an error there aborts the stream", function()
        local app = {
            upstream_peer = function() return "127.0.0.1:1" end,
            response_trailer_filter = function() error("no") end,
        }
        local res = t.run(app, t.request(), { upstream = function()
            return { status = 200, body = "x", trailers = { a = "1" } }
        end })
        assert.is_true(res.aborted)
    end)
end)


describe("t.run upstream_response_body_filter", function()
    it("runs before response_body_filter, for upstream responses only", function()
        local app = dofile("tests/integration/lua/ubf.lua")
        local res = t.run(app, t.request { uri = "/x" }, { peer = "a:1", upstream = function()
            return { status = 200, headers = { ["content-length"] = "9" }, body = { "foo", "boo" } }
        end })
        assert.equal("F00B00", res.body)
        assert.is_nil(res.headers["content-length"])
        res = t.run(app, t.request { uri = "/local" })
        assert.equal("LOCAL BODY", res.body)
    end)
end)


describe("t.run sessions", function()
    it("sessions take no new fields, as the live ones", function()
        local app = {
            request_filter = function(s)
                local ok, err = pcall(function() s.user = "bob" end)
                return s:respond(200, tostring(ok) .. " " .. tostring(err))
            end,
        }
        local res = t.run(app, t.request { uri = "/x" })
        assert.matches("^false .*s%.user: a session object takes no new fields", res.body)
    end)
end)
