local app = {}
function app.request_filter(s, ctx)
    return s:respond(200, "x"
end
return app
