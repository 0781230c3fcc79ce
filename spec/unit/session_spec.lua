-- moxy.session over the fake backend: every method of s, s.req and s.resp.
local t = require "moxy.test"
local session = require "moxy.session"
local cjson = require "cjson"


local function req(o)
    return t.request(o)
end


describe("s.req reads", function()
    it("method, uri, path, query, version, scheme", function()
        local s = req { method = "POST", uri = "/a/b?x=1&y=2", version = "1.0" }
        assert.equal("POST", s.req:method())
        assert.equal("/a/b?x=1&y=2", s.req:uri())
        assert.equal("/a/b", s.req:path())
        assert.equal("x=1&y=2", s.req:query())
        assert.equal("1.0", s.req:version())
        assert.equal("http", s.req:scheme())
    end)

    it("defaults to GET / HTTP/1.1", function()
        local s = req()
        assert.equal("GET", s.req:method())
        assert.equal("/", s.req:uri())
        assert.equal("1.1", s.req:version())
    end)

    it("query is nil without '?', empty with a bare '?'", function()
        assert.is_nil(req { uri = "/p" }.req:query())
        assert.equal("", req { uri = "/p?" }.req:query())
        assert.equal("/p", req { uri = "/p?" }.req:path())
    end)

    it("path strips scheme and authority of an absolute-form uri", function()
        local s = req { uri = "http://example.com:8080/x/y?q=1" }
        assert.equal("/x/y", s.req:path())
        assert.equal("q=1", s.req:query())
        assert.equal("/", req { uri = "http://example.com" }.req:path())
    end)

    it("args decodes like ngx.req.get_uri_args", function()
        local s = req { uri = "/?a=1&b=x%20y&b=2&flag&empty=&c=a+b&%41=z&=v&&" }
        local args = s.req:args()
        assert.same({
            a = "1", b = { "x y", "2" }, flag = true, empty = "", c = "a b", A = "z",
        }, args)
    end)

    it("args is empty without a query and truncates at max", function()
        assert.same({}, req { uri = "/x" }.req:args())
        local args, err = req { uri = "/?a=1&b=2&c=3" }.req:args(2)
        assert.same({ a = "1", b = "2" }, args)
        assert.equal("truncated", err)
        local _, err2 = req { uri = "/?a=1&b=2" }.req:args(2)
        assert.is_nil(err2)
    end)

    it("arg returns the first decoded value, true for a bare key, nil when absent", function()
        local s = req { uri = "/?k=v%2Fw&k=2&bare&sp=a+b" }
        assert.equal("v/w", s.req:arg("k"))
        assert.is_true(s.req:arg("bare"))
        assert.equal("a b", s.req:arg("sp"))
        assert.is_nil(s.req:arg("nope"))
        assert.is_nil(req { uri = "/" }.req:arg("k"))
        assert.has_error(function() s.req:arg(1) end,
            "bad argument #1 to 'arg' (string expected, got number)")
    end)

    it("host comes from Host without the port, lower case", function()
        assert.equal("example.com", req { headers = { host = "Example.COM:8080" } }.req:host())
        assert.equal("[::1]", req { headers = { host = "[::1]:80" } }.req:host())
        assert.equal("a.b", req { headers = { host = "a.b" } }.req:host())
    end)

    it("host prefers the authority of an absolute uri", function()
        local s = req { uri = "http://user@Abs.Example:81/p", headers = { host = "other" } }
        assert.equal("abs.example", s.req:host())
    end)

    it("a 1.1 request without Host gets host: localhost; 1.0 does not", function()
        assert.equal("localhost", req().req:host())
        assert.same({ { "host", "localhost" } }, req().req:headers())
        assert.is_nil(req { version = "1.0" }.req:host())
    end)
end)


