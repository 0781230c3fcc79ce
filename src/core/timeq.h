/* Timeouts drawn from a few fixed durations (a service's header, body,
 * keepalive and send timeouts, an upstream's connect, read and idle ones):
 * one FIFO per duration and callback, so an entry armed later expires later
 * and arming, re-arming and cancelling are O(1) list moves, with no heap and
 * no per-entry loop timer. The owner runs one loop
 * timer for mx_timeq_next() and calls mx_timeq_expire() when it fires.
 * Times are plain milliseconds (the loop's clock); nothing here knows uv. */
#ifndef MX_CORE_TIMEQ_H
#define MX_CORE_TIMEQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/list.h"

#define MX_TIMEQ_NONE UINT64_MAX

typedef struct mx_timeq_s mx_timeq_t;
typedef struct mx_timeq_entry_s mx_timeq_entry_t;
typedef void (*mx_timeq_cb)(mx_timeq_entry_t *e);

/* Embedded in what times out; zeroed or mx_timeq_entry_init()ed. */
struct mx_timeq_entry_s {
    mx_list_t node;    /* in its duration's FIFO while armed */
    uint64_t deadline; /* ms */
};

typedef struct {
    uint64_t ms;
    mx_timeq_cb cb;
    mx_list_t fifo; /* entries, earliest deadline first */
} mx_timeq_lane_t;

struct mx_timeq_s {
    mx_timeq_lane_t *lanes; /* one per distinct (duration, callback) seen */
    size_t nlanes;
};

void mx_timeq_init(mx_timeq_t *q);
/* Frees the lanes; armed entries are simply forgotten. */
void mx_timeq_dispose(mx_timeq_t *q);
void mx_timeq_entry_init(mx_timeq_entry_t *e);
/* (Re)arms <e> to expire <ms> after <now> (0 counts as 1) and then call
 * <cb>. The owner compares e->deadline with when its loop timer fires: it
 * may have to fire sooner. */
void mx_timeq_arm(mx_timeq_t *q, mx_timeq_entry_t *e, uint64_t now, uint64_t ms, mx_timeq_cb cb);
void mx_timeq_cancel(mx_timeq_entry_t *e);
bool mx_timeq_armed(const mx_timeq_entry_t *e);
/* The earliest deadline, or MX_TIMEQ_NONE. */
uint64_t mx_timeq_next(const mx_timeq_t *q);
/* Unlinks and calls back every entry due at <now> (deadline <= now), in
 * deadline order within a duration. A callback may arm, cancel or re-arm any
 * entry, this one included. Returns how many expired. */
size_t mx_timeq_expire(mx_timeq_t *q, uint64_t now);

#endif
