/* Upstream groups at run time (group.h): the registry of YAML groups, refcounted backend
 * snapshots, selection through src/lb/ and passive health. */
#include "upstream/group.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "core/errors.h"
#include "core/log.h"
#include "lb/lb.h"

struct mx_group_view_s {
    _Atomic int refs; /* the group's own (while current) + one per user */
    uint64_t gen;
    size_t n;
    mx_backend_t **b;
    mx_lb_t *lb;
};

struct mx_group_s {
    _Atomic int refs;
    mx_conf_upstream_t conf; /* a copy; name owned, backends not kept (see views) */
    mx_lb_algorithm_t algorithm;
    pthread_mutex_t lock; /* guards cur */
    mx_group_view_t *cur;
    uint64_t gen;
};

/* The YAML groups of one config. The current one (what mx_group_by_name(),
 * mx_group_at() and the health checks see; main thread) holds a reference,
 * and so does each config generation built with it (workers find it through
 * conf->groups), so a reload's old requests keep their groups. */
struct mx_groups_s {
    _Atomic int refs;
    size_t n;
    mx_group_t **g;
};

static mx_groups_t *current;


uint64_t
mx_group_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}


bool
mx_backend_usable(const mx_backend_t *b, uint64_t now_ms)
{
    if (!atomic_load_explicit(&b->healthy, memory_order_relaxed))
        return false;
    uint64_t until = atomic_load_explicit(&b->down_until_ms, memory_order_relaxed);
    return until == 0 || until <= now_ms;
}


bool
mx_backend_set_healthy(mx_backend_t *b, bool up)
{
    int was = atomic_exchange(&b->healthy, up ? 1 : 0);
    if (up) {
        atomic_store(&b->down_until_ms, 0);
        atomic_store(&b->fails, 0);
    }
    return was != 0;
}


/* "host:port" as written in the config (addr.host keeps it), brackets for IPv6. */
static void
addr_name(const mx_addr_t *a, char *buf, size_t len)
{
    if (a->kind == MX_ADDR_UNIX)
        snprintf(buf, len, "unix:%s", a->host);
    else if (strchr(a->host, ':') != NULL)
        snprintf(buf, len, "[%s]:%d", a->host, a->port);
    else
        snprintf(buf, len, "%s:%d", a->host, a->port);
}


static mx_backend_t *
backend_new(const char *name, const mx_addr_t *addr, int weight)
{
    mx_backend_t *b = mx_calloc(1, sizeof(*b));
    b->name = mx_strdup(name);
    b->addr = *addr;
    b->weight = weight;
    atomic_init(&b->healthy, 1);
    atomic_init(&b->refs, 1);
    return b;
}


static void
backend_unref(mx_backend_t *b)
{
    int before = atomic_fetch_sub(&b->refs, 1);
    if (before == 1) {
        mx_free(b->name);
        mx_free(b);
    }
}


