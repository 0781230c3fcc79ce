/* Runtime upstream groups (src/upstream/group.c): selection skips tried and unusable
 * backends and falls back to any when none is usable; passive health marks a backend
 * down after max_fails and takes it back after fail_timeout; replacing the list keeps
 * unchanged backends (their health) and frees the old list only after its last view. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/errors.h"
#include "upstream/group.h"

static const char *names[] = {"127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"};
static mx_addr_t addrs[3];
static const int weights[] = {1, 1, 1};


/* mx_group_view_backend() is NULL past the end; a test that writes through the
 * result says that i is in range (and -O3 -flto then knows it too). */
static mx_backend_t *
backend_at(const mx_group_view_t *v, size_t i)
{
    mx_backend_t *b = mx_group_view_backend(v, i);
    cr_assert_not_null(b);
    return b;
}


static mx_group_t *
make(mx_lb_algorithm_t alg, int max_fails, double fail_timeout)
{
    char err[128];
    for (int i = 0; i < 3; i++)
        cr_assert_eq(mx_addr_parse(names[i], &addrs[i], err, sizeof(err)), MX_OK);
    mx_conf_upstream_t conf = {.name = "origin", .max_retries = 1, .max_fails = max_fails,
                               .fail_timeout = fail_timeout, .algorithm = alg};
    return mx_group_new(&conf, alg, names, addrs, weights, 3);
}


Test(group, select_skips_tried_and_unhealthy)
{
    mx_group_t *g = make(MX_LB_ROUND_ROBIN, 1, 10);
    mx_group_view_t *v = mx_group_view(g);
    bool forced;
    mx_backend_t *b0 = mx_group_view_backend(v, 0), *b1 = mx_group_view_backend(v, 1);
    atomic_store(&b1->healthy, 0);
    for (int i = 0; i < 10; i++) {
        ssize_t k = mx_group_select(v, NULL, 0, &b0, 1, &forced);
        cr_assert_eq(k, 2, "only backend 2 is neither tried nor down");
        cr_assert(!forced);
    }
    atomic_store(&mx_group_view_backend(v, 2)->healthy, 0);
    ssize_t k = mx_group_select(v, NULL, 0, &b0, 1, &forced);
    cr_assert(k == 1 || k == 2, "all down: any untried one");
    cr_assert(forced);
    mx_backend_t *all[] = {b0, b1, mx_group_view_backend(v, 2)};
    cr_assert_eq(mx_group_select(v, NULL, 0, all, 3, &forced), -1);
    mx_group_view_release(v);
    mx_group_unref(g);
}


Test(group, passive_health_cools_off_then_takes_back)
{
    mx_group_t *g = make(MX_LB_ROUND_ROBIN, 2, 0.2);
    mx_group_view_t *v = mx_group_view(g);
    mx_backend_t *b = mx_group_view_backend(v, 0);
    cr_assert(!mx_group_report(g, b, false), "one failure of max_fails 2");
    cr_assert(mx_group_report(g, b, true) == false);
    cr_assert(!mx_group_report(g, b, false), "a success reset the count");
    cr_assert(mx_group_report(g, b, false), "second consecutive failure marks it down");
    cr_assert(!mx_backend_usable(b, mx_group_now_ms()));
    bool forced;
    for (int i = 0; i < 6; i++)
        cr_assert_neq(mx_group_select(v, NULL, 0, NULL, 0, &forced), 0);
    usleep(300 * 1000);
    cr_assert(mx_backend_usable(b, mx_group_now_ms()), "back after fail_timeout");
    int got0 = 0;
    for (int i = 0; i < 6; i++)
        got0 += mx_group_select(v, NULL, 0, NULL, 0, &forced) == 0;
    cr_assert_eq(got0, 2);
    mx_group_view_release(v);
    mx_group_unref(g);
}


