/* The load-balancing ABI for Lua (lua/moxy/lb_live.lua declares the same prototypes):
 * YAML groups by name, groups made by moxy.balancer.new{} (a handle the Lua side frees
 * with ffi.gc), selection through the same C algorithms, and upstream_peer's answer.
 * Handles are void * so that the ABI check (tests/integration/test_abi.py) sees them. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/errors.h"
#include "lua/vm.h"
#include "net/addr.h"
#include "proxy/session.h"
#include "upstream/group.h"
#include "upstream/health.h"

void *moxy_upstream_group(const char *name, size_t len);
void *moxy_balancer_new(int algorithm, int hash_key, const char *hash_name, const char **names,
                        const int *weights, int n, const double *opts, const char *health,
                        char *err, size_t errlen);
void moxy_balancer_free(void *g);
int moxy_group_info(void *g, int *out);
int moxy_group_select(void *g, const char *key, size_t len, int *index, double *gen, char *buf,
                      size_t buflen);
int moxy_group_backend(void *g, int i, char *buf, size_t buflen, int *out);
int moxy_set_group_peer(mx_session_t *s, void *g, int index, double gen, const char *key,
                        size_t len);


/* The YAML group <name> of the calling VM's config generation, or NULL. It lives as long
 * as that generation (a reload builds the next one its own groups). */
void *
moxy_upstream_group(const char *name, size_t len)
{
    const mx_conf_t *conf = mx_current_vm != NULL ? mx_vm_conf(mx_current_vm) : NULL;
    return mx_groups_find(conf != NULL ? conf->groups : NULL, name, len); /* the VM's generation */
}


/* Only numeric hosts: a name would block the worker in getaddrinfo. */
static bool
numeric(const char *text)
{
    if (strncmp(text, "unix:", 5) == 0)
        return true;
    const char *colon = strrchr(text, ':');
    for (const char *p = text; colon != NULL && p < colon; p++)
        if (!(*p == '.' || *p == ':' || *p == '[' || *p == ']' || (*p >= '0' && *p <= '9') ||
              (*p >= 'a' && *p <= 'f') || (*p >= 'A' && *p <= 'F')))
            return false;
    return true;
}


/* A group over <n> backends "host:port" / "unix:/path" (<names>) with <weights>, for
 * moxy.balancer.new{}. <algorithm> is an mx_lb_algorithm_t, <hash_key> an
 * mx_hash_key_kind_t (<hash_name> for header:/arg:/cookie:, else NULL); <opts> are
 * max_retries, max_fails, fail_timeout (seconds), on_5xx (0/1). Returns the group (free
 * with moxy_balancer_free), or NULL with the reason in <err>. */
/* Balancers with a health_check are shared by definition: every worker's VM makes the
 * same ones at load time, and they must be one group with one set of checks. The
 * registry maps a canonical text of the definition to its group and counts the handles
 * Lua holds. (Without health_check each call keeps its own group, as before: a balancer
 * made per request starts its round robin afresh, in both engines.) */
typedef struct shared_s {
    char *key;
    mx_group_t *g;
    int handles;
    bool checked; /* registered with the health service */
    struct shared_s *next;
} shared_t;

static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static shared_t *shared_list;


/* The canonical text of a definition: every argument, in order. */
static char *
definition(int algorithm, int hash_key, const char *hash_name, const char **names,
           const int *weights, int n, const double *opts, const char *health)
{
    size_t len = 128 + (hash_name ? strlen(hash_name) : 0) + (health ? strlen(health) : 0);
    for (int i = 0; i < n; i++)
        len += strlen(names[i]) + 16;
    char *key = mx_alloc(len), *p = key, *end = key + len;
    p += snprintf(p, (size_t)(end - p), "%d|%d|%s|%.17g|%.17g|%.17g|%.17g|%s", algorithm,
                  hash_key, hash_name ? hash_name : "", opts[0], opts[1], opts[2], opts[3],
                  health ? health : "");
    for (int i = 0; i < n; i++)
        p += snprintf(p, (size_t)(end - p), "|%s %d", names[i], weights[i]);
    return key;
}


static void *balancer_make(int algorithm, int hash_key, const char *hash_name,
                           const char **names, const int *weights, int n, const double *opts,
                           const char *health, char *err, size_t errlen);


/* A group over <n> backends for moxy.balancer.new{} (see balancer_make); with a
 * health_check, a definition equal to one still held (in any VM) returns the same group. <health> is the
 * health_check as a YAML flow mapping (NULL: none), checked by the config's rules.
 * Each handle returned is released with moxy_balancer_free. */
