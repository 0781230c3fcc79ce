-- The bench's reuse measurement: GET /_moxy_stats answers moxy.stats() as JSON
-- (summed over all workers); every other request is proxied untouched.
local moxy = require "moxy"

local app = {}


function app.request_filter(s)
    if s.req:path() == "/_moxy_stats" then
        return s:respond(200, moxy.stats())
    end
end


return app
