-- response_trailer_filter: rewrites the origin's trailers on their way out.
local app = {}


function app.response_trailer_filter(s, trailers, ctx)
    local sum = trailers:header("x-checksum")
    trailers:set_header("x-checksum", (sum or "none") .. "-seen")
    trailers:remove_header("x-other")
    trailers:add_header("x-added-by", "moxy")
end


return app
