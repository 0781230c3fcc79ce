-- Fixture for spec/integration/live_spec.lua (runs in build/moxy and in t.run).
local app = {}


function app.request_filter(s, ctx)
    local path = s.req:path()
    if path == "/local" then
        return s:respond(201, "made here\n", { ["content-type"] = "text/plain",
                                               ["x-local"] = "yes" })
    elseif path == "/boom" then
        error("boom")       -- line 11: the error the spec looks for
    end
    ctx.seen = s.req:header("x-client") or "-"
end


function app.upstream_request_filter(s, req, ctx)
    req:set_header("x-added", "by-script")
    req:set_header("x-client-seen", ctx.seen)
    req:remove_header("x-secret")
end


function app.response_filter(s, resp, ctx)
    resp:set_header("x-served-by", "moxy")
end


return app
