-- moxy.lb_fake: the load-balancing part of the fake backend (moxy.test): groups are Lua
-- tables over the moxy.lb twin of the C algorithms, so a key lands on the same backend as
-- live. YAML groups come from t.load's config.upstreams, either a list of backends or
-- { backends = {...}, algorithm =, hash_key = } as in YAML. moxy.fake merges it in.
local lb = require "moxy.lb"

local ipairs = ipairs
local match = string.match
local tonumber = tonumber
local type = type


local _M = {}
local ALG_NAME = lb.ALGORITHMS


local function new_group(algorithm, names, weights)
    local nodes, backends = {}, {}
    for i = 1, #names do
        nodes[i] = { name = names[i], weight = weights[i] }
        backends[i] = { addr = names[i], weight = weights[i], healthy = true, down = false,
                        inflight = 0, fails = 0 }
    end
    return { lb = lb.new(algorithm, nodes), backends = backends, algorithm = algorithm,
             gen = 1 }
end


-- A group for moxy.balancer.new{}: the same checks as the C side.
function _M.group_new(algorithm, _, _, names, weights)
    for i = 1, #names do
        local a = names[i]
        local host = match(a, "^%[(.+)%]:%d+$") or match(a, "^([^:]+):%d+$")
        local port = tonumber(match(a, ":(%d+)$"))
        if not (match(a, "^unix:/") or (host and port and port >= 1 and port <= 65535)) then
            return nil, "backend \"" .. a .. "\": expected \"ip:port\", \"[v6]:port\" or"
                        .. " \"unix:/path\""
        end
        if host and not match(host, "^[%x%.:]+$") then
            return nil, "backend \"" .. a .. "\": use an IP address (host names are resolved"
                        .. " by YAML upstream groups)"
        end
    end
    return new_group(ALG_NAME[algorithm + 1], names, weights)
end


local cache, cache_src = {}, nil


-- YAML-like group <name> from fake.upstreams: group, algorithm, hash kind, hash name.
function _M.group_upstream(name)
    local fake = require "moxy.fake"
    if cache_src ~= fake.upstreams then
        cache, cache_src = {}, fake.upstreams
    end
    local g = cache[name]
    if g == nil then
        local conf = fake.upstreams[name]
        if conf == nil then
            return nil
        end
        local list = conf.backends or conf
        local names, weights = {}, {}
        for i, b in ipairs(list) do
            if type(b) == "table" then
                names[i], weights[i] = b.address or b.addr, b.weight or 1
            else
                local a, w = match(b, "^(%S+)%s*weight=(%d+)$")
                names[i], weights[i] = a or b, tonumber(w) or 1
            end
        end
        g = new_group(conf.algorithm or "round_robin", names, weights)
        local kind, hname = "uri", nil
        if conf.hash_key then
            kind, hname = match(conf.hash_key, "^(%a+):(.+)$")
            kind = kind or conf.hash_key
        end
        g.hash_kind, g.hash_name = kind, hname
        cache[name] = g
    end
    return g, g.algorithm, g.hash_kind, g.hash_name
end


-- As mx_group_select(): usable backends first, else any of them (all down: try one).
function _M.group_select(g, key)
    local bs = g.backends
    local i = g.lb:select(key, function(k) return bs[k].healthy and not bs[k].down end,
                          function(k) return bs[k].inflight end)
    if i == nil then
        i = g.lb:select(key, nil, function(k) return bs[k].inflight end)
    end
    if i == nil then
        return nil
    end
    return i - 1, g.gen, bs[i].addr
end


function _M.group_backends(g)
    local list = {}
    for i, b in ipairs(g.backends) do
        list[i] = { addr = b.addr, weight = b.weight, healthy = b.healthy,
                    usable = b.healthy and not b.down, inflight = b.inflight, fails = b.fails }
    end
    return list
end


return _M
