/* Worker threads: one uv loop each, accepting on dups of the main thread's
 * listening sockets. The main thread talks to a worker only through
 * <stop_accepting>/<force_stop> and uv_async_send. */
#include "worker/worker.h"

#include <malloc.h>

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/errors.h"
#include "core/log.h"
#include "lua/task.h"
#include "lua/vm.h"
#include "net/ring.h"
#include "proxy/session.h"

#define FREE_BUFS_MAX 64

__thread mx_worker_t *mx_current_worker;

static void worker_main(void *arg);
static void on_async(uv_async_t *a);
static void on_accept_close(uv_handle_t *h);


int
mx_worker_start(mx_worker_t *w, mx_server_t *server, int id, const int *fds, mx_genconf_t *gc,
                uv_async_t *notify)
{
    const mx_conf_t *conf = gc->conf;
    memset(w, 0, sizeof(*w));
    mx_timeq_entry_init(&w->trim_tq);
    w->id = id;
    w->server = server;
    w->notify = notify;
    mx_list_init(&w->conns);
    mx_list_init(&w->gens);
    atomic_init(&w->next_gc, NULL);
    atomic_init(&w->gen_seq, gc->seq);
    atomic_init(&w->gen_failed, 0);
    int rc = uv_loop_init(&w->loop);
    if (rc < 0)
        return rc;
    uv_async_init(&w->loop, &w->async, on_async);
    w->async.data = w;
    char err[1024];
    if (mx_gen_new(w, gc, NULL, &w->gen, err, sizeof(err)) != MX_OK) {
        mx_log_error("worker %d: %s", id, err);
        return MX_ECONF;
    }
    w->pool = mx_pool_new(w, (size_t)conf->upstream_keepalive_pool_size);

    size_t n = 0;
    for (size_t i = 0; i < conf->nservices; i++)
        n += conf->services[i].nlisteners;
    w->accepts = mx_calloc(n ? n : 1, sizeof(mx_accept_t));
    size_t k = 0;
    for (size_t i = 0; i < conf->nservices; i++) {
        const mx_conf_service_t *svc = &conf->services[i];
        for (size_t j = 0; j < svc->nlisteners; j++, k++) {
            mx_accept_t *a = &w->accepts[k];
            const mx_conf_listener_t *lc = &svc->listeners[j];
            a->w = w;
            a->index = k;
            a->is_unix = lc->addr.kind == MX_ADDR_UNIX;
            int fd = dup(fds[k]);
            if (lc->addr.kind == MX_ADDR_UNIX) {
                uv_pipe_init(&w->loop, &a->h.pipe, 0);
                rc = uv_pipe_open(&a->h.pipe, fd);
            } else {
                uv_tcp_init(&w->loop, &a->h.tcp);
                rc = uv_tcp_open(&a->h.tcp, fd);
            }
            a->h.handle.data = a;
            if (rc == 0)
                rc = uv_listen(&a->h.stream, lc->backlog > 0 ? lc->backlog : 511, mx_h1_on_accept);
            if (rc < 0) {
                mx_log_error("worker %d cannot accept on %s (%s)", id, lc->addr.text,
                             uv_err_name(rc));
                return rc;
            }
        }
    }
    w->naccepts = k;
    return uv_thread_create(&w->thread, worker_main, w);
}


/* Until nothing is active: through the ring when the worker has one. */
static void
run_loop(mx_worker_t *w)
{
    if (w->ring != NULL)
        mx_ring_run(w->ring);
    else
        uv_run(&w->loop, UV_RUN_DEFAULT);
}