/* A view over <b> (whose references it takes over), with the selector built. */
static mx_group_view_t *
view_new(mx_lb_algorithm_t algorithm, mx_backend_t **b, size_t n, uint64_t gen)
{
    mx_group_view_t *v = mx_calloc(1, sizeof(*v));
    atomic_init(&v->refs, 1);
    v->gen = gen;
    v->n = n;
    v->b = b;
    mx_lb_node_t *nodes = mx_alloc(sizeof(mx_lb_node_t) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        nodes[i] = (mx_lb_node_t){b[i]->name, strlen(b[i]->name), b[i]->weight};
    v->lb = mx_lb_new(algorithm, nodes, n);
    mx_free(nodes);
    return v;
}


void
mx_group_view_release(mx_group_view_t *v)
{
    if (v == NULL)
        return;
    int before = atomic_fetch_sub(&v->refs, 1);
    if (before > 1)
        return;
    for (size_t i = 0; i < v->n; i++)
        backend_unref(v->b[i]);
    mx_free(v->b);
    mx_lb_free(v->lb);
    mx_free(v);
}


mx_group_view_t *
mx_group_view(mx_group_t *g)
{
    pthread_mutex_lock(&g->lock);
    mx_group_view_t *v = g->cur;
    atomic_fetch_add(&v->refs, 1);
    pthread_mutex_unlock(&g->lock);
    return v;
}


size_t
mx_group_view_count(const mx_group_view_t *v)
{
    return v->n;
}


mx_backend_t *
mx_group_view_backend(const mx_group_view_t *v, size_t i)
{
    return i < v->n ? v->b[i] : NULL;
}


uint64_t
mx_group_view_gen(const mx_group_view_t *v)
{
    return v->gen;
}


mx_group_t *
mx_group_new(const mx_conf_upstream_t *conf, mx_lb_algorithm_t algorithm,
             const char *const *names, const mx_addr_t *addrs, const int *weights, size_t n)
{
    mx_group_t *g = mx_calloc(1, sizeof(*g));
    atomic_init(&g->refs, 1);
    if (conf != NULL) {
        g->conf = *conf;
    } else {
        g->conf.max_retries = 1;
        g->conf.max_fails = 1;
        g->conf.fail_timeout = 10;
        g->conf.connect_timeout = 2;
        g->conf.read_timeout = 30;
        g->conf.write_timeout = 30;
        g->conf.idle_timeout = 60;
    }
    g->conf.name = mx_strdup(conf && conf->name ? conf->name : "(balancer)");
    g->conf.backends = NULL;
    g->conf.nbackends = n;
    g->conf.hash_key_name = conf && conf->hash_key_name ? mx_strdup(conf->hash_key_name) : NULL;
    g->conf.health.path = conf && conf->health.path ? mx_strdup(conf->health.path) : NULL;
    g->conf.health.host = conf && conf->health.host ? mx_strdup(conf->health.host) : NULL;
    g->conf.algorithm = algorithm;
    g->algorithm = algorithm;
    pthread_mutex_init(&g->lock, NULL);
    mx_backend_t **b = mx_alloc(sizeof(*b) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        b[i] = backend_new(names[i], &addrs[i], weights[i]);
    g->cur = view_new(algorithm, b, n, ++g->gen);
    return g;
}


void
mx_group_ref(mx_group_t *g)
{
    atomic_fetch_add(&g->refs, 1);
}


void
mx_group_unref(mx_group_t *g)
{
    if (g == NULL)
        return;
    int before = atomic_fetch_sub(&g->refs, 1);
    if (before > 1)
        return;
    mx_group_view_release(g->cur);
    pthread_mutex_destroy(&g->lock);
    mx_free(g->conf.name);
    mx_free(g->conf.hash_key_name);
    mx_free(g->conf.health.path);
    mx_free(g->conf.health.host);
    mx_free(g);
}


/* Copies the health of <from>'s backends into <to>'s that have the same name
 * and address (a reload keeps what checks and failures learnt). */
static void
carry_health(mx_group_t *from, mx_group_t *to)
{
    mx_group_view_t *a = mx_group_view(from), *b = mx_group_view(to);
    for (size_t i = 0; i < b->n; i++)
        for (size_t j = 0; j < a->n; j++) {
            mx_backend_t *o = a->b[j], *n = b->b[i];
            if (strcmp(o->name, n->name) != 0 || strcmp(o->addr.text, n->addr.text) != 0)
                continue;
            atomic_store(&n->healthy, atomic_load(&o->healthy));
            atomic_store(&n->down_until_ms, atomic_load(&o->down_until_ms));
            atomic_store(&n->fails, atomic_load(&o->fails));
            break;
        }
    mx_group_view_release(a);
    mx_group_view_release(b);
}


mx_groups_t *
mx_groups_build(const mx_conf_t *conf)
{
    mx_groups_t *r = mx_calloc(1, sizeof(*r));
    atomic_init(&r->refs, 1);
    r->n = conf->nupstreams;
    r->g = mx_calloc(r->n ? r->n : 1, sizeof(*r->g));
    mx_group_t **groups = r->g;
    for (size_t i = 0; i < r->n; i++) {
        const mx_conf_upstream_t *u = &conf->upstreams[i];
        char **names = mx_alloc(sizeof(char *) * u->nbackends);
        mx_addr_t *addrs = mx_alloc(sizeof(mx_addr_t) * u->nbackends);
        int *weights = mx_alloc(sizeof(int) * u->nbackends);
        for (size_t j = 0; j < u->nbackends; j++) {
            char name[sizeof(u->backends[j].addr.host) + 16];
            addr_name(&u->backends[j].addr, name, sizeof(name));
            names[j] = mx_strdup(name);
            addrs[j] = u->backends[j].addr;
            weights[j] = u->backends[j].weight;
        }
        groups[i] = mx_group_new(u, u->algorithm, (const char *const *)names, addrs, weights,
                                 u->nbackends);
        for (size_t j = 0; j < u->nbackends; j++)
            mx_free(names[j]);
        mx_free(names);
        mx_free(addrs);
        mx_free(weights);
        mx_group_t *old = mx_groups_find(current, u->name, strlen(u->name));
        if (old != NULL)
            carry_health(old, groups[i]);
    }
    return r;
}


mx_groups_t *
mx_groups_ref(mx_groups_t *r)
{
    atomic_fetch_add(&r->refs, 1);
    return r;
}


void
mx_groups_unref(mx_groups_t *r)
{
    if (r == NULL)
        return;
    int was = atomic_fetch_sub(&r->refs, 1);
    if (was != 1)
        return;
    for (size_t i = 0; i < r->n; i++)
        mx_group_unref(r->g[i]);
    mx_free(r->g);
    mx_free(r);
}


void
mx_groups_set_current(mx_groups_t *r)
{
    mx_groups_t *old = current;
    current = r != NULL ? mx_groups_ref(r) : NULL;
    mx_groups_unref(old);
}


mx_groups_t *
mx_groups_current(void)
{
    return current;
}


mx_group_t *
mx_groups_find(const mx_groups_t *r, const char *name, size_t len)
{
    if (r == NULL)
        r = current;
    for (size_t i = 0; r != NULL && i < r->n; i++) {
        const char *n = r->g[i]->conf.name;
        if (strlen(n) == len && memcmp(n, name, len) == 0)
            return r->g[i];
    }
    return NULL;
}


void
mx_groups_init(const mx_conf_t *conf)
{
    mx_groups_t *r = mx_groups_build(conf);
    mx_groups_set_current(r);
    mx_groups_unref(r);
}


void
mx_groups_free(void)
{
    mx_groups_set_current(NULL);
}


size_t
mx_groups_count(void)
{
    return current != NULL ? current->n : 0;
}


mx_group_t *
mx_group_at(size_t i)
{
    return current != NULL && i < current->n ? current->g[i] : NULL;
}


mx_group_t *
mx_group_by_name(const char *name, size_t len)
{
    return mx_groups_find(current, name, len);
}


const mx_conf_upstream_t *
mx_group_conf(const mx_group_t *g)
{
    return &g->conf;
}


const char *
mx_group_name(const mx_group_t *g)
{
    return g->conf.name;
}


void
mx_group_foreach(mx_group_t *g, void (*fn)(mx_backend_t *b, void *arg), void *arg)
{
    pthread_mutex_lock(&g->lock);
    mx_group_view_t *v = g->cur;
    for (size_t i = 0; i < v->n; i++)
        fn(v->b[i], arg);
    pthread_mutex_unlock(&g->lock);
}


int
mx_group_replace(mx_group_t *g, const char *const *names, const mx_addr_t *addrs,
                 const int *weights, size_t n)
{
    if (n == 0)
        return MX_EBADARG;
    for (size_t i = 0; i < n; i++)
        if (weights[i] < 1)
            return MX_EBADARG;
    mx_backend_t **b = mx_alloc(sizeof(*b) * n);
    pthread_mutex_lock(&g->lock);
    mx_group_view_t *old = g->cur;
    for (size_t i = 0; i < n; i++) {
        b[i] = NULL;
        for (size_t j = 0; j < old->n; j++) {
            mx_backend_t *o = old->b[j];
            if (strcmp(o->name, names[i]) == 0 && o->addr.salen == addrs[i].salen &&
                memcmp(&o->addr.sa, &addrs[i].sa, addrs[i].salen) == 0) {
                atomic_fetch_add(&o->refs, 1);
                o->weight = weights[i]; /* selectors copy weights: old ones keep theirs */
                b[i] = o;
                break;
            }
        }
        if (b[i] == NULL)
            b[i] = backend_new(names[i], &addrs[i], weights[i]);
    }
    g->cur = view_new(g->algorithm, b, n, ++g->gen);
    pthread_mutex_unlock(&g->lock);
    mx_group_view_release(old);
    return MX_OK;
}


typedef struct {
    mx_group_view_t *v;
    uint64_t now;
    mx_backend_t *const *excl;
    size_t nexcl;
    bool health;
} pick_t;


static bool
pick_usable(void *arg, size_t i)
{
    pick_t *p = arg;
    mx_backend_t *b = p->v->b[i];
    for (size_t k = 0; k < p->nexcl; k++)
        if (p->excl[k] == b)
            return false;
    return !p->health || mx_backend_usable(b, p->now);
}


static int
pick_load(void *arg, size_t i)
{
    pick_t *p = arg;
    return atomic_load_explicit(&p->v->b[i]->inflight, memory_order_relaxed);
}


ssize_t
mx_group_select(mx_group_view_t *v, const char *key, size_t keylen,
                mx_backend_t *const *excl, size_t nexcl, bool *forced)
{
    pick_t p = {v, mx_group_now_ms(), excl, nexcl, true};
    mx_lb_ops_t ops = {pick_usable, pick_load, &p};
    *forced = false;
    ssize_t i = mx_lb_select(v->lb, key, keylen, &ops);
    if (i >= 0)
        return i;
    p.health = false;
    i = mx_lb_select(v->lb, key, keylen, &ops);
    *forced = i >= 0;
    return i;
}


bool
mx_group_report(mx_group_t *g, mx_backend_t *b, bool ok)
{
    if (ok) {
        if (atomic_load_explicit(&b->fails, memory_order_relaxed) != 0)
            atomic_store(&b->fails, 0);
        /* Picked while cooling off (every backend was down) and it answered: it is up. */
        if (atomic_load_explicit(&b->down_until_ms, memory_order_relaxed) != 0 &&
            atomic_exchange(&b->down_until_ms, 0) > mx_group_now_ms())
            mx_log_info("upstream %s backend %s is up again (a request succeeded)",
                        g->conf.name, b->name);
        return false;
    }
    int max = g->conf.max_fails;
    if (max <= 0)
        return false;
    int n = atomic_fetch_add(&b->fails, 1) + 1;
    if (n < max)
        return false;
    atomic_store(&b->fails, 0);
    uint64_t until = mx_group_now_ms() + (uint64_t)(g->conf.fail_timeout * 1000.0);
    uint64_t was = atomic_exchange(&b->down_until_ms, until);
    if (was > mx_group_now_ms())
        return false; /* already down: another request counted it first */
    mx_log_warn("upstream %s backend %s is down for %gs (%d consecutive failure%s)",
                g->conf.name, b->name, g->conf.fail_timeout, n, n == 1 ? "" : "s");
    return true;
}
