-- moxy.shared_args: the argument rules of moxy.shared.dict, one copy for both engines
-- (moxy.shared, the live one, and moxy.shared_fake under moxy.test): what OpenResty
-- returns nil, err for, and what is misuse (raised).
local error = error
local format = string.format
local tostring = tostring
local type = type

local _M = { MAX_KEY = 65535 }


-- The key as a string, or nil, err (OpenResty: numbers are keys too).
function _M.key_of(key)
    if key == nil then
        return nil, "nil key"
    end
    if type(key) ~= "string" then
        key = tostring(key)
    end
    local n = #key
    if n == 0 then
        return nil, "empty key"
    end
    if n > _M.MAX_KEY then
        return nil, "key too long"
    end
    return key
end


-- Raises unless <self> is a dict (it has field <field>): d.get(...) instead of d:get(...).
-- Called through each module's own check_self (one frame more, hence level + 1).
function _M.check_self(self, method, level, field)
    if type(self) ~= "table" or self[field] == nil then
        error(format("bad argument #1 to '%s' (dict expected; call it as d:%s(...))",
                     method, method), (level or 3) + 1)
    end
end


function _M.check_ttl(ttl, method, argn, level)
    if ttl == nil then
        return 0
    end
    if type(ttl) ~= "number" or ttl < 0 or ttl ~= ttl then
        error(format("bad argument #%d to '%s' (ttl: seconds >= 0 expected, got %s)", argn,
                     method, tostring(ttl)), level or 3)
    end
    return ttl
end


function _M.check_number(n, method, argn, what)
    if type(n) ~= "number" then
        error(format("bad argument #%d to '%s' (%s: number expected, got %s)", argn, method,
                     what, type(n)), 3)
    end
    return n
end


return _M
