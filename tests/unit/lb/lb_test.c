/* The load-balancing algorithms (src/lb/lb.c): weighted round robin exact per cycle,
 * random and fnv uniform, ketama stable when a backend goes, every algorithm skipping
 * unusable backends and taking them back, least_conn by load with round-robin ties. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "lb/lb.h"

#define MAXN 1000

static char names[MAXN][32];
static mx_lb_node_t nodes[MAXN];
static bool down[MAXN];
static int load[MAXN];


static bool
is_usable(void *arg, size_t i)
{
    (void)arg;
    return !down[i];
}


static int
get_load(void *arg, size_t i)
{
    (void)arg;
    return load[i];
}


static const mx_lb_ops_t ops = {is_usable, get_load, NULL};


/* <n> nodes "10.0.0.<i>:80" (i from 1) with <weights> (NULL: all 1); nothing down. */
static mx_lb_t *
make(mx_lb_algorithm_t alg, size_t n, const int *weights)
{
    for (size_t i = 0; i < n; i++) {
        snprintf(names[i], sizeof(names[i]), "10.0.%zu.%zu:80", (i + 1) / 256, (i + 1) % 256);
        nodes[i] = (mx_lb_node_t){names[i], strlen(names[i]), weights ? weights[i] : 1};
        down[i] = false;
        load[i] = 0;
    }
    return mx_lb_new(alg, nodes, n);
}


/* Writes key <k> into <buf>; returns its length (call it before passing buf). */
static size_t
key_of(int k, char *buf)
{
    return (size_t)sprintf(buf, "/object/%d", k);
}


Test(lb_hash, known_vectors)
{
    cr_assert_eq(mx_lb_crc32(0, "123456789", 9), 0xcbf43926u);
    cr_assert_eq(mx_lb_crc32(mx_lb_crc32(0, "1234", 4), "56789", 5), 0xcbf43926u);
    cr_assert_eq(mx_lb_fnv1a("", 0), 2166136261u);
    cr_assert_eq(mx_lb_fnv1a("a", 1), 0xe40c292cu);
    cr_assert_eq(mx_lb_fnv1a("foobar", 6), 0xbf9cf968u);
}


Test(lb_weighted, nginx_sequence_for_5_1_1)
{
    int w[] = {5, 1, 1};
    mx_lb_t *lb = make(MX_LB_WEIGHTED, 3, w);
    /* nginx's smooth weighted round robin: a a b a c a a, then again. */
    static const int want[] = {0, 0, 1, 0, 2, 0, 0};
    for (int cycle = 0; cycle < 3; cycle++)
        for (int i = 0; i < 7; i++)
            cr_assert_eq(mx_lb_select(lb, NULL, 0, &ops), want[i], "cycle %d pick %d", cycle, i);
    mx_lb_free(lb);
}


Test(lb_weighted, exact_ratios_every_cycle)
{
    int w[] = {3, 2, 1, 4, 7};
    mx_lb_t *lb = make(MX_LB_WEIGHTED, 5, w);
    for (int cycle = 0; cycle < 50; cycle++) {
        int got[5] = {0};
        for (int i = 0; i < 17; i++)
            got[mx_lb_select(lb, NULL, 0, &ops)]++;
        for (int i = 0; i < 5; i++)
            cr_assert_eq(got[i], w[i], "cycle %d: backend %d got %d, weight %d", cycle, i,
                         got[i], w[i]);
    }
    mx_lb_free(lb);
}


Test(lb_weighted, interleaves)
{
    int w[] = {2, 2};
    mx_lb_t *lb = make(MX_LB_WEIGHTED, 2, w);
    ssize_t prev = -1;
    for (int i = 0; i < 20; i++) {
        ssize_t c = mx_lb_select(lb, NULL, 0, &ops);
        cr_assert_neq(c, prev, "equal weights alternate");
        prev = c;
    }
    mx_lb_free(lb);
}


Test(lb_round_robin, each_in_turn)
{
    mx_lb_t *lb = make(MX_LB_ROUND_ROBIN, 4, NULL);
    for (int i = 0; i < 12; i++)
        cr_assert_eq(mx_lb_select(lb, NULL, 0, &ops), i % 4);
    mx_lb_free(lb);
}


