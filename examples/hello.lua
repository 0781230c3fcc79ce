-- hello: answers /hello from Lua, proxies everything else to one upstream.
-- Run: build/moxy -c examples/hello.yaml
local UPSTREAM = "127.0.0.1:9001"

local upstream = UPSTREAM
local app = {}


-- init(config): config.upstream ("host:port") overrides the default upstream.
function app.init(config)
    if config and config.upstream ~= nil then
        if type(config.upstream) ~= "string" then
            error("hello: config.upstream must be a \"host:port\" string")
        end
        upstream = config.upstream
    else
        upstream = UPSTREAM
    end
end


-- Phases: request_filter.
function app.request_filter(s, ctx)
    if s.req:path() == "/hello" then
        return s:respond(200, "hello from moxy\n", { ["content-type"] = "text/plain" })
    end
end


-- Phases: upstream_peer.
function app.upstream_peer(s, ctx)
    return upstream
end


return app