describe("s.req headers", function()
    local s

    before_each(function()
        s = req { headers = {
            { "Host", "h" }, { "X-A", "1" }, { "Accept", "x" }, { "x-a", "2" },
        } }
    end)

    it("header is case-insensitive and returns the first value", function()
        assert.equal("1", s.req:header("x-a"))
        assert.equal("1", s.req:header("X-A"))
        assert.equal("x", s.req:header("ACCEPT"))
        assert.is_nil(s.req:header("missing"))
    end)

    it("header_values returns every value in order", function()
        assert.same({ "1", "2" }, s.req:header_values("X-a"))
        assert.same({}, s.req:header_values("missing"))
    end)

    it("headers keeps wire order and case", function()
        assert.same({ { "Host", "h" }, { "X-A", "1" }, { "Accept", "x" }, { "x-a", "2" } },
                    s.req:headers())
    end)

    it("has_header", function()
        assert.is_true(s.req:has_header("accept"))
        assert.is_false(s.req:has_header("nope"))
    end)

    it("set_header replaces all fields and keeps the first position", function()
        s.req:set_header("x-A", "new")
        assert.same({ { "Host", "h" }, { "x-A", "new" }, { "Accept", "x" } }, s.req:headers())
    end)

    it("set_header appends a new field, accepts numbers and lists", function()
        s.req:set_header("x-n", 5)
        assert.equal("5", s.req:header("x-n"))
        s.req:set_header("x-l", { "a", "b" })
        assert.same({ "a", "b" }, s.req:header_values("x-l"))
        local list = { "c", 7 }
        s.req:set_header("x-l", list)
        assert.same({ "c", "7" }, s.req:header_values("x-l"))
        assert.same({ "c", 7 }, list)                    -- the caller's table is untouched
    end)

    it("set_header with nil or an empty list removes", function()
        s.req:set_header("x-a", nil)
        assert.is_false(s.req:has_header("x-a"))
        s.req:set_header("accept", {})
        assert.is_false(s.req:has_header("accept"))
    end)

    it("add_header appends", function()
        s.req:add_header("X-A", "3")
        assert.same({ "1", "2", "3" }, s.req:header_values("x-a"))
        assert.same({ "X-A", "3" }, s.req:headers()[5])
    end)

    it("remove_header removes every field", function()
        s.req:remove_header("X-a")
        assert.same({ { "Host", "h" }, { "Accept", "x" } }, s.req:headers())
    end)

    it("rejects bad names and injected values", function()
        assert.has_error(function() s.req:set_header("bad name", "v") end,
            'bad argument #1 to \'set_header\' (invalid token "bad name")')
        assert.has_error(function() s.req:set_header("x", "a\r\nb: c") end,
            "bad argument #2 to 'set_header' (CR, LF or NUL in header value)")
        assert.has_error(function() s.req:add_header("x", {}) end,
            "bad argument #2 to 'add_header' (string expected, got table)")
        assert.has_error(function() s.req:header(nil) end,
            "bad argument #1 to 'header' (string expected, got nil)")
        assert.has_error(function() s.req:remove_header(3) end,
            "bad argument #1 to 'remove_header' (string expected, got number)")
    end)

    it("refuses the fields moxy manages (framing, connection), as the live session does", function()
        local why = " is managed by moxy (message framing and connection handling)"
        for _, call in ipairs({
            { "set_header", "Content-Length", "5" }, { "set_header", "transfer-encoding", nil },
            { "add_header", "Connection", "close" }, { "remove_header", "TE" },
            { "set_header", "Keep-Alive", "x" }, { "add_header", "upgrade", "h2c" },
            { "set_header", "Proxy-Connection", "x" }, { "remove_header", "trailer" } }) do
            local ok, err = pcall(function() s.req[call[1]](s.req, call[2], call[3]) end)
            assert.is_false(ok)
            assert.matches("session_spec.lua:%d+: s%.req:" .. call[1] .. "%(%): "
                           .. call[2]:gsub("%-", "%%-") .. why:gsub("[%(%)]", "%%%0"), err)
        end
        s.req:set_header("x-te", "fine")                    -- a name of another length
        s.req:set_header("x-upgra", "fine")                 -- or another name of that length
        assert.equal("fine", s.req:header("x-upgra"))
    end)

    it("errors point at the caller", function()
        local ok, err = pcall(function() s.req:set_header("x", true) end)
        assert.is_false(ok)
        assert.matches("session_spec.lua:%d+: bad argument #2", err)
    end)
end)


