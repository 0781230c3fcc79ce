-- moxy.lb_fake: the load-balancing part of the fake backend (moxy.test): groups are Lua
-- tables over the moxy.lb twin of the C algorithms, so a key lands on the same backend as
-- live. YAML groups come from t.load's config.upstreams, either a list of backends or
-- { backends = {...}, algorithm =, hash_key = } as in YAML. moxy.fake merges it in.
local lb = require "moxy.lb"

local format = string.format
local ipairs = ipairs
local match = string.match
local pairs = pairs
local tostring = tostring
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


-- health_check checked as the C side does (src/conf/conf.c health_keys, on_health): the
-- fake has no checker, so this twin of the rules is what moxy.test can offer. Returns
-- nil or the reason, naming the key.
local NUM = { interval = { 0.01, 86400 }, timeout = { 0.001, 3600 } }
local INT = { rise = { 1, 100 }, fall = { 1, 100 }, port = { 1, 65535 } }
local OWN = { host = true, connection = true, ["content-length"] = true,
              ["transfer-encoding"] = true }

local function status_item(v)
    local s = tostring(v)
    if type(v) ~= "number" and type(v) ~= "string" then
        return false
    end
    if match(s, "^[1-5][xX][xX]$") then
        return true
    end
    local lo, hi = match(s, "^(%d%d%d)%-(%d%d%d)$")
    if lo then
        lo, hi = tonumber(lo), tonumber(hi)
        return lo >= 100 and hi <= 599 and lo <= hi
    end
    local n = match(s, "^%d+$") and tonumber(s)
    return n ~= nil and n >= 100 and n <= 599
end

local function check_health(h)
    for k, v in pairs(h) do
        local key = "health_check." .. tostring(k)
        local t = type(v)
        if k == "type" then
            if v ~= "tcp" and v ~= "http" then
                return key .. ": unknown value (expected one of: tcp, http)"
            end
        elseif k == "path" or k == "host" or k == "expected_body" then
            if (t ~= "string" and t ~= "number") or tostring(v) == "" then
                return key .. ": expected a non-empty string"
            end
            if k == "expected_body" and #tostring(v) > 127 then
                return key .. ": longer than 127 bytes"
            end
        elseif NUM[k] then
            local x = tonumber(v)
            if x == nil or x < NUM[k][1] or x > NUM[k][2] then
                return format("%s: expected a duration in seconds in %g..%g", key, NUM[k][1],
                              NUM[k][2])
            end
        elseif INT[k] then
            local x = tonumber(v)
            if x == nil or x % 1 ~= 0 or x < INT[k][1] or x > INT[k][2] then
                return format("%s: expected an integer in %d..%d", key, INT[k][1], INT[k][2])
            end
        elseif k == "expected_statuses" then
            local list = t == "table" and v or { v }
            if #list == 0 then
                return key .. ": expected a status, a class or a range (or a list of them)"
            end
            for _, item in ipairs(list) do
                if not status_item(item) then
                    return key .. ": expected a status (204), a class (\"2xx\") or a range"
                           .. " (\"200-299\")"
                end
            end
        elseif k == "method" then
            if v ~= "GET" and v ~= "HEAD" then
                return key .. ": unknown value (expected one of: GET, HEAD)"
            end
        elseif k == "headers" then
            if t ~= "table" then
                return key .. ": expected a mapping of header names to values"
            end
            for name, value in pairs(v) do
                if type(name) ~= "string" or not match(name, "^[%w!#$%%&'*+%-.^_`|~]+$") then
                    return key .. "." .. tostring(name) .. ": not a valid header name"
                end
                if OWN[name:lower()] then
                    return key .. "." .. name .. ": set by the check itself"
                end
                if type(value) == "number" then
                    value = tostring(value)
                end
                if type(value) ~= "string" or match(value, "[\r\n]") then
                    return key .. "." .. name .. ": a header value must be one line"
                end
            end
        else
            return format("%s: unknown key", key)
        end
    end
    if h.expected_body ~= nil and h.method == "HEAD" then
        return "health_check: expected_body needs a body to look in: not with method HEAD"
    end
    return nil
end


-- A group for moxy.balancer.new{}: the same checks as the C side. With a health_check
-- (<health_table>) every backend stays healthy unless a spec marks it (lb_fake has no
-- checker; balancer:backends() shows the flags).
function _M.group_new(algorithm, _, _, names, weights, _, _, health_table)
    if health_table ~= nil then
        local why = check_health(health_table)
        if why then
            return nil, why
        end
    end
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
