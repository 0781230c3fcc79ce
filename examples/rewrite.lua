-- rewrite: header and body rewriting on the way through, the body streamed chunk by chunk.
--   upstream:   x-request-id added (s:id()), cookie and accept-encoding removed
--   downstream: x-frame-options: DENY added, server removed, and in text bodies (text/*,
--               JSON, JavaScript, XML) every "http://" becomes "https://", also when a
--               chunk boundary splits it ("htt" | "p://").
-- Run: build/moxy -c examples/rewrite.yaml
local UPSTREAM = "127.0.0.1:9001"

local FROM, TO = "http://", "https://"

local find, sub, gsub = string.find, string.sub, string.gsub

local upstream = UPSTREAM
local app = {}


-- init(config): config.upstream ("host:port") overrides the default upstream.
function app.init(config)
    if config and config.upstream ~= nil then
        if type(config.upstream) ~= "string" then
            error("rewrite: config.upstream must be a \"host:port\" string")
        end
        upstream = config.upstream
    else
        upstream = UPSTREAM
    end
end


-- Phases: upstream_peer.
function app.upstream_peer(s, ctx)
    return upstream
end


-- Phases: upstream_request_filter. accept-encoding goes too: a compressed body could
-- not be rewritten.
function app.upstream_request_filter(s, req, ctx)
    req:set_header("x-request-id", tostring(s:id()))
    req:remove_header("cookie")
    req:remove_header("accept-encoding")
end


local function is_text(ctype)
    if not ctype then
        return false
    end
    ctype = ctype:lower()
    return find(ctype, "^text/") ~= nil or find(ctype, "json", 1, true) ~= nil
        or find(ctype, "javascript", 1, true) ~= nil or find(ctype, "xml", 1, true) ~= nil
end


-- Phases: response_filter (upstream answers, local ones and error pages).
function app.response_filter(s, resp, ctx)
    resp:set_header("x-frame-options", "DENY")
    resp:remove_header("server")
    -- compressed bodies pass untouched
    ctx.rewrite = is_text(resp:header("content-type")) and not resp:has_header("content-encoding")
    ctx.carry = ""
end


-- The length of the longest end of <s> that begins FROM (at most #FROM - 1 bytes):
-- the part that must wait for the next chunk.
local function partial_len(s)
    for n = #FROM - 1, 1, -1 do
        if sub(s, -n) == sub(FROM, 1, n) then
            return n
        end
    end
    return 0
end


-- Phases: response_body_filter. The engine calls it for each chunk, then once more with
-- "" and eos = true; what is held back in ctx.carry is sent with the next call. FROM
-- has no part that is both its start and its end, so a held-back tail can never hold
-- the end of a match already complete in the chunk.
function app.response_body_filter(s, chunk, eos, ctx)
    if not ctx.rewrite then
        return nil
    end
    local data = ctx.carry .. chunk
    local keep = eos and 0 or partial_len(data)
    ctx.carry = sub(data, #data - keep + 1)
    if keep > 0 then
        data = sub(data, 1, #data - keep)
    end
    return (gsub(data, FROM, TO))
end


return app
