-- moxy.http: an HTTP/1.1 client for handlers, timers and threads (it yields, never blocks
-- the worker). This module checks the arguments and builds the response object; the
-- engine does the exchange: live, moxy.http_client over moxy.tcp (with its keepalive
-- pool); under moxy.test, t.run's opts.http.
local backend = require "moxy.backend"
local sched = require "moxy.sched"

local error = error
local find = string.find
local format = string.format
local lower = string.lower
local match = string.match
local pairs = pairs
local setmetatable = setmetatable
local sort = table.sort
local tonumber = tonumber
local tostring = tostring
local type = type


local _M = { _VERSION = "0.1.0" }

local DEFAULT_TIMEOUT = 60              -- seconds, for the whole exchange
local DEFAULT_MAX_BODY = 16 * 1024 * 1024
local TOKEN = "^[%w!#$%%&'*+%-.^_`|~]+$"

-- Framing and connection fields belong to the client (the list scripts may not set).
local MANAGED = require("moxy.session").MANAGED

local OPTS = { method = "string", url = "string", headers = "table", body = "string",
               timeout = "number", max_body = "number", keepalive = "boolean" }


local res_mt = { __index = {
    -- The first value of header <name> (any case), or nil.
    header = function(self, name)
        if type(name) ~= "string" then
            error("bad argument #1 to 'header' (string expected, got " .. type(name) .. ")", 2)
        end
        local v = self.headers[lower(name)]
        if type(v) == "table" then
            return v[1]
        end
        return v
    end,
} }
_M.response_mt = res_mt


-- "http://host:port/path?q" -> { scheme, host, port, path }, or nil, why.
local function parse_url(url)
    local scheme, rest = match(url, "^(%a[%w+.-]*)://(.*)$")
    if not scheme then
        return nil, "expected http://host[:port]/path"
    end
    scheme = lower(scheme)
    if scheme ~= "http" and scheme ~= "https" then
        return nil, "unsupported scheme " .. scheme
    end
    local authority, path = match(rest, "^([^/?#]*)(.*)$")
    path = match(path, "^[^#]*")
    if path == "" or path:sub(1, 1) == "?" then
        path = "/" .. path
    end
    if find(path, "[%c ]") then
        return nil, "the path contains a space or a control character"
    end
    if find(authority, "@", 1, true) then
        return nil, "user info in the URL is not supported"
    end
    local host, port = match(authority, "^%[([%x:.]+)%]:?(%d*)$")
    if not host then
        host, port = match(authority, "^([%w%.%-_]+):?(%d*)$")
    end
    if not host or host == "" then
        return nil, "bad host"
    end
    port = tonumber(port) or (scheme == "https" and 443 or 80)
    if port < 1 or port > 65535 then
        return nil, "port out of range"
    end
    return { scheme = scheme, host = host, port = port, path = path }
end
_M.parse_url = parse_url


