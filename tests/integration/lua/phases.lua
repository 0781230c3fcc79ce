-- Exercises every phase the live engine runs; tests/integration/test_lua.py drives it.
local moxy = require "moxy"

local app = {}


function app.request_filter(s, ctx)
    local path = s.req:path()
    if path == "/local" then
        return s:respond(201, "made locally\n", { ["content-type"] = "text/plain" })
    elseif path == "/json" then
        return s:respond(200, { ok = true, n = 3 })
    elseif path == "/boom" then
        local t = nil
        return t.field                          -- line 15: the error the test expects
    elseif path == "/conn" then
        s.conn_ctx.n = (s.conn_ctx.n or 0) + 1
        return s:respond(200, tostring(s.conn_ctx.n))
    elseif path == "/misuse" then
        s.resp:set_header("x-nope", "1")        -- not allowed in request_filter
    elseif path == "/sleep" then
        local t0 = moxy.now()
        moxy.sleep(tonumber(s.req:arg("t") or "0.3"))
        ctx.slept = moxy.now() - t0
    end
    ctx.ua = s.req:header("user-agent")
end


function app.upstream_peer(s, ctx)
    if s.req:path() == "/badpeer" then
        return 42
    elseif s.req:path():sub(1, 5) == "/down" then
        return "127.0.0.1:DEAD_PORT"
    end
    return moxy.peer { host = "127.0.0.1", port = ORIGIN_PORT }
end


function app.proxy_upstream_filter(s, ctx)
    if s.req:path() == "/noproxy" then
        return false
    end
end


function app.upstream_request_filter(s, req, ctx)
    if s.req:path() == "/managed" then
        if s.req:arg("each") then               -- every managed name, each way: all refused
            for _, n in ipairs({ "Content-Length", "transfer-encoding", "CONNECTION", "keep-alive",
                                 "Upgrade", "te", "proxy-connection", "Trailer" }) do
                for _, f in ipairs({ "set_header", "add_header", "remove_header" }) do
                    local ok, err = pcall(req[f], req, n, "1")
                    moxy.log.warn("managed ", f, " ", n, ": ", ok and "taken" or err)
                end
            end
        end
        req:set_header("Content-Length", "5")   -- framing is moxy's: an error
    end
    req:set_header("x-script", "phases.lua")
    req:set_header("x-ua", ctx.ua or "-")
    req:remove_header("x-secret")
    if ctx.slept then
        req:set_header("x-slept", string.format("%.2f", ctx.slept))
    end
    if s.req:path() == "/rewrite" then
        req:set_uri("/echo?rewritten=1")
    end
end


function app.connected_to_upstream(s, reused, peer, ctx)
    ctx.conn = (reused and "reused " or "new ") .. peer.addr
end


function app.response_filter(s, resp, ctx)
    if ctx.conn then
        resp:set_header("x-conn", ctx.conn)
    end
    resp:set_header("x-served-by", "moxy")
    resp:set_header("x-source", resp:source())
end


function app.logging(s, err, ctx)
    s:log_field("ua", s.req:header("user-agent") or "-")
    s:log_field("note", 'say "hi"')
    moxy.log.info("logged ", s.req:method(), " ", s.req:uri(), " ", s.resp:status(),
                  " err=", tostring(err))
end


function app.fail_to_proxy(s, err, ctx)
    if s.req:path() == "/down-503" then
        return 503
    end
end


return app
