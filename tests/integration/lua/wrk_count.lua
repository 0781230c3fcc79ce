-- wrk script for test_hotswap.py: counts 2xx and other responses in every
-- thread; done() prints one line "WRK {json}" with them and wrk's socket
-- error counts (connect = refused or failed connections).
local threads = {}


function setup(thread)
    threads[#threads + 1] = thread
end


function init(args)
    ok, bad = 0, 0
end


function response(status, headers, body)
    if status >= 200 and status < 300 then
        ok = ok + 1
    else
        bad = bad + 1
    end
end


function done(summary, latency, requests)
    local good, nbad = 0, 0
    for _, t in ipairs(threads) do
        good = good + t:get("ok")
        nbad = nbad + t:get("bad")
    end
    local e = summary.errors
    io.write(string.format('WRK {"requests": %d, "ok": %d, "non2xx": %d, "connect": %d, '
        .. '"read": %d, "write": %d, "timeout": %d}\n', summary.requests, good, nbad,
        e.connect, e.read, e.write, e.timeout))
end
