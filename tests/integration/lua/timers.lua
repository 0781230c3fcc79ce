-- moxy.timer live: an every-timer armed in init ticks a counter; /at arms a one-shot;
-- a long timer still pending at shutdown runs with premature = true.
local moxy = require "moxy"

local ticks, fired = 0, {}
local app = {}


function app.init()
    moxy.timer.every(0.1, function(premature)
        if not premature then
            ticks = ticks + 1
        end
    end)
    moxy.timer.at(3600, function(premature)
        moxy.log.warn("long timer ran, premature=", tostring(premature))
    end)
end


function app.shutdown()
    moxy.log.warn("shutdown ran after ", ticks > 0 and "ticks" or "no ticks")
end


function app.request_filter(s, ctx)
    local path = s.req:path()
    if path == "/ticks" then
        return s:respond(200, tostring(ticks))
    elseif path == "/at" then
        local name = s.req:arg("name")
        moxy.timer.at(0.2, function(premature, n) fired[#fired + 1] = n end, name)
        local h = moxy.timer.at(0.2, function() fired[#fired + 1] = "cancelled" end)
        h:cancel()
        return s:respond(200, "armed")
    elseif path == "/fired" then
        return s:respond(200, table.concat(fired, ","))
    end
end


return app
