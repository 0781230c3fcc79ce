/* Shared dictionaries: see shdict.h. One mutex per dict; every public
 * function takes it for its whole run and copies what it returns, so no
 * pointer into an entry outlives the lock. Memory is malloc'ed per entry and
 * accounted against the dict's capacity (header + key + value + list
 * items); the bucket array is not accounted. */
#include "lua/shdict.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "conf/conf.h"
#include "core/alloc.h"
#include "core/errors.h"

typedef struct item_s item_t;
typedef struct ent_s ent_t;

/* One value of a list entry. */
struct item_s {
    item_t *prev, *next;
    int type; /* MX_SHDICT_STRING or MX_SHDICT_NUMBER */
    double num;
    size_t len;
    char data[];
};

/* One key. Owned by its dict; freed by ent_remove(). */
struct ent_s {
    ent_t *hnext;       /* bucket chain */
    ent_t *prev, *next; /* LRU list: d->head is the most recently used */
    uint64_t hash;
    uint64_t expires; /* clock ms, 0: never */
    size_t size;      /* bytes accounted to the dict */
    int type;         /* mx_shdict_type_t, never NIL */
    double num;       /* number or boolean */
    char *str;        /* string value, owned */
    size_t len;
    item_t *lhead, *ltail; /* list value */
    size_t llen;
    size_t klen;
    char key[];
};

struct mx_shdict_s {
    pthread_mutex_t lock;
    char *name;
    size_t capacity;
    size_t used;
    ent_t **buckets;
    size_t nbuckets; /* a power of two */
    size_t n;
    ent_t *head, *tail;
};

#define EXPIRED_SCAN 64 /* expired entries looked for past the LRU tail when full */

static mx_shdict_t **registry; /* MX_SHDICT_MAX slots: a reload appends, never moves */
static size_t nregistry;         /* published with release order, read with acquire */


static uint64_t
mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}


static uint64_t (*clock_ms)(void) = mono_ms;


void
mx_shdict_set_clock(uint64_t (*now_ms)(void))
{
    clock_ms = now_ms ? now_ms : mono_ms;
}


static uint64_t
fnv1a(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ULL;
    }
    return h;
}


/* <ttl> seconds from <now> as an expiry time, 0 for none. */
static uint64_t
expiry(uint64_t now, double ttl)
{
    if (!(ttl > 0))
        return 0;
    double ms = ceil(ttl * 1000.0);
    return now + (ms > 1e15 ? (uint64_t)1e15 : (uint64_t)ms);
}


static bool
expired(const ent_t *e, uint64_t now)
{
    return e->expires != 0 && e->expires <= now;
}


mx_shdict_t *
mx_shdict_new(const char *name, size_t capacity)
{
    mx_shdict_t *d = mx_calloc(1, sizeof(*d));
    pthread_mutex_init(&d->lock, NULL);
    d->name = mx_strdup(name);
    d->capacity = capacity;
    d->nbuckets = 64;
    d->buckets = mx_calloc(d->nbuckets, sizeof(ent_t *));
    return d;
}


static void
ent_free(ent_t *e)
{
    for (item_t *it = e->lhead, *next; it != NULL; it = next) {
        next = it->next;
        mx_free(it);
    }
    mx_free(e->str);
    mx_free(e);
}


void
mx_shdict_free(mx_shdict_t *d)
{
    if (d == NULL)
        return;
    for (ent_t *e = d->head, *next; e != NULL; e = next) {
        next = e->next;
        ent_free(e);
    }
    pthread_mutex_destroy(&d->lock);
    mx_free(d->buckets);
    mx_free(d->name);
    mx_free(d);
}


const char *
mx_shdict_name(const mx_shdict_t *d)
{
    return d->name;
}


/* --- the registry --- */

void
mx_shdict_create_all(const mx_conf_t *c)
{
    mx_shdict_free_all();
    if (c->nshared_dicts == 0)
        return;
    registry = mx_calloc(c->nshared_dicts > MX_SHDICT_MAX ? c->nshared_dicts : MX_SHDICT_MAX,
                         sizeof(mx_shdict_t *));
    for (size_t i = 0; i < c->nshared_dicts; i++)
        registry[i] = mx_shdict_new(c->shared_dicts[i].name, c->shared_dicts[i].size);
    nregistry = c->nshared_dicts;
}


