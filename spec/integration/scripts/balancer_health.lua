-- moxy.balancer.new{ health_check = ... } validation, for t.each_engine: GET /?case=N
-- tries case N and answers "ok" or "error KEY" (the key path the error names), so that
-- both engines can be held to the same verdicts. The same cases as YAML's health_check:.
local moxy = require "moxy"

local B = { "127.0.0.1:1" }
local CASES = {
    { type = "tcp" },
    { type = "http", path = "/health", interval = 0.3, rise = 2, fall = 1, timeout = 0.5,
      expected_statuses = { 200, "3xx", "400-404" }, method = "GET",
      headers = { ["X-Check"] = "moxy" }, expected_body = "ok", host = "app", port = 8080 },
    { type = "udp" },
    { rise = 0 },
    { fall = 101 },
    { interval = 0 },
    { interval = "soon" },
    { timeout = 4000 },
    { port = 70000 },
    { expected_statuses = { 200, "6xx" } },
    { expected_statuses = "99" },
    { method = "POST" },
    { headers = { Host = "x" } },
    { headers = { ["bad name"] = "x" } },
    { path = "" },
    { speed = 1 },
    { method = "HEAD", expected_body = "ok" },
}

local app = {}


function app.request_filter(s)
    local c = CASES[tonumber(s.req:arg("case"))]
    local ok, err = pcall(moxy.balancer.new, { backends = B, health_check = c })
    if ok then
        return s:respond(200, "ok")
    end
    return s:respond(200, "error " .. (err:match("(health_check[%w_%.%-]*)") or err))
end


return app
