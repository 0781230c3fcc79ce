-- Every phase may wait (test_lua_phases.py): ?<phase>=seconds makes that phase sleep.
local moxy = require "moxy"

local app = {}

local function nap(s, name)
    local t = tonumber(s.req:arg(name) or "")
    if t then
        moxy.sleep(t)
        return true
    end
end


function app.request_filter(s, ctx)
    if s.req:arg("setbody") then
        s.req:set_body(s.req:arg("setbody"))
    end
    if s.req:arg("wholebody") then
        local body, err = s.req:body()
        moxy.log.warn("s.req:body() gave ", tostring(body and #body), " ", tostring(err))
    end
    if s.req:arg("pull") then
        local n, pieces = 0, 0
        for chunk in s.req:body_chunks() do
            n, pieces = n + #chunk, pieces + 1
        end
        s.req:set_header("x-pulled-bytes", n)
        ctx.pieces = pieces
    end
end


function app.upstream_peer(s, ctx)
    if s.req:arg("ct") then
        return moxy.peer { host = "127.0.0.1", port = BLACKHOLE_PORT,
                           connect_timeout = tonumber(s.req:arg("ct")) }
    end
    if s.req:arg("wt") then
        return moxy.peer { host = "127.0.0.1", port = SINK_PORT,
                           write_timeout = tonumber(s.req:arg("wt")) }
    end
    if s.req:arg("it") then
        return moxy.peer { host = "127.0.0.1", port = IDLE_PORT,
                           idle_timeout = tonumber(s.req:arg("it")) }
    end
    if s.req:arg("rt") then
        return moxy.peer { host = "127.0.0.1", port = ORIGIN_PORT,
                           read_timeout = tonumber(s.req:arg("rt")) }
    end
    if s.req:path() == "/named" then
        return moxy.peer { host = "localhost", port = ORIGIN_PORT }
    elseif s.req:path() == "/badname" then
        return "no-such-host.invalid:80"
    elseif s.req:path() == "/slowpeer" then
        return moxy.peer { host = "127.0.0.1", port = ORIGIN_PORT, read_timeout = 0.3 }
    elseif s.req:path() == "/reset" then
        if ctx.ewp then
            return "127.0.0.1:ORIGIN_PORT"     -- the retry goes to the healthy origin
        end
        return "127.0.0.1:RESET_PORT"
    elseif s.req:path() == "/early" then
        return "127.0.0.1:EARLY_PORT"
    elseif s.req:path() == "/dead" then
        return "127.0.0.1:DEAD_PORT"
    end
    return "127.0.0.1:ORIGIN_PORT"
end


function app.connected_to_upstream(s, reused, peer, ctx)
    if nap(s, "ctu") then
        ctx.ctu = "slept"
    end
end


function app.upstream_response_filter(s, resp, ctx)
    if nap(s, "urf") then
        resp:set_header("x-urf", "slept")
    end
    if s.req:arg("rb") then
        -- ?rb=max: buffered mode; ?rb_sleep: wait before reading; ?rb_upper: replace
        if s.req:arg("rb_sleep") then
            moxy.sleep(tonumber(s.req:arg("rb_sleep")))
        end
        local body, err = resp:read_body { max = tonumber(s.req:arg("rb")) }
        resp:set_header("x-rb", body and #body or err)
        if body and s.req:arg("rb_upper") then
            resp:set_body(body:upper())
        end
    end
    if s.req:arg("resp_body") then
        resp:set_body(s.req:arg("resp_body"))
    end
    if s.req:arg("urf_boom") then
        moxy.sleep(0.01)
        error("urf boom")
    end
end


function app.response_filter(s, resp, ctx)
    if nap(s, "rf") then
        resp:set_header("x-rf", "slept")
    end
    if ctx.ctu then
        resp:set_header("x-ctu", ctx.ctu)
    end
    if s.req:arg("rf_boom") then
        moxy.sleep(0.01)
        error("rf boom")
    end
    if s.req:arg("sub") then
        -- a subrequest from a response phase (moxy.http waits like moxy.sleep)
        local res, err = moxy.http.request { url = "http://127.0.0.1:ORIGIN_PORT/status?code=207",
                                             timeout = 5 }
        resp:set_header("x-sub", res and res.status or err)
    end
    if s.req:arg("info") then
        local up = s:upstream()
        resp:set_header("x-reused", tostring(s:downstream_reused()))
        resp:set_header("x-up", up.addr .. " " .. tostring(up.status) .. " " .. up.tries
                        .. " " .. tostring(up.reused) .. " " .. tostring(up.header_ms ~= nil))
    end
end


function app.response_body_filter(s, chunk, eos, ctx)
    if s.req:arg("rbf") then
        moxy.sleep(tonumber(s.req:arg("rbf")))
        ctx.chunks = (ctx.chunks or 0) + 1
        if s.req:arg("rbf_boom") and ctx.chunks == 2 then
            error("rbf boom")
        end
        return chunk:upper()
    end
end


function app.response_trailer_filter(s, trailers, ctx)
    if nap(s, "rtf") then
        trailers:set_header("x-checksum", "slept")
    end
end


function app.fail_to_connect(s, peer, err, ctx)
    nap(s, "ftc")
end


function app.fail_to_proxy(s, err, ctx)
    if nap(s, "ftp") then
        return 503
    end
end


function app.logging(s, err, ctx)
    if s.req:arg("logerr") then
        moxy.log.warn("logging ran for ", s.req:uri(), " err=", tostring(err),
                      " status=", s.resp:status())
    end
    if nap(s, "log") then
        local up = s:upstream()
        moxy.log.warn("logging slept for ", s.req:uri(), " client=", s:client_addr(),
                      " up.status=", tostring(up and up.status), " up.tries=",
                      tostring(up and up.tries), " bytes_in=", tostring(up and up.bytes_in))
    end
end


-- ?reqf=upper: the request body goes up in upper case; ?reqf=drop: dropped; with
-- ?reqf_sleep=s each chunk waits first; ?reqf_boom: an error on the first chunk.
function app.request_body_filter(s, chunk, eos, ctx)
    local mode = s.req:arg("reqf")
    ctx.req_chunks = (ctx.req_chunks or 0) + 1
    if s.req:arg("reqf_boom") then
        error("reqf boom")
    end
    if s.req:arg("reqf_sleep") then
        moxy.sleep(tonumber(s.req:arg("reqf_sleep")))
    end
    if eos and mode then
        return "[end]"
    end
    if mode == "upper" then
        return chunk:upper()
    elseif mode == "drop" then
        return ""
    end
end


function app.error_while_proxy(s, peer, err, ctx)
    ctx.ewp = (ctx.ewp or 0) + 1
    moxy.log.warn("error_while_proxy ", tostring(err), " try ", ctx.ewp, " peer ", peer.addr)
    nap(s, "ewp")
    if s.req:arg("retry") and ctx.ewp == 1 then
        err:set_retry(true)
    end
end


return app
