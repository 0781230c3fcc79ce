/* src/http/uri.c: request-target forms, what each keeps, what is refused. */
#include <criterion/criterion.h>
#include <string.h>

#include "core/errors.h"
#include "http/uri.h"


static mx_str_t
S(const char *s)
{
    return (mx_str_t){s, strlen(s)};
}


/* Compares the view <v> with <want>; a NULL <want> means a {NULL, 0} view. */
static void
expect_str(mx_str_t v, const char *want, const char *raw, const char *field)
{
    if (want == NULL) {
        cr_expect_null(v.data, "%s: %s should be absent, is \"%.*s\"", raw, field, (int)v.len,
                       v.data ? v.data : "");
        cr_expect_eq(v.len, 0, "%s: %s", raw, field);
        return;
    }
    cr_expect(v.data != NULL && v.len == strlen(want) && memcmp(v.data, want, v.len) == 0,
              "%s: %s is \"%.*s\", want \"%s\"", raw, field, (int)v.len, v.data ? v.data : "",
              want);
}


typedef struct {
    const char *method, *raw;
    mx_target_form_t form;
    const char *scheme, *authority, *host;
    int port;
    const char *path, *query, *pq;
} good_t;


static void
check_good(const good_t *c)
{
    mx_target_t t;
    memset(&t, 0xa5, sizeof(t));
    int rc = mx_target_parse(S(c->raw), S(c->method), &t);
    cr_assert_eq(rc, MX_OK, "%s %s refused", c->method, c->raw);
    cr_expect_eq(t.form, c->form, "%s: form %d", c->raw, t.form);
    expect_str(t.scheme, c->scheme, c->raw, "scheme");
    expect_str(t.authority, c->authority, c->raw, "authority");
    expect_str(t.host, c->host, c->raw, "host");
    cr_expect_eq(t.port, c->port, "%s: port %d", c->raw, t.port);
    expect_str(t.path, c->path, c->raw, "path");
    expect_str(t.query, c->query, c->raw, "query");
    expect_str(t.path_and_query, c->pq, c->raw, "path_and_query");
}


Test(uri, origin_form)
{
    static const good_t cases[] = {
        {"GET", "/", MX_TARGET_ORIGIN, NULL, NULL, NULL, 0, "/", NULL, "/"},
        {"GET", "/a/b", MX_TARGET_ORIGIN, NULL, NULL, NULL, 0, "/a/b", NULL, "/a/b"},
        {"GET", "/a?", MX_TARGET_ORIGIN, NULL, NULL, NULL, 0, "/a", "", "/a?"},
        {"GET", "/a?x=1&y=2", MX_TARGET_ORIGIN, NULL, NULL, NULL, 0, "/a", "x=1&y=2", "/a?x=1&y=2"},
        {"GET", "/?a?b/c", MX_TARGET_ORIGIN, NULL, NULL, NULL, 0, "/", "a?b/c", "/?a?b/c"},
        {"GET", "//x/../y/./%2F", MX_TARGET_ORIGIN, NULL, NULL, NULL, 0, "//x/../y/./%2F", NULL,
         "//x/../y/./%2F"},
        {"POST", "/a:b@c!$&'()*+,;=~_-.", MX_TARGET_ORIGIN, NULL, NULL, NULL, 0,
         "/a:b@c!$&'()*+,;=~_-.", NULL, "/a:b@c!$&'()*+,;=~_-."},
        /* HAProxy-like leniency: visible ASCII outside pchar passes. */
        {"GET", "/{a}|b^`\"<>\\", MX_TARGET_ORIGIN, NULL, NULL, NULL, 0, "/{a}|b^`\"<>\\", NULL,
         "/{a}|b^`\"<>\\"},
        /* A raw '%' is tolerated in the query only. */
        {"GET", "/p%20q?off=10%", MX_TARGET_ORIGIN, NULL, NULL, NULL, 0, "/p%20q", "off=10%",
         "/p%20q?off=10%"},
        {"OPTIONS", "/x", MX_TARGET_ORIGIN, NULL, NULL, NULL, 0, "/x", NULL, "/x"},
        /* Lower-case "connect" is an extension method, not CONNECT. */
        {"connect", "/x", MX_TARGET_ORIGIN, NULL, NULL, NULL, 0, "/x", NULL, "/x"},
    };

    for (size_t i = 0; i < mx_countof(cases); i++)
        check_good(&cases[i]);
}


