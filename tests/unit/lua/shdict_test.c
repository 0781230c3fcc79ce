/* Shared dicts (src/lua/shdict.c) under a clock the tests move: values of
 * every type, add/replace/safe_set, TTL expiry and stale reads, LRU
 * eviction under the size limit, incr, lists, the copy-out buffer protocol,
 * the registry built from the config, and two threads hammering one
 * counter for an exact total. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "conf/conf.h"
#include "core/errors.h"
#include "lua/shdict.h"

static uint64_t fake_now = 1000000;


static uint64_t
fake_clock(void)
{
    return fake_now;
}


static void
setup(void)
{
    fake_now = 1000000;
    mx_shdict_set_clock(fake_clock);
}


static void
teardown(void)
{
    mx_shdict_set_clock(NULL);
}


#define K(s) (s), strlen(s)

static mx_shdict_val_t
str_val(const char *s)
{
    return (mx_shdict_val_t){.type = MX_SHDICT_STRING, .data = s, .len = strlen(s)};
}


static mx_shdict_val_t
num_val(double n)
{
    return (mx_shdict_val_t){.type = MX_SHDICT_NUMBER, .num = n};
}


static int
put(mx_shdict_t *d, int mode, const char *k, mx_shdict_val_t v, double ttl)
{
    int forcible;
    return mx_shdict_set(d, mode, K(k), &v, ttl, &forcible);
}


/* The string under <k> into <buf>, or NULL when absent. */
static const char *
get_str(mx_shdict_t *d, const char *k, char *buf, size_t len)
{
    mx_shdict_val_t v;
    if (mx_shdict_get(d, K(k), 0, &v, buf, len - 1) != MX_OK || v.type != MX_SHDICT_STRING)
        return NULL;
    buf[v.len] = '\0';
    return buf;
}


TestSuite(shdict, .init = setup, .fini = teardown);


/* lua/moxy/shared_fake.lua mirrors these costs (112 per entry, 40 per list
 * item) to evict the same entries as the live dicts. */
#define ENTRY 112
#define ITEM  40

Test(shdict, accounts_entries_as_the_fake_does)
{
    mx_shdict_t *d = mx_shdict_new("t", 1 << 20);

    cr_assert_eq(put(d, MX_SHDICT_SET, "key", str_val("value"), 0), MX_OK);
    cr_assert_eq(mx_shdict_free_space(d), (1 << 20) - (ENTRY + 3 + 5));
    mx_shdict_val_t v = str_val("item");
    cr_assert_eq(mx_shdict_push(d, 0, K("list"), &v), 1);
    cr_assert_eq(mx_shdict_free_space(d), (1 << 20) - (ENTRY + 3 + 5) - (ENTRY + 4 + ITEM + 4));
    mx_shdict_free(d);
}


Test(shdict, stores_every_type_and_deletes_with_nil)
{
    mx_shdict_t *d = mx_shdict_new("t", 1 << 20);
    mx_shdict_val_t v;
    char buf[64];

    cr_assert_eq(put(d, MX_SHDICT_SET, "s", str_val("hello"), 0), MX_OK);
    cr_assert_str_eq(get_str(d, "s", buf, sizeof(buf)), "hello");
    cr_assert_eq(put(d, MX_SHDICT_SET, "n", num_val(2.5), 0), MX_OK);
    cr_assert_eq(mx_shdict_get(d, K("n"), 0, &v, buf, sizeof(buf)), MX_OK);
    cr_assert_eq(v.type, MX_SHDICT_NUMBER);
    cr_assert_eq(v.num, 2.5);
    mx_shdict_val_t b = {.type = MX_SHDICT_BOOLEAN, .num = 1};
    cr_assert_eq(put(d, MX_SHDICT_SET, "b", b, 0), MX_OK);
    cr_assert_eq(mx_shdict_get(d, K("b"), 0, &v, buf, sizeof(buf)), MX_OK);
    cr_assert_eq(v.type, MX_SHDICT_BOOLEAN);
    cr_assert_eq(v.num, 1);
    cr_assert_eq(put(d, MX_SHDICT_SET, "s", (mx_shdict_val_t){.type = MX_SHDICT_NIL}, 0), MX_OK);
    cr_assert_eq(mx_shdict_get(d, K("s"), 0, &v, buf, sizeof(buf)), MX_DECLINED);
    cr_assert_eq(mx_shdict_get(d, "", 0, 0, &v, buf, sizeof(buf)), MX_EBADARG);
    mx_shdict_free(d);
}


