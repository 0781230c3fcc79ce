-- init(config) receives the service's `config:` mapping.
local moxy = require "moxy"

local seen
local app = {}


function app.init(config)
    seen = config
end


function app.request_filter(s, ctx)
    return s:respond(200, moxy.json.encode(seen))
end


return app