void *
moxy_balancer_new(int algorithm, int hash_key, const char *hash_name, const char **names,
                  const int *weights, int n, const double *opts, const char *health, char *err,
                  size_t errlen)
{
    if (n < 1 || n > 100000) {
        snprintf(err, errlen, "invalid arguments");
        return NULL;
    }
    if (health == NULL) /* no checks to share: a group of its own, as ever */
        return balancer_make(algorithm, hash_key, hash_name, names, weights, n, opts, NULL, err,
                             errlen);
    char *key = definition(algorithm, hash_key, hash_name, names, weights, n, opts, health);
    pthread_mutex_lock(&shared_lock);
    for (shared_t *e = shared_list; e != NULL; e = e->next) {
        if (strcmp(e->key, key) == 0) {
            e->handles++;
            pthread_mutex_unlock(&shared_lock);
            mx_free(key);
            return e->g;
        }
    }
    mx_group_t *g = balancer_make(algorithm, hash_key, hash_name, names, weights, n, opts,
                                  health, err, errlen);
    if (g == NULL) {
        pthread_mutex_unlock(&shared_lock);
        mx_free(key);
        return NULL;
    }
    shared_t *e = mx_calloc(1, sizeof(*e));
    e->key = key;
    e->g = g;
    e->handles = 1;
    e->checked = mx_group_conf(g)->health.enabled;
    e->next = shared_list;
    shared_list = e;
    if (e->checked)
        mx_health_add(g);
    pthread_mutex_unlock(&shared_lock);
    return g;
}


/* One handle of moxy_balancer_new goes (ffi.gc: the balancer was collected or its VM
 * closed); the last one unregisters the checks and drops the registry's reference
 * (sessions still using the group hold their own). */
void
moxy_balancer_free(void *g)
{
    bool found = false;

    pthread_mutex_lock(&shared_lock);
    for (shared_t **pp = &shared_list; *pp != NULL; pp = &(*pp)->next) {
        shared_t *e = *pp;
        if (e->g != g)
            continue;
        found = true;
        if (--e->handles > 0)
            break;
        *pp = e->next;
        if (e->checked)
            mx_health_remove(e->g);
        mx_group_unref(e->g);
        mx_free(e->key);
        mx_free(e);
        break;
    }
    pthread_mutex_unlock(&shared_lock);
    if (!found) /* a balancer without health_check: its own group */
        mx_group_unref(g);
}


static void *
balancer_make(int algorithm, int hash_key, const char *hash_name, const char **names,
              const int *weights, int n, const double *opts, const char *health, char *err,
              size_t errlen)
{
    if (!(opts[0] >= 0 && opts[0] <= 16) || !(opts[1] >= 0 && opts[1] <= 1000) ||
        !(opts[2] >= 0.001 && opts[2] <= 86400)) {
        snprintf(err, errlen, "max_retries must be 0..16, max_fails 0..1000, fail_timeout "
                 "0.001..86400");
        return NULL;
    }
    if (algorithm < MX_LB_ROUND_ROBIN || algorithm > MX_LB_LEAST_CONN || n < 1 || n > 100000 ||
        hash_key < MX_HASH_KEY_URI || hash_key > MX_HASH_KEY_COOKIE) {
        snprintf(err, errlen, "invalid arguments");
        return NULL;
    }
    mx_addr_t *addrs = mx_calloc((size_t)n, sizeof(mx_addr_t));
    char why[160];
    for (int i = 0; i < n; i++) {
        if (weights[i] < 1 || weights[i] > 1000) {
            snprintf(err, errlen, "backend \"%s\": weight must be 1..1000", names[i]);
            mx_free(addrs);
            return NULL;
        }
        if (!numeric(names[i])) {
            snprintf(err, errlen, "backend \"%s\": use an IP address (host names are resolved "
                     "by YAML upstream groups)", names[i]);
            mx_free(addrs);
            return NULL;
        }
        if (mx_addr_parse(names[i], &addrs[i], why, sizeof(why)) != MX_OK) {
            snprintf(err, errlen, "backend \"%s\": %s", names[i], why);
            mx_free(addrs);
            return NULL;
        }
    }
    mx_conf_upstream_t conf = {
        .name = "(balancer)",
        .algorithm = (mx_lb_algorithm_t)algorithm,
        .hash_key = (mx_hash_key_kind_t)hash_key,
        .hash_key_name = (char *)hash_name,
        .max_retries = (int)opts[0],
        .max_fails = (int)opts[1],
        .fail_timeout = opts[2],
        .fail_on_5xx = opts[3] != 0,
        .connect_timeout = 2,
        .read_timeout = 30,
        .write_timeout = 30,
        .idle_timeout = 60,
    };
    if (health != NULL) {
        char why2[512];
        if (mx_conf_health_parse(health, strlen(health), &conf.health, why2, sizeof(why2)) !=
            MX_OK) {
            /* "health_check:1:10: health_check.rise: ...": the key path is what tells */
            const char *msg = strstr(why2, ": health_check");
            snprintf(err, errlen, "%s", msg ? msg + 2 : why2);
            mx_free(addrs);
            return NULL;
        }
    }
    mx_group_t *g = mx_group_new(&conf, (mx_lb_algorithm_t)algorithm, names, addrs, weights,
                                 (size_t)n);
    mx_free(conf.health.path);
    mx_free(conf.health.host);
    mx_free(addrs);
    return g;
}


