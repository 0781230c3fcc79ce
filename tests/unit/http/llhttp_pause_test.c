/* What upstream/upconn.c relies on when a Lua phase waits inside a parser
 * callback: returning HPE_PAUSED from on_headers_complete or on_body stops
 * llhttp right after that callback (error_pos is where to go on), and after
 * llhttp_resume() the rest of the buffer parses as if nothing happened — even
 * an empty rest still delivers on_message_complete, and a body span restarted
 * at the end of a buffer reaches on_body with no byte (ignored by upconn.c). */
#include <criterion/criterion.h>
#include <llhttp.h>
#include <string.h>

typedef struct {
    llhttp_t p;
    char body[256];
    size_t blen;
    int heads;
    int dones;
    int empty_bodies;
    int pause_head; /* pause at on_headers_complete (once) */
    int pause_body; /* pause at every on_body */
} ctx_t;


static int
on_headers_complete(llhttp_t *p)
{
    ctx_t *c = p->data;
    c->heads++;
    if (c->pause_head) {
        c->pause_head = 0;
        return HPE_PAUSED;
    }
    return 0;
}


static int
on_body(llhttp_t *p, const char *at, size_t n)
{
    ctx_t *c = p->data;
    if (n == 0) {
        c->empty_bodies++;
        return 0;
    }
    memcpy(c->body + c->blen, at, n);
    c->blen += n;
    return c->pause_body ? HPE_PAUSED : 0;
}


static int
on_message_complete(llhttp_t *p)
{
    ((ctx_t *)p->data)->dones++;
    return 0;
}


static llhttp_settings_t settings;


static void
setup(ctx_t *c)
{
    memset(c, 0, sizeof(*c));
    llhttp_settings_init(&settings);
    settings.on_headers_complete = on_headers_complete;
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;
    llhttp_init(&c->p, HTTP_RESPONSE, &settings);
    c->p.data = c;
}


/* Feeds <msg> in one buffer, resuming at error_pos after each pause, as
 * mx_upconn_continue() does (always once more, even with nothing left). */
static int
feed(ctx_t *c, const char *msg)
{
    size_t len = strlen(msg), pos = 0;
    int pauses = 0;
    for (;;) {
        llhttp_errno_t e = llhttp_execute(&c->p, msg + pos, len - pos);
        if (e == HPE_OK)
            return pauses;
        cr_assert_eq(e, HPE_PAUSED, "%s", llhttp_errno_name(e));
        pauses++;
        pos = (size_t)(llhttp_get_error_pos(&c->p) - msg);
        cr_assert_leq(pos, len);
        llhttp_resume(&c->p);
        if (pauses > 50)
            cr_assert_fail("no progress");
    }
}


Test(llhttp_pause, head_pause_then_the_body_parses_on)
{
    ctx_t c;
    setup(&c);
    c.pause_head = 1;
    feed(&c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    cr_assert_eq(c.heads, 1);
    cr_assert_eq(c.dones, 1);
    cr_assert_eq(c.blen, 5);
    cr_assert(memcmp(c.body, "hello", 5) == 0);
}


Test(llhttp_pause, body_pause_at_the_end_still_completes_the_message)
{
    ctx_t c;
    setup(&c);
    c.pause_body = 1;
    int pauses = feed(&c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    cr_assert_eq(pauses, 1);
    cr_assert_eq(c.dones, 1, "on_message_complete after the resume with nothing left");
    cr_assert_eq(c.blen, 5);
}


Test(llhttp_pause, chunked_body_pauses_per_chunk_and_loses_nothing)
{
    ctx_t c;
    setup(&c);
    c.pause_body = 1;
    int pauses = feed(&c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                          "3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n");
    cr_assert_eq(pauses, 2);
    cr_assert_eq(c.dones, 1);
    cr_assert_eq(c.blen, 7);
    cr_assert(memcmp(c.body, "abcdefg", 7) == 0);
}


Test(llhttp_pause, a_span_cut_by_the_buffer_end_restarts_empty_after_a_resume)
{
    ctx_t c;
    setup(&c);
    const char *head = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc";
    c.pause_body = 1;
    /* The first read ends inside the body: on_body("abc") pauses at the end. */
    cr_assert_eq(llhttp_execute(&c.p, head, strlen(head)), HPE_PAUSED);
    llhttp_resume(&c.p);
    /* mx_upconn_continue() parses what is left of the read: nothing. */
    c.pause_body = 0;
    cr_assert_eq(llhttp_execute(&c.p, head + strlen(head), 0), HPE_OK);
    cr_assert_eq(c.empty_bodies, 1, "the restarted span reports an empty body");
    cr_assert_eq(llhttp_execute(&c.p, "def", 3), HPE_OK);
    cr_assert_eq(c.dones, 1);
    cr_assert_eq(c.blen, 6);
    cr_assert(memcmp(c.body, "abcdef", 6) == 0);
}
