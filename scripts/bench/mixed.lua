-- wrk -s: alternates GET / and GET /1k on every connection (a mixed load).
local paths = { "/", "/1k" }
local n = 0
request = function()
    n = n + 1
    return wrk.format("GET", paths[n % 2 + 1])
end
