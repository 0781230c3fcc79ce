-- moxy.lb: the Lua twin of src/lb/lb.c, for the fake engine (moxy.test). Same inputs, same
-- picks: round robin and least_conn from a cursor starting at 0, nginx's smooth weighted
-- round robin, FNV-1a 32 over weighted slots, the nginx-compatible ketama ring. Random is
-- random in both. spec/integration/balancer_spec.lua checks it against the C algorithms through
-- the live engine; keep the two in step.
local bit = require "bit"

local band, bxor, bnot, lshift, rshift = bit.band, bit.bxor, bit.bnot, bit.lshift, bit.rshift
local byte = string.byte
local char = string.char
local floor = math.floor
local random = math.random
local sort = table.sort
local type = type

local U32 = 4294967296
local KETAMA_POINTS = 160
local HASH_REHASHES = 20

local _M = {}

-- Algorithm names in the order of mx_lb_algorithm_t (src/conf/conf.h).
_M.ALGORITHMS = { "round_robin", "weighted", "random", "fnv", "ketama", "least_conn" }
-- hash_key kinds in the order of mx_hash_key_kind_t.
_M.HASH_KEYS = { "uri", "path", "client_ip", "host", "header", "arg", "cookie" }


local CRC = {}
for i = 0, 255 do
    local c = i
    for _ = 1, 8 do
        if band(c, 1) == 1 then
            c = bxor(0xedb88320, rshift(c, 1))
        else
            c = rshift(c, 1)
        end
    end
    CRC[i] = c
end


-- zlib's crc32 of <s>, continuing from <crc> (0 to start). Returns 0..2^32-1.
local function crc32(crc, s)
    crc = bnot(crc)
    for i = 1, #s do
        crc = bxor(CRC[band(bxor(crc, byte(s, i)), 0xff)], rshift(crc, 8))
    end
    return bnot(crc) % U32
end
_M.crc32 = crc32


local function fnv1a(s)
    local h = 2166136261
    for i = 1, #s do
        h = bxor(h, byte(s, i)) % U32
        h = (lshift(h, 24) % U32 + h * 403) % U32     -- h * 16777619 mod 2^32
    end
    return h
end
_M.fnv1a = fnv1a


local function le4(h)
    return char(h % 256, floor(h / 256) % 256, floor(h / 65536) % 256, floor(h / 16777216))
end


local lb_mt = {}
lb_mt.__index = lb_mt


-- <nodes>: list of { name = "host:port", weight = n }. <algorithm>: a name of ALGORITHMS.
function _M.new(algorithm, nodes)
    local n = #nodes
    local self = setmetatable({ algorithm = algorithm, n = n, weight = {}, cum = {},
                                total = 0, cursor = 0, current = {} }, lb_mt)
    for i = 1, n do
        local w = nodes[i].weight or 1
        self.weight[i] = w
        self.total = self.total + w
        self.cum[i] = self.total
        self.current[i] = 0
    end
    if algorithm == "ketama" then
        local pts = {}
        for i = 1, n do
            local s = nodes[i].name
            local host, port = s, ""
            if #s >= 5 and s:sub(1, 5):lower() == "unix:" then
                host = s:sub(6)
            else
                local h, p = s:match("^(.*):(%d*)$")
                if h then
                    host, port = h, p
                end
            end
            local base = crc32(crc32(crc32(0, host), "\0"), port)
            local prev = 0
            for j = 1, self.weight[i] * KETAMA_POINTS do
                local h = crc32(base, le4(prev))
                pts[#pts + 1] = { h, i, j }
                prev = h
            end
        end
        sort(pts, function(a, b)
            if a[1] ~= b[1] then return a[1] < b[1] end
            if a[2] ~= b[2] then return a[2] < b[2] end
            return a[3] < b[3]
        end)
        local hashes, owners = {}, {}
        for k = 1, #pts do
            if k == 1 or pts[k][1] ~= hashes[#hashes] then
                hashes[#hashes + 1] = pts[k][1]
                owners[#owners + 1] = pts[k][2]
            end
        end
        self.hashes, self.owners = hashes, owners
    end
    return self
end


local function ok(usable, i)
    return usable == nil or usable(i)
end


local function walk(self, start, usable)
    for k = 0, self.n - 1 do
        local i = (start - 1 + k) % self.n + 1
        if ok(usable, i) then
            return i
        end
    end
    return nil
end


local function slot_node(self, slot)
    local lo, hi = 1, self.n
    while lo < hi do
        local mid = floor((lo + hi) / 2)
        if slot < self.cum[mid] then
            hi = mid
        else
            lo = mid + 1
        end
    end
    return lo
end


-- Picks a node for <key> among those usable(i) allows (nil: all); load(i) gives least_conn
-- its in-flight counts. Returns the 1-based index or nil.
function lb_mt:select(key, usable, load)
    local n = self.n
    if n == 0 then return nil end
    key = key or ""
    if type(key) ~= "string" then key = tostring(key) end
    local alg = self.algorithm
    if key == "" and (alg == "fnv" or alg == "ketama") then
        alg = "weighted"                        -- an empty key is not hashed (as nginx)
    end
    if alg == "weighted" then
        local best, total = nil, 0
        for i = 1, n do
            if ok(usable, i) then
                self.current[i] = self.current[i] + self.weight[i]
                total = total + self.weight[i]
                if best == nil or self.current[i] > self.current[best] then
                    best = i
                end
            end
        end
        if best then
            self.current[best] = self.current[best] - total
        end
        return best
    elseif alg == "random" then
        local i = 1
        for _ = 1, 8 do
            i = slot_node(self, random(0, self.total - 1))
            if ok(usable, i) then return i end
        end
        return walk(self, i, usable)
    elseif alg == "fnv" then
        local h = fnv1a(key)
        local i = slot_node(self, h % self.total)
        local r = 0
        while r < HASH_REHASHES and not ok(usable, i) do
            h = fnv1a(le4(h))
            i = slot_node(self, h % self.total)
            r = r + 1
        end
        if ok(usable, i) then return i end
        return walk(self, i, usable)
    elseif alg == "ketama" then
        local hashes, np = self.hashes, #self.hashes
        local h = crc32(0, key)
        local lo, hi = 1, np + 1
        while lo < hi do
            local mid = floor((lo + hi) / 2)
            if h > hashes[mid] then
                lo = mid + 1
            elseif h < hashes[mid] then
                hi = mid
            else
                lo = mid
                break
            end
        end
        local seen, nseen = {}, 0
        for k = 0, np - 1 do
            local node = self.owners[(lo - 1 + k) % np + 1]
            if ok(usable, node) then return node end
            if not seen[node] then
                seen[node] = true
                nseen = nseen + 1
                if nseen == n then break end
            end
        end
        return nil
    elseif alg == "least_conn" then
        local c = self.cursor
        self.cursor = c + 1
        local best, best_load
        for k = 0, n - 1 do
            local i = (c + k) % n + 1
            if ok(usable, i) then
                local l = load and load(i) or 0
                if best == nil or l * self.weight[best] < best_load * self.weight[i] then
                    best, best_load = i, l
                end
            end
        end
        return best
    end
    local c = self.cursor                       -- round_robin
    self.cursor = c + 1
    return walk(self, c % n + 1, usable)
end


return _M
