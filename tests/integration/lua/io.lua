-- moxy.tcp, moxy.http and moxy.thread live (tests/integration/test_lua_io.py). ORIGIN_PORT
-- is the harness origin, LINE_PORT a line-protocol server ("PING x" -> "PONG x"), LINE_UNIX
-- the same on a unix socket, DEAD_PORT a port nobody listens on.
local moxy = require "moxy"

local ORIGIN = "http://127.0.0.1:ORIGIN_PORT"
local app = {}
local timer_result = "none"


local function line_call(host, port, msg, timeout_ms)
    local sock = moxy.tcp()
    if timeout_ms then
        sock:settimeout(timeout_ms)
    end
    local ok, err = sock:connect(host, port)
    if not ok then
        return nil, "connect: " .. err
    end
    local reused = sock:getreusedtimes()
    local n, serr = sock:send(msg .. "\n")
    if not n then
        return nil, "send: " .. serr
    end
    local line, rerr, partial = sock:receive("*l")
    if not line then
        sock:close()
        return nil, "receive: " .. rerr .. " partial=" .. tostring(partial)
    end
    sock:setkeepalive(10000, 4)
    return line .. "|reused=" .. reused
end


function app.request_filter(s, ctx)
    local path = s.req:path()
    local arg = function(k) return s.req:arg(k) end

    if path == "/auth" then
        -- An auth service called before proxying: the token decides.
        local res, err = moxy.http.request {
            url = ORIGIN .. "/status?code=" .. (s.req:header("x-token") == "good" and 200 or 403),
            headers = { ["x-check"] = "token" }, timeout = 5,
        }
        if not res then
            return s:respond(502, "auth: " .. err)
        end
        if res.status ~= 200 then
            return s:respond(401, "denied by auth (" .. res.status .. ")\n")
        end
        ctx.auth = res.body
        return
    elseif path == "/line" then
        local r, err = line_call(arg("host") or "127.0.0.1", LINE_PORT, "PING " .. arg("name"))
        return s:respond(r and 200 or 502, r or err)
    elseif path == "/line-unix" then
        local r, err = line_call("unix:LINE_UNIX", nil, "PING " .. arg("name"))
        return s:respond(r and 200 or 502, r or err)
    elseif path == "/line-slow" then
        local r, err = line_call("127.0.0.1", LINE_PORT, "SLOW " .. arg("ms") .. " x",
                                 tonumber(arg("timeout")))
        return s:respond(r and 200 or 504, r or err)
    elseif path == "/line-big" then
        local sock = moxy.tcp()
        assert(sock:connect("127.0.0.1", LINE_PORT))
        assert(sock:send("BIG " .. arg("n") .. "\n"))
        local data = assert(sock:receive(tonumber(arg("n"))))
        local rest = assert(sock:receive("*l"))
        sock:close()
        return s:respond(200, #data .. " " .. data:sub(1, 4) .. " rest=" .. #rest)
    elseif path == "/line-until" then
        local sock = moxy.tcp()
        assert(sock:connect("127.0.0.1", LINE_PORT))
        assert(sock:send("PING a--b--c\n"))
        local reader = sock:receiveuntil("--")
        local a = reader()
        local b = reader()
        local rest = sock:receive("*l")
        -- reader(size): chunks of at most size bytes, then nil at the pattern
        assert(sock:send("PING abcdefghij--x-y\n"))
        local chunks = {}
        for _ = 1, 10 do
            local data, err = reader(4)
            if not data then
                chunks[#chunks + 1] = "nil:" .. tostring(err)
                break
            end
            chunks[#chunks + 1] = data
        end
        local r2 = sock:receiveuntil("-", { inclusive = true })
        local x = r2()
        local tail = sock:receive()
        sock:close()
        return s:respond(200, a .. "," .. b .. "," .. rest .. "|" .. table.concat(chunks, ",")
                         .. "|" .. x .. "|" .. tail)
    elseif path == "/line-timeout-retry" then
        -- After a read timeout the socket stays usable (OpenResty's rule).
        local sock = moxy.tcp()
        sock:settimeouts(1000, 1000, 100)
        assert(sock:connect("127.0.0.1", LINE_PORT))
        assert(sock:send("SLOW 400 late\n"))
        local line, err = sock:receive()
        sock:settimeouts(1000, 1000, 3000)
        local again = sock:receive()
        sock:close()
        return s:respond(200, tostring(line) .. " " .. tostring(err) .. " " .. tostring(again))
    elseif path == "/unread" then
        local sock = moxy.tcp()
        assert(sock:connect("127.0.0.1", LINE_PORT, { pool = "unread" }))
        assert(sock:send("BIG 10\n"))
        local part = assert(sock:receive(5))
        local ok, err = sock:setkeepalive()
        local _, err2 = sock:send("x")
        return s:respond(200, table.concat({ #part, tostring(ok), tostring(err), tostring(err2) },
                                           " "))
    elseif path == "/close-busy" then
        -- One operation at a time: closing under another thread's receive raises.
        local sock = moxy.tcp()
        assert(sock:connect("127.0.0.1", LINE_PORT))
        assert(sock:send("SLOW 300 z\n"))
        local th = moxy.thread.spawn(function() return sock:receive() end)
        local ok, err = pcall(sock.close, sock)
        local ok2, err2 = pcall(sock.send, sock, "x")
        local _, line = moxy.thread.wait(th)
        sock:close()
        return s:respond(200, table.concat({ tostring(ok), tostring(err:match("socket busy")),
                                             tostring(ok2), tostring(err2:match("socket busy")),
                                             line }, " "))
    elseif path == "/lua-mem" then
        collectgarbage()
        collectgarbage()
        return s:respond(200, string.format("%d", collectgarbage("count")))
    elseif path == "/spawn-many" then
        for _ = 1, 50 do
            local th = moxy.thread.spawn(function() moxy.sleep(0) return 1 end)
            moxy.thread.wait(th)
        end
        return s:respond(200, "ok")
    elseif path == "/refused" then
        local sock = moxy.tcp()
        local ok, err = sock:connect("127.0.0.1", DEAD_PORT)
        return s:respond(200, tostring(ok) .. " " .. tostring(err))
    elseif path == "/unresolvable" then
        local sock = moxy.tcp()
        sock:settimeout(5000)
        local ok, err = sock:connect("no-such-host.invalid", 80)
        return s:respond(200, tostring(ok) .. " " .. tostring(err))
    elseif path == "/closed-ops" then
        local sock = moxy.tcp()
        local _, e1 = sock:send("x")
        local _, e2 = sock:receive()
        local _, e3 = sock:close()
        return s:respond(200, table.concat({ e1, e2, e3 }, ","))
    elseif path == "/http" then
        local res, err, detail = moxy.http.request {
            url = ORIGIN .. arg("u"), timeout = tonumber(arg("timeout")) or 10,
            max_body = tonumber(arg("max")), method = arg("m"),
            body = arg("body"),
        }
        if not res then
            return s:respond(200, "error " .. err .. " (" .. tostring(detail) .. ")")
        end
        return s:respond(200, res.status .. " " .. #res.body .. " "
                         .. tostring(res:header("Content-Type")) .. "\n" .. res.body)
    elseif path == "/http-close" then
        local res, err = moxy.http.request { url = "http://127.0.0.1:LINE_PORT/" .. arg("n"),
                                             max_body = tonumber(arg("max")) }
        if not res then
            return s:respond(200, "error " .. err)
        end
        return s:respond(200, res.status .. " " .. #res.body .. " " .. res:header("content-type")
                         .. "\n" .. res.body)
    elseif path == "/https" then
        local res, err = moxy.http.request { url = "https://127.0.0.1:ORIGIN_PORT/" }
        return s:respond(200, tostring(res) .. " " .. tostring(err))
    elseif path == "/http-slow" then
        local res, err = moxy.http.request { url = ORIGIN .. "/slow?ms=" .. arg("ms"),
                                             timeout = 10 }
        return s:respond(200, res and res.body or err)
    elseif path == "/parallel" then
        local t0 = moxy.now()
        local function call(ms)
            local res, err = moxy.http.request { url = ORIGIN .. "/slow?ms=" .. ms, timeout = 10 }
            return res and res.status or err
        end
        local a = moxy.thread.spawn(call, arg("ms"))
        local b = moxy.thread.spawn(call, arg("ms"))
        local ok1, r1 = moxy.thread.wait(a, b)
        local ok2, r2 = moxy.thread.wait(a, b)
        return s:respond(200, string.format("%s %s %s %s %.3f", tostring(ok1), tostring(r1),
                                            tostring(ok2), tostring(r2), moxy.now() - t0))
    elseif path == "/kill" then
        local t0 = moxy.now()
        local th = moxy.thread.spawn(function() moxy.sleep(10) return "slept" end)
        local h = moxy.thread.spawn(function()
            return moxy.http.request { url = ORIGIN .. "/slow?ms=3000", timeout = 10 }
        end)
        local k1 = moxy.thread.kill(th)
        local k2 = moxy.thread.kill(h)
        local ok, err = moxy.thread.wait(th)
        return s:respond(200, string.format("%s %s %s %s %.3f", tostring(k1), tostring(k2),
                                            tostring(ok), tostring(err), moxy.now() - t0))
    elseif path == "/thread-error" then
        local th = moxy.thread.spawn(function() moxy.sleep(0.01) error("boom in thread") end)
        local ok, err = moxy.thread.wait(th)
        return s:respond(200, tostring(ok) .. " " .. tostring(err))
    elseif path == "/unwaited" then
        -- The phase ends only once its threads have: the answer comes after both.
        ctx.n = 0
        for _ = 1, 2 do
            moxy.thread.spawn(function() moxy.sleep(0.2) ctx.n = ctx.n + 1 end)
        end
        return
    elseif path == "/timer-http" then
        moxy.timer.at(0, function()
            moxy.sleep(0.05)
            local res, err = moxy.http.request { url = ORIGIN .. "/echo?from=timer", timeout = 5 }
            timer_result = res and ("status " .. res.status) or ("error " .. err)
        end)
        return s:respond(200, "armed")
    elseif path == "/timer-sleep" then
        moxy.timer.at(0, function()
            local sock = moxy.tcp()
            sock:connect("127.0.0.1", LINE_PORT)
            sock:send("SLOW 20000 x\n")
            moxy.thread.spawn(function() moxy.sleep(30) end)
            sock:receive()
        end)
        return s:respond(200, "armed")
    elseif path == "/timer-result" then
        return s:respond(200, timer_result)
    end
end


function app.upstream_request_filter(s, req, ctx)
    if ctx.auth then
        req:set_header("x-auth-status", "ok")
    end
    if ctx.n then
        req:set_header("x-threads-done", tostring(ctx.n))
    end
end


return app
