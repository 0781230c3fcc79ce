-- reload_spec.lua: generation one; hands its request count to the next generation.
local n = 0
return {
    request_filter = function() n = n + 1 end,
    response_filter = function(s, resp) resp:set_header("x-version", "1") end,
    handover = function() return { n = n } end,
}
