-- Answers with balancer selections, so that t.each_engine can check that the fake
-- engine's moxy.lb twin picks what the C algorithms pick: GET /?alg=ketama&k=user&n=200
-- selects n keys ("user1".."user200") and answers the addresses joined by commas;
-- &empty=1 selects the empty key n times (weighted round robin, as nginx).
local moxy = require "moxy"

local BACKENDS = { "10.0.0.1:80", "10.0.0.2:80 weight=2", "10.0.0.3:8080 weight=3",
                   "[::1]:81", "unix:/tmp/moxy-twin.sock", "192.168.1.20:443 weight=5" }

local hashing = {
    fnv = moxy.balancer.new { backends = BACKENDS, algorithm = "fnv" },
    ketama = moxy.balancer.new { backends = BACKENDS, algorithm = "ketama" },
}

local app = {}


function app.request_filter(s, ctx)
    local alg = s.req:arg("alg") or "round_robin"
    local n = tonumber(s.req:arg("n") or "1")
    local prefix = s.req:arg("k") or ""
    -- Stateful algorithms start from a fresh balancer: each worker has its own VM.
    local empty = s.req:arg("empty") ~= nil          -- select("") n times
    local pool = not empty and hashing[alg]
                 or moxy.balancer.new { backends = BACKENDS, algorithm = alg }
    local out = {}
    for i = 1, n do
        out[i] = tostring(pool:select(empty and "" or prefix .. i))
    end
    return s:respond(200, table.concat(out, ","))
end


return app
