-- json_api: a small JSON API answered from Lua, everything else proxied.
--   GET  /api/items        200 [ {"id":1,"name":"apple"}, ... ]
--   GET  /api/items/<id>   200 {"id":..,"name":..}, or 404 {"error":"no item <id>"}
--                          (<id> any path segment: only the ids given out exist)
--   POST /api/items        body {"name":"..."} -> 201 with the new item and its location;
--                          400 {"error":...} on bad JSON or a missing name,
--                          413 {"error":...} past 64 KiB
-- The items live in module state: each worker thread has its own Lua VM, so its own list
-- and its own ids (run it with threads: 1, as examples/json_api.yaml does, to see one list).
-- Run: build/moxy -c examples/json_api.yaml
local moxy = require "moxy"

local UPSTREAM = "127.0.0.1:9001"
local MAX_BODY = 65536
local SEED = { "apple", "pear" }

local concat, format = table.concat, string.format
local json, json_safe = moxy.json, moxy.json.safe

local upstream = UPSTREAM
local items, next_id = {}, 1     -- per worker
local JSON = { ["content-type"] = "application/json" }

local app = {}


for _, name in ipairs(SEED) do
    items[next_id] = { id = next_id, name = name }
    next_id = next_id + 1
end


-- init(config): config.upstream ("host:port") overrides the default upstream.
function app.init(config)
    if config and config.upstream ~= nil then
        if type(config.upstream) ~= "string" then
            error("json_api: config.upstream must be a \"host:port\" string")
        end
        upstream = config.upstream
    else
        upstream = UPSTREAM
    end
end


-- Items are written field by field so the output is the same byte for byte everywhere
-- (cjson writes a table's keys in hash order) and an empty list is [] (cjson: {}).
local function encode_item(item)
    return format('{"id":%d,"name":%s}', item.id, json.encode(item.name))
end


local function encode_list()
    local out = {}
    for id = 1, next_id - 1 do
        if items[id] then
            out[#out + 1] = encode_item(items[id])
        end
    end
    return "[" .. concat(out, ",") .. "]"
end


local function fail(s, status, message)
    return s:respond(status, { error = message })           -- JSON, application/json
end


local function create(s)
    local body, err = s.req:body { max = MAX_BODY }
    if not body then
        if err == "too_large" then
            return fail(s, 413, "body larger than " .. MAX_BODY .. " bytes")
        end
        return fail(s, 400, "could not read the body: " .. tostring(err))
    end
    local obj, jerr = json_safe.decode(body)
    if obj == nil then
        return fail(s, 400, "invalid JSON: " .. tostring(jerr))
    end
    if type(obj) ~= "table" or type(obj.name) ~= "string" or obj.name == "" then
        return fail(s, 400, "expected an object with a non-empty string \"name\"")
    end
    local item = { id = next_id, name = obj.name }
    items[next_id] = item
    next_id = next_id + 1
    return s:respond(201, encode_item(item), { ["content-type"] = "application/json",
                                               location = "/api/items/" .. item.id })
end


-- Phases: request_filter.
function app.request_filter(s, ctx)
    local method, path = s.req:method(), s.req:path()
    if path == "/api/items" or path == "/api/items/" then
        if method == "GET" then
            return s:respond(200, encode_list(), JSON)
        elseif method == "POST" then
            return create(s)
        end
        return                                              -- other methods: proxied
    end
    local id = path:match("^/api/items/([^/]+)$")
    if id and method == "GET" then
        local item = id:match("^%d+$") and items[tonumber(id)]
        if not item then
            return fail(s, 404, "no item " .. id)
        end
        return s:respond(200, encode_item(item), JSON)
    end
end


-- Phases: upstream_peer.
function app.upstream_peer(s, ctx)
    return upstream
end


return app
