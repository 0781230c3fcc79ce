/* A worker thread: its own uv loop, accept handles on the shared listening
 * sockets, an upstream keepalive pool and a free list of read buffers. Nothing
 * here is touched by another thread except through <async>. */
#ifndef MX_WORKER_WORKER_H
#define MX_WORKER_WORKER_H

#include <uv.h>

#include "conf/conf.h"
#include "core/list.h"
#include "core/timeq.h"
#include "core/types.h"
#include "worker/gen.h"

#define MX_RBUF_SIZE (32 * 1024)

typedef struct {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    mx_worker_t *w;
    size_t index; /* running listener k: its service comes from the generation */
    bool is_unix;
} mx_accept_t;

struct mx_worker_s {
    int id; /* 1.. */
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t async;
    mx_server_t *server;
    mx_gen_t *gen;  /* the current generation: new requests run on it */
    mx_list_t gens; /* every generation not yet retired (mx_gen_t.node) */
    _Atomic(mx_genconf_t *) next_gc; /* a reload from the main thread, taken in on_async */
    atomic_ullong gen_seq;           /* the generation this worker serves (main reads) */
    atomic_ullong gen_failed;        /* the last generation this worker could not build */
    uv_async_t *notify;              /* the main thread's: a reload was taken */

    mx_accept_t *accepts;
    size_t naccepts;
    mx_list_t conns; /* downstream connections (mx_h1conn_t.node) */
    size_t nconns;
    mx_pool_t *pool;
    struct mx_ring_s *ring; /* client and upstream reads (net/ring.h); NULL: libuv reads */

    void **free_bufs; /* MX_RBUF_SIZE blocks */
    size_t nfree;
    void *free_sessions[16]; /* session blocks (session.c): no malloc per request */
    size_t freed_bytes;      /* read buffers given back to malloc since the last trim */
    mx_timeq_entry_t trim_tq; /* a malloc_trim() pending after a burst */
    int nfree_sessions;
    size_t cap_free;

    uint64_t req_seq;
    uint64_t conn_seq;
    volatile int stop_accepting; /* set by the main thread, then async */
    volatile int force_stop;
    volatile int linger_idle_ms; /* draining after an upgrade: idle keepalive conns wait this
                                    long for one more request (answered with close) */
    bool draining; /* loop side: listeners closed, idle conns closing */
    bool async_closed;
    uint64_t now_ms; /* loop time cache */
    int64_t epoch_ms; /* wall clock minus loop time: moxy.now() is epoch seconds, cached */
    /* Connection timeouts (src/worker/timers.c): one queue, one loop timer. */
    mx_timeq_t conn_tq;
    uv_timer_t conn_timer;   /* unref'd: connections keep the loop alive, not it */
    uint64_t conn_timer_due; /* when it fires; MX_TIMEQ_NONE while stopped */
    bool conn_timer_ready;
};

/* Starts the worker thread for config <gc> (its first generation), accepting
 * on <fds> (listening sockets owned by the main thread, in <gc>'s
 * service/listener order; each worker dups them). <notify> is sent when the
 * worker has taken a reload. */
int mx_worker_start(mx_worker_t *w, mx_server_t *server, int id, const int *fds,
                    mx_genconf_t *gc, uv_async_t *notify);
/* From the main thread: build a generation from <gc> and serve new requests
 * with it (old ones finish on theirs). Takes a reference on <gc>. */
void mx_worker_reload(mx_worker_t *w, mx_genconf_t *gc);
/* From the main thread: stop accepting and exit once idle (graceful), or
 * close everything now (<force>). */
void mx_worker_stop(mx_worker_t *w, bool force);
void mx_worker_join(mx_worker_t *w);

extern __thread mx_worker_t *mx_current_worker;

void *mx_worker_buf_get(mx_worker_t *w);
void mx_worker_buf_put(mx_worker_t *w, void *buf);
/* Arms <e> to call <cb> in <ms> (0 counts as 1) on the worker's timeout queue;
 * mx_timeq_cancel(e) disarms it. */
void mx_worker_timeout(mx_worker_t *w, mx_timeq_entry_t *e, uint64_t ms, mx_timeq_cb cb);
/* The worker is exiting: closes the timeout queue's loop timer. */
void mx_worker_timers_close(mx_worker_t *w);
/* Called when a downstream connection closes; ends the loop when draining
 * and nothing is left. */
void mx_worker_conn_closed(mx_worker_t *w);

#endif