Test(shdict, add_replace_and_safe_set)
{
    mx_shdict_t *d = mx_shdict_new("t", 1 << 20);

    cr_assert_eq(put(d, MX_SHDICT_ADD, "a", num_val(1), 0), MX_OK);
    cr_assert_eq(put(d, MX_SHDICT_ADD, "a", num_val(2), 0), MX_SHDICT_EEXISTS);
    cr_assert_eq(put(d, MX_SHDICT_SAFE_ADD, "a", num_val(2), 0), MX_SHDICT_EEXISTS);
    cr_assert_eq(put(d, MX_SHDICT_REPLACE, "a", num_val(3), 0), MX_OK);
    cr_assert_eq(put(d, MX_SHDICT_REPLACE, "b", num_val(3), 0), MX_DECLINED);
    /* An expired key counts as absent for add and replace. */
    cr_assert_eq(put(d, MX_SHDICT_SET, "e", num_val(1), 1), MX_OK);
    fake_now += 1000;
    cr_assert_eq(put(d, MX_SHDICT_REPLACE, "e", num_val(2), 0), MX_DECLINED);
    cr_assert_eq(put(d, MX_SHDICT_ADD, "e", num_val(2), 0), MX_OK);
    mx_shdict_free(d);
}


Test(shdict, ttl_expires_on_access_and_stale_reads_see_it)
{
    mx_shdict_t *d = mx_shdict_new("t", 1 << 20);
    mx_shdict_val_t v;
    char buf[64];
    double left;

    cr_assert_eq(put(d, MX_SHDICT_SET, "k", str_val("v"), 2.5), MX_OK);
    cr_assert_eq(mx_shdict_ttl(d, K("k"), &left), MX_OK);
    cr_assert_float_eq(left, 2.5, 1e-9);
    fake_now += 2499;
    cr_assert_eq(mx_shdict_get(d, K("k"), 0, &v, buf, sizeof(buf)), MX_OK);
    fake_now += 1;
    cr_assert_eq(mx_shdict_get(d, K("k"), 0, &v, buf, sizeof(buf)), MX_DECLINED);
    cr_assert_eq(mx_shdict_ttl(d, K("k"), &left), MX_DECLINED);
    cr_assert_eq(mx_shdict_get(d, K("k"), 1, &v, buf, sizeof(buf)), MX_OK);
    cr_assert_eq(v.stale, 1);
    int n;
    cr_assert_eq(mx_shdict_keys(d, 0, buf, sizeof(buf), &n), 0);
    cr_assert_eq(n, 0);
    cr_assert_eq(mx_shdict_flush_expired(d, 0), 1);
    cr_assert_eq(mx_shdict_get(d, K("k"), 1, &v, buf, sizeof(buf)), MX_DECLINED);

    /* expire: a new TTL, 0 for none; ttl() then says 0. */
    cr_assert_eq(put(d, MX_SHDICT_SET, "k", str_val("v"), 0), MX_OK);
    cr_assert_eq(mx_shdict_ttl(d, K("k"), &left), MX_OK);
    cr_assert_eq(left, 0);
    cr_assert_eq(mx_shdict_expire(d, K("k"), 1), MX_OK);
    fake_now += 1000;
    cr_assert_eq(mx_shdict_expire(d, K("k"), 0), MX_DECLINED);
    cr_assert_eq(mx_shdict_free_space(d), (size_t)(1 << 20) - ENTRY - 2);
    mx_shdict_free(d);
}