void
mx_shdict_free_all(void)
{
    for (size_t i = 0; i < nregistry; i++)
        mx_shdict_free(registry[i]);
    mx_free(registry);
    registry = NULL;
    nregistry = 0;
}


int
mx_shdict_sync(const mx_conf_t *c, char *note, size_t notelen)
{
    int kept = 0;
    size_t n = nregistry;
    if (note != NULL && notelen > 0)
        note[0] = '\0';
    if (registry == NULL)
        registry = mx_calloc(MX_SHDICT_MAX, sizeof(mx_shdict_t *));
    for (size_t i = 0; i < c->nshared_dicts; i++) {
        const mx_conf_shdict_t *sd = &c->shared_dicts[i];
        mx_shdict_t *d = mx_shdict_find(sd->name, strlen(sd->name));
        if (d != NULL) {
            if (d->capacity != sd->size) {
                kept++;
                if (note != NULL && kept == 1)
                    snprintf(note, notelen,
                             "shared dict \"%s\" keeps its size of %zu bytes (the new config "
                             "says %zu: a new size needs an upgrade or restart)",
                             sd->name, d->capacity, sd->size);
            }
            continue;
        }
        if (n >= MX_SHDICT_MAX)
            return MX_ECONF;
        registry[n++] = mx_shdict_new(sd->name, sd->size);
        __atomic_store_n(&nregistry, n, __ATOMIC_RELEASE);
    }
    return kept;
}


mx_shdict_t *
mx_shdict_find(const char *name, size_t len)
{
    size_t nreg = __atomic_load_n(&nregistry, __ATOMIC_ACQUIRE);
    for (size_t i = 0; i < nreg; i++)
        if (strlen(registry[i]->name) == len && memcmp(registry[i]->name, name, len) == 0)
            return registry[i];
    return NULL;
}


/* --- table and LRU (lock held) --- */

static ent_t *
find(mx_shdict_t *d, const char *k, size_t kl, uint64_t h)
{
    for (ent_t *e = d->buckets[h & (d->nbuckets - 1)]; e != NULL; e = e->hnext)
        if (e->hash == h && e->klen == kl && memcmp(e->key, k, kl) == 0)
            return e;
    return NULL;
}


static void
lru_unlink(mx_shdict_t *d, ent_t *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        d->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        d->tail = e->prev;
    e->prev = e->next = NULL;
}


static void
lru_push(mx_shdict_t *d, ent_t *e)
{
    e->prev = NULL;
    e->next = d->head;
    if (d->head)
        d->head->prev = e;
    else
        d->tail = e;
    d->head = e;
}


static void
touch(mx_shdict_t *d, ent_t *e)
{
    if (d->head != e) {
        lru_unlink(d, e);
        lru_push(d, e);
    }
}


static void
grow(mx_shdict_t *d)
{
    size_t nb = d->nbuckets * 2;
    ent_t **b = mx_calloc(nb, sizeof(ent_t *));
    for (size_t i = 0; i < d->nbuckets; i++) {
        for (ent_t *e = d->buckets[i], *next; e != NULL; e = next) {
            next = e->hnext;
            e->hnext = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
        }
    }
    mx_free(d->buckets);
    d->buckets = b;
    d->nbuckets = nb;
}


static void
ent_insert(mx_shdict_t *d, ent_t *e)
{
    if (d->n >= d->nbuckets)
        grow(d);
    ent_t **slot = &d->buckets[e->hash & (d->nbuckets - 1)];
    e->hnext = *slot;
    *slot = e;
    lru_push(d, e);
    d->n++;
    d->used += e->size;
}


static void
ent_remove(mx_shdict_t *d, ent_t *e)
{
    ent_t **p = &d->buckets[e->hash & (d->nbuckets - 1)];
    while (*p != e)
        p = &(*p)->hnext;
    *p = e->hnext;
    lru_unlink(d, e);
    d->n--;
    d->used -= e->size;
    ent_free(e);
}


/* Frees room until <need> more bytes fit, sparing <keep> (the entry being
 * written, whose own bytes the caller already counted in <need>): expired
 * entries first, then, when <evict>, live ones from the LRU tail (setting
 * <*forcible>). Returns MX_OK or MX_SHDICT_ENOMEM. */
