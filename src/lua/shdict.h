/* Shared dictionaries (moxy.shared.dict): named key/value stores declared
 * under `shared_dicts:` in the config, created by the main thread before the
 * workers start and shared by all of them. Each dict has one mutex guarding
 * a chained hash table and a doubly linked LRU list; every byte an entry
 * takes (its header, key, value, list items) counts against the configured
 * size, and a full dict evicts its least recently used entries. Expiry is
 * checked on access: an expired entry reads as absent (get_stale still sees
 * it) until it is overwritten, evicted or flushed. Nothing returned points
 * into dict memory: values are copied out while the lock is held. */
#ifndef MX_LUA_SHDICT_H
#define MX_LUA_SHDICT_H

#include "core/types.h"

typedef struct mx_shdict_s mx_shdict_t;

/* Value types, shared with lua/moxy/shared.lua. */
typedef enum {
    MX_SHDICT_NIL = 0, /* absent (or, as an argument to set: delete) */
    MX_SHDICT_BOOLEAN, /* num is 0 or 1 */
    MX_SHDICT_NUMBER,
    MX_SHDICT_STRING,
    MX_SHDICT_LIST, /* only ever reported, never stored through set */
} mx_shdict_type_t;

/* How set stores, OpenResty's set/safe_set/add/safe_add/replace. */
typedef enum {
    MX_SHDICT_SET = 0,
    MX_SHDICT_SAFE_SET,
    MX_SHDICT_ADD,
    MX_SHDICT_SAFE_ADD,
    MX_SHDICT_REPLACE,
} mx_shdict_mode_t;

/* Expected failures (the Lua side returns nil, "<reason>"), shared with
 * lua/moxy/shared.lua. "not found" is MX_DECLINED. */
#define MX_SHDICT_EEXISTS    (-5201) /* "exists": add on a live key */
#define MX_SHDICT_ENOMEM     (-5202) /* "no memory": the entry does not fit */
#define MX_SHDICT_ENOTNUMBER (-5203) /* "not a number": incr on a non-number */
#define MX_SHDICT_ENOTLIST   (-5204) /* "value not a list" */
#define MX_SHDICT_EISLIST    (-5205) /* "value is a list": get on a list */

#define MX_SHDICT_MAX_KEY 65535

/* A value in or out. On the way out <data> is the caller's buffer; <len> is
 * the string's full length even when it did not fit. */
typedef struct {
    int type;  /* mx_shdict_type_t */
    int stale; /* out: the entry had expired (get with stale_ok) */
    double num;
    const char *data;
    size_t len;
} mx_shdict_val_t;

/* Makes a dict of <capacity> bytes named <name>; free with mx_shdict_free. */
mx_shdict_t *mx_shdict_new(const char *name, size_t capacity);
void mx_shdict_free(mx_shdict_t *d);
const char *mx_shdict_name(const mx_shdict_t *d);

/* The clock TTLs are measured against, in milliseconds (CLOCK_MONOTONIC by
 * default). Tests set their own; NULL restores the default. */
void mx_shdict_set_clock(uint64_t (*now_ms)(void));

/* The process-wide registry the FFI looks names up in: mx_shdict_create_all
 * makes one dict per `shared_dicts:` entry of <c> (main thread, before any
 * VM or worker exists), mx_shdict_free_all frees them at exit (no VM may
 * be left). mx_shdict_find returns NULL for an undeclared name. */
void mx_shdict_create_all(const mx_conf_t *c);
void mx_shdict_free_all(void);
mx_shdict_t *mx_shdict_find(const char *name, size_t len);
/* A reload (main thread, workers running): adds the dicts <c> declares that
 * do not exist yet; existing ones keep their contents and size. Returns how
 * many dicts keep a size <c> changes (the first described in <note>), or
 * MX_ECONF past MX_SHDICT_MAX dicts. */
#define MX_SHDICT_MAX 256
int mx_shdict_sync(const mx_conf_t *c, char *note, size_t notelen);

/* Reads key <k>. Returns MX_OK with the value in <*out> (a string copied
 * into <buf> when out->len <= <buflen>, else MX_AGAIN: nothing copied, call
 * again with a buffer of out->len bytes), MX_DECLINED when absent or expired
 * (with <stale_ok> an expired entry is returned with out->stale set), or
 * MX_SHDICT_EISLIST. A read makes the entry the most recently used. */
int mx_shdict_get(mx_shdict_t *d, const char *k, size_t kl, int stale_ok, mx_shdict_val_t *out,
                  char *buf, size_t buflen);

/* Stores <v> (MX_SHDICT_NIL deletes) under <k> for <ttl> seconds (0:
 * forever) per <mode>. Returns MX_OK (and <*forcible> 1 when live entries
 * were evicted to make room), MX_DECLINED (replace: not found),
 * MX_SHDICT_EEXISTS (add) or MX_SHDICT_ENOMEM. */
int mx_shdict_set(mx_shdict_t *d, int mode, const char *k, size_t kl, const mx_shdict_val_t *v,
                  double ttl, int *forcible);

/* Adds <n> to the number under <k> and sets <*out>. Absent with <has_init>:
 * stores init + n with <init_ttl>. Returns MX_OK, MX_DECLINED,
 * MX_SHDICT_ENOTNUMBER or MX_SHDICT_ENOMEM. */
int mx_shdict_incr(mx_shdict_t *d, const char *k, size_t kl, double n, int has_init, double init,
                   double init_ttl, double *out, int *forcible);

/* Seconds left in <*out> (0: never expires); MX_OK or MX_DECLINED. */
int mx_shdict_ttl(mx_shdict_t *d, const char *k, size_t kl, double *out);
/* Sets the TTL of a live key (0: never); MX_OK or MX_DECLINED. */
int mx_shdict_expire(mx_shdict_t *d, const char *k, size_t kl, double ttl);

/* Pushes <v> (string or number) at the head (<left>) or tail of the list
 * under <k>, making it when absent. Returns the new length (>= 1),
 * MX_SHDICT_ENOTLIST or MX_SHDICT_ENOMEM. */
int64_t mx_shdict_push(mx_shdict_t *d, int left, const char *k, size_t kl,
                       const mx_shdict_val_t *v);
/* Pops the head (<left>) or tail of the list under <k> into <*out> as get
 * does (MX_AGAIN: buffer too small, nothing popped). Returns MX_OK,
 * MX_DECLINED (absent or empty: the key is then gone) or
 * MX_SHDICT_ENOTLIST. */
int mx_shdict_pop(mx_shdict_t *d, int left, const char *k, size_t kl, mx_shdict_val_t *out,
                  char *buf, size_t buflen);
/* The list's length (0 when absent) or MX_SHDICT_ENOTLIST. */
int64_t mx_shdict_llen(mx_shdict_t *d, const char *k, size_t kl);

/* Writes up to <max> (0: all) live keys into <buf> as a 4-byte native
 * length followed by the bytes, and sets <*count>. Returns the bytes
 * needed: when more than <buflen>, nothing is written (call again). */
size_t mx_shdict_keys(mx_shdict_t *d, int max, char *buf, size_t buflen, int *count);

/* Removes every entry. */
void mx_shdict_flush_all(mx_shdict_t *d);
/* Removes up to <max> (0: all) expired entries; returns how many. */
int mx_shdict_flush_expired(mx_shdict_t *d, int max);

size_t mx_shdict_capacity(const mx_shdict_t *d);
size_t mx_shdict_free_space(mx_shdict_t *d);

#endif
