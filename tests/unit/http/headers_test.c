/* src/http/headers.c: the header list, hop-by-hop marking, token lists and
 * Content-Length. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "core/errors.h"
#include "http/headers.h"

static mx_arena_t arena;
static char first[256]; /* small on purpose: growth spills into malloc'ed blocks */


static void
setup(void)
{
    mx_arena_init(&arena, first, sizeof(first));
}


static void
teardown(void)
{
    mx_arena_dispose(&arena);
}


static mx_str_t
S(const char *s)
{
    return (mx_str_t){s, strlen(s)};
}


/* True when the view <v> holds exactly the C string <s>. */
static bool
str_is(mx_str_t v, const char *s)
{
    return v.len == strlen(s) && (v.len == 0 || memcmp(v.data, s, v.len) == 0);
}


/* Builds <h> from NULL-terminated name/value pairs. */
static void
build(mx_headers_t *h, const char *const *kv)
{
    mx_headers_init(h);
    for (size_t i = 0; kv[i] != NULL; i += 2)
        mx_headers_add(h, &arena, S(kv[i]), S(kv[i + 1]));
}


TestSuite(headers, .init = setup, .fini = teardown);


Test(headers, init_is_empty)
{
    mx_headers_t h;
    memset(&h, 0xa5, sizeof(h));
    mx_headers_init(&h);
    cr_assert_null(h.v);
    cr_assert_eq(h.n, 0);
    cr_assert_eq(h.cap, 0);
    cr_assert_eq(mx_headers_find(&h, MX_STR("a"), 0), -1);
    cr_assert_null(mx_headers_get(&h, MX_STR("a")).data);
    cr_assert_eq(mx_headers_remove(&h, MX_STR("a")), 0);
}


Test(headers, add_keeps_wire_order_and_grows_by_doubling)
{
    static char names[100][8], values[100][8];
    mx_headers_t h;
    mx_headers_init(&h);

    for (size_t i = 0; i < 100; i++) {
        snprintf(names[i], sizeof(names[i]), "N%zu", i);
        snprintf(values[i], sizeof(values[i]), "v%zu", i);
        mx_headers_add(&h, &arena, S(names[i]), S(values[i]));
        cr_assert_eq(h.n, i + 1);
        size_t want = 16;
        while (want < i + 1)
            want *= 2;
        cr_assert_eq(h.cap, want, "cap %zu after %zu adds", h.cap, i + 1);
    }
    for (size_t i = 0; i < 100; i++) {
        /* Views, not copies: the bytes are the caller's. */
        cr_assert_eq(h.v[i].name.data, names[i]);
        cr_assert_eq(h.v[i].value.data, values[i]);
        cr_assert_eq(h.v[i].flags, 0);
    }
}


Test(headers, add_works_without_a_first_block)
{
    mx_arena_t a;
    mx_headers_t h;
    mx_arena_init(&a, NULL, 0);
    mx_headers_init(&h);
    for (int i = 0; i < 40; i++)
        mx_headers_add(&h, &a, MX_STR("X"), MX_STR("y"));
    cr_assert_eq(h.n, 40);
    cr_assert_eq(h.cap, 64);
    mx_arena_dispose(&a);
}


Test(headers, find_is_case_insensitive_and_starts_at_from)
{
    static const char *const kv[] = {"Host", "a", "X-A", "1", "x-a", "2",
                                     "Via",  "v", "X-A", "3", NULL};
    mx_headers_t h;
    build(&h, kv);

    cr_assert_eq(mx_headers_find(&h, MX_STR("x-a"), 0), 1);
    cr_assert_eq(mx_headers_find(&h, MX_STR("X-a"), 1), 1);
    cr_assert_eq(mx_headers_find(&h, MX_STR("X-A"), 2), 2);
    cr_assert_eq(mx_headers_find(&h, MX_STR("X-A"), 3), 4);
    cr_assert_eq(mx_headers_find(&h, MX_STR("X-A"), 5), -1);
    cr_assert_eq(mx_headers_find(&h, MX_STR("X-A"), 99), -1);
    cr_assert_eq(mx_headers_find(&h, MX_STR("HOST"), 0), 0);
    cr_assert_eq(mx_headers_find(&h, MX_STR("X-"), 0), -1, "prefix matched");
    cr_assert_eq(mx_headers_find(&h, MX_STR("X-AB"), 0), -1, "longer name matched");
    cr_assert_eq(mx_headers_find(&h, MX_STR(""), 0), -1);
}