/* out[0] = algorithm, out[1] = backend count, out[2] = hash_key kind. */
int
moxy_group_info(void *p, int *out)
{
    mx_group_t *g = p;
    mx_group_view_t *v = mx_group_view(g);
    out[0] = (int)mx_group_conf(g)->algorithm;
    out[1] = (int)mx_group_view_count(v);
    out[2] = (int)mx_group_conf(g)->hash_key;
    mx_group_view_release(v);
    return MX_OK;
}


/* Picks a backend of <g> for <key> (NULL: none). Sets its <index> and the list's <gen>
 * (for moxy_set_group_peer), writes its name into <buf>. Returns the name's length, or
 * -1 when no backend can be chosen. */
int
moxy_group_select(void *p, const char *key, size_t len, int *index, double *gen, char *buf,
                  size_t buflen)
{
    mx_group_t *g = p;
    mx_group_view_t *v = mx_group_view(g);
    bool forced;
    ssize_t i = mx_group_select(v, key, key ? len : 0, NULL, 0, &forced);
    if (i < 0) {
        mx_group_view_release(v);
        return -1;
    }
    mx_backend_t *b = mx_group_view_backend(v, (size_t)i);
    *index = (int)i;
    *gen = (double)mx_group_view_gen(v);
    int n = snprintf(buf, buflen, "%s", b->name);
    mx_group_view_release(v);
    return n;
}


/* Backend <i> of <g>: its name (into <buf>; returns its length), and out[0..4] = weight, healthy (active checks),
 * usable now (healthy and not cooling off after passive failures), inflight, fails.
 * With <i> < 0 returns the count; -1 past the end. */
int
moxy_group_backend(void *p, int i, char *buf, size_t buflen, int *out)
{
    mx_group_t *g = p;
    mx_group_view_t *v = mx_group_view(g);
    int n = (int)mx_group_view_count(v);
    if (i < 0 || i >= n) {
        mx_group_view_release(v);
        return i < 0 ? n : -1;
    }
    mx_backend_t *b = mx_group_view_backend(v, (size_t)i);
    int len = snprintf(buf, buflen, "%s", b->name);
    out[0] = b->weight;
    out[1] = atomic_load(&b->healthy);
    out[2] = mx_backend_usable(b, mx_group_now_ms());
    out[3] = atomic_load(&b->inflight);
    out[4] = atomic_load(&b->fails);
    mx_group_view_release(v);
    return len;
}


/* upstream_peer returned a selection of group <g>: backend <index> of list <gen> (or
 * index < 0: let the session choose), hashed with <key> (NULL: the group's hash_key).
 * The session keeps a reference to <g> until it ends. */
int
moxy_set_group_peer(mx_session_t *s, void *p, int index, double gen, const char *key, size_t len)
{
    mx_group_t *g = p;
    if (s->lua_phase != MX_PH_UPSTREAM_PEER)
        return MX_EBADPHASE;
    mx_group_ref(g);
    mx_session_lb_release(s);
    s->group = g;
    s->pick_index = index;
    s->pick_gen = (uint64_t)gen;
    s->pick_key = (mx_str_t){NULL, 0};
    if (key != NULL) {
        char *copy = mx_arena_alloc(&s->arena, len + 1);
        memcpy(copy, key, len);
        copy[len] = '\0';
        s->pick_key = (mx_str_t){copy, len};
    }
    const char *name = mx_group_name(g);
    if (mx_groups_find(s->gen->conf->groups, name, strlen(name)) == g)
        s->ups = mx_group_conf(g); /* a YAML group: its timeouts */
    s->peer_set = 0;
    return MX_OK;
}