describe("s.req writes", function()
    it("set_uri replaces path and query", function()
        local s = req { uri = "/a?x=1" }
        s.req:set_uri("/b?y=2")
        assert.equal("/b?y=2", s.req:uri())
        assert.equal("/b", s.req:path())
        assert.equal("2", s.req:arg("y"))
        assert.has_error(function() s.req:set_uri("b") end)
        assert.has_error(function() s.req:set_uri("/a b") end)
        assert.has_error(function() s.req:set_uri("/a\n") end)
    end)

    it("set_path keeps the query", function()
        local s = req { uri = "/a?x=1&y" }
        s.req:set_path("/new/path")
        assert.equal("/new/path?x=1&y", s.req:uri())
        local s2 = req { uri = "/a" }
        s2.req:set_path("/b")
        assert.equal("/b", s2.req:uri())
        local s3 = req { uri = "/a?" }
        s3.req:set_path("/c")
        assert.equal("/c?", s3.req:uri())
        assert.has_error(function() s.req:set_path("/p?q") end,
            "bad argument #1 to 'set_path' (\"?\" in path: use set_uri or set_args)")
    end)

    it("set_path on an absolute-form uri gives an origin-form uri", function()
        local s = req { uri = "http://h/a?q=1" }
        s.req:set_path("/b")
        assert.equal("/b?q=1", s.req:uri())
    end)

    it("set_args encodes a table with sorted keys", function()
        local s = req { uri = "/p?old=1" }
        s.req:set_args { b = "x y/z", a = 1, list = { "1", "2" }, flag = true, off = false }
        assert.equal("/p?a=1&b=x%20y%2Fz&flag&list=1&list=2", s.req:uri())
        assert.same({ a = "1", b = "x y/z", flag = true, list = { "1", "2" } }, s.req:args())
    end)

    it("set_args with a string or an empty table", function()
        local s = req { uri = "/p?old=1" }
        s.req:set_args("k=v")
        assert.equal("/p?k=v", s.req:uri())
        s.req:set_args {}
        assert.equal("/p", s.req:uri())
        assert.has_error(function() s.req:set_args(1) end,
            "bad argument #1 to 'set_args' (table or string expected, got number)")
        assert.has_error(function() s.req:set_args { [1] = "x" } end)
    end)

    it("set_method", function()
        local s = req()
        s.req:set_method("PURGE")
        assert.equal("PURGE", s.req:method())
        assert.has_error(function() s.req:set_method("GE T") end)
        assert.has_error(function() s.req:set_method(nil) end)
    end)

    it("writes are refused outside request phases, naming the allowed ones", function()
        local s = req { phase = "response_filter" }
        local ok, err = pcall(function() s.req:set_header("x", "1") end)
        assert.is_false(ok)
        assert.matches("session_spec.lua:%d+: s.req:set_header%(%) cannot be called in "
                       .. "response_filter %(allowed: early_request_filter, request_filter",
                       err)
        assert.has_error(function() s.req:set_uri("/x") end)
        assert.has_error(function() s.req:set_path("/x") end)
        assert.has_error(function() s.req:set_args {} end)
        assert.has_error(function() s.req:set_method("GET") end)
        assert.has_error(function() s.req:add_header("x", "1") end)
        assert.has_error(function() s.req:remove_header("x") end)
        assert.equal("GET", s.req:method())             -- reads work in every phase
    end)
end)