Test(group, max_fails_zero_turns_passive_health_off)
{
    mx_group_t *g = make(MX_LB_ROUND_ROBIN, 0, 10);
    mx_group_view_t *v = mx_group_view(g);
    mx_backend_t *b = mx_group_view_backend(v, 0);
    for (int i = 0; i < 10; i++)
        cr_assert(!mx_group_report(g, b, false));
    cr_assert(mx_backend_usable(b, mx_group_now_ms()));
    mx_group_view_release(v);
    mx_group_unref(g);
}


Test(group, replace_keeps_unchanged_backends_and_old_views)
{
    mx_group_t *g = make(MX_LB_KETAMA, 1, 10);
    mx_group_view_t *old = mx_group_view(g);
    mx_backend_t *b2 = mx_group_view_backend(old, 2);
    atomic_store(&b2->healthy, 0);
    atomic_store(&mx_group_view_backend(old, 0)->inflight, 4);

    const char *n2[] = {"127.0.0.1:9003", "127.0.0.1:9004"};
    mx_addr_t a2[2];
    char err[128];
    mx_addr_parse(n2[0], &a2[0], err, sizeof(err));
    mx_addr_parse(n2[1], &a2[1], err, sizeof(err));
    int w2[] = {1, 1};
    cr_assert_eq(mx_group_replace(g, n2, a2, w2, 2), MX_OK);
    int zero[] = {0};
    cr_assert_eq(mx_group_replace(g, n2, a2, zero, 1), MX_EBADARG);

    mx_group_view_t *v = mx_group_view(g);
    cr_assert_eq(mx_group_view_count(v), 2);
    cr_assert_neq(mx_group_view_gen(v), mx_group_view_gen(old));
    cr_assert_eq(mx_group_view_backend(v, 0), b2, "unchanged backend keeps its struct");
    cr_assert_eq(atomic_load(&mx_group_view_backend(v, 0)->healthy), 0, "and its health");
    cr_assert_eq(atomic_load(&mx_group_view_backend(v, 1)->healthy), 1);
    /* The old view still reads its backends (ASan would catch a use after free). */
    cr_assert_eq(atomic_load(&mx_group_view_backend(old, 0)->inflight), 4);
    cr_assert_str_eq(mx_group_view_backend(old, 1)->name, "127.0.0.1:9002");
    mx_group_view_release(old);
    bool forced;
    for (int i = 0; i < 20; i++)
        cr_assert_eq(mx_group_select(v, "k", 1, NULL, 0, &forced), 1, "9003 is down");
    mx_group_view_release(v);
    mx_group_unref(g);
}


Test(group, registry_from_config)
{
    static const char yaml[] = "version: 1\n"
                               "upstreams:\n"
                               "  origin:\n"
                               "    backends: [127.0.0.1:9001, \"127.0.0.1:9002 weight=3\"]\n"
                               "    algorithm: ketama\n"
                               "    hash_key: arg:k\n"
                               "    passive_health: { max_fails: 3, fail_timeout: 5, on_5xx: true }\n"
                               "services:\n"
                               "  - listeners: [127.0.0.1:1]\n"
                               "    upstream: origin\n";
    mx_conf_t *c;
    char err[256];
    cr_assert_eq(mx_conf_load_string("t.yaml", yaml, sizeof(yaml) - 1, &c, err, sizeof(err)),
                 MX_OK, "%s", err);
    mx_groups_init(c);
    cr_assert_eq(mx_groups_count(), 1);
    mx_group_t *g = mx_group_by_name("origin", 6);
    cr_assert_not_null(g);
    cr_assert_eq(mx_group_at(0), g);
    cr_assert_null(mx_group_by_name("origi", 5));
    const mx_conf_upstream_t *u = mx_group_conf(g);
    cr_assert_eq(u->algorithm, MX_LB_KETAMA);
    cr_assert_eq(u->hash_key, MX_HASH_KEY_ARG);
    cr_assert_str_eq(u->hash_key_name, "k");
    cr_assert_eq(u->max_fails, 3);
    cr_assert_float_eq(u->fail_timeout, 5.0, 1e-9);
    cr_assert(u->fail_on_5xx);
    mx_group_view_t *v = mx_group_view(g);
    cr_assert_str_eq(mx_group_view_backend(v, 1)->name, "127.0.0.1:9002");
    cr_assert_eq(mx_group_view_backend(v, 1)->weight, 3);
    mx_group_view_release(v);
    mx_conf_free(c); /* the groups keep copies of what they need */
    mx_groups_free();
    cr_assert_eq(mx_groups_count(), 0);
}


