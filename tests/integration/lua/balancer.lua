-- moxy.balancer.new{} over the origins the test passes in config (init(config)):
-- /which?k=K answers the backend pool:select(K) names; /backends lists the pool,
-- /group-backends the YAML group "origin";
-- /group and ?via=group proxy through the YAML group "origin" (its hash_key picks); the rest
-- proxies through the pool, keyed by hash_key.
local moxy = require "moxy"

local pool
local app = {}


function app.init(config)
    pool = moxy.balancer.new { backends = config.backends, algorithm = config.algorithm,
                               hash_key = config.hash_key, max_retries = config.max_retries,
                               passive_health = config.passive_health,
                               health_check = config.health_check }
end


function app.request_filter(s, ctx)
    if s.req:arg("norm") then
        s.req:set_uri("/normalized")          -- hash_key uri hashes what the script left
    end
    local path = s.req:path()
    if path == "/which" then
        return s:respond(200, tostring(pool:select(s.req:arg("k"))))
    elseif path == "/backends" then
        return s:respond(200, pool:backends())
    elseif path == "/group-backends" then
        return s:respond(200, moxy.upstream("origin"):backends())
    end
end


function app.upstream_peer(s, ctx)
    if s.req:path() == "/group" or s.req:arg("via") == "group" then
        return moxy.upstream("origin"):select()
    end
    return pool:select()
end


return app
