/* src/upstream/group.h -- an upstream group at run time: one per `upstreams:` entry (and
 * one per moxy.balancer.new{}), shared by all workers. The YAML groups are built by the
 * main thread before workers start (mx_groups_init) and freed after they stop
 * (mx_groups_free). A group's backend list is a refcounted snapshot (mx_group_view_t):
 * a worker takes a view for as long as it uses a backend (a request holds one from
 * upstream selection to its end), so a list replaced by discovery is freed only when the
 * last view of it is released. Health state lives in each backend as atomics. */
#ifndef MX_UPSTREAM_GROUP_H
#define MX_UPSTREAM_GROUP_H

#include <stdatomic.h>
#include <sys/types.h>

#include "conf/conf.h"
#include "core/types.h"
#include "net/addr.h"

typedef struct mx_backend_s {
    char *name;            /* as configured: "127.0.0.1:9001", "app.internal:8080", "unix:/s" */
    mx_addr_t addr;        /* resolved address */
    int weight;            /* >= 1 */
    _Atomic int healthy;   /* active health verdict; 1 (up) until a check says otherwise */
    _Atomic uint64_t down_until_ms; /* passive health: skipped until this monotonic ms (0: not) */
    _Atomic int fails;     /* passive health: consecutive failures */
    _Atomic int inflight;  /* least_conn: requests in flight to it */
    _Atomic int refs;      /* views (snapshots) holding it; group.c only */
} mx_backend_t;

/* true when the backend may be selected now (healthy and not cooling off). */
bool mx_backend_usable(const mx_backend_t *b, uint64_t now_ms);

/* Sets the active health verdict. Marking a backend up also ends a passive-health cool-off
 * and clears its failure count (a passed check is fresher news than the failures that
 * started it). Returns the previous verdict. Any thread. */
bool mx_backend_set_healthy(mx_backend_t *b, bool up);

/* Monotonic milliseconds (the clock down_until_ms is measured on). */
uint64_t mx_group_now_ms(void);

typedef struct mx_group_s mx_group_t;           /* opaque outside group.c */
typedef struct mx_group_view_s mx_group_view_t; /* a refcounted backend-list snapshot */

/* --- the YAML groups of one config (a registry; one per reload generation) --- */
typedef struct mx_groups_s mx_groups_t;
/* Builds one group per conf->upstreams entry; a backend that keeps its name and
 * address in a same-named group of the current registry keeps its health (a
 * reload). Returns it with one reference. Main thread. */
mx_groups_t *mx_groups_build(const mx_conf_t *conf);
mx_groups_t *mx_groups_ref(mx_groups_t *r);
/* Any thread; the last reference drops its groups' (requests hold their own). */
void mx_groups_unref(mx_groups_t *r);
/* Makes <r> (or none) the current registry, which the functions below and
 * the health checks use. Main thread. */
void mx_groups_set_current(mx_groups_t *r);
mx_groups_t *mx_groups_current(void); /* borrowed */
/* Group <name> of <r> (NULL: the current registry), or NULL. */
mx_group_t *mx_groups_find(const mx_groups_t *r, const char *name, size_t len);

/* --- the current registry --- */
/* Builds one group per conf->upstreams entry. Main thread, once, before workers start
 * (it frees the groups of an earlier call, which no worker may still be using). */
void mx_groups_init(const mx_conf_t *conf);
/* Frees them. Main thread, after workers stopped. */
void mx_groups_free(void);
size_t mx_groups_count(void);
mx_group_t *mx_group_at(size_t i);          /* i < count */
mx_group_t *mx_group_by_name(const char *name, size_t len);
/* The group's settings (health_check, timeouts...): a copy owned by the group; its backends
 * are NULL (the current list is a view: mx_group_view_count/backend). */
const mx_conf_upstream_t *mx_group_conf(const mx_group_t *g);
const char *mx_group_name(const mx_group_t *g);

/* Calls <fn> for each current backend (under the group's lock; do not block in fn). */
void mx_group_foreach(mx_group_t *g, void (*fn)(mx_backend_t *b, void *arg), void *arg);

/* Discovery: replaces the backend list. Backends whose name and address are unchanged
 * keep their struct (so their health state); removed ones are freed once no worker
 * uses them; the selector (ketama ring...) is rebuilt. Thread-safe; workers pick up the
 * new list at their next selection. <addrs>/<names>/<weights> have <n> entries (n >= 1).
 * Returns MX_OK, or MX_EBADARG when n is 0 or a weight is < 1. */
int mx_group_replace(mx_group_t *g, const char *const *names, const mx_addr_t *addrs,
                     const int *weights, size_t n);

/* --- groups outside the registry (moxy.balancer.new{}) --- */
/* A group over <n> backends with <algorithm>; <conf> (copied, may be NULL for defaults)
 * gives its name and settings. Returns it with one reference. */
mx_group_t *mx_group_new(const mx_conf_upstream_t *conf, mx_lb_algorithm_t algorithm,
                         const char *const *names, const mx_addr_t *addrs, const int *weights,
                         size_t n);
void mx_group_ref(mx_group_t *g);
void mx_group_unref(mx_group_t *g);

/* --- selection (any thread) --- */
/* The current snapshot, with a reference: release it with mx_group_view_release(). */
mx_group_view_t *mx_group_view(mx_group_t *g);
void mx_group_view_release(mx_group_view_t *v);
size_t mx_group_view_count(const mx_group_view_t *v);
mx_backend_t *mx_group_view_backend(const mx_group_view_t *v, size_t i);
/* A number that changes each time the list is replaced. */
uint64_t mx_group_view_gen(const mx_group_view_t *v);

/* Picks a backend of <v> with the group's algorithm for <key> (the hashing ones use it;
 * NULL/0 hashes the empty string). Skips backends that are not usable and the <nexcl>
 * backends in <excl> (those a request already tried). When no backend is usable it
 * falls back to the algorithm's choice among those not excluded, ignoring health (modern
 * nginx answers 502 "no live upstreams" there; a try beats a certain error, and health
 * may be stale). The caller logs it: *forced is set to true.
 * Returns the index in <v>, or -1 when every backend is excluded. */
ssize_t mx_group_select(mx_group_view_t *v, const char *key, size_t keylen,
                        mx_backend_t *const *excl, size_t nexcl, bool *forced);

/* Passive health (conf passive_health): a connect failure or (when on_5xx) a 5xx from
 * <b> counts as a failure; max_fails consecutive ones mark it down for fail_timeout.
 * A success resets the count. Return true when this call marked the backend down. */
bool mx_group_report(mx_group_t *g, mx_backend_t *b, bool ok);

/* Health transitions are logged by whoever changes `healthy` (health.c):
 * "[warn] upstream origin backend 127.0.0.1:9002 is down (http check: connection refused, 3 fails)"
 * "[notice/info] upstream origin backend 127.0.0.1:9002 is up (2 checks passed)" */

#endif