Test(headers, get_returns_first_value_or_null_view)
{
    static const char *const kv[] = {"Accept", "a/b", "accept", "c/d", "Empty", "", NULL};
    mx_headers_t h;
    build(&h, kv);

    cr_assert(str_is(mx_headers_get(&h, MX_STR("ACCEPT")), "a/b"));
    mx_str_t none = mx_headers_get(&h, MX_STR("absent"));
    cr_assert_null(none.data);
    cr_assert_eq(none.len, 0);
    mx_str_t empty = mx_headers_get(&h, MX_STR("empty"));
    cr_assert_not_null(empty.data);
    cr_assert_eq(empty.len, 0);
}


Test(headers, get_tells_an_empty_value_from_an_absent_one)
{
    /* A parser may hand an empty value over as {NULL, 0}. */
    mx_headers_t h;
    mx_headers_init(&h);
    mx_headers_add(&h, &arena, MX_STR("X-Empty"), (mx_str_t){NULL, 0});
    mx_str_t v = mx_headers_get(&h, MX_STR("x-empty"));
    cr_assert_not_null(v.data);
    cr_assert_eq(v.len, 0);
}


Test(headers, remove_keeps_the_others_in_order)
{
    static const struct {
        const char *const kv[11];
        const char *name;
        size_t removed;
        const char *left; /* names left, joined by ',' */
    } cases[] = {
        {{"A", "1", "B", "2", "a", "3", "C", "4", "A", "5", NULL}, "a", 3, "B,C"},
        {{"A", "1", "B", "2", NULL}, "c", 0, "A,B"},
        {{"A", "1", "B", "2", NULL}, "B", 1, "A"},
        {{"A", "1", "A", "2", NULL}, "A", 2, ""},
        {{NULL}, "A", 0, ""},
    };

    for (size_t i = 0; i < mx_countof(cases); i++) {
        mx_headers_t h;
        char got[64] = "";
        build(&h, cases[i].kv);
        cr_assert_eq(mx_headers_remove(&h, S(cases[i].name)), cases[i].removed, "case %zu", i);
        for (size_t j = 0; j < h.n; j++) {
            if (j > 0)
                strcat(got, ",");
            strncat(got, h.v[j].name.data, h.v[j].name.len);
        }
        cr_assert_str_eq(got, cases[i].left, "case %zu", i);
    }
}


Test(headers, set_replaces_at_the_first_place_and_drops_the_rest)
{
    static const char *const kv[] = {"A", "1", "X-F", "2", "B", "3", "x-f", "4", "C", "5", NULL};
    mx_headers_t h;
    build(&h, kv);
    h.v[1].flags = MX_HDR_HOP;

    mx_headers_set(&h, &arena, MX_STR("X-F"), MX_STR("new"));
    cr_assert_eq(h.n, 4);
    cr_assert(str_is(h.v[0].name, "A"));
    cr_assert(str_is(h.v[1].name, "X-F"));
    cr_assert(str_is(h.v[1].value, "new"));
    cr_assert_eq(h.v[1].flags, 0, "a value moxy sets must be forwarded");
    cr_assert(str_is(h.v[2].name, "B"));
    cr_assert(str_is(h.v[3].name, "C"));
    cr_assert_eq(mx_headers_find(&h, MX_STR("x-f"), 2), -1);
}


Test(headers, set_appends_when_absent)
{
    static const char *const kv[] = {"A", "1", NULL};
    mx_headers_t h;
    build(&h, kv);

    mx_headers_set(&h, &arena, MX_STR("Host"), MX_STR("example.com"));
    cr_assert_eq(h.n, 2);
    cr_assert(str_is(h.v[1].name, "Host"));
    cr_assert(str_is(mx_headers_get(&h, MX_STR("host")), "example.com"));

    mx_headers_t e;
    mx_headers_init(&e);
    mx_headers_set(&e, &arena, MX_STR("Host"), MX_STR("h"));
    cr_assert_eq(e.n, 1);
}


/* Marks hop-by-hop fields of kv and returns the names left to forward,
 * joined by ','. */
