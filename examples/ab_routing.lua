-- ab_routing: A/B routing by cookie. A client with cookie ab=a goes to origin A
-- (127.0.0.1:9001), ab=b to origin B (127.0.0.1:9002). A client without it (or with
-- another value) is put in a group by a stable hash of its address and gets the cookie
-- with the response. Every response says the group in x-ab-group; the origin gets it too.
-- Run: build/moxy -c examples/ab_routing.yaml (origins on 127.0.0.1:9001 and :9002)
local GROUPS = { a = "127.0.0.1:9001", b = "127.0.0.1:9002" }
local B_PERCENT = 50                    -- share of new clients sent to group b
local COOKIE_ATTRS = "; Path=/; Max-Age=2592000; SameSite=Lax"

local byte, match = string.byte, string.match

local groups, b_percent = GROUPS, B_PERCENT
local app = {}


-- init(config): config.groups = { a = "host:port", b = "host:port" } and
-- config.b_percent (0..100) replace the defaults.
function app.init(config)
    config = config or {}
    groups, b_percent = GROUPS, B_PERCENT
    if config.groups ~= nil then
        local g = config.groups
        if type(g) ~= "table" or type(g.a) ~= "string" or type(g.b) ~= "string" then
            error("ab_routing: config.groups must be { a = \"host:port\", b = \"host:port\" }")
        end
        groups = { a = g.a, b = g.b }
    end
    if config.b_percent ~= nil then
        local p = config.b_percent
        if type(p) ~= "number" or p < 0 or p > 100 then
            error("ab_routing: config.b_percent must be a number 0..100")
        end
        b_percent = p
    end
end


-- The value of cookie <name> in the request's Cookie header(s), or nil.
local function cookie(req, name)
    local values = req:header_values("cookie")
    for i = 1, #values do
        for pair in (values[i] .. ";"):gmatch("([^;]*);") do
            local k, v = match(pair, "^%s*([^=%s]+)%s*=%s*(.-)%s*$")
            if k == name then
                return (match(v, '^"(.*)"$') or v)
            end
        end
    end
    return nil
end


-- A stable hash (djb2, 32 bits) of a string: the same client always gets the same
-- group, in every worker and after a restart.
local function hash(str)
    local h = 5381
    for i = 1, #str do
        h = (h * 33 + byte(str, i)) % 4294967296
    end
    return h
end


local function group_for(addr)
    return hash(addr or "") % 100 < b_percent and "b" or "a"
end

app._group_for = group_for          -- for the spec


-- Phases: request_filter.
function app.request_filter(s, ctx)
    local g = cookie(s.req, "ab")
    if g ~= "a" and g ~= "b" then
        g = group_for(s:client_addr())
        ctx.set_cookie = true
    end
    ctx.group = g
end


-- Phases: upstream_peer.
function app.upstream_peer(s, ctx)
    return groups[ctx.group]
end


-- Phases: upstream_request_filter. The origin may want to know the group too.
function app.upstream_request_filter(s, req, ctx)
    req:set_header("x-ab-group", ctx.group)
end


-- Phases: response_filter.
function app.response_filter(s, resp, ctx)
    if not ctx.group then
        return
    end
    resp:set_header("x-ab-group", ctx.group)
    if ctx.set_cookie then
        resp:add_header("set-cookie", "ab=" .. ctx.group .. COOKIE_ATTRS)
    end
end


return app