/* 100,000 picks over 10 backends: each within 5% of 10,000. */
static void
check_uniform(mx_lb_algorithm_t alg)
{
    mx_lb_t *lb = make(alg, 10, NULL);
    int got[10] = {0};
    char buf[32];
    for (int k = 0; k < 100000; k++) {
        ssize_t i = mx_lb_select(lb, buf, key_of(k, buf), &ops);
        cr_assert(i >= 0 && i < 10);
        got[i]++;
    }
    for (int i = 0; i < 10; i++)
        cr_assert(got[i] >= 9500 && got[i] <= 10500, "%s: backend %d got %d of 100000",
                  mx_lb_algorithm_str(alg), i, got[i]);
    mx_lb_free(lb);
}


Test(lb_random, uniform_within_5_percent)
{
    check_uniform(MX_LB_RANDOM);
}


Test(lb_fnv, uniform_within_5_percent)
{
    check_uniform(MX_LB_FNV);
}


Test(lb_random, follows_weights)
{
    int w[] = {1, 3};
    mx_lb_t *lb = make(MX_LB_RANDOM, 2, w);
    int got[2] = {0};
    for (int k = 0; k < 100000; k++)
        got[mx_lb_select(lb, NULL, 0, &ops)]++;
    cr_assert(got[1] > 72000 && got[1] < 78000, "weight 3 of 4 got %d of 100000", got[1]);
    mx_lb_free(lb);
}


Test(lb_fnv, same_key_same_backend)
{
    mx_lb_t *lb = make(MX_LB_FNV, 7, NULL);
    char buf[32];
    for (int k = 0; k < 1000; k++) {
        ssize_t a = mx_lb_select(lb, buf, key_of(k, buf), &ops);
        cr_assert_eq(mx_lb_select(lb, buf, strlen(buf), &ops), a);
        cr_assert_eq((size_t)a, mx_lb_fnv1a(buf, strlen(buf)) % 7);
    }
    mx_lb_free(lb);
}


Test(lb_ketama, ring_has_160_points_per_weight)
{
    int w[] = {1, 2, 3};
    mx_lb_t *lb = make(MX_LB_KETAMA, 3, w);
    size_t n = mx_lb_ketama_points(lb);
    cr_assert(n > 960 - 3 && n <= 960, "%zu points", n);
    uint32_t prev = 0, h;
    size_t node;
    for (size_t i = 0; i < n; i++) {
        mx_lb_ketama_point(lb, i, &h, &node);
        cr_assert(i == 0 || h > prev, "sorted, no duplicates");
        prev = h;
    }
    mx_lb_free(lb);
}


/* Removing one of N backends moves the keys it had (about 1/N) and no other key. */
Test(lb_ketama, removing_one_backend_moves_only_its_keys)
{
    enum { N = 10, KEYS = 20000 };
    static ssize_t before[KEYS];
    char buf[32];
    mx_lb_t *all = make(MX_LB_KETAMA, N, NULL);
    for (int k = 0; k < KEYS; k++)
        before[k] = mx_lb_select(all, buf, key_of(k, buf), &ops);
    mx_lb_free(all);

    for (size_t gone = 0; gone < N; gone++) {
        mx_lb_node_t rest[N - 1];
        size_t map[N - 1], m = 0;
        for (size_t i = 0; i < N; i++)
            if (i != gone) {
                map[m] = i;
                rest[m++] = nodes[i];
            }
        mx_lb_t *lb = mx_lb_new(MX_LB_KETAMA, rest, N - 1);
        int moved = 0;
        for (int k = 0; k < KEYS; k++) {
            size_t now = map[mx_lb_select(lb, buf, key_of(k, buf), NULL)];
            if (before[k] == (ssize_t)gone) {
                moved++;
                cr_assert_neq(now, gone);
            } else {
                cr_assert_eq(now, (size_t)before[k], "key %d moved from %zd to %zu", k,
                             before[k], now);
            }
        }
        cr_assert(moved > KEYS / N / 2 && moved < KEYS / N * 2,
                  "removing backend %zu moved %d of %d keys", gone, moved, KEYS);
        mx_lb_free(lb);
    }
}


/* A key whose backend is down walks to the next point's backend: the same choice as
 * removing the backend from the ring. Keys elsewhere stay; all come back once it is up. */
