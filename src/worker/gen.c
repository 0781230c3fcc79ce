/* Config generations: see gen.h. */
#include "worker/gen.h"

#include <assert.h>
#include <string.h>

#include "core/alloc.h"
#include "core/errors.h"
#include "core/log.h"
#include "lua/task.h"
#include "lua/vm.h"
#include "proxy/session.h"
#include "upstream/group.h"
#include "worker/worker.h"

static void on_reap(uv_timer_t *t);
static void on_reap_close(uv_handle_t *h);


mx_genconf_t *
mx_genconf_new(mx_conf_t *conf, uint64_t seq, size_t *listener_svc, size_t n)
{
    mx_genconf_t *gc = mx_calloc(1, sizeof(*gc));
    atomic_init(&gc->refs, 1);
    gc->seq = seq;
    gc->conf = conf;
    gc->listener_svc = listener_svc;
    gc->nlisteners = n;
    return gc;
}


mx_genconf_t *
mx_genconf_ref(mx_genconf_t *gc)
{
    atomic_fetch_add(&gc->refs, 1);
    return gc;
}


void
mx_genconf_unref(mx_genconf_t *gc)
{
    if (gc == NULL)
        return;
    int was = atomic_fetch_sub(&gc->refs, 1);
    assert(was > 0);
    if (was != 1)
        return;
    mx_groups_unref(gc->conf->groups);
    mx_conf_free(gc->conf);
    mx_free(gc->listener_svc);
    mx_free(gc);
}


int
mx_gen_new(mx_worker_t *w, mx_genconf_t *gc, mx_gen_t *prev, mx_gen_t **out, char *err,
           size_t errlen)
{
    const mx_conf_t *conf = gc->conf;
    mx_gen_t *g = mx_calloc(1, sizeof(*g));
    g->refs = 1;
    g->seq = gc->seq;
    g->w = w;
    g->gc = gc;
    g->conf = conf;
    for (size_t i = 0; i < conf->nservices; i++) {
        if (conf->services[i].script == NULL)
            continue;
        char *previous = prev != NULL ? mx_vm_handover(prev->vm) : NULL;
        int rc = mx_vm_new_from(conf, w, previous, &g->vm, err, errlen);
        mx_free(previous);
        if (rc != MX_OK) {
            mx_free(g);
            return rc;
        }
        break;
    }
    mx_genconf_ref(gc);
    g->rr = mx_calloc(conf->nupstreams ? conf->nupstreams : 1, sizeof(size_t));
    /* Start each worker's round robin at a different backend. */
    for (size_t i = 0; i < conf->nupstreams; i++)
        g->rr[i] = (size_t)(w->id - 1);
    uv_timer_init(&w->loop, &g->reap);
    g->reap.data = g;
    mx_list_push(&w->gens, &g->node);
    *out = g;
    return MX_OK;
}


mx_gen_t *
mx_gen_ref(mx_gen_t *g)
{
    g->refs++;
    return g;
}


void
mx_gen_unref(mx_gen_t *g)
{
    if (g == NULL)
        return;
    assert(g->refs > 0);
    if (--g->refs > 0 || g->reaping)
        return;
    g->reaping = 1;
    uv_timer_start(&g->reap, on_reap, 0, 0);
}


/* The last request of an old generation ended: its timers see premature =
 * true, shutdown() runs; timer functions that still wait (a last flush over
 * moxy.tcp) get up to graceful_shutdown_timeout_seconds; the VM closes. */
static void
on_reap(uv_timer_t *t)
{
    mx_gen_t *g = t->data;
    if (g->refs > 0) { /* referenced again before the loop came round */
        g->reaping = 0;
        return;
    }
    uint64_t now = uv_now(&g->w->loop);
    if (!g->retired) {
        g->retired = 1;
        g->deadline_ms = now + (uint64_t)(g->conf->graceful_shutdown_timeout_seconds * 1000.0);
        mx_vm_timers_retire(g->vm);
    }
    if (mx_lua_tasks_running(g->vm) && now < g->deadline_ms) {
        uv_timer_start(&g->reap, on_reap, 50, 0);
        return;
    }
    mx_lua_tasks_cancel(g->vm);
    mx_log_info("generation %llu retired", (unsigned long long)g->seq);
    mx_vm_free(g->vm);
    g->vm = NULL;
    mx_list_remove(&g->node);
    uv_close((uv_handle_t *)&g->reap, on_reap_close);
}


static void
on_reap_close(uv_handle_t *h)
{
    mx_gen_t *g = h->data;
    mx_free(g->rr);
    mx_genconf_unref(g->gc);
    mx_free(g);
}


const mx_conf_service_t *
mx_gen_service(const mx_gen_t *g, size_t listener)
{
    size_t i = listener < g->gc->nlisteners ? g->gc->listener_svc[listener] : 0;
    return &g->conf->services[i];
}


void
mx_gen_conn_adopt(mx_h1conn_t *c)
{
    mx_gen_t *cur = c->w->gen;
    if (c->gen == cur || cur == NULL)
        return;
    if (c->lua_conn_ctx && c->gen != NULL)
        mx_vm_conn_closed(c->gen->vm, c->id); /* between requests: no Lua is running */
    c->lua_conn_ctx = 0;
    mx_gen_unref(c->gen);
    c->gen = mx_gen_ref(cur);
    c->svc = mx_gen_service(cur, c->listener);
}
