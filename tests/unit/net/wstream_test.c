/* Ordered writes (src/net/wstream.c) over a real socket pair, through the
 * ring's sends and through libuv alone: the peer must read every byte in
 * order, the drain callback must come once the kernel has taken them all,
 * and a full socket buffer must hand the rest to libuv without reordering. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/errors.h"
#include "net/ring.h"
#include "net/wstream.h"
#include "pair_loop.h"

#define BIG (4 * 1024 * 1024) /* far more than a unix socket buffers */

typedef struct {
    pair_loop_t p;
    mx_wstream_t ws;
    int step;
    int drains; /* on_drain with status 0 */
    int failed; /* the status of a failed write, 0 if none */
    size_t max_queued;
    char *expect; /* every byte written, in order */
    size_t nexpect;
    char *got; /* what the peer read */
    size_t ngot;
    void (*script)(void *t, int step); /* one call every 2 ms, until finish() */
} wt_t;

static wt_t T;

static void
on_drain(mx_wstream_t *ws, int status)
{
    wt_t *t = mx_container_of(ws, wt_t, ws);
    if (status == 0) {
        cr_assert_eq(ws->queued, 0u, "a drain with bytes queued");
        t->drains++;
    } else
        t->failed = status;
}

/* Writes <n> bytes of a pattern in <parts> buffers of one call. */
static void
put(wt_t *t, size_t n, unsigned parts)
{
    uv_buf_t bufs[8];
    size_t at = t->nexpect, per = n / parts;
    for (size_t i = 0; i < n; i++)
        t->expect[at + i] = (char)('a' + (at + i) % 26 + (at + i) / 9973 % 3);
    for (unsigned i = 0; i < parts; i++)
        bufs[i] =
            uv_buf_init(t->expect + at + i * per, (unsigned)(i + 1 == parts ? n - i * per : per));
    cr_assert_eq(mx_wstream_write(&t->ws, bufs, parts), MX_OK);
    t->nexpect += n;
    if (t->ws.queued > t->max_queued)
        t->max_queued = t->ws.queued;
}

static void
peer_drain(wt_t *t)
{
    for (;;) {
        ssize_t n = read(t->p.peer, t->got + t->ngot, BIG * 3 - t->ngot);
        if (n <= 0)
            return;
        t->ngot += (size_t)n;
    }
}

static void
finish(wt_t *t)
{
    mx_wstream_close(&t->ws);
    uv_close((uv_handle_t *)&t->p.pipe, NULL);
    uv_close((uv_handle_t *)&t->p.timer, NULL);
}

static void
on_step(uv_timer_t *tm)
{
    wt_t *t = tm->data;
    t->script(t, t->step++);
}

static void
run(bool use_ring, void (*script)(void *t, int step))
{
    wt_t *t = &T;
    free(t->expect);
    free(t->got);
    memset(t, 0, sizeof(*t));
    t->expect = malloc(BIG * 3);
    t->got = malloc(BIG * 3);
    t->script = script;
    signal(SIGPIPE, SIG_IGN); /* as moxy does: a closed peer is an EPIPE */
    pair_loop_open(&t->p, use_ring, t);
    fcntl(t->p.peer, F_SETFL, O_NONBLOCK);
    mx_wstream_init(&t->ws, (uv_stream_t *)&t->p.pipe, t->p.ring, on_drain);
    pair_loop_run(&t->p, on_step, 2);
    peer_drain(t);
    close(t->p.peer);
}

static void
check_all_in_order(wt_t *t, const char *how)
{
    cr_assert_eq(t->ngot, t->nexpect, "%s: the peer read %zu of %zu bytes", how, t->ngot,
                 t->nexpect);
    cr_assert(memcmp(t->got, t->expect, t->nexpect) == 0, "%s: bytes out of order", how);
    cr_assert_eq(t->failed, 0, "%s", how);
}

/* ---- small writes, several per pass ---- */
static void
sc_small(void *p, int step)
{
    wt_t *t = p;
    if (step < 3) {
        put(t, 100, 1);
        put(t, 1500, 3); /* a head and a body: join the same send */
        put(t, 5000, 2); /* past the block's room: a block of its own */
        return;
    }
    peer_drain(t);
    cr_assert_eq(t->ws.queued, 0u);
    finish(t);
}

