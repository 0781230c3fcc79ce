/* Process-wide counters, summed over every worker: each is bumped with a
 * relaxed atomic add by the worker that sees the event, and read (without
 * a lock, each value on its own) by moxy.stats() and the shutdown log line.
 * Counters only grow; <_open> figures are gauges. */
#ifndef MX_CORE_STATS_H
#define MX_CORE_STATS_H

#include <stdint.h>

typedef struct {
    uint64_t requests;             /* downstream requests begun */
    uint64_t connections_accepted; /* downstream connections accepted */
    uint64_t connections_open;     /* downstream connections open now (gauge) */
    uint64_t upstream_requests;    /* upstream connections handed to a request */
    uint64_t upstream_reused;      /* ... of which came from the keepalive pool */
} mx_stats_t;

/* The order moxy_stats() hands them to Lua in (lua/moxy/live.lua). */
#define MX_STATS_FIELDS 5

extern mx_stats_t mx_stats;

/* One info line with the counters and the upstream reuse ratio. */
void mx_stats_log(const char *when);

#define mx_stats_add(field, n) __atomic_fetch_add(&mx_stats.field, (n), __ATOMIC_RELAXED)
#define mx_stats_sub(field, n) __atomic_fetch_sub(&mx_stats.field, (n), __ATOMIC_RELAXED)
#define mx_stats_get(field)    __atomic_load_n(&mx_stats.field, __ATOMIC_RELAXED)

#endif
