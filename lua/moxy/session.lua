-- moxy.session: the session `s`, `s.req` and `s.resp` as handlers see them, written once
-- over the backend contract (moxy.backend) and shared by the live and fake engines.
-- Objects are small tables holding the session handle `sp` and the backend `b`; the
-- methods live on shared metatables.
local backend = require "moxy.backend"
local cjson = require "cjson"

local byte = string.byte
local char = string.char
local concat = table.concat
local error = error
local find = string.find
local format = string.format
local gsub = string.gsub
local lower = string.lower
local match = string.match
local next = next
local pairs = pairs
local setmetatable = setmetatable
local sort = table.sort
local sub = string.sub
local tonumber = tonumber
local tostring = tostring
local type = type

local json_encode = cjson.encode

local MAX_ARGS = 100


local _M = { _VERSION = "0.1.0" }


-- Phases in which each kind of call is allowed. Both engines enforce the same sets:
-- the checks are done here, before the backend is called.
local function set_of(list)
    local t = { _list = concat(list, ", ") }
    for i = 1, #list do
        t[list[i]] = true
    end
    return t
end


local REQ_WRITE = set_of {
    "early_request_filter", "request_filter", "proxy_upstream_filter",
    "request_cache_filter", "cache_key", "cache_hit_filter", "cache_miss",
    "upstream_peer", "connected_to_upstream", "upstream_request_filter",
}

local RESP_WRITE = set_of {
    "upstream_response_filter", "response_cache_filter", "response_filter",
}

local RESPOND = set_of {
    "early_request_filter", "request_filter", "proxy_upstream_filter",
    "request_cache_filter", "cache_hit_filter", "cache_miss", "upstream_peer",
}

-- LUA_API.md phases neither engine runs yet: a script that defines one is refused at
-- load rather than silently half-run.
local NOT_BUILT = {
    "request_cache_filter",
    "cache_key", "cache_hit_filter", "cache_miss", "response_cache_filter",
}


-- Raises when <app> defines a phase this build does not run. Engines only.
function _M.check_app(app, path)
    for i = 1, #NOT_BUILT do
        if app[NOT_BUILT[i]] ~= nil then
            error((path or "script") .. ": " .. NOT_BUILT[i] .. " is not supported by this "
                  .. "moxy yet (docs/lua-api.md lists the phases that run)", 0)
        end
    end
end


_M.REQ_WRITE = REQ_WRITE
_M.RESP_WRITE = RESP_WRITE
_M.RESPOND = RESPOND


local function check_phase(b, sp, allowed, what)
    local phase = b.phase(sp)
    if not allowed[phase] then
        error(what .. " cannot be called in " .. tostring(phase)
              .. " (allowed: " .. allowed._list .. ")", 3)
    end
end


-- Raises at the caller of the method: <level> 3 when called from a method (default),
-- 4 from a check_* helper.
local function arg_error(n, fname, expected, got, level)
    error(format("bad argument #%d to '%s' (%s expected, got %s)", n, fname, expected,
                 type(got)), level or 3)
end


-- RFC 9110 token: header names and methods.
local function check_token(n, fname, v)
    if type(v) ~= "string" then
        arg_error(n, fname, "string", v, 4)
    end
    if not find(v, "^[%w!#$%%&'*+%-.^_`|~]+$") then
        error(format("bad argument #%d to '%s' (invalid token %q)", n, fname, v), 3)
    end
end


-- The fields moxy writes itself (message framing and connection handling; the live
-- check is managed_field() in src/lua/ffi/api.c): a script may not set, add or remove
-- them. Raises at the caller of the method <what> (level 3), with the live message.
-- moxy.http's requests refuse them too (_M.MANAGED). MANAGED_LEN: their lengths, so that
-- most names are passed without a lower().
local MANAGED = { ["content-length"] = true, ["transfer-encoding"] = true, connection = true,
                  ["keep-alive"] = true, upgrade = true, te = true,
                  ["proxy-connection"] = true, trailer = true }
