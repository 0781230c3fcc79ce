-- A script for test_hotswap.py; NAME is filled in ("a", "b"). It marks its
-- responses, carries a counter across reloads (handover -> init's previous),
-- sleeps on /sleep, and logs its timers' premature run and its shutdown().
local moxy = require "moxy"

local NAME = "NAME"
local app = {}
local carried = 0
local served = 0


function app.init(config, previous)
    carried = previous and previous.served or 0
    moxy.timer.every(0.5, function(premature)
        if premature then
            moxy.log.warn("timer premature in script ", NAME)
            moxy.sleep(0.3)   -- a last flush that waits: the VM stays open for it
            moxy.log.warn("flushed after premature in script ", NAME)
        end
    end)
end


function app.request_filter(s, ctx)
    served = served + 1
    if s.req:path() == "/sleep" then
        moxy.sleep(2)
    end
end


function app.response_filter(s, resp, ctx)
    resp:set_header("x-script", NAME)
    resp:set_header("x-carried", tostring(carried))
end


function app.handover()
    return { served = served + carried }
end


function app.shutdown()
    moxy.log.warn("shutdown of script ", NAME)
end


return app