static int
make_room(mx_shdict_t *d, ptrdiff_t need, const ent_t *keep, bool evict, int *forcible,
          uint64_t now)
{
    while (need > 0 && d->used + (size_t)need > d->capacity) {
        ent_t *victim = NULL;
        int scanned = 0;
        for (ent_t *e = d->tail; e != NULL && scanned < EXPIRED_SCAN; e = e->prev, scanned++) {
            if (e != keep && expired(e, now)) {
                victim = e;
                break;
            }
        }
        if (victim == NULL && evict) {
            victim = d->tail == keep && keep != NULL ? keep->prev : d->tail;
            if (victim != NULL)
                *forcible = 1;
        }
        if (victim == NULL)
            return MX_SHDICT_ENOMEM;
        ent_remove(d, victim);
    }
    return MX_OK;
}


static size_t
value_size(const mx_shdict_val_t *v)
{
    return v->type == MX_SHDICT_STRING ? v->len : 0;
}


static ent_t *
ent_new(const char *k, size_t kl, uint64_t h, const mx_shdict_val_t *v, uint64_t expires)
{
    ent_t *e = mx_calloc(1, sizeof(*e) + kl);
    memcpy(e->key, k, kl);
    e->klen = kl;
    e->hash = h;
    e->expires = expires;
    e->type = v->type;
    e->num = v->num;
    if (v->type == MX_SHDICT_STRING) {
        e->str = mx_alloc(v->len);
        memcpy(e->str, v->data, v->len);
        e->len = v->len;
    }
    e->size = sizeof(*e) + kl + value_size(v);
    return e;
}


/* Copies a scalar value into <out> and <buf>; MX_AGAIN when it does not fit. */
static int
copy_out(int type, double num, const char *p, size_t len, mx_shdict_val_t *out, char *buf,
         size_t buflen)
{
    out->type = type;
    out->num = num;
    out->len = 0;
    out->data = buf;
    if (type == MX_SHDICT_STRING) {
        out->len = len;
        if (len > buflen)
            return MX_AGAIN;
        if (len > 0)
            memcpy(buf, p, len);
    }
    return MX_OK;
}


static bool
bad_key(size_t kl)
{
    return kl == 0 || kl > MX_SHDICT_MAX_KEY;
}


/* --- operations --- */

int
mx_shdict_get(mx_shdict_t *d, const char *k, size_t kl, int stale_ok, mx_shdict_val_t *out,
              char *buf, size_t buflen)
{
    if (bad_key(kl))
        return MX_EBADARG;
    uint64_t h = fnv1a(k, kl), now = clock_ms();
    int rc = MX_DECLINED;
    out->stale = 0;
    pthread_mutex_lock(&d->lock);
    ent_t *e = find(d, k, kl, h);
    if (e != NULL && (stale_ok || !expired(e, now))) {
        if (e->type == MX_SHDICT_LIST) {
            rc = MX_SHDICT_EISLIST;
        } else {
            out->stale = expired(e, now);
            rc = copy_out(e->type, e->num, e->str, e->len, out, buf, buflen);
            if (!out->stale)
                touch(d, e);
        }
    }
    pthread_mutex_unlock(&d->lock);
    return rc;
}


/* set's body, lock held. */
static int
set_locked(mx_shdict_t *d, int mode, const char *k, size_t kl, uint64_t h, const mx_shdict_val_t *v,
           double ttl, int *forcible, uint64_t now)
{
    ent_t *e = find(d, k, kl, h);
    bool live = e != NULL && !expired(e, now);

    if ((mode == MX_SHDICT_ADD || mode == MX_SHDICT_SAFE_ADD) && live)
        return MX_SHDICT_EEXISTS;
    if (mode == MX_SHDICT_REPLACE && !live)
        return MX_DECLINED;
    if (v->type == MX_SHDICT_NIL) {
        if (e != NULL)
            ent_remove(d, e);
        return MX_OK;
    }
    size_t need = sizeof(ent_t) + kl + value_size(v);
    if (need > d->capacity)
        return MX_SHDICT_ENOMEM;
    bool safe = mode == MX_SHDICT_SAFE_SET || mode == MX_SHDICT_SAFE_ADD;
    ptrdiff_t more = (ptrdiff_t)need - (ptrdiff_t)(e ? e->size : 0);
    if (make_room(d, more, e, !safe, forcible, now) != MX_OK)
        return MX_SHDICT_ENOMEM;
    if (e != NULL)
        ent_remove(d, e);
    ent_insert(d, ent_new(k, kl, h, v, expiry(now, ttl)));
    return MX_OK;
}


