-- reload_spec.lua: generation two; shows what generation one handed over.
local previous_n
return {
    init = function(config, previous) previous_n = previous and previous.n end,
    response_filter = function(s, resp)
        resp:set_header("x-version", "2")
        resp:set_header("x-previous-n", tostring(previous_n))
    end,
}
