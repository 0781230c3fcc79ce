/* libFuzzer target: request-target parsing, mx_target_parse() (src/http/uri.c).
 *
 * Input: byte 0 picks the method, the rest is the request-target as
 * received. Invariants, on success: only visible ASCII and no '#'; the form
 * fits the method (authority-form for CONNECT and only for it, "*" only for
 * OPTIONS); every view lies inside the input (but the documented static "/"
 * and "*"); path starts with '/', holds no '?' and only valid "%XX";
 * path_and_query is path, then '?' and query when there is one; host is
 * non-empty and the authority is host (bracketed for IPv6) and an optional
 * port 1-65535. An origin-form target is accepted exactly when its bytes are
 * visible ASCII without '#' and its path's '%' all start "%XX". */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "http/headers.h"
#include "http/uri.h"
#include "fuzz_check.h"

static const mx_str_t methods[] = {
    MX_STR("GET"),  MX_STR("CONNECT"), MX_STR("OPTIONS"), MX_STR("HEAD"),
    MX_STR("POST"), MX_STR("connect"), MX_STR("options"), MX_STR("PUT"),
};


static int
is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}


/* True when <v> lies inside <raw>, or is empty with no data. */
static int
inside(mx_str_t v, mx_str_t raw)
{
    if (v.data == NULL)
        return v.len == 0;
    return v.data >= raw.data && v.data + v.len <= raw.data + raw.len;
}


static int
visible_no_fragment(mx_str_t s)
{
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.data[i];
        if (c <= 0x20 || c >= 0x7f || c == '#')
            return 0;
    }
    return 1;
}


static int
pct_ok(mx_str_t s)
{
    for (size_t i = 0; i < s.len; i++) {
        if (s.data[i] != '%')
            continue;
        if (i + 2 >= s.len || !is_hex(s.data[i + 1]) || !is_hex(s.data[i + 2]))
            return 0;
        i += 2;
    }
    return 1;
}


static void
check_path(const mx_target_t *t, mx_str_t raw)
{
    fuzz_check(t->path.len > 0 && t->path.data[0] == '/', "path \"%.*s\"", (int)t->path.len,
               t->path.data);
    fuzz_check(memchr(t->path.data, '?', t->path.len) == NULL, "'?' in the path");
    fuzz_check(pct_ok(t->path), "bad %%-encoding accepted in \"%.*s\"", (int)t->path.len,
               t->path.data);
    if (inside(t->path, raw)) {
        fuzz_check(t->path_and_query.data == t->path.data && inside(t->path_and_query, raw),
                   "path_and_query does not start with the path");
        if (t->query.data != NULL) {
            fuzz_check(t->query.data == t->path.data + t->path.len + 1 &&
                           t->query.data[-1] == '?' &&
                           t->path_and_query.len == t->path.len + 1 + t->query.len,
                       "path_and_query is not path?query");
            fuzz_check(inside(t->query, raw), "query outside the input");
        } else {
            fuzz_check(t->path_and_query.len == t->path.len, "path_and_query longer than the path");
        }
    } else {
        /* absolute-form without a path: the static "/" (or "*" for OPTIONS) */
        fuzz_check(t->form == MX_TARGET_ABSOLUTE && t->path.len == 1 && t->query.data == NULL,
                   "a static path_and_query for form %d", t->form);
    }
}