/* A reload builds the new config its own groups (old requests keep the old
 * ones): a backend that stays keeps the health the checks and failures gave
 * it, a new one starts up, and the groups outlive the registry that made them
 * while a request holds them. */
Test(group, reload_builds_new_groups_that_keep_health)
{
    static const char y1[] = "version: 1\n"
                             "upstreams:\n"
                             "  origin: { backends: [127.0.0.1:9001, 127.0.0.1:9002] }\n"
                             "services:\n"
                             "  - listeners: [127.0.0.1:1]\n"
                             "    upstream: origin\n";
    static const char y2[] = "version: 1\n"
                             "upstreams:\n"
                             "  origin: { backends: [127.0.0.1:9002, 127.0.0.1:9003], "
                             "read_timeout: 7 }\n"
                             "services:\n"
                             "  - listeners: [127.0.0.1:1]\n"
                             "    upstream: origin\n";
    mx_conf_t *c1, *c2;
    char err[256];
    cr_assert_eq(mx_conf_load_string("1.yaml", y1, sizeof(y1) - 1, &c1, err, sizeof(err)), MX_OK);
    cr_assert_eq(mx_conf_load_string("2.yaml", y2, sizeof(y2) - 1, &c2, err, sizeof(err)), MX_OK);
    mx_groups_t *r1 = mx_groups_build(c1);
    mx_groups_set_current(r1);
    mx_group_t *g1 = mx_groups_find(r1, "origin", 6);
    mx_group_ref(g1); /* a request in flight holds its group */
    mx_group_view_t *v = mx_group_view(g1);
    mx_backend_set_healthy(backend_at(v, 1), false); /* 9002 is down */
    mx_group_view_release(v);

    mx_groups_t *r2 = mx_groups_build(c2);
    mx_groups_set_current(r2);
    mx_groups_unref(r1); /* the old generation goes */
    mx_group_t *g2 = mx_groups_find(r2, "origin", 6);
    cr_assert_neq(g2, g1);
    cr_assert_eq(mx_group_by_name("origin", 6), g2);
    cr_assert_float_eq(mx_group_conf(g2)->read_timeout, 7.0, 1e-9);
    v = mx_group_view(g2);
    cr_assert_str_eq(mx_group_view_backend(v, 0)->name, "127.0.0.1:9002");
    cr_assert_not(atomic_load(&mx_group_view_backend(v, 0)->healthy), "9002 came back up");
    cr_assert(atomic_load(&mx_group_view_backend(v, 1)->healthy), "9003 starts up");
    mx_group_view_release(v);
    v = mx_group_view(g1); /* still usable by its request */
    cr_assert_eq(mx_group_view_count(v), 2);
    mx_group_view_release(v);
    mx_group_unref(g1);
    mx_groups_free();
    mx_groups_unref(r2);
    mx_conf_free(c1);
    mx_conf_free(c2);
}


Test(group, bad_hash_key_is_a_config_error)
{
    static const char yaml[] = "version: 1\n"
                               "upstreams:\n"
                               "  origin:\n"
                               "    backends: [127.0.0.1:9001]\n"
                               "    hash_key: query\n"
                               "services:\n"
                               "  - listeners: [127.0.0.1:1]\n";
    mx_conf_t *c;
    char err[256];
    cr_assert_eq(mx_conf_load_string("t.yaml", yaml, sizeof(yaml) - 1, &c, err, sizeof(err)),
                 MX_ECONF);
    cr_assert(strstr(err, "t.yaml:5:15: upstreams.origin.hash_key: unknown hash_key \"query\"") !=
                  NULL,
              "%s", err);
}