Test(shdict, evicts_least_recently_used_when_full)
{
    /* 8192 bytes, entries of 112 + 4 + 100: 37 fit. */
    mx_shdict_t *d = mx_shdict_new("t", 8192);
    char key[16], value[101], buf[128];
    int forced = 0;

    memset(value, 'v', 100);
    value[100] = '\0';
    for (int i = 1; i <= 100; i++) {
        snprintf(key, sizeof(key), "k%03d", i);
        mx_shdict_val_t v = str_val(value);
        int forcible;
        cr_assert_eq(mx_shdict_set(d, MX_SHDICT_SET, K(key), &v, 0, &forcible), MX_OK);
        forced += forcible;
    }
    cr_assert_eq(forced, 63);
    int n;
    cr_assert_eq(mx_shdict_keys(d, 0, NULL, 0, &n), 37 * (4 + 4));
    cr_assert_eq(n, 37);
    cr_assert_eq(mx_shdict_free_space(d), 8192 - 37 * (ENTRY + 4 + 100));
    cr_assert_null(get_str(d, "k063", buf, sizeof(buf)));
    cr_assert_not_null(get_str(d, "k064", buf, sizeof(buf))); /* now most recently used */
    cr_assert_eq(put(d, MX_SHDICT_SAFE_SET, "new", str_val(value), 0), MX_SHDICT_ENOMEM);
    cr_assert_eq(put(d, MX_SHDICT_SET, "new", str_val(value), 0), MX_OK);
    cr_assert_not_null(get_str(d, "k064", buf, sizeof(buf)));
    cr_assert_null(get_str(d, "k065", buf, sizeof(buf)));

    /* Expired entries go first, and without forcible. */
    cr_assert_eq(put(d, MX_SHDICT_SET, "k100", str_val(value), 1), MX_OK);
    fake_now += 1000;
    int forcible;
    mx_shdict_val_t v = str_val(value);
    cr_assert_eq(mx_shdict_set(d, MX_SHDICT_SAFE_SET, K("k200"), &v, 0, &forcible), MX_OK);
    cr_assert_eq(forcible, 0);

    char huge[9000];
    memset(huge, 'x', sizeof(huge));
    v = (mx_shdict_val_t){.type = MX_SHDICT_STRING, .data = huge, .len = sizeof(huge)};
    cr_assert_eq(mx_shdict_set(d, MX_SHDICT_SET, K("huge"), &v, 0, &forcible), MX_SHDICT_ENOMEM);
    mx_shdict_flush_all(d);
    cr_assert_eq(mx_shdict_free_space(d), 8192);
    mx_shdict_free(d);
}


Test(shdict, incr)
{
    mx_shdict_t *d = mx_shdict_new("t", 1 << 20);
    double out;
    int forcible;

    cr_assert_eq(mx_shdict_incr(d, K("c"), 1, 0, 0, 0, &out, &forcible), MX_DECLINED);
    cr_assert_eq(mx_shdict_incr(d, K("c"), 1, 1, 10, 2, &out, &forcible), MX_OK);
    cr_assert_eq(out, 11);
    cr_assert_eq(mx_shdict_incr(d, K("c"), -0.5, 1, 10, 0, &out, &forcible), MX_OK);
    cr_assert_eq(out, 10.5);
    fake_now += 2000; /* init_ttl ran out: init applies again */
    cr_assert_eq(mx_shdict_incr(d, K("c"), 1, 0, 0, 0, &out, &forcible), MX_DECLINED);
    cr_assert_eq(mx_shdict_incr(d, K("c"), 1, 1, 0, 0, &out, &forcible), MX_OK);
    cr_assert_eq(out, 1);
    cr_assert_eq(put(d, MX_SHDICT_SET, "s", str_val("x"), 0), MX_OK);
    cr_assert_eq(mx_shdict_incr(d, K("s"), 1, 1, 0, 0, &out, &forcible), MX_SHDICT_ENOTNUMBER);
    mx_shdict_free(d);
}