int
mx_shdict_set(mx_shdict_t *d, int mode, const char *k, size_t kl, const mx_shdict_val_t *v,
              double ttl, int *forcible)
{
    *forcible = 0;
    if (bad_key(kl) || (v->type == MX_SHDICT_LIST))
        return MX_EBADARG;
    uint64_t h = fnv1a(k, kl), now = clock_ms();
    pthread_mutex_lock(&d->lock);
    int rc = set_locked(d, mode, k, kl, h, v, ttl, forcible, now);
    pthread_mutex_unlock(&d->lock);
    return rc;
}


int
mx_shdict_incr(mx_shdict_t *d, const char *k, size_t kl, double n, int has_init, double init,
               double init_ttl, double *out, int *forcible)
{
    *forcible = 0;
    if (bad_key(kl))
        return MX_EBADARG;
    uint64_t h = fnv1a(k, kl), now = clock_ms();
    int rc = MX_OK;
    pthread_mutex_lock(&d->lock);
    ent_t *e = find(d, k, kl, h);
    if (e == NULL || expired(e, now)) {
        if (!has_init) {
            rc = MX_DECLINED;
        } else {
            mx_shdict_val_t v = {.type = MX_SHDICT_NUMBER, .num = init + n};
            rc = set_locked(d, MX_SHDICT_SET, k, kl, h, &v, init_ttl, forcible, now);
            *out = v.num;
        }
    } else if (e->type != MX_SHDICT_NUMBER) {
        rc = MX_SHDICT_ENOTNUMBER;
    } else {
        e->num += n;
        *out = e->num;
        touch(d, e);
    }
    pthread_mutex_unlock(&d->lock);
    return rc;
}


int
mx_shdict_ttl(mx_shdict_t *d, const char *k, size_t kl, double *out)
{
    if (bad_key(kl))
        return MX_EBADARG;
    uint64_t h = fnv1a(k, kl), now = clock_ms();
    int rc = MX_DECLINED;
    pthread_mutex_lock(&d->lock);
    ent_t *e = find(d, k, kl, h);
    if (e != NULL && !expired(e, now)) {
        *out = e->expires ? (double)(e->expires - now) / 1000.0 : 0;
        rc = MX_OK;
    }
    pthread_mutex_unlock(&d->lock);
    return rc;
}


int
mx_shdict_expire(mx_shdict_t *d, const char *k, size_t kl, double ttl)
{
    if (bad_key(kl))
        return MX_EBADARG;
    uint64_t h = fnv1a(k, kl), now = clock_ms();
    int rc = MX_DECLINED;
    pthread_mutex_lock(&d->lock);
    ent_t *e = find(d, k, kl, h);
    if (e != NULL && !expired(e, now)) {
        e->expires = expiry(now, ttl);
        rc = MX_OK;
    }
    pthread_mutex_unlock(&d->lock);
    return rc;
}


int64_t
mx_shdict_push(mx_shdict_t *d, int left, const char *k, size_t kl, const mx_shdict_val_t *v)
{
    if (bad_key(kl) || (v->type != MX_SHDICT_STRING && v->type != MX_SHDICT_NUMBER))
        return MX_EBADARG;
    uint64_t h = fnv1a(k, kl), now = clock_ms();
    int forcible = 0;
    int64_t rc;
    pthread_mutex_lock(&d->lock);
    ent_t *e = find(d, k, kl, h);
    if (e != NULL && expired(e, now)) {
        ent_remove(d, e);
        e = NULL;
    }
    size_t isize = sizeof(item_t) + value_size(v);
    size_t need = isize + (e ? 0 : sizeof(ent_t) + kl);
    if (e != NULL && e->type != MX_SHDICT_LIST) {
        rc = MX_SHDICT_ENOTLIST;
    } else if ((e ? e->size : 0) + need > d->capacity ||
               make_room(d, (ptrdiff_t)need, e, true, &forcible, now) != MX_OK) {
        rc = MX_SHDICT_ENOMEM;
    } else {
        if (e == NULL) {
            mx_shdict_val_t lv = {.type = MX_SHDICT_LIST};
            e = ent_new(k, kl, h, &lv, 0);
            ent_insert(d, e);
        }
        item_t *it = mx_alloc(isize);
        it->type = v->type;
        it->num = v->num;
        it->len = value_size(v);
        if (it->len > 0)
            memcpy(it->data, v->data, it->len);
        if (left) {
            it->prev = NULL;
            it->next = e->lhead;
            if (e->lhead)
                e->lhead->prev = it;
            else
                e->ltail = it;
            e->lhead = it;
        } else {
            it->next = NULL;
            it->prev = e->ltail;
            if (e->ltail)
                e->ltail->next = it;
            else
                e->lhead = it;
            e->ltail = it;
        }
        e->llen++;
        e->size += isize;
        d->used += isize;
        touch(d, e);
        rc = (int64_t)e->llen;
    }
    pthread_mutex_unlock(&d->lock);
    return rc;
}