_M.MANAGED = MANAGED
local MANAGED_LEN = {}
for k in pairs(MANAGED) do
    MANAGED_LEN[#k] = true
end
local function check_managed(what, name)
    if MANAGED_LEN[#name] and MANAGED[lower(name)] then
        error(what .. ": " .. name .. " is managed by moxy (message framing and connection "
              .. "handling)", 3)
    end
end


-- A header value: a string or a number; no CR, LF or NUL (no header injection).
local function check_value(n, fname, v)
    local tv = type(v)
    if tv == "number" then
        return tostring(v)
    end
    if tv ~= "string" then
        arg_error(n, fname, "string", v, 4)
    end
    if find(v, "[\r\n%z]") then
        error(format("bad argument #%d to '%s' (CR, LF or NUL in header value)", n, fname),
              3)
    end
    return v
end


local function check_status(n, fname, v)
    if type(v) ~= "number" or v % 1 ~= 0 or v < 200 or v > 599 then
        error(format("bad argument #%d to '%s' (status 200..599 expected, got %s)", n,
                     fname, tostring(v)), 3)
    end
end


-- Percent-decoding for query strings: "+" is a space.
local function unhex(h)
    return char(tonumber(h, 16))
end


local function unescape(s)
    if find(s, "[%%+]") then
        s = gsub(gsub(s, "+", " "), "%%(%x%x)", unhex)
    end
    return s
end


local function hex(c)
    return format("%%%02X", byte(c))
end


-- Percent-encodes everything except RFC 3986 unreserved characters (space is %20).
local function escape(s)
    return (gsub(s, "[^%w%-._~]", hex))
end

_M.escape = escape
_M.unescape = unescape


-- Splits an uri into path and query (nil when there is no "?"), stripping the scheme and
-- authority of an absolute-form uri.
local function split_uri(uri)
    local q = find(uri, "?", 1, true)
    local path = q and sub(uri, 1, q - 1) or uri
    if byte(path, 1) ~= 47 then                       -- not "/": absolute form
        local p = match(path, "^%a[%w+.-]*://[^/]*(/.*)$")
        if p then
            path = p
        elseif match(path, "^%a[%w+.-]*://[^/]*$") then
            path = "/"
        end
    end
    return path, q and sub(uri, q + 1) or nil
end


-- Decodes a query string with ngx.req.get_uri_args semantics.
local function decode_args(query, max)
    local args = {}
    if not query or query == "" then
        return args
    end
    local n = 0
    for pair in query:gmatch("[^&]+") do
        n = n + 1
        if n > max then
            return args, "truncated"
        end
        local eq = find(pair, "=", 1, true)
        local k, v
        if eq then
            k, v = unescape(sub(pair, 1, eq - 1)), unescape(sub(pair, eq + 1))
        else
            k, v = unescape(pair), true
        end
        if k ~= "" then
            local old = args[k]
            if old == nil then
                args[k] = v
            elseif type(old) == "table" then
                old[#old + 1] = v
            else
                args[k] = { old, v }
            end
        end
    end
    return args
end

_M.decode_args = decode_args


-- Encodes a table as a query string, keys sorted (deterministic); list values repeat the
-- key, true gives a bare key, false is skipped.
local function encode_args(t, fname)
    local keys = {}
    for k in pairs(t) do
        if type(k) ~= "string" then
            error("bad argument #1 to '" .. fname .. "' (keys must be strings)", 3)
        end
        keys[#keys + 1] = k
    end
    sort(keys)
    local out = {}
    for i = 1, #keys do
        local k = keys[i]
        local v = t[k]
        local vals = type(v) == "table" and v or { v }
        for j = 1, #vals do
            local x = vals[j]
            local tx = type(x)
            if x == true then
                out[#out + 1] = escape(k)
            elseif tx == "string" or tx == "number" then
                out[#out + 1] = escape(k) .. "=" .. escape(tostring(x))
            elseif x ~= false then
                error("bad argument #1 to '" .. fname .. "' (bad value for key " .. k
                      .. ": " .. tx .. ")", 3)
            end
        end
    end
    return concat(out, "&")
end

_M.encode_args = encode_args


-- Header methods shared by s.req and s.resp: <prefix> is "req" or "resp".
local function header_methods(prefix, label, write_phases)
    local f_get = prefix .. "_header"
    local f_count = prefix .. "_header_count"
    local f_at = prefix .. "_header_at"
    local f_set = prefix .. "_set_header"
    local f_add = prefix .. "_add_header"
    local f_remove = prefix .. "_remove_header"
    local f_try = prefix .. "_try_header"
    local m = {}

    -- First value of header <name> (any case), or nil. Phases: all.
    function m.header(self, name)
        if type(name) ~= "string" then
            arg_error(1, "header", "string", name)
        end
        return self.b[f_get](self.sp, name)
    end

    -- True when header <name> is present. Phases: all.
    function m.has_header(self, name)
        if type(name) ~= "string" then
            arg_error(1, "has_header", "string", name)
        end
        return self.b[f_get](self.sp, name) ~= nil
    end

    -- All values of header <name> in wire order (empty list when absent). Phases: all.
    function m.header_values(self, name)
        if type(name) ~= "string" then
            arg_error(1, "header_values", "string", name)
        end
        local b, sp = self.b, self.sp
        local lname = lower(name)
        local out = {}
        for i = 1, b[f_count](sp) do
            local k, v = b[f_at](sp, i)
            if lower(k) == lname then
                out[#out + 1] = v
            end
        end
        return out
    end

    -- List of { name, value } in wire order and case. Phases: all.
    function m.headers(self)
        local b, sp = self.b, self.sp
        local out = {}
        for i = 1, b[f_count](sp) do
            local k, v = b[f_at](sp, i)
            out[i] = { k, v }
        end
        return out
    end

    -- Replaces every field <name> with <value> (string, number, list of them; nil or an
    -- empty list removes). Phases: see REQ_WRITE / RESP_WRITE.
    function m.set_header(self, name, value)
        local b, sp = self.b, self.sp
        -- The common case goes straight to a backend that checks everything itself (the
        -- live one, in C): the Lua checks below run only to explain a refusal.
        local try = b[f_try]
        if try and type(name) == "string" and type(value) == "string"
           and try(sp, 0, name, value) then
            return
        end
        check_token(1, "set_header", name)
        check_phase(b, sp, write_phases, label .. ":set_header()")
        check_managed(label .. ":set_header()", name)
        if value == nil then
            return b[f_remove](sp, name)
        end
        if type(value) == "table" then
            if value[1] == nil then
                return b[f_remove](sp, name)
            end
            local vs = {}
            for i = 1, #value do
                vs[i] = check_value(2, "set_header", value[i])
            end
            b[f_set](sp, name, vs[1])
            for i = 2, #vs do
                b[f_add](sp, name, vs[i])
            end
            return
        end
        b[f_set](sp, name, check_value(2, "set_header", value))
    end

    -- Appends a field <name>: <value>. Phases: see REQ_WRITE / RESP_WRITE.
    function m.add_header(self, name, value)
        local try = self.b[f_try]
        if try and type(name) == "string" and type(value) == "string"
           and try(self.sp, 1, name, value) then
            return
        end
        check_token(1, "add_header", name)
        value = check_value(2, "add_header", value)
        local b, sp = self.b, self.sp
        check_phase(b, sp, write_phases, label .. ":add_header()")
        check_managed(label .. ":add_header()", name)
        b[f_add](sp, name, value)
    end

    -- Removes every field <name>. Phases: see REQ_WRITE / RESP_WRITE.
    function m.remove_header(self, name)
        check_token(1, "remove_header", name)
        local b, sp = self.b, self.sp
        check_phase(b, sp, write_phases, label .. ":remove_header()")
        check_managed(label .. ":remove_header()", name)
        b[f_remove](sp, name)
    end

    return m
end


-- s.req ------------------------------------------------------------------------------------

local Req = header_methods("req", "s.req", REQ_WRITE)
local req_mt = { __index = Req }


-- Method, e.g. "GET". Phases: all.
function Req.method(self)
    return self.b.req_method(self.sp)
end


-- Path + "?" + query as it will go upstream (as received until changed). Phases: all.
function Req.uri(self)
    return self.b.req_uri(self.sp)
end


-- Path part of uri() (raw, not decoded). Phases: all.
function Req.path(self)
    return (split_uri(self.b.req_uri(self.sp)))
end


-- Query string after "?" (raw), or nil when the uri has no "?". Phases: all.
function Req.query(self)
    local _, q = split_uri(self.b.req_uri(self.sp))
    return q
end


-- Decoded query arguments: repeated keys give a list, a bare key gives true; at most
-- <max> (default 100) pairs, then a second result "truncated". Phases: all.
function Req.args(self, max)
    if max ~= nil and type(max) ~= "number" then
        arg_error(1, "args", "number", max)
    end
    local _, q = split_uri(self.b.req_uri(self.sp))
    return decode_args(q, max or MAX_ARGS)
end


-- Decoded value of query argument <name> (first one when repeated; true for a bare key),
-- or nil. Phases: all.
function Req.arg(self, name)
    if type(name) ~= "string" then
        arg_error(1, "arg", "string", name)
    end
    local _, q = split_uri(self.b.req_uri(self.sp))
    if not q then
        return nil
    end
    local v = decode_args(q, MAX_ARGS)[name]
    if type(v) == "table" then
        return v[1]
    end
    return v
end


-- Host without port, lower case: the authority of an absolute-form uri, else the Host
-- header; nil when neither. Phases: all.
function Req.host(self)
    local b, sp = self.b, self.sp
    local h = match(b.req_uri(sp), "^%a[%w+.-]*://([^/?#]*)")
    if h then
        h = gsub(h, "^.*@", "")
    else
        h = b.req_header(sp, "host")
    end
    if not h or h == "" then
        return nil
    end
    if byte(h, 1) == 91 then                          -- "[v6]:port"
        h = match(h, "^(%[[^%]]*%])") or h
    else
        h = match(h, "^([^:]*)")
    end
    return lower(h)
end


-- "http". Phases: all.
function Req.scheme(self)
    return self.b.req_scheme(self.sp)
end


-- "1.1" or "1.0". Phases: all.
function Req.version(self)
    return self.b.req_version(self.sp)
end


local function check_uri(n, fname, uri)
    if type(uri) ~= "string" then
        arg_error(n, fname, "string", uri, 4)
    end
    if byte(uri, 1) ~= 47 or find(uri, "[%z\1-\32\127#]") then
        error(format("bad argument #%d to '%s' (path starting with \"/\" without spaces, "
                     .. "control characters or \"#\" expected, got %q)", n, fname, uri), 3)
    end
end


-- Replaces path and query. Phases: REQ_WRITE.
function Req.set_uri(self, uri)
    check_uri(1, "set_uri", uri)
    local b, sp = self.b, self.sp
    check_phase(b, sp, REQ_WRITE, "s.req:set_uri()")
    b.req_set_uri(sp, uri)
end


-- Replaces the path, keeping the query: uri() becomes path .. "?" .. query() (or just
-- path when there was no "?"). Phases: REQ_WRITE.
function Req.set_path(self, path)
    check_uri(1, "set_path", path)
    if find(path, "?", 1, true) then
        error("bad argument #1 to 'set_path' (\"?\" in path: use set_uri or set_args)", 2)
    end
    local b, sp = self.b, self.sp
    check_phase(b, sp, REQ_WRITE, "s.req:set_path()")
    local _, q = split_uri(b.req_uri(sp))
    b.req_set_uri(sp, q and path .. "?" .. q or path)
end


-- Replaces the query: a table is encoded (keys sorted), a string used as is; an empty
-- result drops the "?". Phases: REQ_WRITE.
function Req.set_args(self, args)
    local q
    local ta = type(args)
    if ta == "table" then
        q = encode_args(args, "set_args")
    elseif ta == "string" then
        if find(args, "[%z\1-\32\127#]") then
            error("bad argument #1 to 'set_args' (spaces, control characters or \"#\")", 2)
        end
        q = gsub(args, "^%?", "")
    else
        arg_error(1, "set_args", "table or string", args)
    end
    local b, sp = self.b, self.sp
    check_phase(b, sp, REQ_WRITE, "s.req:set_args()")
    local path = split_uri(b.req_uri(sp))
    b.req_set_uri(sp, q ~= "" and path .. "?" .. q or path)
end


local BODY = set_of { "early_request_filter", "request_filter", "upstream_peer",
                      "upstream_request_filter" }
local BODY_MAX = 1048576


-- opts.max of s.req:body() and s.resp:read_body() (<fname>): bytes, default 1 MiB.
local function body_max(opts, fname)
    if opts == nil then
        return BODY_MAX
    end
    if type(opts) ~= "table" then
        arg_error(1, fname, "table or nil", opts, 4)
    end
    local max = opts.max or BODY_MAX
    if type(max) ~= "number" or max < 0 then
        arg_error(1, fname, "a max >= 0", max, 4)
    end
    return max
end


-- The whole request body as a string (waits for it: the handler yields until it
-- arrived). opts.max (bytes, default 1 MiB): past it, nil, "too_large".
-- Phases: request_filter, upstream_peer, upstream_request_filter.
function Req.body(self, opts)
    local max = body_max(opts, "body")
    local b, sp = self.b, self.sp
    check_phase(b, sp, BODY, "s.req:body()")
    return b.req_body(sp, max)
end


-- A pull iterator over the request body: each call returns the next piece that has
-- arrived (waiting, yielding, for it), nil at the end. The body still goes upstream.
-- Phases: as s.req:body().
function Req.body_chunks(self)
    local b, sp = self.b, self.sp
    check_phase(b, sp, BODY, "s.req:body_chunks()")
    local pos = 0
    return function()
        local chunk = b.req_body_chunk(sp, pos)
        if chunk ~= nil then
            pos = pos + #chunk
        end
        return chunk
    end
end


local SET_BODY = set_of { "early_request_filter", "request_filter", "proxy_upstream_filter",
                          "upstream_peer", "upstream_request_filter" }


-- Replaces the body sent upstream (the client's is read and dropped); moxy sends it with
-- its Content-Length, and request_body_filter does not run. Phases: before proxying.
function Req.set_body(self, body)
    if type(body) == "number" then
        body = tostring(body)
    elseif type(body) ~= "string" then
        arg_error(1, "set_body", "string", body)
    end
    local b, sp = self.b, self.sp
    check_phase(b, sp, SET_BODY, "s.req:set_body()")
    b.req_set_body(sp, body)
end


-- Replaces the method (a token, e.g. "POST"). Phases: REQ_WRITE.
function Req.set_method(self, method)
    check_token(1, "set_method", method)
    local b, sp = self.b, self.sp
    check_phase(b, sp, REQ_WRITE, "s.req:set_method()")
    b.req_set_method(sp, method)
end


-- s.resp -----------------------------------------------------------------------------------

-- The response's trailers (response_trailer_filter's argument): the same header
-- methods, readable and writable in that phase only.
local Trailers = header_methods("trailer", "trailers",
                                set_of { "response_trailer_filter" })
local trailers_mt = { __index = Trailers }


function _M.trailers(sp, b)
    return setmetatable({ sp = sp, b = b or backend.current }, trailers_mt)
end


local Resp = header_methods("resp", "s.resp", RESP_WRITE)
local resp_mt = { __index = Resp }


-- Status of the response going downstream; nil before a response exists. Phases: all.
function Resp.status(self)
    return self.b.resp_status(self.sp)
end


-- Sets the status (100..599). Phases: RESP_WRITE.
function Resp.set_status(self, status)
    check_status(1, "set_status", status)
    local b, sp = self.b, self.sp
    check_phase(b, sp, RESP_WRITE, "s.resp:set_status()")
    b.resp_set_status(sp, status)
end


-- The whole response body as a string (buffered mode): waits (the handler yields) until
-- the origin sent it all; nil, "too_large" past opts.max (default 1 MiB) — the body then
-- streams as usual once the phase is done. A local answer gives its body, an error page
-- or a response without a body "". Phases: upstream_response_filter, response_filter.
function Resp.read_body(self, opts)
    local max = body_max(opts, "read_body")
    local b, sp = self.b, self.sp
    check_phase(b, sp, RESP_WRITE, "s.resp:read_body()")
    return b.resp_read_body(sp, max)
end


-- Replaces the response body; moxy sends it with its Content-Length (the body filters
-- still run on it). The origin's own body is not forwarded. Phases: upstream_response_filter,
-- response_filter.
function Resp.set_body(self, body)
    if type(body) == "number" then
        body = tostring(body)
    elseif type(body) ~= "string" then
        arg_error(1, "set_body", "string", body)
    end
    local b, sp = self.b, self.sp
    check_phase(b, sp, RESP_WRITE, "s.resp:set_body()")
    b.resp_set_body(sp, body)
end


-- Where the response came from: "upstream", "local" or "error". Phases: all.
function Resp.source(self)
    return self.b.resp_source(self.sp)
end


-- s ----------------------------------------------------------------------------------------

local S = {}
local s_mt = { __index = S }


-- Sessions take no new fields: the live engine reuses a coroutine's session objects for
-- its next request, so a field set here would leak into another request.
local function no_new_field(what)
    return function(t, k, v)
        error(format("%s.%s: a session object takes no new fields (keep per-request state "
                     .. "in ctx, per-connection state in s.conn_ctx)", what, tostring(k)), 2)
    end
end

s_mt.__newindex = no_new_field("s")
req_mt.__newindex = no_new_field("s.req")
resp_mt.__newindex = no_new_field("s.resp")


-- Answers from Lua: <body> a string, or a table sent as JSON (content-type
-- application/json unless given); <headers> a table name -> value (or list of values).
-- Ends request processing; response_filter, response_body_filter and logging still run.
-- Returns true. Phases: RESPOND.
function S.respond(self, status, body, headers)
    check_status(1, "respond", status)
    local tb = type(body)
    if tb == "table" then
        body = json_encode(body)
    elseif tb == "number" then
        body = tostring(body)
    elseif body ~= nil and tb ~= "string" then
        arg_error(2, "respond", "string, table or nil", body)
    end
    if headers ~= nil and type(headers) ~= "table" then
        arg_error(3, "respond", "table or nil", headers)
    end
    local out
    if headers and next(headers) then
        out = {}
        for k, v in pairs(headers) do
            check_token(3, "respond", k)
            if type(v) == "table" then
                local vs = {}
                for i = 1, #v do
                    vs[i] = check_value(3, "respond", v[i])
                end
                out[k] = vs
            else
                out[k] = check_value(3, "respond", v)
            end
        end
    end
    if tb == "table" then
        local has_ct = false
        if out then
            for k in pairs(out) do
                if lower(k) == "content-type" then
                    has_ct = true
                end
            end
        end
        if not has_ct then
            out = out or {}
            out["content-type"] = "application/json"
        end
    end
    local b, sp = self.b, self.sp
    check_phase(b, sp, RESPOND, "s:respond()")
    if b.responded(sp) then
        error("s:respond() called twice: a response was already sent", 2)
    end
    b.respond(sp, status, body, out)
    return true
end


local REDIRECT = { [301] = true, [302] = true, [303] = true, [307] = true, [308] = true }


-- Redirects to <url> with <status> (301, 302, 303, 307 or 308; default 302).
-- Phases: RESPOND.
function S.redirect(self, url, status)
    if type(url) ~= "string" then
        arg_error(1, "redirect", "string", url)
    end
    if find(url, "[%z\1-\32\127]") or url == "" then
        error("bad argument #1 to 'redirect' (empty, spaces or control characters)", 2)
    end
    status = status or 302
    if not REDIRECT[status] then
        error("bad argument #2 to 'redirect' (301, 302, 303, 307 or 308 expected, got "
              .. tostring(status) .. ")", 2)
    end
    local b, sp = self.b, self.sp
    check_phase(b, sp, RESPOND, "s:redirect()")
    if b.responded(sp) then
        error("s:redirect() called after a response was sent", 2)
    end
    b.respond(sp, status, nil, { location = url })
    return true
end


-- True once s:respond() or s:redirect() was called. Phases: all.
function S.responded(self)
    return self.b.responded(self.sp)
end


-- Client address (string). Phases: all.
function S.client_addr(self)
    return self.b.client_addr(self.sp)
end


-- Client port (number). Phases: all.
function S.client_port(self)
    return self.b.client_port(self.sp)
end


-- Address the request arrived on (string). Phases: all.
function S.server_addr(self)
    return self.b.server_addr(self.sp)
end


-- Port the request arrived on (number). Phases: all.
function S.server_port(self)
    return self.b.server_port(self.sp)
end


-- Request id (number). Phases: all.
function S.id(self)
    return self.b.id(self.sp)
end


-- Time the request started, in seconds (float). Phases: all.
function S.start_time(self)
    return self.b.start_time(self.sp)
end


-- True when the downstream connection served a request before this one. Phases: all.
function S.downstream_reused(self)
    return self.b.downstream_reused(self.sp)
end


-- The upstream exchange: { addr, status, tries, reused, connect_ms, header_ms, bytes_in,
-- bytes_out }, or nil before a peer was chosen. Fields moxy does not know yet are nil.
-- Phases: all.
function S.upstream(self)
    return self.b.upstream_info(self.sp)
end


-- Name of the running phase. Phases: all.
function S.phase(self)
    return self.b.phase(self.sp)
end


-- Adds a structured access-log field; kept in s.log_fields, read after logging.
-- <value> a string, number, boolean or nil (removes). Phases: all.
function S.log_field(self, key, value)
    if type(key) ~= "string" then
        arg_error(1, "log_field", "string", key)
    end
    local tv = type(value)
    if value ~= nil and tv ~= "string" and tv ~= "number" and tv ~= "boolean" then
        arg_error(2, "log_field", "string, number, boolean or nil", value)
    end
    local f = self.log_fields
    if not f then
        f = {}
        self.log_fields = f
    end
    f[key] = value
    local b = self.b
    if b.log_field then
        b.log_field(self.sp, key, value)    -- the live engine's access log
    end
end


-- Makes the session for handle <sp>. <ctx> is the request ctx (new_ctx() result, default
-- {}), <conn_ctx> the connection's table (default {}). Engines only.
function _M.new(sp, ctx, conn_ctx, b)
    b = b or backend.current
    if not b then
        error("moxy.session.new: no backend (the engine sets moxy.backend.current)", 2)
    end
    return setmetatable({
        sp = sp,
        b = b,
        req = setmetatable({ sp = sp, b = b }, req_mt),
        resp = setmetatable({ sp = sp, b = b }, resp_mt),
        ctx = ctx or {},
        conn_ctx = conn_ctx or {},
        log_fields = false,             -- s:log_field() makes the table
    }, s_mt)
end


-- Puts session <s> (made by new()) to work for another request: the live engine keeps one
-- per coroutine instead of making three tables per request (its handle stays: C points
-- it at each request's session). Engines only.
function _M.attach(s, ctx, conn_ctx)
    s.ctx, s.conn_ctx, s.log_fields = ctx, conn_ctx, false
    return s
end


_M.S = S
_M.Req = Req
_M.Resp = Resp
_M.split_uri = split_uri


return _M