-- headers as { name = value | { values } } (sorted by name) or { { name, value }, ... }.
local function header_list(h)
    local list = {}
    if h == nil then
        return list
    end
    local function add(k, v)
        if type(k) ~= "string" or not find(k, TOKEN) then
            error("moxy.http.request: bad header name " .. format("%q", tostring(k)), 4)
        end
        if MANAGED[lower(k)] then
            error("moxy.http.request: " .. k .. " is managed by moxy (message framing and "
                  .. "connection handling)", 4)
        end
        v = tostring(v)
        if find(v, "[\r\n%z]") then
            error("moxy.http.request: header " .. k .. " contains CR, LF or NUL", 4)
        end
        list[#list + 1] = { k, v }
    end
    if h[1] ~= nil then
        for i = 1, #h do
            local f = h[i]
            if type(f) ~= "table" then
                error("moxy.http.request: headers list entries must be { name, value }", 3)
            end
            add(f[1], f[2])
        end
        return list
    end
    local names = {}
    for k in pairs(h) do
        names[#names + 1] = tostring(k)
    end
    sort(names)
    for i = 1, #names do
        local v = h[names[i]]
        if type(v) == "table" then
            for j = 1, #v do
                add(names[i], v[j])
            end
        else
            add(names[i], v)
        end
    end
    return list
end


-- Header list -> { lower-case name = value, or a list of values when repeated }.
local function header_map(list)
    local m = {}
    for i = 1, #list do
        local k, v = lower(list[i][1]), list[i][2]
        local old = m[k]
        if old == nil then
            m[k] = v
        elseif type(old) == "table" then
            old[#old + 1] = v
        else
            m[k] = { old, v }
        end
    end
    return m
end
_M.header_map = header_map


-- moxy.http.request{ method = "GET", url, headers, body, timeout = 60 (seconds, for the
-- whole exchange), max_body = 16 MiB, keepalive = true } -> res { status, reason,
-- headers (lower-case keys), body, :header(name) }, or nil, err, detail with err one of
-- "timeout", "connect", "closed", "bad_response", "too_large", "tls". Yields.
-- Phases: those that may wait, timers, threads.
function _M.request(opts)
    if type(opts) ~= "table" then
        error("bad argument #1 to 'request' (table expected, got " .. type(opts) .. ")", 2)
    end
    for k, v in pairs(opts) do
        local want = OPTS[k]
        if want == nil then
            error("moxy.http.request: unknown option " .. tostring(k), 2)
        end
        if type(v) ~= want then
            error(format("moxy.http.request: %s must be a %s, got %s", k, want, type(v)), 2)
        end
    end
    if opts.url == nil then
        error("moxy.http.request: url required", 2)
    end
    local u, why = parse_url(opts.url)
    if not u then
        error("moxy.http.request: bad url " .. format("%q", opts.url) .. ": " .. why, 2)
    end
    local method = opts.method or "GET"
    if not find(method, TOKEN) or method == "CONNECT" then
        error("moxy.http.request: bad method " .. format("%q", method), 2)
    end
    local timeout = opts.timeout or DEFAULT_TIMEOUT
    if not (timeout > 0) then
        error("moxy.http.request: timeout must be > 0 (seconds)", 2)
    end
    local max_body = opts.max_body or DEFAULT_MAX_BODY
    if not (max_body >= 0) then
        error("moxy.http.request: max_body must be >= 0 (bytes)", 2)
    end
    local headers = header_list(opts.headers)
    sched.check("moxy.http.request()")
    if u.scheme == "https" then
        return nil, "tls", "TLS is not supported by this moxy yet"
    end
    local r = { method = method, url = opts.url, scheme = u.scheme, host = u.host,
                port = u.port, path = u.path, headers = headers, body = opts.body,
                timeout = timeout, max_body = max_body, keepalive = opts.keepalive ~= false }
    local out, err, detail = backend.current.http_request(r)
    if out == nil then
        return nil, err, detail
    end
    return setmetatable({ status = out.status, reason = out.reason,
                          headers = header_map(out.header_list), body = out.body }, res_mt)
end


-- resty.http's object style: moxy.http.new() -> httpc with :request_uri(url, params),
-- :set_timeout(ms), :set_keepalive() and :close() (no-ops: moxy.http pools by itself).
local httpc_mt = { __index = {
    request_uri = function(self, url, params)
        local o = {}
        for k, v in pairs(params or {}) do
            o[k] = v
        end
        o.url = url
        if o.timeout == nil and self.timeout then
            o.timeout = self.timeout
        end
        return _M.request(o)
    end,
    set_timeout = function(self, ms)
        if type(ms) ~= "number" or ms <= 0 then
            error("bad argument #1 to 'set_timeout' (milliseconds > 0 expected)", 2)
        end
        self.timeout = ms / 1000
    end,
    set_keepalive = function() return 1 end,
    close = function() return 1 end,
} }


function _M.new()
    return setmetatable({}, httpc_mt)
end


return _M
