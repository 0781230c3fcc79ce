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

#define MX_RBUF_SIZE (32 * 1024)

typedef struct {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    mx_worker_t *w;
    const mx_conf_service_t *svc;
    const mx_conf_listener_t *lc;
} mx_accept_t;

struct mx_worker_s {
    int id; /* 1.. */
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t async;
    mx_server_t *server;
    const mx_conf_t *conf;

    mx_accept_t *accepts;
    size_t naccepts;
    mx_list_t conns; /* downstream connections (mx_h1conn_t.node) */
    size_t nconns;
    mx_pool_t *pool;
    struct mx_vm_s *vm; /* NULL when no service has a script */

    void **free_bufs; /* MX_RBUF_SIZE blocks */
    size_t nfree;
    size_t cap_free;

    uint64_t req_seq;
    uint64_t conn_seq;
    volatile int stop_accepting; /* set by the main thread, then async */
    volatile int force_stop;
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

/* Starts the worker thread for <server>'s config, accepting on <fds>
 * (listening sockets owned by the main thread; each worker dups them). */
int mx_worker_start(mx_worker_t *w, mx_server_t *server, int id, const int *fds);
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
