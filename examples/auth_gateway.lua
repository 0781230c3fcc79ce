-- auth_gateway: refuses requests without a token, forwards the rest with the client's
-- address, and marks every response. Run: build/moxy -c examples/auth_gateway.yaml
local moxy = require "moxy"

local UPSTREAM = "127.0.0.1:9001"

local app = {}


-- Phases: request_filter.
function app.request_filter(s, ctx)
    if not s.req:header("authorization") then
        return s:respond(401, "login first\n", { ["www-authenticate"] = "Bearer" })
    end
    ctx.t0 = moxy.now()
end


-- Phases: upstream_peer.
function app.upstream_peer(s, ctx)
    return UPSTREAM
end


-- Phases: upstream_request_filter.
function app.upstream_request_filter(s, req, ctx)
    req:set_header("x-forwarded-for", s:client_addr())
end


-- Phases: response_filter (upstream and local answers alike).
function app.response_filter(s, resp, ctx)
    resp:set_header("x-served-by", "moxy")
end


-- Phases: logging.
function app.logging(s, err, ctx)
    moxy.log.info(s.req:method(), " ", s.req:uri(), " ", s.resp:status())
end


return app
