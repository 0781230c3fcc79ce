-- The "moxy + lua" workload: the same work as the nginx + lua row
-- (read the client's User-Agent, send it upstream as x-bench, tag the response).
-- Used by scripts/bench.sh when MOXY_SCRIPT points here or it is copied to
-- examples/bench.lua.
local app = {}

function app.upstream_request_filter(s, req, ctx)
  local ua = s.req:header("user-agent")
  if ua then req:set_header("x-bench", ua) end
end

function app.response_filter(s, resp, ctx)
  resp:set_header("x-served-by", "moxy")
end

return app