Test(shdict, lists)
{
    mx_shdict_t *d = mx_shdict_new("t", 1 << 20);
    mx_shdict_val_t v;
    char buf[4];

    cr_assert_eq(
        mx_shdict_push(d, 0, K("l"),
                       &(mx_shdict_val_t){.type = MX_SHDICT_STRING, .data = "ab", .len = 2}),
        1);
    cr_assert_eq(
        mx_shdict_push(d, 0, K("l"), &(mx_shdict_val_t){.type = MX_SHDICT_NUMBER, .num = 7}), 2);
    cr_assert_eq(
        mx_shdict_push(d, 1, K("l"),
                       &(mx_shdict_val_t){.type = MX_SHDICT_STRING, .data = "long one", .len = 8}),
        3);
    cr_assert_eq(mx_shdict_llen(d, K("l")), 3);
    cr_assert_eq(mx_shdict_get(d, K("l"), 0, &v, buf, sizeof(buf)), MX_SHDICT_EISLIST);

    /* Too small a buffer: nothing popped, the length to retry with. */
    cr_assert_eq(mx_shdict_pop(d, 1, K("l"), &v, buf, sizeof(buf)), MX_AGAIN);
    cr_assert_eq(v.len, 8);
    cr_assert_eq(mx_shdict_llen(d, K("l")), 3);
    char big[8];
    cr_assert_eq(mx_shdict_pop(d, 1, K("l"), &v, big, sizeof(big)), MX_OK);
    cr_assert_eq(memcmp(big, "long one", 8), 0);
    cr_assert_eq(mx_shdict_pop(d, 0, K("l"), &v, buf, sizeof(buf)), MX_OK);
    cr_assert_eq(v.type, MX_SHDICT_NUMBER);
    cr_assert_eq(v.num, 7);
    cr_assert_eq(mx_shdict_pop(d, 0, K("l"), &v, buf, sizeof(buf)), MX_OK);
    cr_assert_eq(memcmp(buf, "ab", 2), 0);
    cr_assert_eq(mx_shdict_pop(d, 0, K("l"), &v, buf, sizeof(buf)), MX_DECLINED);
    cr_assert_eq(mx_shdict_llen(d, K("l")), 0);
    cr_assert_eq(mx_shdict_free_space(d), 1 << 20, "an emptied list is removed");

    cr_assert_eq(put(d, MX_SHDICT_SET, "s", str_val("x"), 0), MX_OK);
    cr_assert_eq(mx_shdict_push(d, 1, K("s"), &(mx_shdict_val_t){.type = MX_SHDICT_NUMBER}),
                 MX_SHDICT_ENOTLIST);
    cr_assert_eq(mx_shdict_pop(d, 1, K("s"), &v, buf, sizeof(buf)), MX_SHDICT_ENOTLIST);
    cr_assert_eq(mx_shdict_llen(d, K("s")), MX_SHDICT_ENOTLIST);
    mx_shdict_free(d);
}


Test(shdict, get_and_keys_tell_the_size_when_the_buffer_is_small)
{
    mx_shdict_t *d = mx_shdict_new("t", 1 << 20);
    mx_shdict_val_t v;
    char small[4], buf[64];
    int n;

    cr_assert_eq(put(d, MX_SHDICT_SET, "k", str_val("0123456789"), 0), MX_OK);
    cr_assert_eq(mx_shdict_get(d, K("k"), 0, &v, small, sizeof(small)), MX_AGAIN);
    cr_assert_eq(v.len, 10);
    cr_assert_eq(put(d, MX_SHDICT_SET, "other", num_val(1), 0), MX_OK);
    cr_assert_eq(mx_shdict_keys(d, 0, small, sizeof(small), &n), 4 + 5 + 4 + 1);
    cr_assert_eq(mx_shdict_keys(d, 0, buf, sizeof(buf), &n), 14);
    cr_assert_eq(n, 2);
    uint32_t len;
    memcpy(&len, buf, 4);
    cr_assert_eq(len, 5);
    cr_assert_eq(memcmp(buf + 4, "other", 5), 0, "most recently used first");
    cr_assert_eq(mx_shdict_keys(d, 1, buf, sizeof(buf), &n), 9);
    cr_assert_eq(n, 1);
    mx_shdict_free(d);
}