Test(group, a_success_ends_the_cool_off)
{
    mx_group_t *g = make(MX_LB_ROUND_ROBIN, 1, 30);
    mx_group_view_t *v = mx_group_view(g);
    mx_backend_t *b = mx_group_view_backend(v, 1);
    cr_assert(mx_group_report(g, b, false));
    cr_assert(!mx_backend_usable(b, mx_group_now_ms()));
    mx_group_report(g, b, true); /* it was tried anyway (all down) and answered */
    cr_assert(mx_backend_usable(b, mx_group_now_ms()));
    mx_group_view_release(v);
    mx_group_unref(g);
}


Test(group, an_active_up_verdict_ends_the_passive_cool_off)
{
    mx_group_t *g = make(MX_LB_ROUND_ROBIN, 1, 30);
    mx_group_view_t *v = mx_group_view(g);
    mx_backend_t *b = mx_group_view_backend(v, 0);
    cr_assert(mx_group_report(g, b, false));
    cr_assert(mx_backend_set_healthy(b, false), "was up");
    cr_assert(!mx_backend_usable(b, mx_group_now_ms()));
    cr_assert(!mx_backend_set_healthy(b, true), "was down");
    cr_assert(mx_backend_usable(b, mx_group_now_ms()), "checks passed: no cool-off left");
    mx_group_view_release(v);
    mx_group_unref(g);
}


/* Workers select and read backends while discovery keeps replacing the list: every view
 * stays readable until released (ASan, in `make test`, reports any use after free), and
 * the inflight counts of the backends that stay come back to zero. */

static mx_group_t *race_group;
static _Atomic int race_stop;


static void *
race_worker(void *arg)
{
    (void)arg;
    char key[16];
    for (int k = 0; !atomic_load(&race_stop) || k < 1000; k++) {
        mx_group_view_t *v = mx_group_view(race_group);
        bool forced;
        snprintf(key, sizeof(key), "k%d", k);
        ssize_t i = mx_group_select(v, key, strlen(key), NULL, 0, &forced);
        cr_assert(i >= 0);
        mx_backend_t *b = backend_at(v, (size_t)i);
        atomic_fetch_add(&b->inflight, 1);
        cr_assert(b->name[0] == '1' && b->addr.port >= 9001);
        atomic_fetch_sub(&b->inflight, 1);
        mx_group_view_release(v);
        if (k > 200000)
            break;
    }
    return NULL;
}


Test(group, views_survive_concurrent_replace)
{
    race_group = make(MX_LB_KETAMA, 1, 10);
    atomic_store(&race_stop, 0);
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        pthread_create(&t[i], NULL, race_worker, NULL);
    const char *a[] = {"127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"};
    const char *b[] = {"127.0.0.1:9003", "127.0.0.1:9004"};
    mx_addr_t aa[3], ba[2];
    char err[128];
    for (int i = 0; i < 3; i++)
        mx_addr_parse(a[i], &aa[i], err, sizeof(err));
    for (int i = 0; i < 2; i++)
        mx_addr_parse(b[i], &ba[i], err, sizeof(err));
    int w[] = {1, 2, 1};
    for (int r = 0; r < 300; r++) {
        if (r % 2)
            cr_assert_eq(mx_group_replace(race_group, a, aa, w, 3), MX_OK);
        else
            cr_assert_eq(mx_group_replace(race_group, b, ba, w, 2), MX_OK);
    }
    atomic_store(&race_stop, 1);
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    mx_group_view_t *v = mx_group_view(race_group);
    for (size_t i = 0; i < mx_group_view_count(v); i++)
        cr_assert_eq(atomic_load(&mx_group_view_backend(v, i)->inflight), 0);
    mx_group_view_release(v);
    mx_group_unref(race_group);
}