static void
check_authority(const mx_target_t *t, mx_str_t raw)
{
    mx_str_t a = t->authority, h = t->host;
    fuzz_check(inside(a, raw) && inside(h, raw), "authority or host outside the input");
    fuzz_check(h.len > 0, "empty host");
    fuzz_check(memchr(a.data, '@', a.len) == NULL, "userinfo accepted");
    size_t hend;
    if (a.data[0] == '[') {
        fuzz_check(h.data == a.data + 1 && a.len >= h.len + 2 && a.data[h.len + 1] == ']',
                   "bracketed host is not the authority's");
        hend = h.len + 2;
    } else {
        fuzz_check(h.data == a.data, "host does not start the authority");
        fuzz_check(memchr(h.data, ':', h.len) == NULL, "':' in an unbracketed host");
        hend = h.len;
    }
    if (hend == a.len) {
        fuzz_check(t->port == 0, "port %d without one written", t->port);
        return;
    }
    fuzz_check(a.data[hend] == ':', "authority goes on past the host with '%c'", a.data[hend]);
    fuzz_check(t->port >= 1 && t->port <= 65535, "port %d", t->port);
    int n = 0;
    for (size_t i = hend + 1; i < a.len; i++) {
        fuzz_check(a.data[i] >= '0' && a.data[i] <= '9', "non-digit in the port");
        n = n * 10 + (a.data[i] - '0');
        if (n > 65535)
            n = 65536;
    }
    fuzz_check(n == t->port, "port %d parsed as %d", n, t->port);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    mx_str_t method = methods[data[0] % mx_countof(methods)];
    mx_str_t raw = {(const char *)data + 1, size - 1};
    mx_target_t t, again;
    bool connect = method.len == 7 && memcmp(method.data, "CONNECT", 7) == 0;
    bool options = method.len == 7 && memcmp(method.data, "OPTIONS", 7) == 0;

    int rc = mx_target_parse(raw, method, &t);
    fuzz_check(rc == MX_OK || rc == MX_EBADREQ, "rc %d", rc);
    fuzz_check(mx_target_parse(raw, method, &again) == rc, "not deterministic");

    if (raw.len > 0 && raw.data[0] == '/' && !connect) {
        size_t q = 0;
        while (q < raw.len && raw.data[q] != '?')
            q++;
        bool want = visible_no_fragment(raw) && pct_ok((mx_str_t){raw.data, q});
        fuzz_check((rc == MX_OK) == want, "origin-form \"%.*s\" %s", (int)raw.len, raw.data,
                   want ? "refused" : "accepted");
    }
    if (rc != MX_OK)
        return 0;

    fuzz_check(raw.len > 0 && visible_no_fragment(raw), "bad byte accepted");
    fuzz_check((t.form == MX_TARGET_AUTHORITY) == connect, "form %d for the method", t.form);
    switch (t.form) {
    case MX_TARGET_ORIGIN:
        fuzz_check(t.scheme.data == NULL && t.host.len == 0 && t.port == 0,
                   "origin-form with a host");
        fuzz_check(t.path.data == raw.data, "origin-form path does not start the target");
        check_path(&t, raw);
        fuzz_check(t.path_and_query.len == raw.len, "origin-form target not sent whole");
        break;
    case MX_TARGET_ABSOLUTE:
        fuzz_check(t.scheme.len == 4 || t.scheme.len == 5, "scheme \"%.*s\"", (int)t.scheme.len,
                   t.scheme.data);
        fuzz_check(t.scheme.data == raw.data && inside(t.scheme, raw), "scheme outside the input");
        check_authority(&t, raw);
        check_path(&t, raw);
        if (!inside(t.path, raw))
            fuzz_check(
                t.path_and_query.len == 1 && t.path_and_query.data[0] == (options ? '*' : '/'),
                "static path_and_query \"%.*s\"", (int)t.path_and_query.len, t.path_and_query.data);
        break;
    case MX_TARGET_AUTHORITY:
        fuzz_check(t.authority.data == raw.data && t.authority.len == raw.len,
                   "authority not whole");
        check_authority(&t, raw);
        fuzz_check(t.port > 0, "CONNECT without a port");
        fuzz_check(t.path.len == 0 && t.path_and_query.len == 0, "authority-form with a path");
        break;
    case MX_TARGET_ASTERISK:
        fuzz_check(options && raw.len == 1 && raw.data[0] == '*', "asterisk-form");
        break;
    default:
        fuzz_check(0, "form %d", t.form);
    }
    return 0;
}
