/* Load-balancing algorithms behind one selection interface. An mx_lb_t is built over a
 * list of nodes (name + weight) and picks an index for a key; whether a node may be
 * picked (health, already tried) and its load (least_conn) come from the caller through
 * mx_lb_ops_t, so the same code serves YAML groups, moxy.balancer.new{} and tests.
 *
 *   round_robin  each node in turn, weights ignored (an atomic cursor)
 *   weighted     nginx's smooth weighted round robin: per cycle of sum(weights) picks,
 *                node i is picked exactly weight_i times, interleaved (5,1,1 -> a a b a c a a)
 *   random       uniform over the nodes, weighted (xorshift per thread)
 *   fnv          FNV-1a 32-bit of the key, modulo the sum of weights (weighted slots);
 *                an unusable pick rehashes up to 20 times, then walks to the next slot
 *   ketama       nginx's `hash $key consistent` / pingora-ketama ring: 160 crc32 points
 *                per weight unit; an unusable pick walks to the next point
 *   least_conn   fewest in-flight requests relative to weight (conns_a * w_b < conns_b *
 *                w_a, as nginx); ties broken round robin
 *
 * fnv and ketama do not hash an empty key: such requests go weighted round robin (nginx).
 *
 * Thread-safe: select() may run on several threads at once (weighted takes a mutex). */
#ifndef MX_LB_LB_H
#define MX_LB_LB_H

#include <stdint.h>
#include <sys/types.h>

#include "conf/conf.h"
#include "core/types.h"

typedef struct mx_lb_s mx_lb_t;

typedef struct {
    const char *name; /* ketama hashes it: "host:port" as configured, "unix:/path" */
    size_t len;
    int weight;       /* >= 1 */
} mx_lb_node_t;

typedef struct {
    bool (*usable)(void *arg, size_t i); /* NULL: every node is usable */
    int (*load)(void *arg, size_t i);    /* least_conn: in-flight count; NULL: 0 */
    void *arg;
} mx_lb_ops_t;

/* Builds the selector for <n> >= 1 nodes (copied; names need not outlive it). */
mx_lb_t *mx_lb_new(mx_lb_algorithm_t algorithm, const mx_lb_node_t *nodes, size_t n);
void mx_lb_free(mx_lb_t *lb);
mx_lb_algorithm_t mx_lb_algorithm(const mx_lb_t *lb);
size_t mx_lb_count(const mx_lb_t *lb);

/* Picks a node for <key> (<len> bytes; only fnv and ketama read it) among those <ops>
 * says are usable. Returns its index, or -1 when none is usable. */
ssize_t mx_lb_select(mx_lb_t *lb, const char *key, size_t len, const mx_lb_ops_t *ops);

/* The hashes, exposed for tests and the Lua twin's spec. */
uint32_t mx_lb_fnv1a(const char *p, size_t n);
uint32_t mx_lb_crc32(uint32_t crc, const void *p, size_t n); /* zlib's; crc = 0 to start */
/* ketama: the ring's point count (after dropping duplicate hashes) and point <i>. */
size_t mx_lb_ketama_points(const mx_lb_t *lb);
void mx_lb_ketama_point(const mx_lb_t *lb, size_t i, uint32_t *hash, size_t *node);

#endif
