-- No upstream_peer: requests go to the service's YAML upstream group.
local app = {}


function app.upstream_request_filter(s, req, ctx)
    req:set_header("x-from-yaml-group", "1")
end


return app
