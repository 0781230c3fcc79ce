/* The moxy.shared.dict ABI (lua/moxy/shared.lua declares the same
 * prototypes). Thin calls into lua/shdict.c: values travel in an
 * mx_shdict_val_t, strings are copied into a buffer Lua owns (MX_AGAIN with
 * the length when it is too small: Lua grows it and calls again), so no
 * pointer into a dict escapes its lock. Counts and sizes come back as
 * doubles, which LuaJIT turns into plain numbers. Usable in every phase and
 * at load time: nothing here touches a session. */
#include "core/errors.h"
#include "lua/shdict.h"

mx_shdict_t *moxy_shdict_lookup(const char *name, size_t len);
int moxy_shdict_get(mx_shdict_t *d, const char *k, size_t kl, int stale_ok, mx_shdict_val_t *out,
                    char *buf, size_t buflen);
int moxy_shdict_set(mx_shdict_t *d, int mode, const char *k, size_t kl, const mx_shdict_val_t *v,
                    double ttl, int *forcible);
int moxy_shdict_incr(mx_shdict_t *d, const char *k, size_t kl, double n, int has_init, double init,
                     double init_ttl, double *out, int *forcible);
int moxy_shdict_ttl(mx_shdict_t *d, const char *k, size_t kl, double *out);
int moxy_shdict_expire(mx_shdict_t *d, const char *k, size_t kl, double ttl);
double moxy_shdict_push(mx_shdict_t *d, int left, const char *k, size_t kl,
                        const mx_shdict_val_t *v);
int moxy_shdict_pop(mx_shdict_t *d, int left, const char *k, size_t kl, mx_shdict_val_t *out,
                    char *buf, size_t buflen);
double moxy_shdict_llen(mx_shdict_t *d, const char *k, size_t kl);
double moxy_shdict_keys(mx_shdict_t *d, int max, char *buf, size_t buflen, int *count);
void moxy_shdict_flush_all(mx_shdict_t *d);
int moxy_shdict_flush_expired(mx_shdict_t *d, int max);
double moxy_shdict_capacity(mx_shdict_t *d);
double moxy_shdict_free_space(mx_shdict_t *d);


/* The dict declared as <name> under shared_dicts:, NULL if none. It lives
 * until the process exits. */
mx_shdict_t *
moxy_shdict_lookup(const char *name, size_t len)
{
    return mx_shdict_find(name, len);
}


int
moxy_shdict_get(mx_shdict_t *d, const char *k, size_t kl, int stale_ok, mx_shdict_val_t *out,
                char *buf, size_t buflen)
{
    return mx_shdict_get(d, k, kl, stale_ok, out, buf, buflen);
}


int
moxy_shdict_set(mx_shdict_t *d, int mode, const char *k, size_t kl, const mx_shdict_val_t *v,
                double ttl, int *forcible)
{
    return mx_shdict_set(d, mode, k, kl, v, ttl, forcible);
}


int
moxy_shdict_incr(mx_shdict_t *d, const char *k, size_t kl, double n, int has_init, double init,
                 double init_ttl, double *out, int *forcible)
{
    return mx_shdict_incr(d, k, kl, n, has_init, init, init_ttl, out, forcible);
}


int
moxy_shdict_ttl(mx_shdict_t *d, const char *k, size_t kl, double *out)
{
    return mx_shdict_ttl(d, k, kl, out);
}


int
moxy_shdict_expire(mx_shdict_t *d, const char *k, size_t kl, double ttl)
{
    return mx_shdict_expire(d, k, kl, ttl);
}


/* The new length, or a negative MX_SHDICT_E* code. */
double
moxy_shdict_push(mx_shdict_t *d, int left, const char *k, size_t kl, const mx_shdict_val_t *v)
{
    return (double)mx_shdict_push(d, left, k, kl, v);
}


int
moxy_shdict_pop(mx_shdict_t *d, int left, const char *k, size_t kl, mx_shdict_val_t *out, char *buf,
                size_t buflen)
{
    return mx_shdict_pop(d, left, k, kl, out, buf, buflen);
}


double
moxy_shdict_llen(mx_shdict_t *d, const char *k, size_t kl)
{
    return (double)mx_shdict_llen(d, k, kl);
}


/* Bytes the keys need; filled only when that is at most <buflen>. */
double
moxy_shdict_keys(mx_shdict_t *d, int max, char *buf, size_t buflen, int *count)
{
    return (double)mx_shdict_keys(d, max, buf, buflen, count);
}


void
moxy_shdict_flush_all(mx_shdict_t *d)
{
    mx_shdict_flush_all(d);
}


int
moxy_shdict_flush_expired(mx_shdict_t *d, int max)
{
    return mx_shdict_flush_expired(d, max);
}


double
moxy_shdict_capacity(mx_shdict_t *d)
{
    return (double)mx_shdict_capacity(d);
}


double
moxy_shdict_free_space(mx_shdict_t *d)
{
    return (double)mx_shdict_free_space(d);
}
