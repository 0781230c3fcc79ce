/* select() cost of each load-balancing algorithm with 10, 100 and 1,000 backends, in ns
 * per call: the bare algorithm (src/lb/) and the path a request takes through its group
 * (view, health predicate, inflight counts: src/upstream/group.c). One thread; weights
 * 1..4; every backend usable; keys from 4,096 request-like strings.
 *   make bench-lb   (also run at the end of `make bench`) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/errors.h"
#include "lb/lb.h"
#include "upstream/group.h"

#define NKEYS 4096

static char keys[NKEYS][40];
static size_t keylen[NKEYS];
static bool never_down(void *arg, size_t i) { (void)arg; (void)i; return true; }
static int no_load(void *arg, size_t i) { (void)arg; return (int)(i & 3); }


static double
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}


int
main(void)
{
    static const int sizes[] = {10, 100, 1000};
    double budget = getenv("LB_BENCH_MS") ? atof(getenv("LB_BENCH_MS")) * 1e6 : 150e6;
    for (int k = 0; k < NKEYS; k++)
        keylen[k] = (size_t)snprintf(keys[k], sizeof(keys[k]), "/api/v1/items/%d?user=%d",
                                     k * 7919, k);
    printf("\n## load balancing: select() cost (ns per call, one thread)\n\n");
    printf("| algorithm | 10 lb | 10 group | 100 lb | 100 group | 1000 lb | 1000 group |\n");
    printf("|---|---:|---:|---:|---:|---:|---:|\n");
    volatile ssize_t sink = 0;
    for (int alg = MX_LB_ROUND_ROBIN; alg <= MX_LB_LEAST_CONN; alg++) {
        printf("| %s |", mx_lb_algorithm_str((mx_lb_algorithm_t)alg));
        for (size_t si = 0; si < 3; si++) {
            int n = sizes[si];
            char (*names)[32] = malloc((size_t)n * 32);
            const char **np = malloc((size_t)n * sizeof(char *));
            mx_lb_node_t *nodes = malloc((size_t)n * sizeof(mx_lb_node_t));
            mx_addr_t *addrs = malloc((size_t)n * sizeof(mx_addr_t));
            int *weights = malloc((size_t)n * sizeof(int));
            char err[128];
            for (int i = 0; i < n; i++) {
                snprintf(names[i], 32, "10.%d.%d.%d:8080", i / 65536, (i / 256) % 256, i % 256);
                np[i] = names[i];
                weights[i] = 1 + i % 4;
                nodes[i] = (mx_lb_node_t){names[i], strlen(names[i]), weights[i]};
                if (mx_addr_parse(names[i], &addrs[i], err, sizeof(err)) != MX_OK) {
                    fprintf(stderr, "lb_bench: %s\n", err);
                    return 1;
                }
            }
            mx_lb_t *lb = mx_lb_new((mx_lb_algorithm_t)alg, nodes, (size_t)n);
            mx_lb_ops_t ops = {never_down, no_load, NULL};
            mx_conf_upstream_t conf = {.name = "bench", .algorithm = (mx_lb_algorithm_t)alg,
                                       .max_fails = 1, .fail_timeout = 10};
            mx_group_t *g = mx_group_new(&conf, (mx_lb_algorithm_t)alg, np, addrs, weights,
                                         (size_t)n);
            for (int pass = 0; pass < 2; pass++) {
                long iters = 0;
                double t0 = now_ns(), t1;
                do {
                    for (int r = 0; r < 1024; r++, iters++) {
                        int k = (int)(iters & (NKEYS - 1));
                        if (pass == 0) {
                            sink += mx_lb_select(lb, keys[k], keylen[k], &ops);
                        } else {
                            bool forced;
                            mx_group_view_t *v = mx_group_view(g);
                            sink += mx_group_select(v, keys[k], keylen[k], NULL, 0, &forced);
                            mx_group_view_release(v);
                        }
                    }
                    t1 = now_ns();
                } while (t1 - t0 < budget);
                printf(" %.1f |", (t1 - t0) / (double)iters);
                fflush(stdout);
            }
            mx_group_unref(g);
            mx_lb_free(lb);
            free(names);
            free(np);
            free(nodes);
            free(addrs);
            free(weights);
        }
        printf("\n");
    }
    (void)sink;
    printf("\nlb: the bare algorithm; group: + a view of the backend list, the health "
           "predicate and the clock, as a request pays it.\n");
    return 0;
}
