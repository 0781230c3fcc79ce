-- sticky: session affinity by consistent hashing. A client's "sid" cookie picks its origin
-- with ketama (the same ring as nginx's `hash $cookie_sid consistent`), so a session stays on
-- one origin, and adding or removing an origin moves only that origin's share of sessions.
-- A client without the cookie goes round robin (weighted by the origins' weights) and gets a
-- sid, so its next request sticks. moxy fails over to another origin when the chosen one
-- refuses the connection (the balancer's default, max_retries 1).
-- Run: build/moxy -c examples/sticky.yaml (origins on 127.0.0.1:9001 and :9002)
local moxy = require "moxy"

local ORIGINS = { "127.0.0.1:9001", "127.0.0.1:9002" }

local pool = moxy.balancer.new { backends = ORIGINS, algorithm = "ketama" }
local seq = 0                   -- per worker: sids are made of the worker id, time and this

local app = {}


-- init(config): config.origins (a list of "ip:port [weight=N]") replaces the default two.
function app.init(config)
    if config and config.origins ~= nil then
        pool = moxy.balancer.new { backends = config.origins, algorithm = "ketama" }
    end
end


local function sid_of(s)
    for _, v in ipairs(s.req:header_values("cookie")) do
        local sid = v:match("%f[%w]sid=([%w%-]+)")
        if sid then
            return sid
        end
    end
    return nil
end


-- Phases: upstream_peer. The sid is the key; "" (no cookie) means round robin.
function app.upstream_peer(s, ctx)
    ctx.sid = sid_of(s)
    return pool:select(ctx.sid or "")
end


-- Phases: connected_to_upstream. The origin actually used (after a failover, not the
-- one upstream_peer chose).
function app.connected_to_upstream(s, reused, peer, ctx)
    ctx.peer = peer.addr
end


-- Phases: response_filter. Which origin was chosen, and a sid for a client without one.
function app.response_filter(s, resp, ctx)
    if ctx.peer then
        resp:set_header("x-upstream", ctx.peer)
    end
    if ctx.peer and not ctx.sid then
        seq = seq + 1
        local sid = string.format("%d-%x-%x", moxy.worker.id(), math.floor(moxy.now()), seq)
        resp:add_header("set-cookie", "sid=" .. sid .. "; Path=/; HttpOnly")
    end
end


return app
