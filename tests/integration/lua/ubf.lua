-- upstream_response_body_filter runs first (upstream responses only), then
-- response_body_filter: "o" -> "0", then upper case.
local app = {}


function app.request_filter(s, ctx)
    if s.req:path() == "/local" then
        return s:respond(200, "local body")
    end
end


function app.upstream_response_body_filter(s, chunk, eos, ctx)
    return (chunk:gsub("o", "0"))
end


function app.response_body_filter(s, chunk, eos, ctx)
    return chunk:upper()
end


return app
