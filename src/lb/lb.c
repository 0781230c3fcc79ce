/* The load-balancing algorithms (lb.h). lua/moxy/lb.lua is their Lua twin for the fake
 * engine: a change here changes it there (spec/integration/balancer_spec.lua compares them
 * through t.each_engine). */
#include "lb/lb.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/alloc.h"

#define KETAMA_POINTS 160 /* per weight unit, as nginx and pingora-ketama */
#define HASH_REHASHES 20  /* fnv: rehashes of an unusable pick before walking (nginx: 20) */

typedef struct {
    uint32_t hash;
    uint32_t node;
} point_t;

struct mx_lb_s {
    mx_lb_algorithm_t algorithm;
    size_t n;
    int *weight;
    uint64_t total;   /* sum of weights */
    uint64_t *cum;    /* cum[i] = weight[0] + ... + weight[i] */
    _Atomic uint64_t cursor; /* round_robin, least_conn ties */
    pthread_mutex_t lock;    /* guards current */
    int64_t *current;        /* nginx's current_weight: weighted, and empty hash keys */
    point_t *points;         /* ketama ring, sorted by hash */
    size_t npoints;
};


/* zlib's crc32, four bytes at a time ("slicing by 4": tab[k][b] is the crc of byte b
 * followed by k zero bytes). Tables built once. */
static uint32_t crc_tab[4][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;


static void
crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
        crc_tab[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int k = 1; k < 4; k++)
            crc_tab[k][i] = crc_tab[0][crc_tab[k - 1][i] & 0xff] ^ (crc_tab[k - 1][i] >> 8);
}


uint32_t
mx_lb_crc32(uint32_t crc, const void *p, size_t n)
{
    const unsigned char *b = p;
    pthread_once(&crc_once, crc_init);
    crc = ~crc;
    while (n >= 4) {
        crc ^= (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
        crc = crc_tab[3][crc & 0xff] ^ crc_tab[2][(crc >> 8) & 0xff] ^
              crc_tab[1][(crc >> 16) & 0xff] ^ crc_tab[0][crc >> 24];
        b += 4;
        n -= 4;
    }
    while (n--)
        crc = crc_tab[0][(crc ^ *b++) & 0xff] ^ (crc >> 8);
    return ~crc;
}


uint32_t
mx_lb_fnv1a(const char *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 16777619u;
    }
    return h;
}


static int
cmp_points(const void *a, const void *b)
{
    const point_t *x = a, *y = b;
    if (x->hash != y->hash)
        return x->hash < y->hash ? -1 : 1;
    /* Equal hashes: the earlier node first, as nginx's (stable in practice) sort keeps it. */
    return x->node < y->node ? -1 : x->node > y->node;
}


/* nginx's ngx_http_upstream_init_chash(): crc32(HOST \0 PORT PREV_HASH), where HOST and
 * PORT split the name at its last ':' when digits follow it ("unix:" names: the path,
 * empty port). */
static void
build_ketama(mx_lb_t *lb, const mx_lb_node_t *nodes)
{
    lb->points = mx_alloc(sizeof(point_t) * lb->total * KETAMA_POINTS);
    size_t np = 0;
    for (size_t i = 0; i < lb->n; i++) {
        const char *s = nodes[i].name, *host = s, *port = NULL;
        size_t len = nodes[i].len, hlen = len, plen = 0;
        if (len >= 5 && strncasecmp(s, "unix:", 5) == 0) {
            host = s + 5;
            hlen = len - 5;
        } else {
            for (size_t j = 0; j < len; j++) {
                char c = s[len - j - 1];
                if (c == ':') {
                    hlen = len - j - 1;
                    port = s + len - j;
                    plen = j;
                    break;
                }
                if (c < '0' || c > '9')
                    break;
            }
        }
        uint32_t base = mx_lb_crc32(0, host, hlen);
        base = mx_lb_crc32(base, "", 1);
        base = mx_lb_crc32(base, port ? port : "", plen);
        uint32_t prev = 0;
        for (int j = 0; j < lb->weight[i] * KETAMA_POINTS; j++) {
            unsigned char le[4] = {prev & 0xff, (prev >> 8) & 0xff, (prev >> 16) & 0xff,
                                   prev >> 24};
            uint32_t h = mx_lb_crc32(base, le, 4);
            lb->points[np++] = (point_t){h, (uint32_t)i};
            prev = h;
        }
    }
    qsort(lb->points, np, sizeof(point_t), cmp_points);
    size_t k = 0;
    for (size_t j = 1; j < np; j++)
        if (lb->points[k].hash != lb->points[j].hash)
            lb->points[++k] = lb->points[j];
    lb->npoints = np ? k + 1 : 0;
}


