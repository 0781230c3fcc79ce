-- A streamed response_body_filter: upper-cases every chunk and appends a
-- trailer line at the end of the body; /local-body answers locally through it.
local app = {}


function app.request_filter(s, ctx)
    if s.req:path() == "/local-body" then
        return s:respond(200, "local body\n")
    end
end


function app.response_body_filter(s, chunk, eos, ctx)
    ctx.bytes = (ctx.bytes or 0) + #chunk
    if s.req:arg("boom") and ctx.bytes > 100000 then
        error("body filter gave up")
    end
    if eos then
        return "-- " .. ctx.bytes .. " bytes filtered --\n"
    end
    return chunk:upper()
end


return app
