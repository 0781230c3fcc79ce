-- load_balancer: round robin in Lua over two origins, with one retry on the other origin
-- when connecting to the chosen one fails. (It shows the phases at work; moxy.balancer.new{}
-- does the same in C, with health and failover built in: see examples/sticky.lua.)
-- Run: build/moxy -c examples/load_balancer.yaml (origins on 127.0.0.1:9001 and :9002)
--
-- The counter is module state: each worker thread has its own Lua VM, so with
-- `threads: N` every worker runs its own rotation (the spread is still even overall,
-- but two requests in a row may go to the same origin when different workers take them).
local moxy = require "moxy"

local ORIGINS = { "127.0.0.1:9001", "127.0.0.1:9002" }

local origins = ORIGINS
local last = 0                  -- index of the origin the previous request got (per worker)

local app = {}


-- init(config): config.origins (a list of "host:port") replaces the two default origins.
function app.init(config)
    if config and config.origins ~= nil then
        local list = config.origins
        if type(list) ~= "table" or #list == 0 then
            error("load_balancer: config.origins must be a non-empty list of \"host:port\"")
        end
        for i = 1, #list do
            if type(list[i]) ~= "string" or not list[i]:find(":%d+$") then
                error("load_balancer: config.origins[" .. i .. "] must be a \"host:port\"")
            end
        end
        origins = list
    else
        origins = ORIGINS
    end
end


-- Phases: upstream_peer. Runs again after fail_to_connect asked for a retry: the retry
-- takes the origin after the one that failed (not the shared counter, which other
-- requests may have moved meanwhile).
function app.upstream_peer(s, ctx)
    local i
    if ctx.failed then
        i = ctx.index % #origins + 1
    else
        last = last % #origins + 1
        i = last
    end
    ctx.index = i
    ctx.peer = origins[i]
    return ctx.peer
end


-- Phases: fail_to_connect. One retry per request: a second failure goes on to the
-- error page (502, or 504 on a connect timeout).
function app.fail_to_connect(s, peer, err, ctx)
    if ctx.failed then
        return false
    end
    ctx.failed = peer.addr
    moxy.log.warn("connecting to ", peer.addr, " failed (", tostring(err),
                  "), retrying on the next origin")
    return true
end


-- Phases: response_filter. Which origin answered, and the one that failed first.
function app.response_filter(s, resp, ctx)
    if ctx.peer then
        resp:set_header("x-upstream", ctx.peer)
    end
    if ctx.failed then
        resp:set_header("x-upstream-failed", ctx.failed)
    end
end


return app
