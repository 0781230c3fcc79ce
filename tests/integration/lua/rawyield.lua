-- Handlers that leave the engine's protocol (tests/integration/test_lua.py RawYield): a bare
-- coroutine.yield() (not one of moxy's waits) and an error that is not a string.
local app = {}
local served = 0

function app.request_filter(s, ctx)
    local path = s.req:path()
    if path == "/yield" then
        coroutine.yield()
    elseif path == "/yield-value" then
        coroutine.yield(true, true, "looks like a phase end")
    elseif path == "/table-error" then
        error({ code = 1 })
    end
    served = served + 1
    ctx.n = served
end

function app.response_filter(s, resp, ctx)
    resp:set_header("x-served", tostring(ctx.n))
end

return app