static void
worker_main(void *arg)
{
    mx_worker_t *w = arg;
    mx_log_worker = w->id;
    mx_current_worker = w;
    mx_current_vm = w->gen->vm;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uv_update_time(&w->loop);
    w->epoch_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 - (int64_t)uv_now(&w->loop);
    /* A reload keeps io_uring at its start value (note_fixed in main.c). */
    if (w->gen->conf->io_uring) {
        int rc = mx_ring_open(&w->loop, &w->ring);
        if (rc < 0)
            mx_log_warn("worker %d: io_uring unavailable (%s), reading through epoll", w->id,
                        uv_err_name(rc));
    }
    mx_log_debug("worker %d running (%s reads)", w->id, w->ring != NULL ? "io_uring" : "epoll");
    run_loop(w);
    /* Every connection is closed: the current generation retires too. */
    mx_gen_t *g = w->gen;
    w->gen = NULL;
    mx_gen_unref(g);
    run_loop(w);
    if (!mx_list_empty(&w->gens))
        mx_log_warn("worker %d stopped with a generation still referenced", w->id);
    mx_genconf_unref(atomic_exchange(&w->next_gc, NULL));
    /* Everything is closed: free what the loop no longer references. */
    uv_run(&w->loop, UV_RUN_NOWAIT);
    mx_ring_close(w->ring);
    w->ring = NULL;
    if (uv_loop_close(&w->loop) != 0)
        mx_log_warn("worker %d loop closed with handles open", w->id);
    mx_pool_free(w->pool);
    w->pool = NULL;
    for (size_t i = 0; i < w->nfree; i++)
        mx_free(w->free_bufs[i]);
    mx_free(w->free_bufs);
    while (w->nfree_sessions > 0)
        mx_free(w->free_sessions[--w->nfree_sessions]);
    mx_free(w->accepts);
    mx_log_info("worker %d stopped after %llu requests", w->id, (unsigned long long)w->req_seq);
}


void
mx_worker_reload(mx_worker_t *w, mx_genconf_t *gc)
{
    mx_genconf_unref(atomic_exchange(&w->next_gc, mx_genconf_ref(gc)));
    uv_async_send(&w->async);
}


void
mx_worker_stop(mx_worker_t *w, bool force)
{
    w->stop_accepting = 1;
    if (force)
        w->force_stop = 1;
    uv_async_send(&w->async);
}


void
mx_worker_join(mx_worker_t *w)
{
    uv_thread_join(&w->thread);
}


static void
maybe_exit(mx_worker_t *w)
{
    /* A timer function or a request's logging still waiting keeps the worker (until forced). */
    if (!w->draining || w->nconns > 0 || w->async_closed || mx_session_orphans_pending())
        return;
    for (mx_list_t *n = w->gens.next; n != &w->gens; n = n->next)
        if (mx_lua_tasks_running(mx_container_of(n, mx_gen_t, node)->vm))
            return;
    mx_pool_close_idle(w->pool);
    mx_h1_worker_exit(w);
    mx_worker_timers_close(w);
    w->async_closed = 1;
    uv_close((uv_handle_t *)&w->async, NULL);
}


/* A reload: the new generation becomes current; the old one lives on for
 * the requests and connections that still hold it. */
static void
take_reload(mx_worker_t *w, mx_genconf_t *gc)
{
    char err[1024];
    mx_gen_t *g;
    if (mx_gen_new(w, gc, w->gen, &g, err, sizeof(err)) != MX_OK) {
        mx_log_error("reload: worker %d keeps generation %llu: %s", w->id,
                     (unsigned long long)w->gen->seq, err);
        atomic_store(&w->gen_failed, gc->seq);
        uv_async_send(w->notify);
        return;
    }
    mx_gen_t *old = w->gen;
    w->gen = g;
    mx_current_vm = g->vm;
    mx_log_debug("worker %d serves generation %llu", w->id, (unsigned long long)g->seq);
    /* Connections between requests move now (the client cannot tell: it is
     * as if at their next request), so the old generation retires as soon
     * as its requests in flight end. Busy ones move at their next request
     * (mx_session_new). */
    for (mx_list_t *n = w->conns.next; n != &w->conns; n = n->next) {
        mx_h1conn_t *c = mx_container_of(n, mx_h1conn_t, node);
        if (c->s == NULL && !c->closing)
            mx_gen_conn_adopt(c);
    }
    mx_gen_unref(old);
    atomic_store(&w->gen_seq, g->seq);
    uv_async_send(w->notify);
}


