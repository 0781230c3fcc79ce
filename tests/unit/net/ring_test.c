/* The ring's reads (src/net/ring.c) against libuv's own over a real socket
 * pair: the same scripts run both ways and must see the same bytes, in the
 * same order, with EOF last. A script is a list of steps, one every 5 ms of
 * a loop timer; the test's end of the pair writes, the moxy end reads. */
#include <criterion/criterion.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net/ring.h"
#include "pair_loop.h"

typedef struct tc tc_t;
typedef void (*step_fn)(tc_t *t);

struct tc {
    pair_loop_t p;
    mx_rd_t *rd;
    const step_fn *steps;
    int step;
    size_t chunk;     /* the size of the buffers alloc hands out */
    char store[4096]; /* what alloc hands out slices of */
    char got[256];    /* every byte delivered, in order */
    size_t ngot;
    int ncalls;            /* read callbacks with bytes */
    int eof;               /* read callbacks with UV_EOF */
    int err;               /* the last error other than EOF */
    bool stop_after_first; /* the read callback stops after its first bytes */
    bool closed;
    bool peer_saw_eof;
};

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b);

static void
on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    tc_t *t = h->data;
    (void)hint;
    *b = uv_buf_init(t->store, (unsigned)t->chunk);
}

static void
start(tc_t *t)
{
    cr_assert_eq(
        mx_ring_read_start(t->p.ring, &t->rd, (uv_stream_t *)&t->p.pipe, on_alloc, on_read), 0);
}

static void
stop(tc_t *t)
{
    mx_ring_read_stop(t->p.ring, &t->rd, (uv_stream_t *)&t->p.pipe);
}

static void
on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    tc_t *t = s->data;
    if (n > 0) {
        cr_assert(t->ngot + (size_t)n <= sizeof(t->got));
        cr_assert_eq(t->eof, 0, "bytes after EOF");
        memcpy(t->got + t->ngot, b->base, (size_t)n);
        t->ngot += (size_t)n;
        if (t->ncalls++ == 0 && t->stop_after_first)
            stop(t);
    } else if (n == UV_EOF) {
        t->eof++;
        stop(t);
    } else if (n < 0) {
        t->err = (int)n;
        stop(t);
    }
}

static void
peer_write(tc_t *t, const char *s)
{
    cr_assert_eq(write(t->p.peer, s, strlen(s)), (ssize_t)strlen(s));
}

static void
close_moxy_end(tc_t *t)
{
    if (t->closed)
        return;
    t->closed = true;
    mx_ring_read_close(t->p.ring, &t->rd);
    uv_close((uv_handle_t *)&t->p.pipe, NULL);
}

static void
on_step(uv_timer_t *tm)
{
    tc_t *t = tm->data;
    step_fn f = t->steps[t->step];
    if (f == NULL) {
        close_moxy_end(t);
        uv_close((uv_handle_t *)&t->p.timer, NULL);
        return;
    }
    t->step++;
    f(t);
}

/* Runs <steps> with the ring (use_ring) or with libuv alone; t is filled. */
static void
run(tc_t *t, bool use_ring, const step_fn *steps, size_t chunk, bool stop_after_first)
{
    memset(t, 0, sizeof(*t));
    t->stop_after_first = stop_after_first;
    t->steps = steps;
    t->chunk = chunk;
    pair_loop_open(&t->p, use_ring, t);
    pair_loop_run(&t->p, on_step, 5);
    close(t->p.peer);
}

/* ---- steps ---- */
static void
s_start(tc_t *t)
{
    start(t);
}
static void
s_stop(tc_t *t)
{
    stop(t);
}
static void
s_hello(tc_t *t)
{
    peer_write(t, "hello");
}
static void
s_world(tc_t *t)
{
    peer_write(t, " world");
}
static void
s_abcdefgh(tc_t *t)
{
    peer_write(t, "abcdefgh");
}
static void
s_more(tc_t *t)
{
    peer_write(t, "ijk");
}
static void
s_shut(tc_t *t)
{
    shutdown(t->p.peer, SHUT_WR);
}
static void
s_nothing(tc_t *t)
{
    (void)t;
}
static void
s_check_still_abc(tc_t *t)
{
    cr_assert_eq(t->ngot, 3, "bytes delivered while stopped");
    cr_assert_eq(t->eof, 0, "EOF delivered while stopped");
}
static void
s_close(tc_t *t)
{
    close_moxy_end(t);
}
static void
s_peer_sees_close(tc_t *t)
{
    struct pollfd p = {.fd = t->p.peer, .events = POLLIN};
    char c;
    t->peer_saw_eof = poll(&p, 1, 0) == 1 && read(t->p.peer, &c, 1) == 0;
}

