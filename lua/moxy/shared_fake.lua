-- moxy.shared_fake: moxy.shared.dict in plain Lua, for moxy.test (no binary). Same methods,
-- return values and memory accounting as the live dicts (src/lua/shdict.c: an entry costs
-- 112 bytes + key + string value, a list item 40 bytes + its string), with TTLs measured by
-- the test clock (moxy.fake.clock, t.clock()): advance the clock to expire entries.
--
-- Dicts come from t.load(path, { shared_dicts = { name = size } }) (size in bytes or
-- "512k"/"1m"/"1g"; each load makes those dicts anew, empty), from declare{...} below, or
-- are made on first use of an undeclared name with 1 MiB (so handlers under test need no
-- declaration). reset() drops them all; a spec's before_each may call it.
local error = error
local format = string.format
local match = string.match
local pairs = pairs
local remove = table.remove
local insert = table.insert
local setmetatable = setmetatable
local sort = table.sort
local tonumber = tonumber
local tostring = tostring
local type = type


local _M = { DEFAULT_SIZE = 1048576, ENTRY_SIZE = 112, ITEM_SIZE = 40 }

local ENTRY, ITEM = _M.ENTRY_SIZE, _M.ITEM_SIZE
local EXPIRED_SCAN = 64

local dicts = {}


local function now()
    return require("moxy.fake").clock.now
end
local args = require "moxy.shared_args"
local key_of, check_ttl, check_number = args.key_of, args.check_ttl, args.check_number


local function check_self(self, method, level)
    args.check_self(self, method, level, "_map")
end











-- Expiry as the C side computes it: whole milliseconds, rounded up.
local function expiry(t, ttl)
    if ttl <= 0 then
        return 0
    end
    return t + math.ceil(ttl * 1000) / 1000
end


local function expired(e, t)
    return e.expires ~= 0 and e.expires <= t
end


local function touch(d, e)
    d._tick = d._tick + 1
    e.tick = d._tick
end


local function remove_entry(d, e)
    d._map[e.key] = nil
    d._used = d._used - e.size
end


local function value_size(v)
    return type(v) == "string" and #v or 0
end


