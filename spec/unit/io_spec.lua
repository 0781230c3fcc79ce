-- moxy.http, moxy.thread and waiting timers under moxy.test's fake engine: opts.http of
-- t.run answers moxy.http.request, delays pass on the fake clock, threads overlap in it.
local t = require "moxy.test"
local moxy = require "moxy"


local function app_of(request_filter)
    return { request_filter = request_filter }
end


describe("moxy.http (fake engine)", function()
    it("passes the request to opts.http and builds the response", function()
        local app = app_of(function(s, ctx)
            local res, err = moxy.http.request {
                method = "POST", url = "http://auth.local:8080/check?x=1",
                headers = { ["X-Token"] = s.req:header("x-token") }, body = "q",
            }
            ctx.got = { res.status, res.headers["x-user"], res:header("X-User"), res.body, err }
            return s:respond(200, res.body)
        end)
        local res = t.run(app, t.request { headers = { ["x-token"] = "abc" } }, {
            http = function(req)
                assert.equal("POST", req.method)
                assert.equal("http://auth.local:8080/check?x=1", req.url)
                assert.equal("auth.local", req.host)
                assert.equal(8080, req.port)
                assert.equal("/check?x=1", req.path)
                assert.equal("abc", req.headers["x-token"])
                assert.equal("q", req.body)
                return { status = 200, headers = { ["X-User"] = "alice" }, body = "ok" }
            end,
        })
        assert.status(200, res)
        assert.same({ 200, "alice", "alice", "ok" }, res.ctx.got)
        assert.equal(1, #res.http)
        assert.equal("http://auth.local:8080/check?x=1", res.http[1].url)
    end)

    it("returns nil, err for the handler's errors, timeouts and too large bodies", function()
        local app = app_of(function(s, ctx)
            local out = {}
            for _, u in ipairs { "/err", "/slow", "/big", "/ok" } do
                local res, err = moxy.http.request { url = "http://x" .. u, timeout = 1,
                                                     max_body = 10 }
                out[#out + 1] = res and res.status or err
            end
            ctx.out = out
            ctx.t = moxy.now()
        end)
        local clock = t.clock(100)
        local res = t.run(app, t.request {}, { clock = clock, http = function(req)
            if req.path == "/err" then return nil, "connect" end
            if req.path == "/slow" then return { status = 200, delay = 5 } end
            if req.path == "/big" then return { status = 200, body = ("x"):rep(11) } end
            return { status = 204 }
        end })
        assert.same({ "connect", "timeout", "too_large", 204 }, res.ctx.out)
        assert.equal(101, res.ctx.t)            -- the timeout passed on the fake clock
    end)

    it("refuses https until TLS exists, and bad arguments", function()
        local app = app_of(function(s, ctx)
            ctx.https = { moxy.http.request { url = "https://x/" } }
            ctx.e1 = select(2, pcall(moxy.http.request, { url = "ftp://x/" }))
            ctx.e2 = select(2, pcall(moxy.http.request, { url = "http://x/", nope = 1 }))
            ctx.e3 = select(2, pcall(moxy.http.request, { url = "http://x/",
                                                          headers = { ["content-length"] = 1 } }))
            ctx.e4 = select(2, pcall(moxy.http.request, { url = "http://x/",
                                                          headers = { a = "b\r\nc: d" } }))
        end)
        local res = t.run(app, t.request {}, { http = function() return { status = 200 } end })
        assert.same({ nil, "tls", "TLS is not supported by this moxy yet" }, res.ctx.https)
        assert.matches("unsupported scheme ftp", res.ctx.e1)
        assert.matches("unknown option nope", res.ctx.e2)
        assert.matches("content%-length is managed by moxy", res.ctx.e3)
        assert.matches("contains CR, LF or NUL", res.ctx.e4)
        assert.same({}, res.http)
    end)

    it("says how to fake it when opts.http is missing", function()
        local res = t.run(app_of(function() moxy.http.request { url = "http://x/" } end),
                          t.request {})
        assert.status(500, res)
        assert.logged("pass t.run%(app, s, { http = function", res)
    end)

    it("has resty.http's object style", function()
        local app = app_of(function(s, ctx)
            local httpc = moxy.http.new()
            httpc:set_timeout(500)
            local res, err = httpc:request_uri("http://x/slow", { method = "GET" })
            ctx.err = err
        end)
        local res = t.run(app, t.request {}, { http = function()
            return { status = 200, delay = 1 }
        end })
        assert.equal("timeout", res.ctx.err)
    end)

    it("is not available at load time", function()
        assert.has_error(function() moxy.http.request { url = "http://x/" } end)
    end)
end)


describe("moxy.thread (fake engine)", function()
    it("runs two calls in parallel: the clock moves by the max, not the sum", function()
        local app = app_of(function(s, ctx)
            local t0 = moxy.now()
            local function get(path)
                local res = moxy.http.request { url = "http://x" .. path }
                return res.body
            end
            local a = moxy.thread.spawn(get, "/a")
            local b = moxy.thread.spawn(get, "/b")
            local ok1, r1 = moxy.thread.wait(a, b)
            local ok2, r2 = moxy.thread.wait(a, b)
            ctx.out = { ok1, r1, ok2, r2, moxy.now() - t0 }
        end)
        local res = t.run(app, t.request {}, { clock = t.clock(0), http = function(req)
            return { status = 200, body = req.path, delay = req.path == "/a" and 2 or 1 }
        end })
        assert.same({ true, "/b", true, "/a", 2 }, res.ctx.out)
    end)

    it("returns a thread's error, kills a sleeping thread, refuses a second wait", function()
        local app = app_of(function(s, ctx)
            local bad = moxy.thread.spawn(function() moxy.sleep(1) error("oops", 0) end)
            local sleeper = moxy.thread.spawn(function() moxy.sleep(100) return "woke" end)
            ctx.wait_bad = { moxy.thread.wait(bad) }
            ctx.again = { moxy.thread.wait(bad) }
            ctx.kill = { moxy.thread.kill(sleeper) }
            ctx.kill2 = { moxy.thread.kill(sleeper) }
            ctx.t = moxy.now()
        end)
        local res = t.run(app, t.request {}, { clock = t.clock(0) })
        assert.same({ false, "oops" }, res.ctx.wait_bad)
        assert.same({ false, "already waited or killed" }, res.ctx.again)
        assert.same({ true }, res.ctx.kill)
        assert.same({ nil, "already waited or killed" }, res.ctx.kill2)
        assert.equal(1, res.ctx.t)
        assert.logged("lua thread oops", res)
    end)

    it("ends a phase only once its threads have ended", function()
        local app = {
            request_filter = function(s, ctx)
                ctx.n = 0
                for i = 1, 3 do
                    moxy.thread.spawn(function() moxy.sleep(i) ctx.n = ctx.n + 1 end)
                end
            end,
            upstream_request_filter = function(s, req, ctx)
                req:set_header("x-n", ctx.n)
            end,
        }
        local clock = t.clock(0)
        local res = t.run(app, t.request {}, { clock = clock })
        assert.equal("3", res.upstream.request.headers["x-n"])
        assert.equal(3, clock.now)
    end)

    it("kills the threads of a handler that fails", function()
        local ran = false
        local app = app_of(function()
            moxy.thread.spawn(function() moxy.sleep(5) ran = true end)
            error("handler failed")
        end)
        local clock = t.clock(0)
        local res = t.run(app, t.request {}, { clock = clock })
        assert.status(500, res)
        clock:advance(10)
        assert.is_false(ran)
    end)

    it("checks its arguments", function()
        local app = app_of(function(s, ctx)
            ctx.e1 = select(2, pcall(moxy.thread.spawn, "x"))
            ctx.e2 = select(2, pcall(moxy.thread.wait, {}))
            ctx.e3 = select(2, pcall(moxy.thread.wait))
        end)
        local res = t.run(app, t.request {})
        assert.matches("function expected", res.ctx.e1)
        assert.matches("moxy.thread expected, got table", res.ctx.e2)
        assert.matches("got no value", res.ctx.e3)
        assert.has_error(function() moxy.thread.spawn(function() end) end)   -- load time
    end)
end)


describe("timers that wait (fake engine)", function()
    it("a timer function sleeps and calls moxy.http on the fake clock", function()
        local clock = t.clock(0)
        local seen = {}
        local app = app_of(function(s)
            moxy.timer.at(1, function()
                moxy.sleep(2)
                seen[#seen + 1] = moxy.now()
                local th = moxy.thread.spawn(function() moxy.sleep(1) return moxy.now() end)
                seen[#seen + 1] = select(2, moxy.thread.wait(th))
            end)
        end)
        t.run(app, t.request {}, { clock = clock })
        clock:advance(2)
        assert.same({}, seen)
        clock:advance(2)
        assert.same({ 3, 4 }, seen)
    end)

    it("timers fall due while a request waits", function()
        local clock = t.clock(0)
        local order = {}
        local app = app_of(function(s)
            moxy.timer.every(1, function() order[#order + 1] = "tick " .. moxy.now() end)
            moxy.sleep(2.5)
            order[#order + 1] = "woke " .. moxy.now()
        end)
        t.run(app, t.request {}, { clock = clock })
        assert.same({ "tick 1", "tick 2", "woke 2.5" }, order)
    end)

    it("logs a timer's error", function()
        local clock = t.clock(0)
        local app = app_of(function(s)
            moxy.timer.at(1, function() moxy.sleep(1) error("late failure", 0) end)
        end)
        t.run(app, t.request {}, { clock = clock })
        clock:advance(5)
        local fake = require "moxy.fake"
        assert.matches("lua timer late failure", fake.logs[#fake.logs])
    end)
end)


describe("moxy.tcp (fake engine)", function()
    -- A line server: "PING x" -> "PONG x"; "QUIT" closes; "SILENT" answers nothing.
    local function line_server(host, port)
        if port == 1 then
            return nil
        end
        return function(data)
            local cmd, arg = data:match("^(%u+) ?(%S*)")
            if cmd == "PING" then
                return "PONG " .. arg .. "\r\n"
            elseif cmd == "QUIT" then
                return "BYE\r\n", true
            elseif cmd == "BIG" then
                return ("x"):rep(tonumber(arg)) .. "--end\n"
            end
        end
    end

    it("speaks a line protocol and pools the connection", function()
        local app = app_of(function(s, ctx)
            local out = {}
            for i = 1, 3 do
                local sock = moxy.tcp()
                assert(sock:connect("10.0.0.1", 6379))
                out[#out + 1] = sock:getreusedtimes()
                assert(sock:send("PING " .. i .. "\n"))
                out[#out + 1] = sock:receive()
                assert(sock:setkeepalive())
            end
            ctx.out = out
        end)
        local res = t.run(app, t.request {}, { clock = t.clock(0), tcp = line_server })
        assert.same({ 0, "PONG 1", 1, "PONG 2", 2, "PONG 3" }, res.ctx.out)
        assert.equal(1, #res.tcp)
        assert.same({ "PING 1\n", "PING 2\n", "PING 3\n" }, res.tcp[1].sent)
        assert.equal("10.0.0.1", res.tcp[1].host)
    end)

    it("gives OpenResty's errors: refused, timeout, closed, unread data", function()
        local app = app_of(function(s, ctx)
            local out = {}
            local sock = moxy.tcp()
            out[#out + 1] = select(2, sock:connect("10.0.0.1", 1))
            assert(sock:connect("10.0.0.1", 2))
            sock:settimeouts(1000, 1000, 500)
            sock:send("SILENT\n")
            local t0 = moxy.now()
            local _, err = sock:receive()
            out[#out + 1] = err
            out[#out + 1] = moxy.now() - t0
            sock:send("QUIT\n")
            out[#out + 1] = sock:receive()
            local _, err2, partial = sock:receive()
            out[#out + 1] = err2
            out[#out + 1] = partial
            out[#out + 1] = select(2, sock:send("x"))
            assert(sock:connect("10.0.0.1", 2))
            sock:send("PING a\n")
            out[#out + 1] = select(2, sock:setkeepalive())
            ctx.out = out
        end)
        local res = t.run(app, t.request {}, { clock = t.clock(0), tcp = line_server })
        assert.same({ "connection refused", "timeout", 0.5, "BYE", "closed", "", "closed",
                      "unread data in buffer" }, res.ctx.out)
    end)

    it("reads byte counts, *a and receiveuntil like the live socket", function()
        local app = app_of(function(s, ctx)
            local sock = moxy.tcp()
            assert(sock:connect("unix:/tmp/x.sock"))
            sock:send("BIG 10\n")
            local reader = sock:receiveuntil("--")
            local chunks = {}
            repeat
                local data = reader(4)
                chunks[#chunks + 1] = data or "nil"
            until data == nil
            ctx.chunks = chunks
            ctx.line = sock:receive()
            sock:send("QUIT\n")
            ctx.all = sock:receive("*a")
            ctx.bytes = { sock:receive(3) }
        end)
        local res = t.run(app, t.request {}, { clock = t.clock(0), tcp = line_server })
        assert.same({ "xxxx", "xxxx", "xx", "nil" }, res.ctx.chunks)
        assert.equal("end", res.ctx.line)
        assert.equal("BYE\r\n", res.ctx.all)
        assert.same({ nil, "closed", "" }, res.ctx.bytes)
        assert.is_nil(res.tcp[1].port)
    end)

    it("says how to fake it when opts.tcp is missing", function()
        local res = t.run(app_of(function() moxy.tcp():connect("x", 1) end), t.request {})
        assert.status(500, res)
        assert.logged("pass t.run%(app, s, { tcp = function", res)
    end)
end)


describe("t.phase with threads", function()
    it("waits for the threads of the handler, as a live phase does", function()
        local app = { request_filter = function(s, ctx)
            moxy.thread.spawn(function() moxy.sleep(2) ctx.done = true end)
            return "returned"
        end }
        local s = t.request {}
        local clock = t.clock(0)
        assert.equal("returned", t.phase(app, "request_filter", s))
        assert.is_true(s.ctx.done)
        assert.equal(2, clock.now)
    end)
end)


describe("moxy.sched memory", function()
    it("lets finished threads and their requests be collected", function()
        -- LuaJIT has no ephemerons: weak-keyed maps whose values point back at the
        -- coroutine kept every one of them alive.
        local app = app_of(function()
            local a = moxy.thread.spawn(function() moxy.sleep(0.001) return 1 end)
            local b = moxy.thread.spawn(function() return 2 end)
            moxy.thread.wait(a, b)
        end)
        local function round(n)
            for _ = 1, n do
                t.run(app, t.request {})
            end
            collectgarbage()
            collectgarbage()
            return collectgarbage("count")
        end
        round(200)
        local m1 = round(1000)
        local m2 = round(1000)
        assert.is_true(m2 - m1 < 300, ("Lua memory grew from %d to %d KB"):format(m1, m2))
    end)
end)