static void
both(const step_fn *steps, size_t chunk, bool stop_after_first,
     void (*check)(tc_t *t, const char *how))
{
    static tc_t t;
    run(&t, false, steps, chunk, stop_after_first);
    check(&t, "libuv");
    run(&t, true, steps, chunk, stop_after_first);
    check(&t, "ring");
}


static void
check_text(tc_t *t, const char *how, const char *text)
{
    size_t n = strlen(text);
    cr_assert_eq(t->ngot, n, "%s: %zu bytes", how, t->ngot);
    cr_assert_arr_eq(t->got, text, n, "%s", how);
    cr_assert_eq(t->eof, 1, "%s: EOF %d times", how, t->eof);
    cr_assert_eq(t->err, 0, "%s", how);
}

static void
check_hello_world(tc_t *t, const char *how)
{
    check_text(t, how, "hello world");
}

Test(ring, reads_in_order_then_eof, .timeout = 10)
{
    static const step_fn steps[] = {s_start, s_hello, s_world, s_shut, s_nothing, NULL};
    both(steps, 4096, false, check_hello_world);
}


static void
check_split(tc_t *t, const char *how)
{
    cr_assert_eq(t->ngot, 8, "%s", how);
    cr_assert_arr_eq(t->got, "abcdefgh", 8, "%s", how);
    cr_assert_eq(t->ncalls, 3, "%s: %d callbacks for 8 bytes in 3-byte buffers", how, t->ncalls);
    cr_assert_eq(t->eof, 1, "%s", how);
}

Test(ring, a_read_larger_than_the_buffer_is_split_across_callbacks, .timeout = 10)
{
    static const step_fn steps[] = {s_start, s_abcdefgh, s_shut, s_nothing, NULL};
    both(steps, 3, false, check_split);
}


static void
check_kept(tc_t *t, const char *how)
{
    check_text(t, how, "abcdefghijk");
}

/* The callback stops after its first 3 bytes: the other 5 of that read, the 3
 * written while stopped and the EOF all wait for the next start, in order. */
Test(ring, a_stop_keeps_what_follows_until_the_next_start, .timeout = 10)
{
    static const step_fn steps[] = {s_start, s_abcdefgh, s_more,    s_shut, s_check_still_abc,
                                    s_start, s_nothing,  s_nothing, NULL};
    both(steps, 3, true, check_kept);
}


/* A stop and a start in the same step (the same loop pass). */
static void
s_stop_start(tc_t *t)
{
    stop(t);
    start(t);
}

Test(ring, a_stop_and_a_start_in_one_pass_lose_nothing, .timeout = 10)
{
    static const step_fn steps[] = {s_start, s_hello, s_stop_start, s_world, s_stop,
                                    s_start, s_shut,  s_nothing,    NULL};
    both(steps, 4096, false, check_hello_world);
}


static void
check_closed(tc_t *t, const char *how)
{
    cr_assert(t->peer_saw_eof, "%s: the peer did not see the close within 5 ms", how);
    cr_assert_eq(t->ngot, 5, "%s", how);
}

/* Closing a reading stream closes the socket at once: the receive in flight
 * does not keep it open. */
Test(ring, closing_a_reading_stream_closes_the_socket, .timeout = 10)
{
    static const step_fn steps[] = {s_start, s_hello, s_close, s_peer_sees_close, NULL};
    both(steps, 4096, false, check_closed);
}


static void
check_idle_stop(tc_t *t, const char *how)
{
    cr_assert_eq(t->ngot, 0, "%s", how);
    cr_assert_eq(t->eof, 0, "%s", how);
}

/* A stream that stopped reading, then closed with input waiting: nothing is
 * delivered after the stop, and nothing leaks (ASan build). */
Test(ring, a_stopped_stream_closes_with_input_waiting, .timeout = 10)
{
    static const step_fn steps[] = {s_start, s_stop, s_hello, s_shut, s_nothing, s_close, NULL};
    both(steps, 4096, false, check_idle_stop);
}


/* ---- many readers: held buffers, then copies ---- */
#define NSTREAMS 120 /* more than the ring's 128 buffers x 3/4 may hold */

