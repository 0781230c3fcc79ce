-- upstream_peer returns a balancer's selection whose key comes from hash_key: /lua uses
-- a moxy.balancer keyed by the x-user header, /yaml the YAML group "origin".
local moxy = require "moxy"

local pool = moxy.balancer.new { backends = { "10.0.0.1:80", "10.0.0.2:80 weight=2",
                                              "10.0.0.3:80" },
                                 algorithm = "fnv", hash_key = "header:x-user" }
local app = {}


function app.upstream_peer(s, ctx)
    if s.req:path() == "/yaml" then
        return moxy.upstream("origin"):select()
    end
    return pool:select()
end


return app
