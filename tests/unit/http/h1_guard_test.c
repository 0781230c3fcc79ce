/* The checks llhttp 8.1 skips in strict mode, driven through llhttp itself
 * the way the server drives it, with every split of the input into two
 * reads (a check must not depend on where a read ends). */
#include <criterion/criterion.h>
#include <llhttp.h>
#include <string.h>

#include "http/h1_guard.h"

typedef struct {
    llhttp_t p;
    mx_h1_guard_t g;
    int bad;
} ctx_t;


static int
on_field(llhttp_t *p, const char *at, size_t n)
{
    (void)at;
    (void)n;
    mx_h1_guard_value_done(&((ctx_t *)p->data)->g);
    return 0;
}


static int
on_value(llhttp_t *p, const char *at, size_t n)
{
    ctx_t *c = p->data;
    return mx_h1_guard_value(&c->g, at, n) < 0 ? (c->bad = 1, -1) : 0;
}


static int
on_value_done(llhttp_t *p)
{
    mx_h1_guard_value_done(&((ctx_t *)p->data)->g);
    return 0;
}


static int
on_chunk(llhttp_t *p)
{
    mx_h1_guard_chunk(&((ctx_t *)p->data)->g, p->content_length);
    return 0;
}


static int
on_body(llhttp_t *p, const char *at, size_t n)
{
    ctx_t *c = p->data;
    return mx_h1_guard_body(&c->g, at, n) < 0 ? (c->bad = 1, -1) : 0;
}


/* Parses <msg> in two reads split at <cut>; returns 1 if refused. */
static int
refused(const char *msg, size_t cut)
{
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_header_field = on_field;
    s.on_header_value = on_value;
    s.on_header_value_complete = on_value_done;
    s.on_chunk_header = on_chunk;
    s.on_body = on_body;
    ctx_t c;
    memset(&c, 0, sizeof(c));
    llhttp_init(&c.p, HTTP_REQUEST, &s);
    c.p.data = &c;
    size_t len = strlen(msg);
    /* Each read gets its own copy, as a reused read buffer would. */
    char a[512], b[512];
    memcpy(a, msg, cut);
    memcpy(b, msg + cut, len - cut);
    if (mx_h1_guard_begin(&c.g, a, cut) < 0 || llhttp_execute(&c.p, a, cut) != HPE_OK)
        return 1;
    if (mx_h1_guard_begin(&c.g, b, len - cut) < 0 || llhttp_execute(&c.p, b, len - cut) != HPE_OK)
        return 1;
    return 0;
}


Test(h1_guard, refuses_chunk_data_without_its_crlf_at_every_split)
{
    const char *bad = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "5\r\nhelloXX0\r\n\r\n";
    for (size_t cut = 1; cut < strlen(bad); cut++)
        cr_assert(refused(bad, cut), "accepted chunk data without CRLF (split at %zu)", cut);
}


Test(h1_guard, accepts_valid_chunks_at_every_split)
{
    const char *ok = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "5\r\nhello\r\n3;x=1\r\nabc\r\n0\r\nTrailer-A: 1\r\n\r\n";
    for (size_t cut = 1; cut < strlen(ok); cut++)
        cr_assert_not(refused(ok, cut), "refused a valid chunked body (split at %zu)", cut);
}


Test(h1_guard, refuses_obs_fold_and_accepts_split_values)
{
    const char *fold = "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n";
    const char *ok = "GET / HTTP/1.1\r\nHost: a\r\nX-A: some long value\r\nX-B: 2\r\n\r\n";
    for (size_t cut = 1; cut < strlen(fold); cut++)
        cr_assert(refused(fold, cut), "accepted obs-fold (split at %zu)", cut);
    for (size_t cut = 1; cut < strlen(ok); cut++)
        cr_assert_not(refused(ok, cut), "refused a value split at %zu", cut);
}


Test(h1_guard, field_names_must_be_tokens)
{
    cr_assert_eq(mx_h1_guard_name(MX_STR("X-Forwarded-For")), 0);
    cr_assert_eq(mx_h1_guard_name(MX_STR("a!#$%&'*+-.^_`|~9")), 0);
    static const char *bad[] = {"", "X-A ", "X A", "X:A", "X\"A", "X(A)", "X\x7f"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(mx_h1_guard_name((mx_str_t){bad[i], strlen(bad[i])}), -1, "accepted \"%s\"",
                     bad[i]);
}