static void
forwarded(const char *const *kv, char *out, size_t len)
{
    mx_headers_t h;
    build(&h, kv);
    mx_headers_mark_hop_by_hop(&h);
    out[0] = '\0';
    for (size_t j = 0; j < h.n; j++) {
        if (h.v[j].flags & MX_HDR_HOP)
            continue;
        if (out[0] != '\0')
            strncat(out, ",", len - strlen(out) - 1);
        strncat(out, h.v[j].name.data, len - strlen(out) - 1);
    }
}


Test(headers, mark_hop_by_hop)
{
    static const struct {
        const char *const kv[17];
        const char *fwd;
    } cases[] = {
        /* The fixed set, any case. */
        {{"Connection", "keep-alive", "PROXY-CONNECTION", "close", "keep-alive", "timeout=5", "te",
          "trailers", "Transfer-Encoding", "chunked", "Upgrade", "websocket", "Host", "h", "Accept",
          "*/*", NULL},
         "Host,Accept"},
        /* Fields named by Connection tokens, with OWS, empty elements, any case. */
        {{"Connection", "close, X-Foo", "X-Foo", "1", "x-foo", "2", "X-Bar", "3", NULL}, "X-Bar"},
        {{"Connection", " ,X-A ,\t, x-b,,", "X-A", "1", "X-B", "2", "X-C", "3", NULL}, "X-C"},
        /* Several Connection headers all count, wherever the named field is. */
        {{"X-A", "1", "Connection", "x-a", "X-B", "2", "connection", "X-B", "X-C", "3", NULL},
         "X-C"},
        /* A token that is a prefix or a longer name does not match. */
        {{"Connection", "X-Fo, X-Fooo", "X-Foo", "1", NULL}, "X-Foo"},
        /* Content-Length and Host cannot be hidden by a connection option. */
        {{"Connection", "Content-Length, host, X-A", "Host", "h", "Content-Length", "5", "X-A", "1",
          NULL},
         "Host,Content-Length"},
        /* Nothing hop-by-hop. */
        {{"Host", "h", "Keep-Alives", "x", "TEE", "y", NULL}, "Host,Keep-Alives,TEE"},
        {{NULL}, ""},
    };
    char got[128];

    for (size_t i = 0; i < mx_countof(cases); i++) {
        forwarded(cases[i].kv, got, sizeof(got));
        cr_assert_str_eq(got, cases[i].fwd, "case %zu", i);
    }
}


Test(headers, mark_hop_by_hop_keeps_other_flags)
{
    static const char *const kv[] = {"A", "1", "Upgrade", "h2c", NULL};
    mx_headers_t h;
    build(&h, kv);
    h.v[0].flags = 0x80;
    mx_headers_mark_hop_by_hop(&h);
    cr_assert_eq(h.v[0].flags, 0x80);
    cr_assert_eq(h.v[1].flags, MX_HDR_HOP);
}


Test(headers, str_caseeq)
{
    static const struct {
        const char *a, *b;
        bool eq;
    } cases[] = {
        {"", "", true},           {"a", "A", true},     {"Content-Length", "content-length", true},
        {"abc", "abd", false},    {"ab", "abc", false}, {"", "a", false},
        {"@", "`", false},        {"[", "{", false},    {"\xc3\xa9", "\xc3\x89", false},
        {"x-1_z", "X-1_Z", true},
    };

    for (size_t i = 0; i < mx_countof(cases); i++) {
        cr_assert_eq(mx_str_caseeq(S(cases[i].a), S(cases[i].b)), cases[i].eq, "\"%s\" \"%s\"",
                     cases[i].a, cases[i].b);
    }
    cr_assert(mx_str_caseeq((mx_str_t){NULL, 0}, MX_STR("")));
}