Test(shdict, registry_follows_the_config)
{
    static const char yaml[] = "shared_dicts:\n"
                               "  counters: 1048576\n"
                               "  cache: 512k\n"
                               "services:\n"
                               "  - listeners: [\"127.0.0.1:1\"]\n"
                               "    upstream: o\n"
                               "upstreams:\n"
                               "  o: {backends: [\"127.0.0.1:2\"]}\n";
    mx_conf_t *c;
    char err[256];

    cr_assert_eq(mx_conf_load_string("t.yaml", yaml, strlen(yaml), &c, err, sizeof(err)), MX_OK,
                 "%s", err);
    mx_shdict_create_all(c);
    mx_shdict_t *d = mx_shdict_find(K("cache"));
    cr_assert_not_null(d);
    cr_assert_eq(mx_shdict_capacity(d), 512 * 1024);
    cr_assert_eq(mx_shdict_capacity(mx_shdict_find(K("counters"))), 1048576);
    cr_assert_null(mx_shdict_find(K("nosuch")));
    cr_assert_null(mx_shdict_find(K("cach")));
    mx_shdict_free_all();
    cr_assert_null(mx_shdict_find(K("cache")));
    mx_conf_free(c);
}


Test(shdict, config_errors_name_line_and_column)
{
    static const struct {
        const char *yaml, *err;
    } bad[] = {
        {"shared_dicts:\n  d: lots\n", "t.yaml:2:6: shared_dicts.d: expected a size in bytes"},
        {"shared_dicts:\n  d: 100\n", "t.yaml:2:6: shared_dicts.d: 100 is out of range"},
        {"shared_dicts:\n  d: 2048g\n", "t.yaml:2:6: shared_dicts.d: 2048g is out of range"},
        {"shared_dicts:\n  d: 1.5m\n", "t.yaml:2:6: shared_dicts.d: expected a size"},
        {"shared_dicts: [a]\n", "t.yaml:1:15: shared_dicts: expected a mapping"},
        {"shared_dicts:\n  d: 1m\n  d: 2m\n", "t.yaml:3:3: shared_dicts.d: duplicate"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char yaml[256], err[256];
        mx_conf_t *c;
        snprintf(yaml, sizeof(yaml),
                 "%sservices:\n  - listeners: [\"127.0.0.1:1\"]\n    upstream: o\n"
                 "upstreams:\n  o: {backends: [\"127.0.0.1:2\"]}\n",
                 bad[i].yaml);
        cr_assert_eq(mx_conf_load_string("t.yaml", yaml, strlen(yaml), &c, err, sizeof(err)),
                     MX_ECONF, "accepted %s", bad[i].yaml);
        cr_assert(strncmp(err, bad[i].err, strlen(bad[i].err)) == 0, "got \"%s\", want \"%s\"", err,
                  bad[i].err);
    }
}


/* --- two threads, one counter --- */

#define ROUNDS 200000

static void *
hammer(void *arg)
{
    mx_shdict_t *d = arg;
    double out;
    int forcible;
    char key[16];

    for (int i = 0; i < ROUNDS; i++) {
        mx_shdict_incr(d, K("hits"), 1, 1, 0, 0, &out, &forcible);
        /* Churn other keys too, so the table grows and the LRU moves under the lock. */
        snprintf(key, sizeof(key), "k%d", i % 5000);
        mx_shdict_val_t v = num_val(i);
        mx_shdict_set(d, MX_SHDICT_SET, K(key), &v, 0, &forcible);
    }
    return NULL;
}


Test(shdict, two_threads_incr_to_the_exact_total)
{
    mx_shdict_set_clock(NULL);
    mx_shdict_t *d = mx_shdict_new("t", 1 << 22);
    pthread_t a, b;
    mx_shdict_val_t v;
    char buf[8];

    pthread_create(&a, NULL, hammer, d);
    pthread_create(&b, NULL, hammer, d);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    cr_assert_eq(mx_shdict_get(d, K("hits"), 0, &v, buf, sizeof(buf)), MX_OK);
    cr_assert_eq(v.num, 2.0 * ROUNDS);
    mx_shdict_free(d);
}