Test(uri, absolute_form)
{
    static const good_t cases[] = {
        {"GET", "http://example.com/a?b", MX_TARGET_ABSOLUTE, "http", "example.com", "example.com",
         0, "/a", "b", "/a?b"},
        {"GET", "HTTPS://Example.COM:8443/", MX_TARGET_ABSOLUTE, "HTTPS", "Example.COM:8443",
         "Example.COM", 8443, "/", NULL, "/"},
        {"GET", "http://h", MX_TARGET_ABSOLUTE, "http", "h", "h", 0, "/", NULL, "/"},
        {"GET", "http://h:80", MX_TARGET_ABSOLUTE, "http", "h:80", "h", 80, "/", NULL, "/"},
        {"GET", "http://h:00080/x", MX_TARGET_ABSOLUTE, "http", "h:00080", "h", 80, "/x", NULL,
         "/x"},
        {"GET", "http://h:65535/", MX_TARGET_ABSOLUTE, "http", "h:65535", "h", 65535, "/", NULL,
         "/"},
        {"GET", "http://h:1/", MX_TARGET_ABSOLUTE, "http", "h:1", "h", 1, "/", NULL, "/"},
        {"GET", "http://127.0.0.1:8080/p", MX_TARGET_ABSOLUTE, "http", "127.0.0.1:8080",
         "127.0.0.1", 8080, "/p", NULL, "/p"},
        {"GET", "http://[::1]/p", MX_TARGET_ABSOLUTE, "http", "[::1]", "::1", 0, "/p", NULL, "/p"},
        {"GET", "http://[2001:db8::7]:8080/?q", MX_TARGET_ABSOLUTE, "http", "[2001:db8::7]:8080",
         "2001:db8::7", 8080, "/", "q", "/?q"},
        {"GET", "http://[::ffff:192.0.2.1]", MX_TARGET_ABSOLUTE, "http", "[::ffff:192.0.2.1]",
         "::ffff:192.0.2.1", 0, "/", NULL, "/"},
        {"GET", "http://a-b.c_d~e%41/", MX_TARGET_ABSOLUTE, "http", "a-b.c_d~e%41", "a-b.c_d~e%41",
         0, "/", NULL, "/"},
        /* RFC 9112 §3.2.4: OPTIONS to a bare authority goes upstream as "*". */
        {"OPTIONS", "http://h:8001", MX_TARGET_ABSOLUTE, "http", "h:8001", "h", 8001, "/", NULL,
         "*"},
        {"OPTIONS", "http://h/", MX_TARGET_ABSOLUTE, "http", "h", "h", 0, "/", NULL, "/"},
    };

    for (size_t i = 0; i < mx_countof(cases); i++)
        check_good(&cases[i]);
}


Test(uri, authority_form_only_with_connect)
{
    static const good_t cases[] = {
        {"CONNECT", "example.com:443", MX_TARGET_AUTHORITY, NULL, "example.com:443", "example.com",
         443, NULL, NULL, NULL},
        {"CONNECT", "[::1]:8443", MX_TARGET_AUTHORITY, NULL, "[::1]:8443", "::1", 8443, NULL, NULL,
         NULL},
        {"CONNECT", "10.0.0.1:22", MX_TARGET_AUTHORITY, NULL, "10.0.0.1:22", "10.0.0.1", 22, NULL,
         NULL, NULL},
    };

    for (size_t i = 0; i < mx_countof(cases); i++)
        check_good(&cases[i]);
}


Test(uri, asterisk_form_only_with_options)
{
    static const good_t c = {"OPTIONS", "*", MX_TARGET_ASTERISK, NULL, NULL, NULL, 0, "*",
                             NULL,      "*"};
    check_good(&c);
}


