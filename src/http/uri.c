#include "http/uri.h"

#include <string.h>

#include "core/errors.h"
#include "http/headers.h"

#define EMPTY ((mx_str_t){NULL, 0})


/* Methods are case-sensitive (RFC 9110 §9.1): "connect" is not CONNECT. */
static inline bool
method_is(mx_str_t method, mx_str_t name)
{
    return method.len == name.len && memcmp(method.data, name.data, name.len) == 0;
}


static inline bool
is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}


static inline bool
is_digit(char c)
{
    return c >= '0' && c <= '9';
}


static inline bool
is_hex(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}


/* RFC 3986 unreserved / sub-delims: what a reg-name holds besides
 * pct-encoded octets. */
static bool
is_regname_char(char c)
{
    if (is_alpha(c) || is_digit(c))
        return true;
    /* clang-format off */
    switch (c) {
    case '-': case '.': case '_': case '~':
    case '!': case '$': case '&': case '\'': case '(': case ')':
    case '*': case '+': case ',': case ';': case '=':
        return true;
    }
    /* clang-format on */
    return false;
}


/* True when the <n> bytes at <p> hold only visible ASCII (0x21-0x7e) and no
 * '#'. This is the one character check every form goes through. */
static bool
all_visible_no_fragment(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c <= 0x20 || c >= 0x7f || c == '#')
            return false;
    }
    return true;
}


/* True when every '%' in <s> starts a pct-encoded octet ("%" HEXDIG HEXDIG). */
static bool
pct_encoding_ok(mx_str_t s)
{
    for (size_t i = 0; i < s.len; i++) {
        if (s.data[i] != '%')
            continue;
        if (s.len - i < 3)
            return false;
        if (!is_hex(s.data[i + 1]) || !is_hex(s.data[i + 2]))
            return false;
        i += 2;
    }
    return true;
}


/* Parses the decimal port <s> (1*DIGIT, 1-65535, leading zeros allowed).
 * Returns the port, or -1. */
static int
parse_port(mx_str_t s)
{
    int port = 0;

    if (s.len == 0)
        return -1;
    for (size_t i = 0; i < s.len; i++) {
        if (!is_digit(s.data[i]))
            return -1;
        port = port * 10 + (s.data[i] - '0');
        if (port > 65535)
            return -1;
    }
    return port > 0 ? port : -1;
}


/* Validates the bracketed IP-literal contents <s> (between '[' and ']'):
 * an IPv6 address written with hex digits, ':' and, for an embedded IPv4
 * tail, '.'. IPvFuture and RFC 6874 zone identifiers are refused. This is a
 * shape check, not a full IPv6 parse: the connector resolves the address. */
static bool
ipv6_literal_ok(mx_str_t s)
{
    size_t colons = 0;

    if (s.len < 2 || s.len > 45) /* "::" .. INET6_ADDRSTRLEN - 1 */
        return false;
    for (size_t i = 0; i < s.len; i++) {
        char c = s.data[i];
        if (c == ':')
            colons++;
        else if (!is_hex(c) && c != '.')
            return false;
    }
    return colons >= 2;
}


/* Parses <a>, an authority as it appears in absolute- and authority-form
 * (host [":" port], no userinfo), into out->host and out->port. With
 * <need_port> the port is required (CONNECT). Returns MX_OK or MX_EBADREQ. */
static int
parse_authority(mx_str_t a, bool need_port, mx_target_t *out)
{
    mx_str_t host, port = EMPTY;
    bool has_port = false;
    size_t i;

    if (a.len == 0)
        return MX_EBADREQ;
    if (a.data[0] == '[') {
        for (i = 1; i < a.len && a.data[i] != ']'; i++)
            ;
        if (i == a.len)
            return MX_EBADREQ;
        host = (mx_str_t){a.data + 1, i - 1};
        if (!ipv6_literal_ok(host))
            return MX_EBADREQ;
        i++;
        if (i < a.len) {
            if (a.data[i] != ':')
                return MX_EBADREQ;
            has_port = true;
            port = (mx_str_t){a.data + i + 1, a.len - i - 1};
        }
    } else {
        /* '@' (userinfo, deprecated for http by RFC 9110 §4.2.4), '[' and
         * ']' out of place and any other stray byte fall here. */
        for (i = 0; i < a.len && a.data[i] != ':'; i++) {
            if (is_regname_char(a.data[i]))
                continue;
            if (a.data[i] == '%' && i + 2 < a.len && is_hex(a.data[i + 1]) &&
                is_hex(a.data[i + 2])) {
                i += 2;
                continue;
            }
            return MX_EBADREQ;
        }
        host = (mx_str_t){a.data, i};
        if (i < a.len) {
            has_port = true;
            port = (mx_str_t){a.data + i + 1, a.len - i - 1};
        }
    }

    /* RFC 9110 §4.2.1: an http URI with an empty host is invalid. */
    if (host.len == 0)
        return MX_EBADREQ;
    if (need_port && !has_port)
        return MX_EBADREQ;
    out->port = 0;
    if (has_port) {
        /* "host:" is grammatical but never useful: refused as strict. */
        int n = parse_port(port);
        if (n < 0)
            return MX_EBADREQ;
        out->port = n;
    }
    out->host = host;
    out->authority = a;
    return MX_OK;
}


