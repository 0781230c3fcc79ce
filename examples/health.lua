-- examples/health.lua: the YAML group "origin" with active health checks, and a status page.
-- GET /upstreams answers the group's backends with the checks' verdict as JSON (503 when no
-- backend is usable); every other request goes through the group, whose selection skips
-- the backends the checks took out (conf/README.md `health_check`).
local moxy = require "moxy"

local origin = moxy.upstream("origin")

local app = {}


function app.request_filter(s, ctx)
    if s.req:path() ~= "/upstreams" then
        return
    end
    local list, usable = {}, 0
    for i, b in ipairs(origin:backends()) do
        list[i] = { addr = b.addr, healthy = b.healthy, usable = b.usable, inflight = b.inflight }
        if b.usable then
            usable = usable + 1
        end
    end
    return s:respond(usable > 0 and 200 or 503, { backends = list, usable = usable },
                     { ["cache-control"] = "no-store" })
end


function app.upstream_peer(s, ctx)
    return origin:select()
end


return app
