-- moxy.balancer: the fake engine's moxy.lb twin against the C algorithms of the live one.
local t = require "moxy.test"

local SCRIPT = "spec/integration/scripts/balancer_twin.lua"


t.each_engine("moxy.balancer picks the same backends in both engines", SCRIPT, function(run)
    for _, alg in ipairs { "fnv", "ketama" } do
        for _, prefix in ipairs { "user", "/img/", "", "k%20" } do
            local res = run { uri = "/?alg=" .. alg .. "&n=300&k=" .. prefix }
            assert.equal(200, res.status)
            local seen = {}
            for addr in res.body:gmatch("[^,]+") do seen[addr] = true end
            local n = 0
            for _ in pairs(seen) do n = n + 1 end
            assert.equal(6, n, alg .. " spreads keys over every backend")
        end
    end
    for _, alg in ipairs { "fnv", "ketama" } do
        local res = run { uri = "/?alg=" .. alg .. "&n=26&empty=1" }
        local count = {}
        for addr in res.body:gmatch("[^,]+") do count[addr] = (count[addr] or 0) + 1 end
        assert.equal(10, count["192.168.1.20:443"], alg .. ": an empty key goes by weight")
    end
    for _, alg in ipairs { "round_robin", "weighted", "least_conn" } do
        local res = run { uri = "/?alg=" .. alg .. "&n=28" }
        assert.equal(200, res.status)
    end
    local res = run { uri = "/?alg=weighted&n=26" }
    -- nginx's smooth weighted round robin over weights 1,2,3,1,1,5: two exact cycles.
    local count = {}
    for addr in res.body:gmatch("[^,]+") do count[addr] = (count[addr] or 0) + 1 end
    assert.same({ ["10.0.0.1:80"] = 2, ["10.0.0.2:80"] = 4, ["10.0.0.3:8080"] = 6,
                  ["[::1]:81"] = 2, ["unix:/tmp/moxy-twin.sock"] = 2,
                  ["192.168.1.20:443"] = 10 }, count)
end)
