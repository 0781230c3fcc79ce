-- moxy.balancer: load balancing from Lua. moxy.balancer.new{...} makes a balancer in this
-- worker's VM; moxy.upstream(name) reaches a YAML group shared by all workers. Both select
-- with the C algorithms of src/lb/ (through the engine: moxy.lb_live live, the moxy.lb twin
-- under moxy.test) and return a peer for upstream_peer.
local backend = require "moxy.backend"
local lb = require "moxy.lb"

local error = error
local getmetatable = getmetatable
local ipairs = ipairs
local pairs = pairs
local format = string.format
local match = string.match
local setmetatable = setmetatable
local tonumber = tonumber
local tostring = tostring
local type = type


local _M = {}

local ALG_ID, HASH_ID = {}, {}
for i, name in ipairs(lb.ALGORITHMS) do ALG_ID[name] = i - 1 end
for i, name in ipairs(lb.HASH_KEYS) do HASH_ID[name] = i - 1 end
local HASHING = { fnv = true, ketama = true }


local function engine()
    local b = backend.current
    if not b then
        error("moxy: no engine (running outside moxy? require \"moxy.test\" in specs)", 3)
    end
    return b
end


-- A selection, as upstream_peer returns it: tostring() is the backend's address.
local peer_mt = {
    __tostring = function(p) return p.addr or ("upstream:" .. tostring(p.upstream)) end,
}
_M.PEER_MT = peer_mt


-- Parses a hash_key: "uri" | "path" | "client_ip" | "host" | "header:NAME" | "arg:NAME" |
-- "cookie:NAME". Returns kind, name (or nil, reason).
function _M.parse_hash_key(spec)
    if type(spec) ~= "string" then
        return nil, "hash_key must be a string, got " .. type(spec)
    end
    if HASH_ID[spec] and HASH_ID[spec] <= 3 then
        return spec
    end
    local kind, name = match(spec, "^(%a+):(.+)$")
    if kind and HASH_ID[kind] and HASH_ID[kind] > 3 then
        return kind, name
    end
    return nil, format("unknown hash_key %q (expected uri, path, client_ip, host, header:NAME,"
                       .. " arg:NAME or cookie:NAME)", spec)
end


-- The key of request <s> for hash_key <kind>/<name>: raw bytes of the request as the
-- script left it, as the C side takes them (src/proxy/session.c request_hash_key()).
function _M.request_key(s, kind, name)
    if kind == "path" then
        return s.req:path()
    elseif kind == "client_ip" then
        return s:client_addr() or ""
    elseif kind == "host" then
        return s.req:header("host") or ""
    elseif kind == "header" then
        return s.req:header(name) or ""
    elseif kind == "arg" then
        local q = s.req:query() or ""
        for pair in q:gmatch("[^&]+") do
            local k, v = match(pair, "^([^=]*)=(.*)$")
            if k == name then return v end
        end
        return ""
    elseif kind == "cookie" then
        for _, line in ipairs(s.req:header_values("cookie") or {}) do
            for item in line:gmatch("[^;]+") do
                local k, v = match(item, "^%s*([^=]*)=(.*)$")
                if k == name and v ~= "" then return v end
            end
        end
        return ""
    end
    return s.req:uri()
end


local Balancer = {}
Balancer.__index = Balancer