Test(headers, has_token)
{
    static const struct {
        const char *list, *token;
        bool has;
    } cases[] = {
        {"keep-alive, Upgrade", "upgrade", true},
        {"keep-alive, Upgrade", "keep-alive", true},
        {"Upgrade", "UPGRADE", true},
        {"  chunked  ", "chunked", true},
        {"\tgzip\t,\tchunked\t", "chunked", true},
        {",,, close ,,", "close", true},
        {"gzip, chunked;foo=bar", "chunked", true},
        {"chunked ; q=1", "chunked", true},
        {"trailers, deflate;q=0.5", "deflate", true},
        {"a;x=\"1,chunked\", b", "b", true},
        {"a;x=\"1,\\\"chunked\", b", "b", true},
        {"close", "clos", false},
        {"clos", "close", false},
        {"closed", "close", false},
        {"keep-alive close", "close", false},
        {"a;x=\"1,chunked\"", "chunked", false},
        {"a;x=\"1, chunked, 2\"", "chunked", false},
        {"a;x=\"1, \\\", chunked\"", "chunked", false},
        {"x;chunked", "chunked", false},
        {"", "close", false},
        {" , ,", "close", false},
        {"a, , b", "", false},
        {"", "", false},
    };

    for (size_t i = 0; i < mx_countof(cases); i++) {
        cr_assert_eq(mx_header_has_token(S(cases[i].list), S(cases[i].token)), cases[i].has,
                     "\"%s\" has \"%s\"", cases[i].list, cases[i].token);
    }
}


Test(headers, content_length_accepts_digits)
{
    static const struct {
        const char *v;
        uint64_t n;
    } good[] = {
        {"0", 0},
        {"5", 5},
        {"007", 7},
        {"1234567890", 1234567890},
        {"9223372036854775807", 9223372036854775807ull}, /* 2^63 - 1, the limit */
        {"00000000000000000000000000042", 42},
    };

    for (size_t i = 0; i < mx_countof(good); i++) {
        uint64_t n = 1;
        cr_assert_eq(mx_http_parse_content_length(S(good[i].v), &n), MX_OK, "refused \"%s\"",
                     good[i].v);
        cr_assert_eq(n, good[i].n, "\"%s\" read as %llu", good[i].v, (unsigned long long)n);
    }
}


Test(headers, content_length_refuses_what_smuggles)
{
    static const char *bad[] = {
        "",
        "+1",
        "-1",
        "1 2",
        "0x10",
        " 1",
        "1 ",
        "1\t",
        "5, 5",
        "5,5",
        "1.0",
        "1e3",
        "١",
        "a",
        "12a",
        "9223372036854775808",  /* 2^63 */
        "18446744073709551615", /* UINT64_MAX */
        "18446744073709551616", /* UINT64_MAX + 1 */
        "99999999999999999999999999999",
    };
    uint64_t n = 7;

    for (size_t i = 0; i < mx_countof(bad); i++) {
        mx_str_t v = {bad[i], strlen(bad[i])};
        cr_assert_eq(mx_http_parse_content_length(v, &n), MX_EBADREQ, "accepted \"%s\"", bad[i]);
        cr_assert_eq(n, 7, "\"%s\" changed *out", bad[i]);
    }

    /* An embedded NUL, which strlen() above would hide. */
    cr_assert_eq(mx_http_parse_content_length((mx_str_t){"1\0"
                                                         "2",
                                                         3},
                                              &n),
                 MX_EBADREQ);
    cr_assert_eq(mx_http_parse_content_length((mx_str_t){"\0", 1}, &n), MX_EBADREQ);
}


Test(headers, serialize_keeps_order_and_case_and_skips_hop_by_hop)
{
    char first[512];
    mx_arena_t a;
    mx_arena_init(&a, first, sizeof(first));
    mx_headers_t h;
    mx_headers_init(&h);
    mx_headers_add(&h, &a, MX_STR("X-B"), MX_STR("1"));
    mx_headers_add(&h, &a, MX_STR("Connection"), MX_STR("x-a"));
    mx_headers_add(&h, &a, MX_STR("x-a"), MX_STR("2"));
    mx_headers_add(&h, &a, MX_STR("Empty"), (mx_str_t){NULL, 0});
    mx_headers_mark_hop_by_hop(&h);
    mx_buf_t b;
    mx_buf_init(&b);
    mx_headers_serialize(&h, &b);
    const char *want = "X-B: 1\r\nEmpty: \r\n";
    cr_assert_eq(b.len, strlen(want), "got \"%.*s\"", (int)b.len, b.data);
    cr_assert(memcmp(b.data, want, b.len) == 0);
    mx_buf_dispose(&b);
    mx_arena_dispose(&a);
}