mx_lb_t *
mx_lb_new(mx_lb_algorithm_t algorithm, const mx_lb_node_t *nodes, size_t n)
{
    mx_lb_t *lb = mx_calloc(1, sizeof(*lb));
    lb->algorithm = algorithm;
    lb->n = n;
    lb->weight = mx_alloc(sizeof(int) * (n ? n : 1));
    lb->cum = mx_alloc(sizeof(uint64_t) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) {
        lb->weight[i] = nodes[i].weight >= 1 ? nodes[i].weight : 1;
        lb->total += (uint64_t)lb->weight[i];
        lb->cum[i] = lb->total;
    }
    pthread_mutex_init(&lb->lock, NULL);
    /* weighted, and the hashing ones for an empty key */
    lb->current = mx_calloc(n ? n : 1, sizeof(int64_t));
    if (algorithm == MX_LB_KETAMA)
        build_ketama(lb, nodes);
    return lb;
}


void
mx_lb_free(mx_lb_t *lb)
{
    if (lb == NULL)
        return;
    pthread_mutex_destroy(&lb->lock);
    mx_free(lb->weight);
    mx_free(lb->cum);
    mx_free(lb->current);
    mx_free(lb->points);
    mx_free(lb);
}


mx_lb_algorithm_t
mx_lb_algorithm(const mx_lb_t *lb)
{
    return lb->algorithm;
}


size_t
mx_lb_count(const mx_lb_t *lb)
{
    return lb->n;
}


size_t
mx_lb_ketama_points(const mx_lb_t *lb)
{
    return lb->npoints;
}


void
mx_lb_ketama_point(const mx_lb_t *lb, size_t i, uint32_t *hash, size_t *node)
{
    *hash = lb->points[i].hash;
    *node = lb->points[i].node;
}


static inline bool
usable(const mx_lb_ops_t *ops, size_t i)
{
    return ops == NULL || ops->usable == NULL || ops->usable(ops->arg, i);
}