int
mx_shdict_pop(mx_shdict_t *d, int left, const char *k, size_t kl, mx_shdict_val_t *out, char *buf,
              size_t buflen)
{
    if (bad_key(kl))
        return MX_EBADARG;
    uint64_t h = fnv1a(k, kl), now = clock_ms();
    int rc = MX_DECLINED;
    out->stale = 0;
    pthread_mutex_lock(&d->lock);
    ent_t *e = find(d, k, kl, h);
    if (e == NULL || expired(e, now)) {
        rc = MX_DECLINED;
    } else if (e->type != MX_SHDICT_LIST) {
        rc = MX_SHDICT_ENOTLIST;
    } else if (e->llen > 0) {
        item_t *it = left ? e->lhead : e->ltail;
        rc = copy_out(it->type, it->num, it->data, it->len, out, buf, buflen);
        if (rc == MX_OK) {
            if (it->prev)
                it->prev->next = it->next;
            else
                e->lhead = it->next;
            if (it->next)
                it->next->prev = it->prev;
            else
                e->ltail = it->prev;
            size_t isize = sizeof(item_t) + it->len;
            e->size -= isize;
            d->used -= isize;
            e->llen--;
            mx_free(it);
            if (e->llen == 0)
                ent_remove(d, e);
            else
                touch(d, e);
        }
    }
    pthread_mutex_unlock(&d->lock);
    return rc;
}


int64_t
mx_shdict_llen(mx_shdict_t *d, const char *k, size_t kl)
{
    if (bad_key(kl))
        return MX_EBADARG;
    uint64_t h = fnv1a(k, kl), now = clock_ms();
    int64_t rc = 0;
    pthread_mutex_lock(&d->lock);
    ent_t *e = find(d, k, kl, h);
    if (e != NULL && !expired(e, now))
        rc = e->type == MX_SHDICT_LIST ? (int64_t)e->llen : MX_SHDICT_ENOTLIST;
    pthread_mutex_unlock(&d->lock);
    return rc;
}


size_t
mx_shdict_keys(mx_shdict_t *d, int max, char *buf, size_t buflen, int *count)
{
    uint64_t now = clock_ms();
    size_t total = 0;
    int n = 0;
    pthread_mutex_lock(&d->lock);
    for (ent_t *e = d->head; e != NULL && (max <= 0 || n < max); e = e->next) {
        if (!expired(e, now)) {
            total += 4 + e->klen;
            n++;
        }
    }
    if (total <= buflen) {
        char *p = buf;
        int i = 0;
        for (ent_t *e = d->head; e != NULL && i < n; e = e->next) {
            if (expired(e, now))
                continue;
            uint32_t len = (uint32_t)e->klen;
            memcpy(p, &len, 4);
            memcpy(p + 4, e->key, e->klen);
            p += 4 + e->klen;
            i++;
        }
    }
    pthread_mutex_unlock(&d->lock);
    *count = n;
    return total;
}


void
mx_shdict_flush_all(mx_shdict_t *d)
{
    pthread_mutex_lock(&d->lock);
    while (d->head != NULL)
        ent_remove(d, d->head);
    pthread_mutex_unlock(&d->lock);
}


int
mx_shdict_flush_expired(mx_shdict_t *d, int max)
{
    uint64_t now = clock_ms();
    int n = 0;
    pthread_mutex_lock(&d->lock);
    for (ent_t *e = d->tail, *prev; e != NULL && (max <= 0 || n < max); e = prev) {
        prev = e->prev;
        if (expired(e, now)) {
            ent_remove(d, e);
            n++;
        }
    }
    pthread_mutex_unlock(&d->lock);
    return n;
}


size_t
mx_shdict_capacity(const mx_shdict_t *d)
{
    return d->capacity;
}


size_t
mx_shdict_free_space(mx_shdict_t *d)
{
    pthread_mutex_lock(&d->lock);
    size_t n = d->used < d->capacity ? d->capacity - d->used : 0;
    pthread_mutex_unlock(&d->lock);
    return n;
}