Test(wstream, small_writes_arrive_in_order_and_drain, .timeout = 10)
{
    run(false, sc_small);
    check_all_in_order(&T, "libuv");
    /* uv_try_write took each at once: nothing was ever queued */
    cr_assert_eq(T.drains, 0);
    run(true, sc_small);
    check_all_in_order(&T, "ring");
    cr_assert_eq(T.drains, 3, "one drain per pass: %d", T.drains);
}

/* ---- more than the socket buffers: the rest waits in libuv ---- */
static void
sc_big(void *p, int step)
{
    wt_t *t = p;
    if (step == 0) {
        put(t, 1000, 1);
        put(t, BIG, 4);
        put(t, 3000, 1);
        cr_assert_gt(t->ws.queued, 0u);
        return;
    }
    if (step == 1) {
        cr_assert_gt(t->ws.queued, 0u, "the kernel took %d bytes", BIG);
        put(t, 2000, 2); /* behind what libuv holds */
        return;
    }
    peer_drain(t);
    if (t->ws.queued == 0 && t->drains > 0)
        finish(t);
}

Test(wstream, a_full_socket_buffer_hands_the_rest_to_libuv_in_order, .timeout = 20)
{
    run(false, sc_big);
    check_all_in_order(&T, "libuv");
    cr_assert_eq(T.drains, 1);
    run(true, sc_big);
    check_all_in_order(&T, "ring");
    cr_assert_eq(T.drains, 1);
}

/* ---- a close right after a write: the bytes still go, nothing calls back ---- */
static void
sc_close_unsent(void *p, int step)
{
    wt_t *t = p;
    (void)step;
    put(t, 700, 1);
    finish(t);
}

Test(wstream, a_close_sends_what_was_written_in_the_same_pass, .timeout = 10)
{
    run(false, sc_close_unsent);
    check_all_in_order(&T, "libuv");
    run(true, sc_close_unsent);
    check_all_in_order(&T, "ring");
    cr_assert_eq(T.drains, 0, "a callback after the close");
}

/* ---- the peer is gone: the write fails, once, and stays failed ---- */
static void
sc_peer_gone(void *p, int step)
{
    wt_t *t = p;
    if (step == 0) {
        close(t->p.peer);
        t->p.peer = -1;
        return;
    }
    if (step == 1) {
        uv_buf_t b = uv_buf_init("xyz", 3);
        int rc = mx_wstream_write(&t->ws, &b, 1);
        if (rc < 0)
            t->failed = rc; /* libuv's try_write saw it at once */
        return;
    }
    if (t->failed != 0) {
        uv_buf_t b = uv_buf_init("xyz", 3);
        cr_assert_eq(mx_wstream_write(&t->ws, &b, 1), t->failed, "a write after the failure");
        finish(t);
    }
}

Test(wstream, a_write_to_a_closed_peer_fails, .timeout = 10)
{
    run(false, sc_peer_gone);
    cr_assert_eq(T.failed, UV_EPIPE, "libuv: %d", T.failed);
    run(true, sc_peer_gone);
    cr_assert_eq(T.failed, UV_EPIPE, "ring: %d", T.failed);
}

/* ---- a large write goes out at once, uncopied, and takes small ones with it ---- */
static void
sc_large(void *p, int step)
{
    wt_t *t = p;
    if (step == 0) {
        put(t, 20000, 2);
        cr_assert_eq(t->ws.queued, 0u, "a large write waited for the pass's end");
        put(t, 300, 1);
        cr_assert_eq(t->ws.queued, t->ws.ring != NULL ? 300u : 0u);
        put(t, 30000, 3); /* with the 300 not yet submitted: both go now */
        cr_assert_eq(t->ws.queued, 0u, "the small write was not taken along");
        return;
    }
    peer_drain(t);
    finish(t);
}

Test(wstream, a_large_write_goes_out_at_once_with_what_waits, .timeout = 10)
{
    run(false, sc_large);
    check_all_in_order(&T, "libuv");
    run(true, sc_large);
    check_all_in_order(&T, "ring");
    cr_assert_eq(T.drains, 0, "nothing was ever queued");
}
