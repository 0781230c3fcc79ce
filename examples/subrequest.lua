-- Subrequests with moxy.http: every request is first checked by an auth service (its
-- Authorization header is forwarded; a 200 lets it through with the x-user the service
-- names, anything else is a 403, an unreachable service a 503), then proxied.
-- GET /aggregate is answered by moxy itself from two backend calls made in parallel
-- (moxy.thread): it takes as long as the slower one, not the sum.
-- init(config): auth_url (default http://127.0.0.1:9001/auth), backend_url (default
-- http://127.0.0.1:9001).
local moxy = require "moxy"

local app = {}
local auth_url = "http://127.0.0.1:9001/auth"
local backend_url = "http://127.0.0.1:9001"


function app.init(config)
    auth_url = config.auth_url or auth_url
    backend_url = config.backend_url or backend_url
end


-- GET <backend_url><path>: the body, or nil and why.
local function fetch(path)
    local res, err = moxy.http.request { url = backend_url .. path, timeout = 2 }
    if not res then
        return nil, err
    end
    if res.status ~= 200 then
        return nil, "status " .. res.status
    end
    return res.body
end


function app.request_filter(s, ctx)
    local token = s.req:header("authorization")
    if not token then
        return s:respond(401, "login first\n", { ["www-authenticate"] = "Bearer" })
    end
    local res, err = moxy.http.request { url = auth_url, headers = { authorization = token },
                                         timeout = 1 }
    if not res then
        moxy.log.err("auth service: ", err)
        return s:respond(503, "auth service unavailable\n")
    end
    if res.status ~= 200 then
        return s:respond(403, "forbidden\n")
    end
    ctx.user = res:header("x-user") or "unknown"

    if s.req:path() == "/aggregate" then
        local a = moxy.thread.spawn(fetch, "/a")
        local b = moxy.thread.spawn(fetch, "/b")
        local _, body_a, err_a = moxy.thread.wait(a)
        local _, body_b, err_b = moxy.thread.wait(b)
        return s:respond(200, { user = ctx.user, a = body_a or err_a, b = body_b or err_b })
    end
end


function app.upstream_request_filter(s, req, ctx)
    req:set_header("x-user", ctx.user)
    req:remove_header("authorization")      -- the origin trusts x-user instead
end


return app
