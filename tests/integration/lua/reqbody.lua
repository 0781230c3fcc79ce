-- s.req:body(): the handler waits for the whole body, then answers with its size
-- and a digest; bodies over 64 KiB are refused with 413 from Lua.
local app = {}


function app.request_filter(s, ctx)
    if s.req:path() ~= "/body" then
        return
    end
    local body, err = s.req:body { max = 65536 }
    if not body then
        return s:respond(413, err .. "\n")
    end
    return s:respond(200, string.format("%d %s\n", #body, body:sub(1, 8)))
end


return app
