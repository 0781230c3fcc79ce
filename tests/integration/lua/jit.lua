-- Answers GET /jit with the state of LuaJIT's traces (tests/integration/test_lua.py, Jit):
-- whether the engine warmed its phase loop at start and how many traces exist.
local engine = require "moxy.engine"
local jutil = require "jit.util"

local app = {}

function app.request_filter(s, ctx)
    if s.req:path() == "/jit" then
        local n = 0
        for i = 1, 65535 do
            if jutil.traceinfo(i) then
                n = n + 1
            end
        end
        return s:respond(200, { jit = jit.status(), warmed = engine.warmed == true,
                                loop = engine.body_loop_compiled(), traces = n })
    end
    ctx.ua = s.req:header("user-agent")
end

function app.upstream_request_filter(s, req, ctx)
    if ctx.ua then req:set_header("x-ua", ctx.ua) end
end

function app.response_filter(s, resp, ctx)
    resp:set_header("x-served-by", "moxy")
end

function app.logging(s, err, ctx)
end

return app
