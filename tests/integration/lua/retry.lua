-- fail_to_connect: the first peer is down; the handler asks for a retry and
-- upstream_peer picks the live one on the second try.
local moxy = require "moxy"

local app = {}


function app.upstream_peer(s, ctx)
    ctx.tries = (ctx.tries or 0) + 1
    if ctx.tries == 1 and s.req:arg("mode") ~= "live-first" then
        return "127.0.0.1:DEAD_PORT"
    end
    return moxy.peer { host = "127.0.0.1", port = ORIGIN_PORT }
end


function app.fail_to_connect(s, peer, err, ctx)
    ctx.failed = peer.addr .. " " .. tostring(err)
    if s.req:arg("mode") == "method" then
        err:set_retry(true)
        return
    end
    return s.req:arg("mode") ~= "no-retry"
end


function app.upstream_request_filter(s, req, ctx)
    req:set_header("x-tries", tostring(ctx.tries))
    req:set_header("x-failed", ctx.failed or "-")
end


return app
