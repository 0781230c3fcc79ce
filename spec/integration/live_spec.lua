-- t.origin and t.server against the real binary (build/moxy, or $MOXY_BIN): proxying,
-- headers a script sets reaching the origin, s:respond, a Lua error's 500 and log line.
-- Pending when there is no binary. Every process started is stopped in teardown.
local t = require "moxy.test"

local SCRIPT = "spec/integration/scripts/live_app.lua"


describe("t.origin", function()
    local origin
    teardown(function() if origin then origin:stop() end end)

    it("refuses a handler with upvalues", function()
        local x = 1
        assert.has_error(function()
            t.origin(function() return { status = 200, body = tostring(x) } end)
        end)
    end)

    it("serves keep-alive, Content-Length and chunked bodies and records requests", function()
        origin = t.origin(function(req)
            return { status = req.uri == "/teapot" and 418 or 200,
                     headers = { ["x-len"] = #req.body },
                     body = req.uri == "/chunked" and { "a", "b", "c" } or req.body }
        end)
        assert.matches("^127%.0%.0%.1:%d+$", origin.addr)
        local res = t.live.http_request(origin.host, origin.port,
                                        { method = "POST", uri = "/p", body = "hello",
                                          headers = { ["X-Mixed-Case"] = "v" } })
        assert.equal(200, res.status)
        assert.equal("hello", res.body)
        assert.equal("5", res.headers["x-len"])
        res = t.live.http_request(origin.host, origin.port,
                                  { method = "PUT", uri = "/c", body_chunks = { "ab", "c" } })
        assert.equal("abc", res.body)
        res = t.live.http_request(origin.host, origin.port, { uri = "/chunked" })
        assert.equal("abc", res.body)
        assert.is_true(res.chunked)
        assert.equal(418, t.live.http_request(origin.host, origin.port, { uri = "/teapot" }).status)
        local reqs = origin:requests()
        assert.equal(4, #reqs)
        assert.same({ "POST", "/p", "hello" }, { reqs[1].method, reqs[1].uri, reqs[1].body })
        assert.equal("v", reqs[1].headers["x-mixed-case"])
        assert.equal("abc", reqs[2].body)
        local pid = origin.pid
        origin:stop()
        assert.is_false(t.live.alive(pid))
        assert.equal(4, #origin:requests())     -- still readable after stop
        origin:stop()                           -- idempotent
    end)

    it("takes a handler file", function()
        local path = os.tmpname()
        local f = assert(io.open(path, "w"))
        f:write("local n = 0\nreturn function(req) n = n + 1 "
                .. "return { status = 200, body = tostring(n) } end\n")
        f:close()
        origin = t.origin(path)
        os.remove(path)
        assert.equal("1", t.live.http_request(origin.host, origin.port, {}).body)
        assert.equal("2", t.live.http_request(origin.host, origin.port, {}).body)
        origin:stop()
    end)
end)


describe("t.server", function()
    if not t.live.available() then
        pending("no moxy binary at " .. t.live.binary() .. " (make, or set MOXY_BIN)")
        return
    end

    local origin, proxy
    setup(function()
        origin = t.origin(function(req)
            return { status = 200, headers = { ["content-type"] = "text/plain",
                                               ["x-origin"] = "yes" },
                     body = "origin saw " .. req.method .. " " .. req.uri }
        end)
        proxy = t.server { script = SCRIPT, upstream = origin.addr }
    end)
    teardown(function()
        if proxy then proxy:stop() end
        if origin then origin:stop() end
    end)

    it("proxies to the origin", function()
        local res = proxy:request { uri = "/a/b?c=d", headers = { ["x-client"] = "c1" } }
        assert.equal(200, res.status)
        assert.equal("origin saw GET /a/b?c=d", res.body)
        assert.equal("yes", res.headers["x-origin"])
        assert.equal("moxy", res.headers["x-served-by"])
        assert.matches("^127%.0%.0%.1:%d+$", proxy.addr)
    end)

    it("sends the headers the script sets to the origin", function()
        local before = #origin:requests()
        local res = proxy:request { method = "POST", uri = "/up", body = "data",
                                    headers = { ["x-client"] = "c2", ["x-secret"] = "s" } }
        assert.equal(200, res.status)
        local reqs = origin:requests()
        assert.equal(before + 1, #reqs)
        local got = reqs[#reqs]
        assert.equal("POST", got.method)
        assert.equal("/up", got.uri)
        assert.equal("data", got.body)
        assert.equal("by-script", got.headers["x-added"])
        assert.equal("c2", got.headers["x-client-seen"])
        assert.is_nil(got.headers["x-secret"])
    end)

    it("answers s:respond without the origin", function()
        local before = #origin:requests()
        local res = proxy:request { uri = "/local" }
        assert.equal(201, res.status)
        assert.equal("made here\n", res.body)
        assert.equal("yes", res.headers["x-local"])
        assert.equal("moxy", res.headers["x-served-by"])
        assert.equal(before, #origin:requests())
    end)

    it("turns a Lua error into a 500 and logs file:line", function()
        local res = proxy:request { uri = "/boom" }
        assert.equal(500, res.status)
        local want = "lua request_filter " .. SCRIPT:gsub("%p", "%%%0") .. ":11: boom"
        local logs, text = proxy:wait_log(want)     -- the log is written asynchronously
        assert.is_string(logs, "no line matching " .. want .. " in:\n" .. tostring(text))
        -- and the server still serves
        assert.equal(200, proxy:request { uri = "/after" }.status)
    end)

    it("takes a yaml template and env, and stops by PID", function()
        local srv = t.server { yaml = [[
version: 1
threads: 1
grace_period_seconds: 0
error_log: ${error_log}
upgrade_sock: ${dir}/upgrade.sock
upstreams: { o: { backends: [ "${upstream}" ] } }
services:
  - name: templated
    listeners: [ "${addr}" ]
    script: ${script}
    upstream: o
]], script = SCRIPT, upstream = origin.addr, env = { MOXY_TEST_VAR = "1" } }
        local pid = srv.pid
        local ok, err = pcall(function()
            assert.equal("made here\n", srv:request { uri = "/local" }.body)
            assert.equal("origin saw GET /z", srv:request { uri = "/z" }.body)
            assert.truthy(srv:wait_log('service "templated" listening'))
        end)
        assert.is_true(srv:stop())
        assert.is_false(t.live.alive(pid))
        assert.is_true(ok, err)
        assert.matches("Terminated", srv:logs())    -- kept after stop
    end)

    it("reports a server that does not start", function()
        assert.has_error(function()
            t.server { script = "spec/integration/scripts/no_such_script.lua" }
        end)
    end)

    it("has :reload (SIGHUP; spec/integration/reload_spec.lua)", function()
        assert.is_function(proxy.reload)
    end)
end)


describe("t.each_engine's comparison", function()
    local cmp = t.live.compare

    it("compares status, body, the fake result's headers and reaching the upstream", function()
        local fake = { status = 200, body = "x", headers = { a = "1", ["content-length"] = "1" } }
        local live = { status = 200, body = "x", headers = { a = "1", b = "2" } }
        assert.same({}, cmp(fake, live))
        live.headers.a = "2"
        live.status = 201
        live.body = "y"
        live.upstream = {}
        local diffs = cmp(fake, live)
        assert.equal(4, #diffs)
        assert.matches("^status: fake 200, live 201", diffs[1])
        assert.matches("^header a:", diffs[2])
        assert.matches("^body:", diffs[3])
        assert.matches("^reached the upstream: fake false, live true", diffs[4])
    end)
end)
