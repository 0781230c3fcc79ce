-- reload_spec.lua: a script that does not compile.
return {
    response_filter = function(s, resp)
        resp:set_header("x-version" "3")
    end,
}
