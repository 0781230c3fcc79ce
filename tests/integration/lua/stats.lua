-- Answers GET /_stats with moxy.stats() and moxy.worker.stats() as JSON, locally;
-- everything else goes to the upstream. tests/integration/test_stats.py drives it.
local moxy = require "moxy"

local app = {}


function app.request_filter(s)
    if s.req:path() == "/_stats" then
        return s:respond(200, { stats = moxy.stats(), worker = moxy.worker.stats() })
    end
end


return app
