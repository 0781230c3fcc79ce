-- moxy.backend: the engine behind the Lua API. The live engine (moxy.live) and the
-- fake one (moxy.fake, installed by moxy.test) both set `backend.current` to a table
-- of functions implementing the backend contract; moxy.session and moxy read it.
local error = error
local type = type


local _M = { current = nil }


-- Installs <b> as the current backend and returns the previous one. Load time only.
function _M.set(b)
    if type(b) ~= "table" then
        error("bad argument #1 to 'set' (table expected, got " .. type(b) .. ")", 2)
    end
    local prev = _M.current
    _M.current = b
    return prev
end


return _M
