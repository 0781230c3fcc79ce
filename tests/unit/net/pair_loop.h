/* The ring tests' harness: a loop (with an io_uring or libuv alone), a
 * uv_pipe on one end of a unix socket pair, and a timer that steps a script
 * every <ms>. pair_loop_run() runs until the script closes the pipe and the
 * timer, then closes the loop. */
#ifndef MX_TEST_PAIR_LOOP_H
#define MX_TEST_PAIR_LOOP_H

#include <criterion/criterion.h>
#include <stdbool.h>
#include <sys/socket.h>

#include "net/ring.h"

typedef struct {
    uv_loop_t loop;
    mx_ring_t *ring;
    uv_pipe_t pipe;
    uv_timer_t timer;
    int peer; /* the test's end */
} pair_loop_t;

/* Returns the test's end of the pair; pipe and timer carry <data>. */
static inline void
pair_loop_open(pair_loop_t *p, bool use_ring, void *data)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    p->peer = sv[1];
    cr_assert_eq(uv_loop_init(&p->loop), 0);
    p->ring = NULL;
    if (use_ring)
        cr_assert_eq(mx_ring_open(&p->loop, &p->ring), 0, "io_uring refused by this kernel");
    cr_assert_eq(uv_pipe_init(&p->loop, &p->pipe, 0), 0);
    cr_assert_eq(uv_pipe_open(&p->pipe, sv[0]), 0);
    p->pipe.data = data;
    uv_timer_init(&p->loop, &p->timer);
    p->timer.data = data;
}

static inline void
pair_loop_run(pair_loop_t *p, uv_timer_cb step, uint64_t ms)
{
    uv_timer_start(&p->timer, step, ms, ms);
    if (p->ring != NULL)
        mx_ring_run(p->ring);
    else
        uv_run(&p->loop, UV_RUN_DEFAULT);
    uv_run(&p->loop, UV_RUN_NOWAIT);
    mx_ring_close(p->ring);
    cr_assert_eq(uv_loop_close(&p->loop), 0);
}

#endif