-- The least recently used entry other than <keep>; with <expired_only>, the least recently
-- used expired one among the EXPIRED_SCAN least recently used (as the C side looks).
local function lru_victim(d, keep, t, expired_only)
    local list = {}
    for _, e in pairs(d._map) do
        if e ~= keep then
            list[#list + 1] = e
        end
    end
    sort(list, function(a, b) return a.tick < b.tick end)
    if not expired_only then
        return list[1]
    end
    for i = 1, #list < EXPIRED_SCAN and #list or EXPIRED_SCAN do
        if expired(list[i], t) then
            return list[i]
        end
    end
    return nil
end


local function make_room(d, need, keep, evict, t)
    local forcible = false
    while need > 0 and d._used + need > d._capacity do
        local victim = lru_victim(d, keep, t, true)
        if victim == nil and evict then
            victim = lru_victim(d, keep, t, false)
            forcible = victim ~= nil
        end
        if victim == nil then
            return false, forcible
        end
        remove_entry(d, victim)
    end
    return true, forcible
end


local Dict = {}
local dict_mt = { __index = Dict, __tostring = function(d)
    return "moxy.shared.dict(\"" .. d.name .. "\") (fake)"
end }


local function get(self, method, key, stale_ok)
    check_self(self, method, 4)
    local k, err = key_of(key)
    if not k then
        return nil, err
    end
    local t = now()
    local e = self._map[k]
    if e == nil or (not stale_ok and expired(e, t)) then
        return nil
    end
    if e.list then
        return nil, "value is a list"
    end
    local stale = expired(e, t)
    if not stale then
        touch(self, e)
    end
    return e.value, stale
end


function Dict.get(self, key)
    local v, err = get(self, "get", key, false)
    if type(err) == "string" then
        return nil, err
    end
    return v
end


function Dict.get_stale(self, key)
    local v, stale = get(self, "get_stale", key, true)
    if type(stale) == "string" then
        return nil, stale
    end
    if v == nil then
        return nil
    end
    return v, nil, stale
end


local SAFE = { safe_set = true, safe_add = true }
local ADD = { add = true, safe_add = true }


local function set_locked(d, mode, k, value, ttl, t)
    local e = d._map[k]
    local live = e ~= nil and not expired(e, t)
    if ADD[mode] and live then
        return false, "exists", false
    end
    if mode == "replace" and not live then
        return false, "not found", false
    end
    if value == nil then
        if e then
            remove_entry(d, e)
        end
        return true, nil, false
    end
    local need = ENTRY + #k + value_size(value)
    if need > d._capacity then
        return false, "no memory", false
    end
    local ok, forcible = make_room(d, need - (e and e.size or 0), e, not SAFE[mode], t)
    if not ok then
        return false, "no memory", forcible
    end
    if e then
        remove_entry(d, e)
    end
    e = { key = k, value = value, expires = expiry(t, ttl), size = need }
    d._map[k] = e
    d._used = d._used + need
    touch(d, e)
    return true, nil, forcible
end


local function store(self, mode, key, value, ttl)
    check_self(self, mode)
    local k, err = key_of(key)
    if not k then
        return nil, err, false
    end
    ttl = check_ttl(ttl, mode, 3)
    local tv = type(value)
    if value ~= nil and tv ~= "string" and tv ~= "number" and tv ~= "boolean" then
        return nil, "bad value type", false
    end
    return set_locked(self, mode, k, value, ttl, now())
end


function Dict.set(self, key, value, ttl) return store(self, "set", key, value, ttl) end
function Dict.safe_set(self, key, value, ttl) return store(self, "safe_set", key, value, ttl) end
function Dict.add(self, key, value, ttl) return store(self, "add", key, value, ttl) end
function Dict.safe_add(self, key, value, ttl) return store(self, "safe_add", key, value, ttl) end
function Dict.replace(self, key, value, ttl) return store(self, "replace", key, value, ttl) end


function Dict.delete(self, key)
    return store(self, "delete", key, nil, 0)
end


function Dict.incr(self, key, n, init, init_ttl)
    check_self(self, "incr")
    local k, err = key_of(key)
    if not k then
        return nil, err
    end
    check_number(n, "incr", 2, "value")
    if init ~= nil then
        check_number(init, "incr", 3, "init")
    end
    init_ttl = check_ttl(init_ttl, "incr", 4)
    local t = now()
    local e = self._map[k]
    if e == nil or expired(e, t) then
        if init == nil then
            return nil, "not found", false
        end
        local ok, why, forcible = set_locked(self, "set", k, init + n, init_ttl, t)
        if not ok then
            return nil, why, forcible
        end
        return init + n, nil, forcible
    end
    if type(e.value) ~= "number" or e.list then
        return nil, "not a number", false
    end
    e.value = e.value + n
    touch(self, e)
    return e.value, nil, false
end


function Dict.ttl(self, key)
    check_self(self, "ttl")
    local k, err = key_of(key)
    if not k then
        return nil, err
    end
    local t = now()
    local e = self._map[k]
    if e == nil or expired(e, t) then
        return nil, "not found"
    end
    return e.expires == 0 and 0 or e.expires - t
end


function Dict.expire(self, key, ttl)
    check_self(self, "expire")
    local k, err = key_of(key)
    if not k then
        return nil, err
    end
    ttl = check_ttl(ttl, "expire", 2)
    local t = now()
    local e = self._map[k]
    if e == nil or expired(e, t) then
        return nil, "not found"
    end
    e.expires = expiry(t, ttl)
    return true
end


local function push(self, left, method, key, value)
    check_self(self, method)
    local k, err = key_of(key)
    if not k then
        return nil, err
    end
    local tv = type(value)
    if tv ~= "string" and tv ~= "number" then
        return nil, "bad value type"
    end
    local t = now()
    local e = self._map[k]
    if e and expired(e, t) then
        remove_entry(self, e)
        e = nil
    end
    if e and not e.list then
        return nil, "value not a list"
    end
    local isize = ITEM + value_size(value)
    local need = isize + (e and 0 or ENTRY + #k)
    if (e and e.size or 0) + need > self._capacity or not make_room(self, need, e, true, t) then
        return nil, "no memory"
    end
    if e == nil then
        e = { key = k, list = {}, expires = 0, size = ENTRY + #k }
        self._map[k] = e
        self._used = self._used + e.size
    end
    if left then
        insert(e.list, 1, value)
    else
        e.list[#e.list + 1] = value
    end
    e.size = e.size + isize
    self._used = self._used + isize
    touch(self, e)
    return #e.list
end


function Dict.lpush(self, key, value) return push(self, true, "lpush", key, value) end
function Dict.rpush(self, key, value) return push(self, false, "rpush", key, value) end


local function pop(self, left, method, key)
    check_self(self, method)
    local k, err = key_of(key)
    if not k then
        return nil, err
    end
    local e = self._map[k]
    if e == nil or expired(e, now()) then
        return nil
    end
    if not e.list then
        return nil, "value not a list"
    end
    local v = remove(e.list, left and 1 or #e.list)
    local isize = ITEM + value_size(v)
    e.size = e.size - isize
    self._used = self._used - isize
    if #e.list == 0 then
        remove_entry(self, e)
    else
        touch(self, e)
    end
    return v
end


function Dict.lpop(self, key) return pop(self, true, "lpop", key) end
function Dict.rpop(self, key) return pop(self, false, "rpop", key) end


function Dict.llen(self, key)
    check_self(self, "llen")
    local k, err = key_of(key)
    if not k then
        return nil, err
    end
    local e = self._map[k]
    if e == nil or expired(e, now()) then
        return 0
    end
    if not e.list then
        return nil, "value not a list"
    end
    return #e.list
end


-- Most recently used first, as the live dicts.
function Dict.keys(self, max)
    check_self(self, "keys")
    if max == nil then
        max = 1024
    end
    check_number(max, "keys", 1, "max")
    local t = now()
    local live = {}
    for _, e in pairs(self._map) do
        if not expired(e, t) then
            live[#live + 1] = e
        end
    end
    sort(live, function(a, b) return a.tick > b.tick end)
    local out = {}
    for i = 1, #live do
        if max > 0 and i > max then
            break
        end
        out[i] = live[i].key
    end
    return out
end


function Dict.flush_all(self)
    check_self(self, "flush_all")
    self._map = {}
    self._used = 0
end


function Dict.flush_expired(self, max)
    check_self(self, "flush_expired")
    if max ~= nil then
        check_number(max, "flush_expired", 1, "max")
    end
    max = max or 0
    local t = now()
    local n = 0
    for _, e in pairs(self._map) do
        if max > 0 and n >= max then
            break
        end
        if expired(e, t) then
            remove_entry(self, e)
            n = n + 1
        end
    end
    return n
end


function Dict.free_space(self)
    check_self(self, "free_space")
    return self._capacity - self._used
end


function Dict.capacity(self)
    check_self(self, "capacity")
    return self._capacity
end


-- module functions -------------------------------------------------------------------------

-- A size as the config takes it: bytes, or "512k" / "1m" / "1g" (1024-based), 8k..1 TiB.
local function parse_size(v, name)
    local n
    if type(v) == "number" then
        n = v
    elseif type(v) == "string" then
        local digits, unit = match(v, "^(%d+)([kKmMgG]?)$")
        n = tonumber(digits)
        if n and unit ~= "" then
            local u = unit:lower()
            n = n * (u == "k" and 1024 or u == "m" and 1048576 or 1073741824)
        end
    end
    if n == nil or n % 1 ~= 0 or n < 8192 or n > 2 ^ 40 then
        error(format("shared_dicts.%s: expected a size in bytes (8192..2^40, \"512k\", "
                     .. "\"10m\"), got %s", tostring(name), tostring(v)), 3)
    end
    return n
end


local function new_dict(name, size)
    local d = setmetatable({ name = name, _capacity = size, _used = 0, _map = {}, _tick = 0 },
                           dict_mt)
    dicts[name] = d
    return d
end


-- Makes the dicts of <map> (name -> size) anew, empty.
function _M.declare(map)
    if type(map) ~= "table" then
        error("shared_dicts: expected a table of name = size, got " .. type(map), 2)
    end
    for name, size in pairs(map) do
        if type(name) ~= "string" or name == "" then
            error("shared_dicts: names must be non-empty strings", 2)
        end
        new_dict(name, parse_size(size, name))
    end
end


-- Drops every dict.
function _M.reset()
    dicts = {}
end


-- The dict <name>, made with DEFAULT_SIZE when undeclared.
function _M.dict(name, level)
    if type(name) ~= "string" then
        error("bad argument #1 to 'dict' (string expected, got " .. type(name) .. ")",
              level or 2)
    end
    return dicts[name] or new_dict(name, _M.DEFAULT_SIZE)
end


return _M