/* The node owning weighted slot <slot> (< total). */
static size_t
slot_node(const mx_lb_t *lb, uint64_t slot)
{
    size_t lo = 0, hi = lb->n - 1;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (slot < lb->cum[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}


/* The first usable node at or after <start>, wrapping; -1 when none. */
static ssize_t
walk(const mx_lb_t *lb, size_t start, const mx_lb_ops_t *ops)
{
    size_t i = start % lb->n;
    for (size_t k = 0; k < lb->n; k++, i = i + 1 == lb->n ? 0 : i + 1)
        if (usable(ops, i))
            return (ssize_t)i;
    return -1;
}


static ssize_t
select_rr(mx_lb_t *lb, const mx_lb_ops_t *ops)
{
    uint64_t c = atomic_fetch_add_explicit(&lb->cursor, 1, memory_order_relaxed);
    return walk(lb, (size_t)(c % lb->n), ops);
}


/* nginx's ngx_http_upstream_get_peer(): every usable node gains its weight; the
 * largest current weight wins and pays the total back. */
static ssize_t
select_weighted(mx_lb_t *lb, const mx_lb_ops_t *ops)
{
    ssize_t best = -1;
    int64_t total = 0;
    pthread_mutex_lock(&lb->lock);
    for (size_t i = 0; i < lb->n; i++) {
        if (!usable(ops, i))
            continue;
        lb->current[i] += lb->weight[i];
        total += lb->weight[i];
        if (best < 0 || lb->current[i] > lb->current[best])
            best = (ssize_t)i;
    }
    if (best >= 0)
        lb->current[best] -= total;
    pthread_mutex_unlock(&lb->lock);
    return best;
}


static uint64_t
next_random(void)
{
    static __thread uint64_t x;
    if (x == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        x = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ (uint64_t)(uintptr_t)&x;
        x |= 1;
    }
    /* xorshift64* */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    return x * 2685821657736338717ull;
}


static ssize_t
select_random(mx_lb_t *lb, const mx_lb_ops_t *ops)
{
    size_t i = 0;
    for (int tries = 0; tries < 8; tries++) {
        i = slot_node(lb, (next_random() >> 11) % lb->total);
        if (usable(ops, i))
            return (ssize_t)i;
    }
    return walk(lb, i, ops);
}


/* FNV-1a of the key picks a weighted slot; an unusable pick rehashes (FNV-1a over the
 * previous hash's 4 little-endian bytes) up to 20 times, then walks to the next node. */
static ssize_t
select_fnv(mx_lb_t *lb, const char *key, size_t len, const mx_lb_ops_t *ops)
{
    uint32_t h = mx_lb_fnv1a(key, len);
    size_t i = slot_node(lb, h % lb->total);
    for (int r = 0; r < HASH_REHASHES && !usable(ops, i); r++) {
        unsigned char le[4] = {h & 0xff, (h >> 8) & 0xff, (h >> 16) & 0xff, h >> 24};
        h = mx_lb_fnv1a((const char *)le, 4);
        i = slot_node(lb, h % lb->total);
    }
    return usable(ops, i) ? (ssize_t)i : walk(lb, i, ops);
}


/* nginx's ngx_http_upstream_find_chash_point() then get_chash_peer(): the first point
 * whose hash is >= crc32(key), walking on along the ring past unusable nodes. */
static ssize_t
select_ketama(mx_lb_t *lb, const char *key, size_t len, const mx_lb_ops_t *ops)
{
    uint32_t h = mx_lb_crc32(0, key, len);
    size_t lo = 0, hi = lb->npoints;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (h > lb->points[mid].hash)
            lo = mid + 1;
        else if (h < lb->points[mid].hash)
            hi = mid;
        else {
            lo = mid;
            break;
        }
    }
    /* Walk at most the whole ring, but stop early once every node has been seen. */
    size_t seen = 0;
    uint64_t *mask = NULL, small[4] = {0};
    if (lb->n <= 256)
        mask = small;
    for (size_t k = 0; k < lb->npoints; k++) {
        size_t node = lb->points[(lo + k) % lb->npoints].node;
        if (usable(ops, node))
            return (ssize_t)node;
        if (mask != NULL && !(mask[node / 64] & (1ull << (node % 64)))) {
            mask[node / 64] |= 1ull << (node % 64);
            if (++seen == lb->n)
                break;
        }
    }
    return -1;
}


/* Fewest in-flight requests per weight (a/w_a < b/w_b as a*w_b < b*w_a); the scan starts
 * at a rotating cursor so that ties go round robin. */
static ssize_t
select_least_conn(mx_lb_t *lb, const mx_lb_ops_t *ops)
{
    uint64_t c = atomic_fetch_add_explicit(&lb->cursor, 1, memory_order_relaxed);
    ssize_t best = -1;
    int64_t best_load = 0;
    size_t i = (size_t)(c % lb->n);
    for (size_t k = 0; k < lb->n; k++, i = i + 1 == lb->n ? 0 : i + 1) {
        if (!usable(ops, i))
            continue;
        int64_t load = ops && ops->load ? ops->load(ops->arg, i) : 0;
        if (best < 0 || load * lb->weight[best] < best_load * lb->weight[i]) {
            best = (ssize_t)i;
            best_load = load;
        }
    }
    return best;
}


ssize_t
mx_lb_select(mx_lb_t *lb, const char *key, size_t len, const mx_lb_ops_t *ops)
{
    if (lb->n == 0)
        return -1;
    if (key == NULL)
        key = "", len = 0;
    /* An empty key is not hashed (it would send every such request to one backend):
     * weighted round robin instead, as nginx's hash and hash consistent do. */
    if (len == 0 && (lb->algorithm == MX_LB_FNV || lb->algorithm == MX_LB_KETAMA))
        return select_weighted(lb, ops);
    switch (lb->algorithm) {
    case MX_LB_WEIGHTED:
        return select_weighted(lb, ops);
    case MX_LB_RANDOM:
        return select_random(lb, ops);
    case MX_LB_FNV:
        return select_fnv(lb, key, len, ops);
    case MX_LB_KETAMA:
        return select_ketama(lb, key, len, ops);
    case MX_LB_LEAST_CONN:
        return select_least_conn(lb, ops);
    case MX_LB_ROUND_ROBIN:
    default:
        return select_rr(lb, ops);
    }
}