Test(lb_ketama, unusable_walks_to_the_next_point)
{
    enum { N = 5, KEYS = 5000 };
    static ssize_t before[KEYS];
    char buf[32];
    mx_lb_t *lb = make(MX_LB_KETAMA, N, NULL);
    for (int k = 0; k < KEYS; k++)
        before[k] = mx_lb_select(lb, buf, key_of(k, buf), &ops);
    mx_lb_node_t rest[N - 1];
    for (size_t i = 0; i < N - 1; i++)
        rest[i] = nodes[i < 2 ? i : i + 1];
    mx_lb_t *without = mx_lb_new(MX_LB_KETAMA, rest, N - 1);
    down[2] = true;
    for (int k = 0; k < KEYS; k++) {
        ssize_t i = mx_lb_select(lb, buf, key_of(k, buf), &ops);
        ssize_t j = mx_lb_select(without, buf, strlen(buf), NULL);
        cr_assert_eq(i, j < 2 ? j : j + 1, "key %d", k);
        if (before[k] != 2)
            cr_assert_eq(i, before[k]);
    }
    down[2] = false;
    for (int k = 0; k < KEYS; k++)
        cr_assert_eq(mx_lb_select(lb, buf, key_of(k, buf), &ops), before[k]);
    mx_lb_free(without);
    mx_lb_free(lb);
}


/* Every algorithm: a down backend is never picked, comes back when up, and with all
 * down select() returns -1. */
Test(lb_all, skip_unusable_and_take_back)
{
    char buf[32];
    for (int alg = MX_LB_ROUND_ROBIN; alg <= MX_LB_LEAST_CONN; alg++) {
        int w[] = {1, 2, 1, 3};
        mx_lb_t *lb = make((mx_lb_algorithm_t)alg, 4, w);
        down[1] = down[3] = true;
        for (int k = 0; k < 2000; k++) {
            ssize_t i = mx_lb_select(lb, buf, key_of(k, buf), &ops);
            cr_assert(i == 0 || i == 2, "%s picked down backend %zd",
                      mx_lb_algorithm_str((mx_lb_algorithm_t)alg), i);
        }
        down[1] = down[3] = false;
        int got[4] = {0};
        for (int k = 0; k < 2000; k++)
            got[mx_lb_select(lb, buf, key_of(k, buf), &ops)]++;
        for (int i = 0; i < 4; i++)
            cr_assert(got[i] > 0, "%s never took back backend %d",
                      mx_lb_algorithm_str((mx_lb_algorithm_t)alg), i);
        for (int i = 0; i < 4; i++)
            down[i] = true;
        cr_assert_eq(mx_lb_select(lb, "k", 1, &ops), -1);
        mx_lb_free(lb);
    }
}


Test(lb_least_conn, fewest_in_flight)
{
    mx_lb_t *lb = make(MX_LB_LEAST_CONN, 3, NULL);
    load[0] = 3, load[1] = 1, load[2] = 2;
    for (int i = 0; i < 10; i++)
        cr_assert_eq(mx_lb_select(lb, NULL, 0, &ops), 1);
    load[1] = 5;
    cr_assert_eq(mx_lb_select(lb, NULL, 0, &ops), 2);
    mx_lb_free(lb);
}


Test(lb_least_conn, ties_go_round_robin)
{
    mx_lb_t *lb = make(MX_LB_LEAST_CONN, 4, NULL);
    load[0] = load[1] = load[2] = load[3] = 2;
    int got[4] = {0};
    for (int i = 0; i < 400; i++)
        got[mx_lb_select(lb, NULL, 0, &ops)]++;
    for (int i = 0; i < 4; i++)
        cr_assert_eq(got[i], 100, "backend %d got %d of 400 ties", i, got[i]);
    mx_lb_free(lb);
}


Test(lb_least_conn, relative_to_weight)
{
    int w[] = {1, 4};
    mx_lb_t *lb = make(MX_LB_LEAST_CONN, 2, w);
    load[0] = 1, load[1] = 3; /* 1/1 > 3/4: the heavier one still has room */
    cr_assert_eq(mx_lb_select(lb, NULL, 0, &ops), 1);
    load[1] = 5; /* 5/4 > 1/1 */
    cr_assert_eq(mx_lb_select(lb, NULL, 0, &ops), 0);
    mx_lb_free(lb);
}


Test(lb_hash, empty_key_goes_weighted_round_robin)
{
    int w[] = {5, 1, 1};
    static const int want[] = {0, 0, 1, 0, 2, 0, 0};
    for (int alg = MX_LB_FNV; alg <= MX_LB_KETAMA; alg++) {
        mx_lb_t *lb = make((mx_lb_algorithm_t)alg, 3, w);
        for (int i = 0; i < 14; i++)
            cr_assert_eq(mx_lb_select(lb, i % 2 ? "" : NULL, 0, &ops), want[i % 7]);
        mx_lb_free(lb);
    }
}
