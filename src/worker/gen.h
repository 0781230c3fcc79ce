/* Config generations: what a reload (SIGHUP) swaps.
 *
 * The main thread loads and checks a config, then wraps it in an
 * mx_genconf_t shared by every worker (atomic refcount: it is freed by
 * whichever thread drops the last reference). Each worker builds from it an
 * mx_gen_t: the config plus the worker's own LuaJIT VM and balancer cursors.
 * A worker has one current generation, which new requests take; a
 * downstream connection and each session hold a reference to the generation
 * they run on, so after a reload in-flight requests (yielded in moxy.sleep,
 * waiting on an upstream) finish on the old one. A keepalive connection
 * between requests moves to the new generation at the reload, a busy one
 * when its next request starts.
 * The last reference gone, the generation retires from the loop: its timers
 * fire with premature = true, each script's shutdown() runs, the VM closes. */
#ifndef MX_WORKER_GEN_H
#define MX_WORKER_GEN_H

#include <stdatomic.h>
#include <uv.h>

#include "conf/conf.h"
#include "core/list.h"
#include "core/types.h"

/* A checked config, shared read-only by the workers' generations. */
typedef struct mx_genconf_s {
    atomic_int refs;
    uint64_t seq;         /* 1 at start, +1 per accepted reload */
    mx_conf_t *conf;      /* owned, with the groups reference in conf->groups */
    size_t *listener_svc; /* running listener k -> index in conf->services */
    size_t nlisteners;
} mx_genconf_t;

/* Takes ownership of <conf> and <listener_svc> (mx_alloc'ed, <n> entries). One
 * reference, the caller's. */
mx_genconf_t *mx_genconf_new(mx_conf_t *conf, uint64_t seq, size_t *listener_svc, size_t n);
mx_genconf_t *mx_genconf_ref(mx_genconf_t *gc);
/* Any thread; frees the config with the last reference. */
void mx_genconf_unref(mx_genconf_t *gc);

/* One worker's generation. Touched only by its worker thread. */
struct mx_gen_s {
    int refs;
    uint64_t seq;
    mx_worker_t *w;
    mx_genconf_t *gc;
    const mx_conf_t *conf; /* gc->conf */
    struct mx_vm_s *vm;    /* NULL when no service has a script */
    size_t *rr;            /* round-robin cursor per upstream group */
    uv_timer_t reap;       /* retires the generation from the loop once unreferenced */
    mx_list_t node;        /* in w->gens */
    uint64_t deadline_ms;  /* retiring: timer functions still waiting are cancelled then */
    unsigned reaping : 1;
    unsigned retired : 1; /* timers fired premature, shutdown() ran */
};

/* Builds worker <w>'s generation from <gc> (takes a reference on it): loads
 * the scripts in a new VM, whose init(config, previous) gets what <prev>'s
 * scripts hand over (prev may be NULL). Returns MX_OK with <*out> holding one
 * reference (the worker's), or MX_ECONF with "file:line: message" in <err>.
 * Call on the worker's thread, or before it starts. */
int mx_gen_new(mx_worker_t *w, mx_genconf_t *gc, mx_gen_t *prev, mx_gen_t **out, char *err,
               size_t errlen);
mx_gen_t *mx_gen_ref(mx_gen_t *g);
/* Drops a reference; at zero the generation retires from the loop (never
 * inside this call, so no Lua of its VM is on the stack when it closes). */
void mx_gen_unref(mx_gen_t *g);
/* The service of <g>'s config that serves running listener <listener>. */
const mx_conf_service_t *mx_gen_service(const mx_gen_t *g, size_t listener);
/* Moves connection <c> (between requests) to its worker's current
 * generation; its s.conn_ctx, which lived in the old VM, starts afresh. */
void mx_gen_conn_adopt(mx_h1conn_t *c);

#endif