describe("s.resp", function()
    local function with_resp(phase)
        return req { phase = phase, response = {
            status = 201, headers = { { "Content-Type", "text/html" }, { "Set-Cookie", "a" },
                                      { "set-cookie", "b" } }, body = "x" } }
    end

    it("reads status, source and headers", function()
        local s = with_resp("response_filter")
        assert.equal(201, s.resp:status())
        assert.equal("upstream", s.resp:source())
        assert.equal("text/html", s.resp:header("content-type"))
        assert.same({ "a", "b" }, s.resp:header_values("SET-COOKIE"))
        assert.equal(3, #s.resp:headers())
        assert.is_true(s.resp:has_header("Set-Cookie"))
    end)

    it("status is nil before a response exists", function()
        assert.is_nil(req().resp:status())
        assert.is_nil(req().resp:source())
        assert.same({}, req().resp:headers())
    end)

    it("writes in response_filter and upstream_response_filter", function()
        for _, phase in ipairs { "response_filter", "upstream_response_filter" } do
            local s = with_resp(phase)
            s.resp:set_status(299)
            s.resp:set_header("set-cookie", "c")
            s.resp:add_header("x-y", "1")
            s.resp:remove_header("content-type")
            assert.equal(299, s.resp:status())
            assert.same({ { "set-cookie", "c" }, { "x-y", "1" } }, s.resp:headers())
        end
    end)

    it("set_status checks its argument", function()
        local s = with_resp("response_filter")
        assert.has_error(function() s.resp:set_status(99) end)
        assert.has_error(function() s.resp:set_status(600) end)
        assert.has_error(function() s.resp:set_status(200.5) end)
        assert.has_error(function() s.resp:set_status("200") end)
    end)

    it("writes are refused in request phases", function()
        local s = req { phase = "request_filter" }
        assert.has_error(function() s.resp:set_header("x", "1") end,
            "s.resp:set_header() cannot be called in request_filter (allowed: "
            .. "upstream_response_filter, response_cache_filter, response_filter)")
        assert.has_error(function() s.resp:set_status(200) end)
        assert.has_error(function() s.resp:add_header("x", "1") end)
        assert.has_error(function() s.resp:remove_header("x") end)
    end)
end)


describe("s:respond", function()
    it("sends a local answer and returns true", function()
        local s = req()
        assert.is_false(s:responded())
        assert.is_true(s:respond(403, "no\n", { ["x-why"] = "policy", ["x-n"] = 2 }))
        assert.is_true(s:responded())
        assert.equal(403, s.resp:status())
        assert.equal("local", s.resp:source())
        assert.equal("policy", s.resp:header("X-Why"))
        assert.equal("2", s.resp:header("x-n"))
        assert.equal("no\n", s.sp.resp_body)
    end)

    it("a table body is JSON with application/json", function()
        local s = req()
        s:respond(200, { ok = true, list = { 1, 2 } })
        assert.equal("application/json", s.resp:header("content-type"))
        assert.same({ ok = true, list = { 1, 2 } }, cjson.decode(s.sp.resp_body))
    end)

    it("keeps a given content-type for a table body and does not touch the caller's table",
       function()
        local s = req()
        local h = { ["Content-Type"] = "application/problem+json" }
        s:respond(400, { e = 1 }, h)
        assert.equal("application/problem+json", s.resp:header("content-type"))
        assert.same({ "application/problem+json" }, s.resp:header_values("content-type"))
        local h2 = {}
        req():respond(200, {}, h2)
        assert.same({}, h2)
    end)

    it("list header values give repeated fields", function()
        local s = req()
        s:respond(200, nil, { ["set-cookie"] = { "a=1", "b=2" } })
        assert.same({ "a=1", "b=2" }, s.resp:header_values("set-cookie"))
        assert.equal("", s.sp.resp_body)
    end)

    it("checks its arguments", function()
        assert.has_error(function() req():respond("200") end)
        assert.has_error(function() req():respond(1000) end)
        assert.has_error(function() req():respond(200, true) end,
            "bad argument #2 to 'respond' (string, table or nil expected, got boolean)")
        assert.has_error(function() req():respond(200, "", "x") end)
        assert.has_error(function() req():respond(200, "", { ["a b"] = "1" }) end)
        assert.has_error(function() req():respond(200, "", { a = "1\n" }) end)
    end)

    it("refuses a second response and the wrong phases", function()
        local s = req()
        s:respond(200)
        assert.has_error(function() s:respond(201) end,
            "s:respond() called twice: a response was already sent")
        local s2 = req { phase = "response_filter" }
        assert.has_error(function() s2:respond(200) end)
        assert.is_false(s2:responded())
    end)

    it("redirect sends location with 302 by default", function()
        local s = req()
        assert.is_true(s:redirect("https://example.com/login"))
        assert.equal(302, s.resp:status())
        assert.equal("https://example.com/login", s.resp:header("location"))
        local s2 = req()
        s2:redirect("/x", 301)
        assert.equal(301, s2.resp:status())
        assert.has_error(function() req():redirect("/x", 200) end)
        assert.has_error(function() req():redirect("/x\r\nSet-Cookie: a") end)
        assert.has_error(function() req():redirect(nil) end)
    end)
end)


describe("s connection and request facts", function()
    it("addresses, ports, id, start time, phase", function()
        local c = t.clock(1000)
        local s = req { client_addr = "10.0.0.1", client_port = 1234, server_addr = "10.0.0.2",
                        server_port = 80, phase = "upstream_peer" }
        assert.equal("10.0.0.1", s:client_addr())
        assert.equal(1234, s:client_port())
        assert.equal("10.0.0.2", s:server_addr())
        assert.equal(80, s:server_port())
        assert.equal(1000, s:start_time())
        assert.equal("upstream_peer", s:phase())
        assert.is_number(s:id())
        assert.is_true(req():id() > s:id())
        c:advance(1)
    end)

    it("defaults", function()
        local s = req()
        assert.equal("127.0.0.1", s:client_addr())
        assert.is_number(s:client_port())
        assert.equal("127.0.0.1", s:server_addr())
        assert.equal(8080, s:server_port())
        assert.equal("request_filter", s:phase())
    end)

    it("ctx and conn_ctx are tables; conn_ctx can be shared", function()
        local conn = {}
        local s = req { conn_ctx = conn }
        assert.is_table(s.ctx)
        assert.equal(conn, s.conn_ctx)
        assert.not_equal(req().conn_ctx, req().conn_ctx)
    end)

    it("takes no new fields (the live engine reuses session objects)", function()
        local s = req()
        for _, obj in ipairs { s, s.req, s.resp } do
            local ok, err = pcall(function() obj.user = "bob" end)
            assert.is_false(ok)
            assert.matches("takes no new fields", err)
        end
        s.ctx.user = "bob"                  -- what ctx is for
        assert.equal("bob", s.ctx.user)
    end)

    it("log_field keeps a per-request table", function()
        local s = req()
        assert.falsy(s.log_fields)            -- false until the first field
        s:log_field("user", "bob")
        s:log_field("n", 3)
        s:log_field("n", nil)
        assert.same({ user = "bob" }, s.log_fields)
        assert.has_error(function() s:log_field(1, "x") end)
        assert.has_error(function() s:log_field("k", {}) end)
    end)
end)


describe("absent until implemented", function()
    it("tls and cache methods are not there", function()
        local s = req()
        assert.is_nil(s.tls)
        assert.is_nil(s.cache)
        assert.has_error(function() s:tls() end)
    end)
end)


describe("moxy.session helpers", function()
    it("escape and unescape round-trip", function()
        assert.equal("a%20b%2F%C3%A9~", session.escape("a b/é~"))
        assert.equal("a b/é", session.unescape("a+b%2F%C3%a9"))
    end)

    it("new needs a backend", function()
        local backend = require "moxy.backend"
        local prev = backend.current
        backend.current = nil
        local ok, err = pcall(session.new, {})
        backend.current = prev
        assert.is_false(ok)
        assert.matches("no backend", err)
    end)

    it("objects are small and share their methods", function()
        local a, b = req(), req()
        assert.equal(getmetatable(a), getmetatable(b))
        assert.equal(getmetatable(a.req), getmetatable(b.req))
        assert.equal(getmetatable(a.resp), getmetatable(b.resp))
        local n = 0
        for _ in pairs(a.req) do
            n = n + 1
        end
        assert.equal(2, n)                                -- sp and b
    end)
end)
