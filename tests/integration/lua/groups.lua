-- moxy.upstream(name): pick a YAML group per request; :backends() lists it.
local moxy = require "moxy"

local green = moxy.upstream("green")
local app = {}


function app.request_filter(s, ctx)
    if s.req:path() == "/backends" then
        local out = {}
        for i, b in ipairs(green:backends()) do
            out[i] = b.addr .. "/" .. b.weight
        end
        return s:respond(200, table.concat(out, ","))
    end
end


function app.upstream_peer(s, ctx)
    if s.req:arg("color") == "green" then
        return green:select()
    end
    return moxy.upstream("blue"):select()
end


return app