typedef struct {
    uv_pipe_t pipe;
    mx_rd_t *rd;
    int peer;
    size_t chunk;
    char store[64];
    char got[64];
    size_t ngot;
} ms_t;

static struct {
    uv_loop_t loop;
    mx_ring_t *ring;
    uv_timer_t timer;
    ms_t s[NSTREAMS + 1]; /* the last one is never stopped */
    int step;
} M;

static void
ms_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    ms_t *s = h->data;
    (void)hint;
    *b = uv_buf_init(s->store, (unsigned)s->chunk);
}

static void
ms_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    ms_t *s = st->data;
    if (n <= 0)
        return;
    memcpy(s->got + s->ngot, b->base, (size_t)n);
    s->ngot += (size_t)n;
    if (s != &M.s[NSTREAMS])
        mx_ring_read_stop(M.ring, &s->rd, st); /* one byte at a time, then stopped */
}

static void
ms_step(uv_timer_t *tm)
{
    (void)tm;
    switch (M.step++) {
    case 0:
        for (int i = 0; i < NSTREAMS; i++)
            cr_assert_eq(write(M.s[i].peer, "abcdefgh", 8), 8);
        break;
    case 1:
        /* Every stopped reader got its first byte and keeps 7; the ring still
         * has buffers for a reader that is not stopped. */
        for (int i = 0; i < NSTREAMS; i++)
            cr_assert_eq(M.s[i].ngot, 1, "stream %d got %zu bytes", i, M.s[i].ngot);
        cr_assert_eq(write(M.s[NSTREAMS].peer, "xyz", 3), 3);
        break;
    case 2:
        cr_assert_eq(M.s[NSTREAMS].ngot, 3, "a reading stream starved");
        for (int i = 0; i < NSTREAMS; i++) {
            M.s[i].chunk = sizeof(M.s[i].store);
            cr_assert_eq(mx_ring_read_start(M.ring, &M.s[i].rd, (uv_stream_t *)&M.s[i].pipe,
                                            ms_alloc, ms_read),
                         0);
        }
        break;
    case 3:
    case 4:
    case 5:
    case 6:
    case 7:
    case 8:
    case 9: /* each start delivers one kept chunk (the reader stops again) */
        for (int i = 0; i < NSTREAMS; i++)
            mx_ring_read_start(M.ring, &M.s[i].rd, (uv_stream_t *)&M.s[i].pipe, ms_alloc, ms_read);
        break;
    default:
        for (int i = 0; i <= NSTREAMS; i++) {
            mx_ring_read_close(M.ring, &M.s[i].rd);
            uv_close((uv_handle_t *)&M.s[i].pipe, NULL);
        }
        uv_close((uv_handle_t *)&M.timer, NULL);
    }
}

Test(ring, readers_that_stay_stopped_keep_their_bytes_and_starve_no_one, .timeout = 10)
{
    memset(&M, 0, sizeof(M));
    cr_assert_eq(uv_loop_init(&M.loop), 0);
    cr_assert_eq(mx_ring_open(&M.loop, &M.ring), 0, "io_uring refused by this kernel");
    for (int i = 0; i <= NSTREAMS; i++) {
        int sv[2];
        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
        ms_t *s = &M.s[i];
        s->peer = sv[1];
        s->chunk = i == NSTREAMS ? sizeof(s->store) : 1;
        uv_pipe_init(&M.loop, &s->pipe, 0);
        uv_pipe_open(&s->pipe, sv[0]);
        s->pipe.data = s;
        cr_assert_eq(mx_ring_read_start(M.ring, &s->rd, (uv_stream_t *)&s->pipe, ms_alloc, ms_read),
                     0);
    }
    uv_timer_init(&M.loop, &M.timer);
    uv_timer_start(&M.timer, ms_step, 5, 5);
    mx_ring_run(M.ring);
    uv_run(&M.loop, UV_RUN_NOWAIT);
    mx_ring_close(M.ring);
    cr_assert_eq(uv_loop_close(&M.loop), 0);
    for (int i = 0; i < NSTREAMS; i++) {
        cr_assert_eq(M.s[i].ngot, 8, "stream %d: %zu bytes", i, M.s[i].ngot);
        cr_assert_arr_eq(M.s[i].got, "abcdefgh", 8, "stream %d", i);
        close(M.s[i].peer);
    }
    cr_assert_arr_eq(M.s[NSTREAMS].got, "xyz", 3);
    close(M.s[NSTREAMS].peer);
}
