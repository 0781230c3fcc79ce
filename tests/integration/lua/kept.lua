-- Sessions are valid while their request runs: a timer that kept one, and a handler
-- that tries to hang a field on one, both get a clear error and moxy goes on.
local moxy = require "moxy"
local app = {}
local kept


function app.request_filter(s, ctx)
    local path = s.req:path()
    if path == "/keep" then
        kept = s
        moxy.timer.at(0.2, function()
            local ok, err = pcall(function() return kept.req:path() end)
            moxy.log.warn("kept session: ", tostring(ok), " ", tostring(err))
        end)
        return s:respond(200, "kept")
    elseif path == "/field" then
        local ok, err = pcall(function() s.user = "bob" end)
        ctx.ok = ok
        return s:respond(200, tostring(err))
    elseif path == "/after-field" then
        return s:respond(200, tostring(rawget(s, "user")))
    end
end


return app