-- Picks a backend (for <key> with fnv/ketama; nil: the balancer's hash_key, taken from the
-- request when upstream_peer's answer is used). Returns a peer for upstream_peer, or nil
-- and "no backend" when none can be chosen. Phases: all (and load time).
function Balancer.select(self, key)
    if key ~= nil and type(key) ~= "string" then
        if type(key) ~= "number" then
            error("bad argument #1 to 'select' (string expected, got " .. type(key) .. ")", 2)
        end
        key = tostring(key)
    end
    local p = { group = self.handle, upstream = self.name, key = key,
                hash_kind = self.hash_kind, hash_name = self.hash_name }
    if key == nil and HASHING[self.algorithm] then
        -- The key comes from the request (hash_key): chosen when upstream_peer returns.
        p.index = -1
        return setmetatable(p, peer_mt)
    end
    local index, gen, addr = engine().group_select(self.handle, key)
    if index == nil then
        return nil, "no backend"
    end
    p.index, p.gen, p.addr = index, gen, addr
    return setmetatable(p, peer_mt)
end


-- The backends: list of { addr, weight, healthy, usable, inflight, fails }. healthy is
-- the active health checks' verdict; usable is false while a backend cools off after
-- passive failures too. Phases: all.
function Balancer.backends(self)
    return engine().group_backends(self.handle)
end


local function new_balancer(handle, name, algorithm, hash_kind, hash_name)
    return setmetatable({ handle = handle, name = name, algorithm = algorithm,
                          hash_kind = hash_kind or "uri", hash_name = hash_name }, Balancer)
end


local OPTS = { backends = "table", algorithm = "string", hash_key = "string",
               health_check = "table", max_retries = "number", passive_health = "table" }
local PASSIVE = { max_fails = "number", fail_timeout = "number", on_5xx = "boolean" }


-- A YAML flow scalar for a Lua value: strings double-quoted (JSON escapes are YAML's).
local function yaml_scalar(v)
    local t = type(v)
    if t == "number" then
        if v ~= v or v == math.huge or v == -math.huge then
            return nil
        end
        return (v % 1 == 0 and v > -2^53 and v < 2^53) and format("%d", v)
               or format("%.17g", v)
    elseif t == "boolean" then
        return tostring(v)
    elseif t == "string" then
        return '"' .. v:gsub('[%c"\\]', function(c)
            return format("\\u%04x", c:byte())
        end) .. '"'
    end
    return nil
end


local function yaml_flow(v, path)
    if type(v) ~= "table" then
        local text = yaml_scalar(v)
        if text == nil then
            return nil, format("%s: not a string, number or boolean (%s)", path, type(v))
        end
        return text
    end
    local n, keys = #v, {}
    for k in pairs(v) do
        if type(k) ~= "string" and not (type(k) == "number" and k % 1 == 0 and k >= 1
                                        and k <= n) then
            return nil, format("%s: keys must be strings (a list or a mapping)", path)
        end
        keys[#keys + 1] = k
    end
    local out = {}
    if n > 0 and #keys == n then
        for i = 1, n do
            local text, why = yaml_flow(v[i], format("%s[%d]", path, i - 1))
            if not text then return nil, why end
            out[i] = text
        end
        return "[" .. table.concat(out, ", ") .. "]"
    end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    for i, k in ipairs(keys) do
        if type(k) ~= "string" then
            return nil, format("%s: keys must be strings (a list or a mapping)", path)
        end
        local text, why = yaml_flow(v[k], path .. "." .. k)
        if not text then return nil, why end
        out[i] = yaml_scalar(k) .. ": " .. text
    end
    return "{" .. table.concat(out, ", ") .. "}"
end


-- health_check = {...} as the YAML flow mapping the engines check with the rules of an
-- upstream group's health_check: (keys sorted: equal tables give equal text). Returns the
-- text, or nil and the reason.
function _M.health_yaml(h)
    return yaml_flow(h, "health_check")
end


local function int_in(v, lo, hi)
    return v % 1 == 0 and v >= lo and v <= hi
end


-- moxy.balancer.new{ backends = { "127.0.0.1:8081", "127.0.0.1:8082 weight=2" },
-- algorithm = "round_robin", hash_key = "uri", max_retries = 1,
-- passive_health = { max_fails = 1, fail_timeout = 10, on_5xx = false },
-- health_check = { type = "http", path = "/health", interval = 2, rise = 2, fall = 3, ... } }
-- (the keys and rules of YAML's health_check:). Equal definitions share one group and one
-- set of checks across all workers (docs/lua-api.md). Backends are numeric "ip:port",
-- "[v6]:port" or "unix:/path", optionally followed by " weight=N" (1..1000), or tables
-- { addr =, weight = }. Phases: all (and load time).
function _M.new(opts)
    if type(opts) ~= "table" then
        error("bad argument #1 to 'new' (table expected, got " .. type(opts) .. ")", 2)
    end
    for k, v in pairs(opts) do
        if not OPTS[k] then
            error("moxy.balancer.new: unknown option " .. tostring(k), 2)
        end
        if type(v) ~= OPTS[k] then
            error(format("moxy.balancer.new: %s must be a %s, got %s", k, OPTS[k], type(v)), 2)
        end
    end
    local health
    if opts.health_check ~= nil then
        local why
        health, why = _M.health_yaml(opts.health_check)
        if not health then
            error("moxy.balancer.new: " .. why, 2)
        end
    end
    local algorithm = opts.algorithm or "round_robin"
    if ALG_ID[algorithm] == nil then
        error(format("moxy.balancer.new: unknown algorithm %q (expected round_robin, weighted,"
                     .. " random, fnv, ketama or least_conn)", algorithm), 2)
    end
    local kind, name = "uri", nil
    if opts.hash_key ~= nil then
        local why
        kind, why = _M.parse_hash_key(opts.hash_key)
        if not kind then
            error("moxy.balancer.new: " .. why, 2)
        end
        name = why
    end
    local list = opts.backends
    if list == nil or #list == 0 then
        error("moxy.balancer.new: backends must be a non-empty list", 2)
    end
    local names, weights = {}, {}
    for i = 1, #list do
        local b, addr, weight = list[i], nil, 1
        if type(b) == "string" then
            local rest
            addr, rest = match(b, "^%s*(%S+)%s*(.-)%s*$")
            if rest ~= "" then
                local w = match(rest, "^weight=(%d+)$")
                if not w then
                    error(format("moxy.balancer.new: backends[%d]: unknown option %q"
                                 .. " (expected weight=N)", i, rest), 2)
                end
                weight = tonumber(w)
            end
        elseif type(b) == "table" then
            addr, weight = b.addr, b.weight or 1
        end
        if type(addr) ~= "string" or type(weight) ~= "number" or weight % 1 ~= 0
           or weight < 1 or weight > 1000 then
            error(format("moxy.balancer.new: backends[%d] must be \"host:port [weight=N]\""
                         .. " (weight 1..1000) or { addr =, weight = }", i), 2)
        end
        names[i], weights[i] = addr, weight
    end
    local o = { max_retries = opts.max_retries or 1, max_fails = 1, fail_timeout = 10,
                on_5xx = false }
    if not int_in(o.max_retries, 0, 16) then
        error("moxy.balancer.new: max_retries must be an integer 0..16", 2)
    end
    for k, v in pairs(opts.passive_health or {}) do
        if PASSIVE[k] == nil or type(v) ~= PASSIVE[k] then
            error(format("moxy.balancer.new: passive_health.%s: unknown key or not a %s",
                         tostring(k), tostring(PASSIVE[k] or "known key")), 2)
        end
        o[k] = v
    end
    if not int_in(o.max_fails, 0, 1000) or not (o.fail_timeout >= 0.001
                                                and o.fail_timeout <= 86400) then
        error("moxy.balancer.new: passive_health: max_fails must be an integer 0..1000,"
              .. " fail_timeout 0.001..86400 seconds", 2)
    end
    local handle, err = engine().group_new(ALG_ID[algorithm], HASH_ID[kind], name, names,
                                           weights, o, health, opts.health_check)
    if not handle then
        error("moxy.balancer.new: " .. err, 2)
    end
    return new_balancer(handle, "(balancer)", algorithm, kind, name)
end


-- The upstream group <name> declared under upstreams: in the YAML config.
-- Phases: all (and load time).
function _M.upstream(name)
    if type(name) ~= "string" then
        error("bad argument #1 to 'upstream' (string expected, got " .. type(name) .. ")", 2)
    end
    local handle, algorithm, hash_kind, hash_name = engine().group_upstream(name)
    if handle == nil then
        error("no upstream group \"" .. name .. "\" (declare it under upstreams: in the config)", 2)
    end
    return new_balancer(handle, name, algorithm, hash_kind, hash_name)
end


-- Fake engine: upstream_peer returned a selection whose key comes from the request.
function _M.resolve(p, s)
    if getmetatable(p) ~= peer_mt or p.index ~= -1 then
        return p
    end
    local key = _M.request_key(s, p.hash_kind, p.hash_name)
    local index, gen, addr = engine().group_select(p.group, key)
    if index == nil then
        return nil
    end
    p.key, p.index, p.gen, p.addr = key, index, gen, addr
    return p
end


return _M
