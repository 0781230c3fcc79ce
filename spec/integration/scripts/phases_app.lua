-- Phases that wait, request_body_filter, set_body and body_chunks: the same cases run
-- through both engines (spec/integration/phases_spec.lua).
local moxy = require "moxy"

local app = {}


function app.request_filter(s, ctx)
    if s.req:arg("local") then
        return s:respond(200, "Local Answer")
    end
    if s.req:arg("setbody") then
        s.req:set_body(s.req:arg("setbody"))
    end
    if s.req:arg("pull") then
        local n = 0
        for chunk in s.req:body_chunks() do
            n = n + #chunk
        end
        ctx.pulled = n
    end
end


function app.upstream_peer(s, ctx)
    return "127.0.0.1:9"        -- t.each_engine's live server sends it to its origin
end


function app.upstream_response_filter(s, resp, ctx)
    moxy.sleep(0.01)
    resp:set_header("x-urf", "slept")
    if s.req:arg("rb") then
        local body, err = resp:read_body { max = tonumber(s.req:arg("rb")) }
        if body then
            resp:set_body(body .. "+")
        else
            resp:set_header("x-rb", err)
        end
    end
end


function app.response_filter(s, resp, ctx)
    moxy.sleep(0.01)
    resp:set_header("x-rf", "slept")
    if s.req:arg("boom") then
        error("boom after a wait")
    end
    if ctx.pulled then
        resp:set_header("x-pulled", ctx.pulled)
    end
    if s.req:arg("local") then
        resp:set_body("Replaced " .. #resp:read_body())
    end
    local up = s:upstream()
    resp:set_header("x-up", up and (up.tries .. " " .. tostring(up.status)) or "none")
end


function app.request_body_filter(s, chunk, eos, ctx)
    moxy.sleep(0.001)
    if eos then
        return "|"
    end
    return chunk:upper()
end


function app.response_body_filter(s, chunk, eos, ctx)
    moxy.sleep(0.001)
    if eos then
        return "<eos>"
    end
    return chunk:lower()
end


function app.logging(s, err, ctx)
    moxy.sleep(0.01)
end


return app
