-- moxy.balancer.new{ health_check = {...} }: both engines accept and refuse the same
-- options, and the error names the key (the live engine checks with the YAML loader's
-- rules, src/conf/conf.c; the fake with its Lua twin in moxy.lb_fake).
local t = require "moxy.test"

local SCRIPT = "spec/integration/scripts/balancer_health.lua"
local WANT = { "ok", "ok", "error health_check.type", "error health_check.rise",
               "error health_check.fall", "error health_check.interval",
               "error health_check.interval", "error health_check.timeout",
               "error health_check.port", "error health_check.expected_statuses",
               "error health_check.expected_statuses", "error health_check.method",
               "error health_check.headers.Host", "error health_check.headers.bad",
               "error health_check.path", "error health_check.speed", "error health_check" }


t.each_engine("moxy.balancer.new validates health_check the same in both engines", SCRIPT,
              function(run, engine)
    for i, want in ipairs(WANT) do
        local res = run { uri = "/?case=" .. i }
        assert.equal(200, res.status)
        assert.equal(want, res.body, engine .. " engine, case " .. i)
    end
end)
