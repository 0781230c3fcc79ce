-- The "moxy+noop" row: four handlers that do nothing. Compared with plain moxy in the
-- same run, it is what a script costs before it does any work (issue 6's Lua overhead:
-- each phase is a resume of the request's coroutine and a yield back).
local app = {}

function app.request_filter(s, ctx) end

function app.upstream_request_filter(s, req, ctx) end

function app.response_filter(s, resp, ctx) end

function app.logging(s, err, ctx) end

return app