/* Splits <s> (starting with '/') at its first '?' into out->path and
 * out->query, and checks the path's pct-encoding. The query's is not
 * checked: upstreams tolerate a raw '%' there ("?off=10%") and moxy never
 * decodes it. */
static int
split_path_query(mx_str_t s, mx_target_t *out)
{
    size_t i;

    for (i = 0; i < s.len && s.data[i] != '?'; i++)
        ;
    out->path = (mx_str_t){s.data, i};
    out->query = i < s.len ? (mx_str_t){s.data + i + 1, s.len - i - 1} : EMPTY;
    out->path_and_query = s;
    return pct_encoding_ok(out->path) ? MX_OK : MX_EBADREQ;
}


/* Parses absolute-form "http[s]://authority[/path][?query]" from <raw>. */
static int
parse_absolute(mx_str_t raw, mx_str_t method, mx_target_t *out)
{
    size_t i;

    for (i = 0; i < raw.len && raw.data[i] != ':'; i++)
        ;
    mx_str_t scheme = {raw.data, i};
    if (!mx_str_caseeq(scheme, MX_STR("http")) && !mx_str_caseeq(scheme, MX_STR("https")))
        return MX_EBADREQ;
    if (raw.len - i < 3 || raw.data[i + 1] != '/' || raw.data[i + 2] != '/')
        return MX_EBADREQ;
    out->scheme = scheme;

    size_t start = i + 3;
    for (i = start; i < raw.len && raw.data[i] != '/' && raw.data[i] != '?'; i++)
        ;
    if (parse_authority((mx_str_t){raw.data + start, i - start}, false, out) != MX_OK)
        return MX_EBADREQ;

    if (i == raw.len) {
        out->path = MX_STR("/");
        out->query = EMPTY;
        /* RFC 9112 §3.2.4: the last proxy turns "OPTIONS http://h" into
         * "OPTIONS *"; moxy is the last proxy before the origin. */
        out->path_and_query = method_is(method, MX_STR("OPTIONS")) ? MX_STR("*") : MX_STR("/");
        return MX_OK;
    }
    /* "http://h?q" would need "/?q" upstream, which is not a view into
     * <raw>: refused (clients send "http://h/?q"). */
    if (raw.data[i] == '?')
        return MX_EBADREQ;
    return split_path_query((mx_str_t){raw.data + i, raw.len - i}, out);
}


/* Parses the request-target <raw> of a request whose method is <method>
 * (compared case-sensitively, RFC 9110 §9.1), filling <out> with views into
 * <raw> (or static strings where noted in uri.h).
 *
 * Characters: only visible ASCII 0x21-0x7e is accepted, and '#' nowhere.
 * nginx lets bytes >= 0x80 through; moxy refuses them as HAProxy does by
 * default, since RFC 9112's grammar is ASCII and upstreams disagree on how
 * to read raw UTF-8 (clients percent-encode it). Past that the path is
 * passed through as written: no dot-segment removal, no decoding; a '%' in
 * the path must start a valid "%XX" (nginx refuses the same when decoding).
 *
 * Forms: CONNECT takes only authority-form "host:port" (port required);
 * "*" only with OPTIONS; "/..." is origin-form; anything else must be
 * absolute-form with scheme http or https (any case; out->scheme keeps the
 * case as written), no userinfo, a non-empty host (IPv6 in brackets), an
 * optional port 1-65535. An absolute-form without a path gets path "/" (and
 * path_and_query "*" for OPTIONS, RFC 9112 §3.2.4); one with an empty path
 * but a query ("http://h?q") is refused. Authority-form leaves path and
 * path_and_query empty: the raw target is what goes upstream.
 *
 * Returns MX_OK, or MX_EBADREQ with <out> in an unspecified state. */
int
mx_target_parse(mx_str_t raw, mx_str_t method, mx_target_t *out)
{
    *out = (mx_target_t){
        .form = MX_TARGET_ORIGIN,
        .scheme = EMPTY,
        .authority = EMPTY,
        .host = EMPTY,
        .port = 0,
        .path = EMPTY,
        .query = EMPTY,
        .path_and_query = EMPTY,
    };

    if (raw.len == 0 || !all_visible_no_fragment(raw.data, raw.len))
        return MX_EBADREQ;

    if (method_is(method, MX_STR("CONNECT"))) {
        out->form = MX_TARGET_AUTHORITY;
        return parse_authority(raw, true, out);
    }

    if (raw.data[0] == '/') {
        out->form = MX_TARGET_ORIGIN;
        return split_path_query(raw, out);
    }

    if (raw.len == 1 && raw.data[0] == '*') {
        if (!method_is(method, MX_STR("OPTIONS")))
            return MX_EBADREQ;
        out->form = MX_TARGET_ASTERISK;
        out->path = raw;
        out->path_and_query = raw;
        return MX_OK;
    }

    out->form = MX_TARGET_ABSOLUTE;
    return parse_absolute(raw, method, out);
}