Test(uri, refuses)
{
    static const struct {
        const char *method, *raw;
    } bad[] = {
        /* Empty, bad bytes, fragments. */
        {"GET", ""},
        {"GET", "/a b"},
        {"GET", "/a\tb"},
        {"GET", "/a\rb"},
        {"GET", "/a\x01"},
        {"GET", "/a\x7f"},
        {"GET", "/caf\xc3\xa9"},
        {"GET", "/a\x80"},
        {"GET", "/a#frag"},
        {"GET", "/a?b#c"},
        {"GET", "http://h/#"},
        /* Bad pct-encoding in the path. */
        {"GET", "/%"},
        {"GET", "/%4"},
        {"GET", "/%zz"},
        {"GET", "/a%g0/b"},
        {"GET", "http://h/%?x"},
        /* Neither origin, absolute, nor allowed asterisk/authority. */
        {"GET", "a/b"},
        {"GET", "?a"},
        {"GET", "*"},
        {"HEAD", "*"},
        {"options", "*"},
        {"OPTIONS", "**"},
        {"OPTIONS", "*/"},
        {"GET", "example.com:443"},
        {"GET", "example.com"},
        /* Absolute-form: scheme, slashes, host, userinfo, port. */
        {"GET", "ftp://h/"},
        {"GET", "ws://h/"},
        {"GET", "httpx://h/"},
        {"GET", "http:/h/"},
        {"GET", "http:h/"},
        {"GET", "http:"},
        {"GET", "http://"},
        {"GET", "http:///a"},
        {"GET", "http://:80/"},
        {"GET", "http://u@h/"},
        {"GET", "http://u:p@h/"},
        {"GET", "http://@h/"},
        {"GET", "http://h:/"},
        {"GET", "http://h:0/"},
        {"GET", "http://h:65536/"},
        {"GET", "http://h:99999999999/"},
        {"GET", "http://h:8a/"},
        {"GET", "http://h:-1/"},
        {"GET", "http://h:80:81/"},
        {"GET", "http://h?q"},
        {"GET", "http://h\"/"},
        {"GET", "http://h%4/"},
        {"GET", "http://h%zz/"},
        {"GET", "http://h]/"},
        /* IP literals. */
        {"GET", "http://[::1/"},
        {"GET", "http://[]/"},
        {"GET", "http://[:]/"},
        {"GET", "http://[1.2.3.4]/"},
        {"GET", "http://[::1]x/"},
        {"GET", "http://[::1]:/"},
        {"GET", "http://[v1.x]/"},
        {"GET", "http://[fe80::1%25eth0]/"},
        {"GET", "http://[::g]/"},
        {"GET", "http://[0000:0000:0000:0000:0000:0000:0000:0000:0000:0000]/"},
        /* CONNECT takes authority-form only, with a port. */
        {"CONNECT", "example.com"},
        {"CONNECT", "example.com:"},
        {"CONNECT", "example.com:0"},
        {"CONNECT", "example.com:70000"},
        {"CONNECT", ":443"},
        {"CONNECT", "u@example.com:443"},
        {"CONNECT", "/"},
        {"CONNECT", "*"},
        {"CONNECT", "http://example.com:443/"},
        {"CONNECT", "example.com:443/"},
        {"CONNECT", "example.com:443?x"},
        {"CONNECT", "[::1]"},
    };
    mx_target_t t;

    for (size_t i = 0; i < mx_countof(bad); i++) {
        cr_expect_eq(mx_target_parse(S(bad[i].raw), S(bad[i].method), &t), MX_EBADREQ,
                     "accepted %s \"%s\"", bad[i].method, bad[i].raw);
    }
}


Test(uri, refuses_an_embedded_nul)
{
    mx_target_t t;
    cr_assert_eq(mx_target_parse((mx_str_t){"/a\0b", 4}, MX_STR("GET"), &t), MX_EBADREQ);
    cr_assert_eq(mx_target_parse((mx_str_t){"h\0:1", 4}, MX_STR("CONNECT"), &t), MX_EBADREQ);
}


Test(uri, views_point_into_the_input)
{
    static const char raw[] = "http://h:81/p?q";
    mx_target_t t;
    cr_assert_eq(mx_target_parse(MX_STR(raw), MX_STR("GET"), &t), MX_OK);
    cr_assert_eq(t.scheme.data, raw);
    cr_assert_eq(t.authority.data, raw + 7);
    cr_assert_eq(t.host.data, raw + 7);
    cr_assert_eq(t.path.data, raw + 11);
    cr_assert_eq(t.query.data, raw + 14);
    cr_assert_eq(t.path_and_query.data, raw + 11);
}