static void
on_async(uv_async_t *a)
{
    mx_worker_t *w = a->data;
    if (w->stop_accepting && !w->draining) {
        w->draining = 1;
        for (size_t i = 0; i < w->naccepts; i++)
            uv_close(&w->accepts[i].h.handle, on_accept_close);
        /* Idle keepalive connections go now; busy ones after their response.
         * After an upgrade they linger a moment: a client may be sending its
         * next request right now, and closing under it would fail that
         * request; it gets its answer with Connection: close instead. */
        mx_list_t *n = w->conns.next;
        while (n != &w->conns) {
            mx_h1conn_t *c = mx_container_of(n, mx_h1conn_t, node);
            n = n->next;
            if (c->s == NULL && w->linger_idle_ms > 0)
                mx_h1_set_timeout(c, (uint64_t)w->linger_idle_ms);
            else if (c->s == NULL)
                mx_h1_close(c);
        }
        mx_pool_close_idle(w->pool);
        mx_lua_tcp_pool_close(); /* idle moxy.tcp connections would keep the loop alive */
        /* premature = true, then closed; shutdown() runs */
        for (mx_list_t *n = w->gens.next; n != &w->gens; n = n->next)
            mx_vm_timers_retire(mx_container_of(n, mx_gen_t, node)->vm);
    }
    mx_genconf_t *gc = atomic_exchange(&w->next_gc, NULL);
    if (gc != NULL) {
        if (!w->draining)
            take_reload(w, gc);
        mx_genconf_unref(gc);
    }
    if (w->force_stop) {
        /* timer functions still waiting: stop them; logging that still waits after its
         * response: abort it */
        for (mx_list_t *n = w->gens.next; n != &w->gens; n = n->next)
            mx_lua_tasks_cancel(mx_container_of(n, mx_gen_t, node)->vm);
        mx_session_orphans_abort();
        mx_list_t *n = w->conns.next;
        while (n != &w->conns) {
            mx_h1conn_t *c = mx_container_of(n, mx_h1conn_t, node);
            n = n->next;
            mx_h1_close(c);
        }
    }
    maybe_exit(w);
}


static void
on_accept_close(uv_handle_t *h)
{
    (void)h;
}


void
mx_worker_conn_closed(mx_worker_t *w)
{
    maybe_exit(w);
}


void *
mx_worker_buf_get(mx_worker_t *w)
{
    if (w->nfree > 0)
        return w->free_bufs[--w->nfree];
    return mx_alloc(MX_RBUF_SIZE);
}


/* A second after a burst freed many read buffers, hand the free pages back to the
 * kernel: glibc keeps them otherwise (long-lived connection structs sit between
 * them, so its heaps cannot shrink from the top), and RSS would stay at the burst's
 * peak. Steady load reuses the kept buffers and never gets here. */
#define TRIM_AFTER_BYTES (8u << 20)

static void
on_trim(mx_timeq_entry_t *e)
{
    mx_worker_t *w = mx_container_of(e, mx_worker_t, trim_tq);
    w->freed_bytes = 0;
    malloc_trim(0);
}


void
mx_worker_buf_put(mx_worker_t *w, void *buf)
{
    if (w->nfree == FREE_BUFS_MAX) {
        mx_free(buf);
        w->freed_bytes += MX_RBUF_SIZE;
        if (w->freed_bytes >= TRIM_AFTER_BYTES && !mx_timeq_armed(&w->trim_tq))
            mx_worker_timeout(w, &w->trim_tq, 1000, on_trim);
        return;
    }
    if (w->nfree == w->cap_free) {
        w->cap_free = w->cap_free ? w->cap_free * 2 : 16;
        w->free_bufs = mx_realloc(w->free_bufs, w->cap_free * sizeof(void *));
    }
    w->free_bufs[w->nfree++] = buf;
}
