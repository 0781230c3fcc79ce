/* The YAML loader. libyaml's document API turns the text into a node tree;
 * each mapping is then read against a table of its keys (type, field offset,
 * range), so adding a key is one line in a table below. Errors name the file,
 * the 1-based line and column of the offending node and the key path:
 * "moxy.yaml:8:5: services[0].listner: unknown key". */
#include "conf/conf.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/errors.h"

#define MAX_CONF_BYTES (16 * 1024 * 1024)

typedef struct ld_s ld_t;
typedef struct keydef_s keydef_t;

typedef enum {
    K_INT,  /* int, an integer in min..max */
    K_SIZE, /* size_t, an integer in min..max */
    K_U64,  /* uint64_t, an integer in min..max */
    K_DUR,  /* double seconds, fractions allowed, in min..max */
    K_BOOL, /* bool: true/false, yes/no */
    K_STR,  /* char *, owned, not empty */
    K_FILE, /* char *, owned, a readable regular file (relative to the cwd) */
    K_ENUM, /* an int-sized enum: the index of the value in names[] */
    K_ADDR, /* mx_addr_t, see mx_addr_parse() */
    K_MAP,  /* a nested mapping whose keys (sub) fill the same struct */
    K_FN,   /* fn(ld, value, struct) does it all */
} ktype_t;

/* One key of a mapping. <off> is the field's offset in the struct that the
 * mapping fills; keys are applied in table order (upstreams before
 * services), not file order. */
struct keydef_s {
    const char *name;
    ktype_t type;
    size_t off;
    double min, max;
    bool required;
    const char *const *names; /* K_ENUM, NULL-terminated */
    const keydef_t *sub;      /* K_MAP */
    int (*fn)(ld_t *ld, yaml_node_t *v, void *base);
};

/* The loader's state while one document is read. */
struct ld_s {
    const char *file;
    yaml_document_t *doc;
    mx_conf_t *conf;
    size_t svc;     /* index of the service being read */
    char path[256]; /* key path of the node being read: "services[0].limits" */
    size_t plen;
    char *err;
    size_t errlen;
};

static int on_version(ld_t *ld, yaml_node_t *v, void *base);
static int on_access_log(ld_t *ld, yaml_node_t *v, void *base);
static int on_upstreams(ld_t *ld, yaml_node_t *v, void *base);
static int on_backends(ld_t *ld, yaml_node_t *v, void *base);
static int on_health(ld_t *ld, yaml_node_t *v, void *base);
static int on_health_type(ld_t *ld, yaml_node_t *v, void *base);
static int on_health_statuses(ld_t *ld, yaml_node_t *v, void *base);
static int on_health_method(ld_t *ld, yaml_node_t *v, void *base);
static int on_health_headers(ld_t *ld, yaml_node_t *v, void *base);
static int on_health_body(ld_t *ld, yaml_node_t *v, void *base);
static int on_hash_key(ld_t *ld, yaml_node_t *v, void *base);
static int on_services(ld_t *ld, yaml_node_t *v, void *base);
static int on_listeners(ld_t *ld, yaml_node_t *v, void *base);
static int on_tls(ld_t *ld, yaml_node_t *v, void *base);
static int on_upstream_ref(ld_t *ld, yaml_node_t *v, void *base);
static int on_shared_dicts(ld_t *ld, yaml_node_t *v, void *base);
static int on_script_config(ld_t *ld, yaml_node_t *v, void *base);

static const char *const level_names[] = {"debug", "info", "warn", "error", NULL};
static const char *const lua_policy_names[] = {"fail_closed", "fail_open", NULL};
static const char *const lb_names[] = {"round_robin", "weighted",   "random", "fnv",
                                       "ketama",      "least_conn", NULL};
static const char *const health_types[] = {"tcp", "http", NULL};

/* K_ENUM stores an int. */
_Static_assert(sizeof(mx_log_level_t) == sizeof(int) && sizeof(mx_lb_algorithm_t) == sizeof(int),
               "enums are int-sized");

#define DAY 86400.0

/* clang-format off */
#define C_(f) .off = offsetof(mx_conf_t, f)
static const keydef_t conf_keys[] = {
    {"version",                           K_FN,   .fn = on_version},
    {"threads",                           K_INT,  C_(threads), 1, 256},
    {"daemon",                            K_BOOL, C_(daemon)},
    {"pid_file",                          K_STR,  C_(pid_file)},
    {"error_log",                         K_STR,  C_(error_log)},
    {"log_level",                         K_ENUM, C_(log_level), .names = level_names},
    {"lua_error_policy",                  K_ENUM, C_(lua_error_policy), .names = lua_policy_names},
    {"access_log",                        K_FN,   .fn = on_access_log},
    {"upgrade_sock",                      K_STR,  C_(upgrade_sock)},
    {"user",                              K_STR,  C_(user)},
    {"group",                             K_STR,  C_(group)},
    {"grace_period_seconds",              K_DUR,  C_(grace_period_seconds), 0, 3600},
    {"graceful_shutdown_timeout_seconds", K_DUR,  C_(graceful_shutdown_timeout_seconds), 0, DAY},
    {"upstream_keepalive_pool_size",      K_INT,  C_(upstream_keepalive_pool_size), 0, 65536},
    {"io_uring",                          K_BOOL, C_(io_uring)},
    {"lua_path",                          K_STR,  C_(lua_path)},
    {"upstreams",                         K_FN,   .fn = on_upstreams},
    {"shared_dicts",                      K_FN,   .fn = on_shared_dicts},
    {"services",                          K_FN,   .fn = on_services, .required = true},
    {.name = NULL},
};

#define H_(f) .off = offsetof(mx_conf_health_t, f)
static const keydef_t health_keys[] = {
    {"type",     K_FN,  .fn = on_health_type},
    {"path",     K_STR, H_(path)},
    {"host",     K_STR, H_(host)},
    {"interval", K_DUR, H_(interval), 0.01, DAY},
    {"rise",     K_INT, H_(rise), 1, 100},
    {"fall",     K_INT, H_(fall), 1, 100},
    {"timeout",  K_DUR, H_(timeout), 0.001, 3600},
    {"port",     K_INT, H_(port), 1, 65535},
    {"expected_statuses", K_FN, .fn = on_health_statuses},
    {"method",   K_FN,  .fn = on_health_method},
    {"headers",  K_FN,  .fn = on_health_headers},
    {"expected_body", K_FN, .fn = on_health_body},
    {.name = NULL},
};

#define B_(f) .off = offsetof(mx_conf_backend_t, f)
static const keydef_t backend_keys[] = {
    {"address", K_ADDR, B_(addr), .required = true},
    {"weight",  K_INT,  B_(weight), 1, 1000},
    {.name = NULL},
};

#define U_(f) .off = offsetof(mx_conf_upstream_t, f)
static const keydef_t passive_keys[] = {
    {"max_fails",    K_INT,  U_(max_fails), 0, 1000},
    {"fail_timeout", K_DUR,  U_(fail_timeout), 0.001, DAY},
    {"on_5xx",       K_BOOL, U_(fail_on_5xx)},
    {.name = NULL},
};

static const keydef_t upstream_keys[] = {
    {"backends",        K_FN,   .fn = on_backends, .required = true},
    {"algorithm",       K_ENUM, U_(algorithm), .names = lb_names},
    {"health_check",    K_FN,   .fn = on_health},
    {"max_retries",     K_INT,  U_(max_retries), 0, 16},
    {"hash_key",        K_FN,   .fn = on_hash_key},
    {"passive_health",  K_MAP,  .sub = passive_keys},
    {"connect_timeout", K_DUR,  U_(connect_timeout), 0.001, 3600},
    {"read_timeout",    K_DUR,  U_(read_timeout), 0.001, DAY},
    {"write_timeout",   K_DUR,  U_(write_timeout), 0.001, DAY},
    {"idle_timeout",    K_DUR,  U_(idle_timeout), 0.001, DAY},
    {"resolve_interval", K_DUR, U_(resolve_interval), 0, DAY},
    {.name = NULL},
};

#define L_(f) .off = offsetof(mx_conf_listener_t, f)
static const keydef_t tls_keys[] = {
    {"cert", K_FILE, L_(tls_cert), .required = true},
    {"key",  K_FILE, L_(tls_key), .required = true},
    {.name = NULL},
};

static const keydef_t listener_keys[] = {
    {"address", K_ADDR, L_(addr), .required = true},
    {"tls",     K_FN,   .fn = on_tls},
    {"backlog", K_INT,  L_(backlog), 1, 65535},
    {.name = NULL},
};

#define S_(f) .off = offsetof(mx_conf_service_t, f)
static const keydef_t limit_keys[] = {
    {"max_header_bytes", K_SIZE, S_(max_header_bytes), 1024, 1048576},
    {"max_headers",      K_SIZE, S_(max_headers), 1, 10000},
    {"max_request_line", K_SIZE, S_(max_request_line), 256, 1048576},
    {"max_body_bytes",   K_U64,  S_(max_body_bytes), 0, 9223372036854775807.0},
    {.name = NULL},
};

static const keydef_t timeout_keys[] = {
    {"client_header", K_DUR, S_(client_header_timeout), 0.001, DAY},
    {"client_body",   K_DUR, S_(client_body_timeout), 0.001, DAY},
    {"keepalive",     K_DUR, S_(keepalive_timeout), 0.001, DAY},
    {"send",          K_DUR, S_(send_timeout), 0.001, DAY},
    {.name = NULL},
};

static const keydef_t service_keys[] = {
    {"name",            K_STR,  S_(name)},
    {"listeners",       K_FN,   .fn = on_listeners, .required = true},
    {"script",          K_FILE, S_(script)},
    {"upstream",        K_FN,   .fn = on_upstream_ref},
    {"limits",          K_MAP,  .sub = limit_keys},
    {"timeouts",        K_MAP,  .sub = timeout_keys},
    {"x_forwarded_for", K_BOOL, S_(x_forwarded_for)},
    {"via",             K_BOOL, S_(via)},
    {"allow_connect",   K_BOOL, S_(allow_connect)},
    {"config",          K_FN,   .fn = on_script_config},
    {.name = NULL},
};
/* clang-format on */


static yaml_node_t *
node(ld_t *ld, int i)
{
    return yaml_document_get_node(ld->doc, i);
}


static const char *
scalar(const yaml_node_t *n)
{
    return (const char *)n->data.scalar.value;
}


/* A plain empty, "~" or "null" value: the same as leaving the key out. */
static bool
is_null(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *s = scalar(n);
    return *s == '\0' || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
           strcmp(s, "NULL") == 0;
}


/* Appends ".<key>" (or "[<i>]" when key is NULL) to the key path and returns
 * the previous length, for pop(). */
static size_t
push(ld_t *ld, const char *key, size_t i)
{
    size_t mark = ld->plen, room = sizeof(ld->path) - mark;
    int n;

    if (key == NULL)
        n = snprintf(ld->path + mark, room, "[%zu]", i);
    else
        n = snprintf(ld->path + mark, room, "%s%s", mark ? "." : "", key);
    ld->plen = n < 0 || (size_t)n >= room ? sizeof(ld->path) - 1 : mark + (size_t)n;
    return mark;
}


static void
pop(ld_t *ld, size_t mark)
{
    ld->plen = mark;
    ld->path[mark] = '\0';
}


/* Writes "file:line:col: path: message" for node <n> into the error buffer
 * and returns MX_ECONF. */
__attribute__((format(printf, 3, 4))) static int
fail(ld_t *ld, const yaml_node_t *n, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(ld->err, ld->errlen, "%s:%zu:%zu: %s%s%s", ld->file, n->start_mark.line + 1,
             n->start_mark.column + 1, ld->path, ld->plen ? ": " : "", msg);
    /* Keys and values are quoted as written: a newline (or another control
     * byte) in one must not break the one line this is, nor the log's. */
    for (char *p = ld->err; *p != '\0'; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    return MX_ECONF;
}


static int
type_error(ld_t *ld, const yaml_node_t *v, const char *want)
{
    if (v->type == YAML_SCALAR_NODE)
        return fail(ld, v, "expected %s, got \"%.100s\"", want, scalar(v));
    return fail(ld, v, "expected %s, got a %s", want,
                v->type == YAML_MAPPING_NODE ? "mapping" : "sequence");
}


/* Reads the decimal integer <s> (the text of <v>, or part of it) into
 * <*out>, checking it lies in min..max. */
static int
get_int(ld_t *ld, const yaml_node_t *v, const char *s, double min, double max, long long *out)
{
    char *end;

    *out = 0;
    if (v->type != YAML_SCALAR_NODE)
        return type_error(ld, v, "an integer");
    errno = 0;
    long long n = strtoll(s, &end, 10);
    if (!(s[0] == '-' || (s[0] >= '0' && s[0] <= '9')) || *end != '\0')
        return fail(ld, v, "expected an integer, got \"%.100s\"", s);
    if (errno == ERANGE || n < min || n > max)
        return fail(ld, v, "%s is out of range (%.0f..%.0f)", s, min, max);
    *out = n;
    return MX_OK;
}


/* Reads a duration in seconds ("30", "0.5") in min..max into <*out>. */
static int
get_dur(ld_t *ld, const yaml_node_t *v, double min, double max, double *out)
{
    char *end;

    *out = 0;
    if (v->type != YAML_SCALAR_NODE)
        return type_error(ld, v, "a duration in seconds");
    const char *s = scalar(v);
    double x = strtod(s, &end);
    if (*s == '\0' || strspn(s, "0123456789.eE+-") != strlen(s) || *end != '\0' || !isfinite(x))
        return type_error(ld, v, "a duration in seconds");
    if (x < min || x > max)
        return fail(ld, v, "%s is out of range (%g..%g seconds)", s, min, max);
    *out = x;
    return MX_OK;
}


static int
get_bool(ld_t *ld, const yaml_node_t *v, bool *out)
{
    if (v->type == YAML_SCALAR_NODE) {
        const char *s = scalar(v);
        if (strcasecmp(s, "true") == 0 || strcasecmp(s, "yes") == 0)
            return *out = true, MX_OK;
        if (strcasecmp(s, "false") == 0 || strcasecmp(s, "no") == 0)
            return *out = false, MX_OK;
    }
    return type_error(ld, v, "true or false");
}


static int
get_str(ld_t *ld, const yaml_node_t *v, const char **out)
{
    *out = ""; /* gcc -O2 does not see that an error return leaves it unread */
    if (v->type != YAML_SCALAR_NODE)
        return type_error(ld, v, "a string");
    if (*scalar(v) == '\0')
        return fail(ld, v, "must not be empty");
    *out = scalar(v);
    return MX_OK;
}


/* Sets <*out> to the index of <v>'s value in <names>. */
static int
get_enum(ld_t *ld, const yaml_node_t *v, const char *const *names, int *out)
{
    char list[256] = "";
    const char *s;

    if (get_str(ld, v, &s) != MX_OK)
        return MX_ECONF;
    for (int i = 0; names[i] != NULL; i++) {
        if (strcmp(s, names[i]) == 0)
            return *out = i, MX_OK;
        size_t n = strlen(list);
        snprintf(list + n, sizeof(list) - n, "%s%s", i ? ", " : "", names[i]);
    }
    return fail(ld, v, "unknown value \"%.100s\" (expected one of: %s)", s, list);
}


static int
get_addr(ld_t *ld, const yaml_node_t *v, const char *s, mx_addr_t *a)
{
    char why[160];

    if (mx_addr_parse(s, a, why, sizeof(why)) != MX_OK)
        return fail(ld, v, "\"%.100s\" is not a valid address (%s)", s, why);
    return MX_OK;
}


/* Paths are taken as written: relative ones are relative to the current
 * directory, not to the config file. */
static int
check_file(ld_t *ld, const yaml_node_t *v, const char *path)
{
    struct stat st;

    if (stat(path, &st) != 0 || access(path, R_OK) != 0)
        return fail(ld, v, "cannot open \"%s\" (%s)", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return fail(ld, v, "\"%s\" is not a regular file", path);
    return MX_OK;
}


static int walk_map(ld_t *ld, yaml_node_t *m, const keydef_t *keys, void *base);


/* Stores value <v> of key <d> into the struct <base>. */
static int
set_value(ld_t *ld, const keydef_t *d, yaml_node_t *v, void *base)
{
    void *f = (char *)base + d->off;
    const char *s;
    long long n;
    int rc;

    switch (d->type) {
    case K_INT:
    case K_SIZE:
    case K_U64:
        if (get_int(ld, v, v->type == YAML_SCALAR_NODE ? scalar(v) : "", d->min, d->max, &n))
            return MX_ECONF;
        if (d->type == K_INT)
            *(int *)f = (int)n;
        else if (d->type == K_SIZE)
            *(size_t *)f = (size_t)n;
        else
            *(uint64_t *)f = (uint64_t)n;
        return MX_OK;
    case K_DUR:
        return get_dur(ld, v, d->min, d->max, f);
    case K_BOOL:
        return get_bool(ld, v, f);
    case K_STR:
    case K_FILE:
        if ((rc = get_str(ld, v, &s)) != MX_OK)
            return rc;
        if (d->type == K_FILE && (rc = check_file(ld, v, s)) != MX_OK)
            return rc;
        mx_free(*(char **)f);
        *(char **)f = mx_strdup(s);
        return MX_OK;
    case K_ENUM:
        return get_enum(ld, v, d->names, f);
    case K_ADDR:
        if ((rc = get_str(ld, v, &s)) != MX_OK)
            return rc;
        return get_addr(ld, v, s, f);
    case K_MAP:
        return walk_map(ld, v, d->sub, base);
    case K_FN:
        return d->fn(ld, v, base);
    }
    return MX_ECONF;
}


static yaml_node_t *
find_value(ld_t *ld, yaml_node_t *m, const char *key)
{
    for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
        yaml_node_t *k = node(ld, p->key);
        if (k->type == YAML_SCALAR_NODE && strcmp(scalar(k), key) == 0)
            return node(ld, p->value);
    }
    return NULL;
}


/* Reads mapping <m> into the struct <base> by the table <keys>: first every
 * key must be known and given once, then each key of the table is applied
 * in table order. A null value counts as absent. */
static int
walk_map(ld_t *ld, yaml_node_t *m, const keydef_t *keys, void *base)
{
    if (m->type != YAML_MAPPING_NODE)
        return type_error(ld, m, "a mapping");
    yaml_node_pair_t *start = m->data.mapping.pairs.start;
    for (yaml_node_pair_t *p = start; p < m->data.mapping.pairs.top; p++) {
        yaml_node_t *k = node(ld, p->key);
        if (k->type != YAML_SCALAR_NODE)
            return type_error(ld, k, "a key");
        const keydef_t *d = keys;
        while (d->name != NULL && strcmp(d->name, scalar(k)) != 0)
            d++;
        size_t mark = push(ld, scalar(k), 0);
        if (d->name == NULL)
            return fail(ld, k, "unknown key");
        for (yaml_node_pair_t *q = start; q < p; q++)
            if (strcmp(scalar(node(ld, q->key)), scalar(k)) == 0)
                return fail(ld, k, "duplicate key");
        pop(ld, mark);
    }
    for (const keydef_t *d = keys; d->name != NULL; d++) {
        yaml_node_t *v = find_value(ld, m, d->name);
        if (v == NULL || is_null(v)) {
            if (d->required)
                return fail(ld, m, "missing required key \"%s\"", d->name);
            continue;
        }
        size_t mark = push(ld, d->name, 0);
        if (set_value(ld, d, v, base) != MX_OK)
            return MX_ECONF;
        pop(ld, mark);
    }
    return MX_OK;
}


/* Checks that <v> is a non-empty sequence and sets <*n> to its length. */
static int
get_seq(ld_t *ld, yaml_node_t *v, const char *what, size_t *n)
{
    *n = 0;
    if (v->type != YAML_SEQUENCE_NODE)
        return type_error(ld, v, "a sequence");
    *n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
    if (*n == 0)
        return fail(ld, v, "at least one %s is required", what);
    return MX_OK;
}


static int
on_version(ld_t *ld, yaml_node_t *v, void *base)
{
    long long n;

    if (get_int(ld, v, v->type == YAML_SCALAR_NODE ? scalar(v) : "", 0, 1e9, &n) != MX_OK)
        return MX_ECONF;
    if (n != 1)
        return fail(ld, v, "unsupported version %lld (this moxy reads version 1)", n);
    ((mx_conf_t *)base)->version = 1;
    return MX_OK;
}


static int
on_access_log(ld_t *ld, yaml_node_t *v, void *base)
{
    mx_conf_t *c = base;
    const char *s;

    if (get_str(ld, v, &s) != MX_OK)
        return MX_ECONF;
    mx_free(c->access_log);
    c->access_log = strcmp(s, "off") == 0 ? NULL : mx_strdup(s);
    return MX_OK;
}


void
mx_conf_upstream_defaults(mx_conf_upstream_t *u)
{
    u->algorithm = MX_LB_ROUND_ROBIN;
    strcpy(u->health.type, "tcp");
    u->health.interval = 2;
    u->health.rise = 2;
    u->health.fall = 3;
    u->health.timeout = 1;
    for (int st = 200; st < 400; st++)
        u->health.expect[st / 64] |= 1ull << (st % 64);
    strcpy(u->health.method, "GET");
    u->max_retries = 1;
    u->max_fails = 1;
    u->fail_timeout = 10;
    u->connect_timeout = 2;
    u->read_timeout = 30;
    u->write_timeout = 30;
    u->idle_timeout = 60;
    u->resolve_interval = 30;
}


static void
upstream_init(mx_conf_upstream_t *u, const char *name)
{
    mx_conf_upstream_defaults(u);
    u->name = mx_strdup(name);
}


/* upstreams: a mapping of group name to group. */
static int
on_upstreams(ld_t *ld, yaml_node_t *v, void *base)
{
    mx_conf_t *c = base;

    if (v->type != YAML_MAPPING_NODE)
        return type_error(ld, v, "a mapping of upstream names to upstreams");
    yaml_node_pair_t *start = v->data.mapping.pairs.start;
    c->nupstreams = (size_t)(v->data.mapping.pairs.top - start);
    c->upstreams = mx_calloc(c->nupstreams, sizeof(mx_conf_upstream_t));
    for (size_t i = 0; i < c->nupstreams; i++) {
        yaml_node_t *k = node(ld, start[i].key);
        const char *name;
        if (get_str(ld, k, &name) != MX_OK)
            return MX_ECONF;
        size_t mark = push(ld, name, 0);
        for (size_t j = 0; j < i; j++)
            if (strcmp(c->upstreams[j].name, name) == 0)
                return fail(ld, k, "duplicate upstream name");
        upstream_init(&c->upstreams[i], name);
        if (walk_map(ld, node(ld, start[i].value), upstream_keys, &c->upstreams[i]) != MX_OK)
            return MX_ECONF;
        pop(ld, mark);
    }
    return MX_OK;
}


/* A backend: "127.0.0.1:9001", "127.0.0.1:9001 weight=2" (as the Lua
 * balancer writes it) or {address:, weight:}. */
static int
get_backend(ld_t *ld, yaml_node_t *v, mx_conf_backend_t *b)
{
    const char *s;
    char *save, *copy;
    long long n;
    int rc;

    b->weight = 1;
    if (v->type == YAML_MAPPING_NODE)
        return walk_map(ld, v, backend_keys, b);
    if (get_str(ld, v, &s) != MX_OK)
        return MX_ECONF;
    copy = mx_strdup(s);
    char *t = strtok_r(copy, " \t", &save);
    rc = t ? get_addr(ld, v, t, &b->addr) : type_error(ld, v, "an address");
    while (rc == MX_OK && (t = strtok_r(NULL, " \t", &save)) != NULL) {
        if (strncmp(t, "weight=", 7) != 0)
            rc = fail(ld, v, "unknown backend option \"%s\" (expected weight=N)", t);
        else if ((rc = get_int(ld, v, t + 7, 1, 1000, &n)) == MX_OK)
            b->weight = (int)n;
    }
    mx_free(copy);
    return rc;
}


static int
on_backends(ld_t *ld, yaml_node_t *v, void *base)
{
    mx_conf_upstream_t *u = base;
    size_t n;

    if (get_seq(ld, v, "backend", &n) != MX_OK)
        return MX_ECONF;
    u->backends = mx_calloc(n, sizeof(mx_conf_backend_t));
    u->nbackends = n;
    for (size_t i = 0; i < n; i++) {
        size_t mark = push(ld, NULL, i);
        if (get_backend(ld, node(ld, v->data.sequence.items.start[i]), &u->backends[i]) != MX_OK)
            return MX_ECONF;
        pop(ld, mark);
    }
    return MX_OK;
}


static int
on_health(ld_t *ld, yaml_node_t *v, void *base)
{
    mx_conf_health_t *h = &((mx_conf_upstream_t *)base)->health;

    h->enabled = true;
    if (walk_map(ld, v, health_keys, h) != MX_OK)
        return MX_ECONF;
    if (h->expect_body[0] != '\0' && strcmp(h->method, "HEAD") == 0)
        return fail(ld, v, "expected_body needs a body to look in: not with method HEAD");
    if (h->path == NULL && strcmp(h->type, "http") == 0)
        h->path = mx_strdup("/");
    return MX_OK;
}


/* hash_key: uri | path | client_ip | host | header:NAME | arg:NAME | cookie:NAME. */
static int
on_hash_key(ld_t *ld, yaml_node_t *v, void *base)
{
    static const char *const plain[] = {"uri", "path", "client_ip", "host", NULL};
    static const char *const named[] = {"header:", "arg:", "cookie:", NULL};
    mx_conf_upstream_t *u = base;
    const char *s;

    if (get_str(ld, v, &s) != MX_OK)
        return MX_ECONF;
    for (int i = 0; plain[i] != NULL; i++) {
        if (strcmp(s, plain[i]) == 0) {
            u->hash_key = (mx_hash_key_kind_t)i;
            return MX_OK;
        }
    }
    for (int i = 0; named[i] != NULL; i++) {
        size_t n = strlen(named[i]);
        if (strncmp(s, named[i], n) == 0 && s[n] != '\0') {
            u->hash_key = (mx_hash_key_kind_t)(MX_HASH_KEY_HEADER + i);
            mx_free(u->hash_key_name);
            u->hash_key_name = mx_strdup(s + n);
            return MX_OK;
        }
    }
    return fail(ld, v, "unknown hash_key \"%.100s\" (expected uri, path, client_ip, host, "
                "header:NAME, arg:NAME or cookie:NAME)", s);
}


static int
on_health_type(ld_t *ld, yaml_node_t *v, void *base)
{
    mx_conf_health_t *h = base;
    int i;

    if (get_enum(ld, v, health_types, &i) != MX_OK)
        return MX_ECONF;
    snprintf(h->type, sizeof(h->type), "%s", health_types[i]);
    return MX_OK;
}


/* One item of expected_statuses: 204, "2xx" or "200-299"; sets its bits in <expect>. */
static int
get_status_item(ld_t *ld, yaml_node_t *v, uint64_t *expect)
{
    const char *want = "a status (204), a class (\"2xx\") or a range (\"200-299\")";
    long long lo, hi;
    char a[8], b[8];

    if (v->type != YAML_SCALAR_NODE)
        return type_error(ld, v, want);
    const char *s = scalar(v);
    size_t n = strlen(s);
    if (n == 3 && s[0] >= '1' && s[0] <= '5' && (s[1] == 'x' || s[1] == 'X') &&
        (s[2] == 'x' || s[2] == 'X')) {
        lo = (s[0] - '0') * 100;
        hi = lo + 99;
    } else if (n == 7 && s[3] == '-') {
        memcpy(a, s, 3), a[3] = '\0';
        memcpy(b, s + 4, 4);
        if (get_int(ld, v, a, 100, 599, &lo) != MX_OK || get_int(ld, v, b, 100, 599, &hi) != MX_OK)
            return MX_ECONF;
        if (hi < lo)
            return fail(ld, v, "empty status range \"%s\"", s);
    } else if (strspn(s, "0123456789") == n && n > 0) {
        if (get_int(ld, v, s, 100, 599, &lo) != MX_OK)
            return MX_ECONF;
        hi = lo;
    } else {
        return type_error(ld, v, want);
    }
    for (long long st = lo; st <= hi; st++)
        expect[st / 64] |= 1ull << (st % 64);
    return MX_OK;
}


/* expected_statuses: one item or a sequence of them; replaces the 2xx/3xx default. */
static int
on_health_statuses(ld_t *ld, yaml_node_t *v, void *base)
{
    mx_conf_health_t *h = base;
    size_t n;

    memset(h->expect, 0, sizeof(h->expect));
    if (v->type != YAML_SEQUENCE_NODE)
        return get_status_item(ld, v, h->expect);
    if (get_seq(ld, v, "status", &n) != MX_OK)
        return MX_ECONF;
    for (size_t i = 0; i < n; i++) {
        size_t mark = push(ld, NULL, i);
        if (get_status_item(ld, node(ld, v->data.sequence.items.start[i]), h->expect) != MX_OK)
            return MX_ECONF;
        pop(ld, mark);
    }
    return MX_OK;
}


static int
on_health_method(ld_t *ld, yaml_node_t *v, void *base)
{
    static const char *const methods[] = {"GET", "HEAD", NULL};
    mx_conf_health_t *h = base;
    int i;

    if (get_enum(ld, v, methods, &i) != MX_OK)
        return MX_ECONF;
    snprintf(h->method, sizeof(h->method), "%s", methods[i]);
    return MX_OK;
}


/* headers: a mapping of extra request headers for an http check, kept as
 * ready-made lines. Names are tokens, values one line; what the check sets
 * itself (Host: use host:, framing, Connection) is refused. */
static int
on_health_headers(ld_t *ld, yaml_node_t *v, void *base)
{
    static const char *const own[] = {"host", "connection", "content-length", "transfer-encoding",
                                      NULL};
    static const char tchar[] = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                                "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    mx_conf_health_t *h = base;
    size_t off = 0;

    if (v->type != YAML_MAPPING_NODE)
        return type_error(ld, v, "a mapping of header names to values");
    for (yaml_node_pair_t *p = v->data.mapping.pairs.start; p < v->data.mapping.pairs.top; p++) {
        yaml_node_t *k = node(ld, p->key), *val = node(ld, p->value);
        const char *name, *value;
        if (get_str(ld, k, &name) != MX_OK)
            return MX_ECONF;
        size_t mark = push(ld, name, 0);
        if (strspn(name, tchar) != strlen(name))
            return fail(ld, k, "not a valid header name");
        for (int i = 0; own[i] != NULL; i++)
            if (strcasecmp(name, own[i]) == 0)
                return fail(ld, k, "set by the check itself%s",
                            i == 0 ? " (use health_check.host)" : "");
        if (val->type != YAML_SCALAR_NODE)
            return type_error(ld, val, "a header value");
        value = scalar(val);
        if (strpbrk(value, "\r\n") != NULL)
            return fail(ld, val, "a header value must be one line");
        int n = snprintf(h->headers + off, sizeof(h->headers) - off, "%s: %s\r\n", name, value);
        if (n < 0 || (size_t)n >= sizeof(h->headers) - off)
            return fail(ld, val, "headers longer than %zu bytes in all", sizeof(h->headers) - 1);
        off += (size_t)n;
        pop(ld, mark);
    }
    return MX_OK;
}


static int
on_health_body(ld_t *ld, yaml_node_t *v, void *base)
{
    mx_conf_health_t *h = base;
    const char *s;

    if (get_str(ld, v, &s) != MX_OK)
        return MX_ECONF;
    if (strlen(s) >= sizeof(h->expect_body))
        return fail(ld, v, "longer than %zu bytes", sizeof(h->expect_body) - 1);
    snprintf(h->expect_body, sizeof(h->expect_body), "%s", s);
    return MX_OK;
}


void
mx_conf_service_defaults(mx_conf_service_t *svc)
{
    svc->max_header_bytes = 16384;
    svc->max_headers = 100;
    svc->max_request_line = 8192;
    svc->max_body_bytes = 0;
    svc->client_header_timeout = 10;
    svc->client_body_timeout = 60;
    svc->keepalive_timeout = 60;
    svc->send_timeout = 60;
    svc->x_forwarded_for = true;
    svc->via = true;
    svc->allow_connect = false;
}


static int
on_services(ld_t *ld, yaml_node_t *v, void *base)
{
    mx_conf_t *c = base;
    size_t n;

    if (get_seq(ld, v, "service", &n) != MX_OK)
        return MX_ECONF;
    c->services = mx_calloc(n, sizeof(mx_conf_service_t));
    c->nservices = n;
    for (size_t i = 0; i < n; i++) {
        mx_conf_service_t *svc = &c->services[i];
        yaml_node_t *m = node(ld, v->data.sequence.items.start[i]);
        size_t mark = push(ld, NULL, i);
        ld->svc = i;
        mx_conf_service_defaults(svc);
        if (walk_map(ld, m, service_keys, svc) != MX_OK)
            return MX_ECONF;
        if (svc->name == NULL) {
            char name[32];
            snprintf(name, sizeof(name), "service%zu", i);
            svc->name = mx_strdup(name);
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(c->services[j].name, svc->name) == 0) {
                yaml_node_t *k = find_value(ld, m, "name");
                push(ld, "name", 0);
                return fail(ld, k ? k : m, "duplicate service name \"%s\" (also services[%zu])",
                            svc->name, j);
            }
        }
        pop(ld, mark);
    }
    return MX_OK;
}


/* Refuses a listener address that an earlier listener (of any service)
 * already has: the second bind would fail at start. */
static int
check_duplicate(ld_t *ld, yaml_node_t *v, size_t j)
{
    const mx_conf_service_t *cur = &ld->conf->services[ld->svc];
    const char *text = cur->listeners[j].addr.text;

    for (size_t k = 0; k <= ld->svc; k++) {
        const mx_conf_service_t *o = &ld->conf->services[k];
        size_t nl = k == ld->svc ? j : o->nlisteners;
        for (size_t m = 0; m < nl; m++)
            if (strcmp(o->listeners[m].addr.text, text) == 0)
                return fail(ld, v, "duplicate listener \"%s\" (also services[%zu].listeners[%zu])",
                            text, k, m);
    }
    return MX_OK;
}


/* listeners: "addr" or {address:, tls: {cert:, key:}, backlog:} items. */
static int
on_listeners(ld_t *ld, yaml_node_t *v, void *base)
{
    mx_conf_service_t *svc = base;
    size_t n;
    const char *s;

    if (get_seq(ld, v, "listener", &n) != MX_OK)
        return MX_ECONF;
    svc->listeners = mx_calloc(n, sizeof(mx_conf_listener_t));
    svc->nlisteners = n;
    for (size_t j = 0; j < n; j++) {
        mx_conf_listener_t *l = &svc->listeners[j];
        yaml_node_t *item = node(ld, v->data.sequence.items.start[j]);
        size_t mark = push(ld, NULL, j);
        l->backlog = 511;
        if (item->type == YAML_MAPPING_NODE) {
            if (walk_map(ld, item, listener_keys, l) != MX_OK)
                return MX_ECONF;
        } else if (get_str(ld, item, &s) != MX_OK || get_addr(ld, item, s, &l->addr) != MX_OK) {
            return MX_ECONF;
        }
        if (check_duplicate(ld, item, j) != MX_OK)
            return MX_ECONF;
        pop(ld, mark);
    }
    return MX_OK;
}


/* True when <s> is a JSON number (what a plain YAML scalar like 3, -2.5 or
 * 1e3 means to a script). */
static bool
json_number(const char *s)
{
    const char *p = s;
    if (*p == '-')
        p++;
    if (!isdigit((unsigned char)*p))
        return false;
    if (*p == '0' && isdigit((unsigned char)p[1]))
        return false;
    while (isdigit((unsigned char)*p))
        p++;
    if (*p == '.') {
        p++;
        if (!isdigit((unsigned char)*p))
            return false;
        while (isdigit((unsigned char)*p))
            p++;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-')
            p++;
        if (!isdigit((unsigned char)*p))
            return false;
        while (isdigit((unsigned char)*p))
            p++;
    }
    return *p == '\0';
}


static void
json_string(mx_buf_t *b, const char *s)
{
    mx_buf_append(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            mx_buf_printf(b, "\\%c", *p);
        else if (*p < 0x20)
            mx_buf_printf(b, "\\u%04x", *p);
        else
            mx_buf_append(b, (const char *)p, 1);
    }
    mx_buf_append(b, "\"", 1);
}


/* Serializes YAML node <v> as JSON: plain scalars that read as numbers,
 * true/false or null keep that meaning, everything else is a string. */
static int
to_json(ld_t *ld, yaml_node_t *v, mx_buf_t *b, int depth)
{
    if (depth > 32)
        return fail(ld, v, "nested deeper than 32 levels");
    if (v->type == YAML_SCALAR_NODE) {
        const char *s = scalar(v);
        if (v->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
            json_string(b, s);
        else if (is_null(v))
            mx_buf_append_str(b, MX_STR("null"));
        else if (strcmp(s, "true") == 0 || strcmp(s, "false") == 0 || json_number(s))
            mx_buf_append(b, s, strlen(s));
        else
            json_string(b, s);
        return MX_OK;
    }
    if (v->type == YAML_SEQUENCE_NODE) {
        mx_buf_append(b, "[", 1);
        for (yaml_node_item_t *i = v->data.sequence.items.start; i < v->data.sequence.items.top;
             i++) {
            if (i != v->data.sequence.items.start)
                mx_buf_append(b, ",", 1);
            if (to_json(ld, node(ld, *i), b, depth + 1) != MX_OK)
                return MX_ECONF;
        }
        mx_buf_append(b, "]", 1);
        return MX_OK;
    }
    mx_buf_append(b, "{", 1);
    for (yaml_node_pair_t *p = v->data.mapping.pairs.start; p < v->data.mapping.pairs.top; p++) {
        yaml_node_t *k = node(ld, p->key);
        if (k->type != YAML_SCALAR_NODE)
            return fail(ld, k, "keys must be scalars");
        if (p != v->data.mapping.pairs.start)
            mx_buf_append(b, ",", 1);
        json_string(b, scalar(k));
        mx_buf_append(b, ":", 1);
        if (to_json(ld, node(ld, p->value), b, depth + 1) != MX_OK)
            return MX_ECONF;
    }
    mx_buf_append(b, "}", 1);
    return MX_OK;
}


/* services[].config: any mapping, handed to the script's init(config). */
static int
on_script_config(ld_t *ld, yaml_node_t *v, void *base)
{
    mx_conf_service_t *svc = base;
    if (v->type != YAML_MAPPING_NODE)
        return type_error(ld, v, "a mapping");
    mx_buf_t b;
    mx_buf_init(&b);
    if (to_json(ld, v, &b, 0) != MX_OK) {
        mx_buf_dispose(&b);
        return MX_ECONF;
    }
    mx_free(svc->script_config);
    svc->script_config = mx_strndup(b.data, b.len);
    mx_buf_dispose(&b);
    return MX_OK;
}


static int
on_tls(ld_t *ld, yaml_node_t *v, void *base)
{
    mx_conf_listener_t *l = base;

    l->tls = true;
    return walk_map(ld, v, tls_keys, l);
}


/* upstream: the name of an upstreams: entry, resolved here (upstreams are
 * read before services whatever the order in the file). */
static int
on_upstream_ref(ld_t *ld, yaml_node_t *v, void *base)
{
    mx_conf_service_t *svc = base;
    const char *s;

    if (get_str(ld, v, &s) != MX_OK)
        return MX_ECONF;
    for (size_t i = 0; i < ld->conf->nupstreams; i++) {
        if (strcmp(ld->conf->upstreams[i].name, s) == 0) {
            svc->upstream = mx_strdup(s);
            svc->upstream_ref = &ld->conf->upstreams[i];
            return MX_OK;
        }
    }
    return fail(ld, v, "unknown upstream \"%.100s\" (not in upstreams:)", s);
}


/* Reads a dict size: bytes (1048576) or k/m/g (1024-based, as nginx's
 * lua_shared_dict: "512k", "10m"), 8 KiB..1 TiB. */
static int
get_size(ld_t *ld, const yaml_node_t *v, size_t *out)
{
    static const char *want = "a size in bytes (1048576, \"512k\", \"10m\")";
    char *end;

    if (v->type != YAML_SCALAR_NODE)
        return type_error(ld, v, want);
    const char *s = scalar(v);
    errno = 0;
    unsigned long long n = strtoull(s, &end, 10);
    unsigned long long mult = 1;
    if (*end != '\0' && end[1] == '\0' && strchr("kKmMgG", *end) != NULL)
        mult = 1ULL << (*end == 'k' || *end == 'K' ? 10 : *end == 'm' || *end == 'M' ? 20 : 30);
    else if (*end != '\0')
        end = (char *)s;
    if (end == s || !(s[0] >= '0' && s[0] <= '9'))
        return type_error(ld, v, want);
    if (errno == ERANGE || n > (1ULL << 40) / mult || n * mult < 8192)
        return fail(ld, v, "%s is out of range (8k..1099511627776 bytes)", s);
    *out = (size_t)(n * mult);
    return MX_OK;
}


/* shared_dicts: a mapping of dict name to size in bytes: 1048576, or with a
 * k/m/g suffix (1024-based, as nginx's lua_shared_dict): "512k", "10m". */
static int
on_shared_dicts(ld_t *ld, yaml_node_t *v, void *base)
{
    mx_conf_t *c = base;

    if (v->type != YAML_MAPPING_NODE)
        return type_error(ld, v, "a mapping of dict names to sizes");
    yaml_node_pair_t *start = v->data.mapping.pairs.start;
    c->nshared_dicts = (size_t)(v->data.mapping.pairs.top - start);
    c->shared_dicts = mx_calloc(c->nshared_dicts ? c->nshared_dicts : 1, sizeof(mx_conf_shdict_t));
    for (size_t i = 0; i < c->nshared_dicts; i++) {
        yaml_node_t *k = node(ld, start[i].key), *sz = node(ld, start[i].value);
        const char *name;
        if (get_str(ld, k, &name) != MX_OK)
            return MX_ECONF;
        size_t mark = push(ld, name, 0);
        for (size_t j = 0; j < i; j++)
            if (strcmp(c->shared_dicts[j].name, name) == 0)
                return fail(ld, k, "duplicate shared dict name");
        c->shared_dicts[i].name = mx_strdup(name);
        if (get_size(ld, sz, &c->shared_dicts[i].size) != MX_OK)
            return MX_ECONF;
        pop(ld, mark);
    }
    return MX_OK;
}


static mx_conf_t *
conf_new(const char *file)
{
    mx_conf_t *c = mx_calloc(1, sizeof(*c));
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

    c->file = mx_strdup(file);
    c->version = 1;
    c->threads = ncpu < 1 ? 1 : ncpu > 256 ? 256 : (int)ncpu;
    c->log_level = MX_LOG_INFO;
    c->upgrade_sock = mx_strdup("/tmp/moxy_upgrade.sock");
    c->grace_period_seconds = 1;
    c->graceful_shutdown_timeout_seconds = 30;
    c->upstream_keepalive_pool_size = 128;
    c->io_uring = true;
    return c;
}


static int
syntax_error(ld_t *ld, const yaml_parser_t *p)
{
    const char *problem = p->problem ? p->problem : "cannot parse";

    if (p->context != NULL)
        snprintf(ld->err, ld->errlen, "%s:%zu:%zu: YAML syntax error: %s (%s at %zu:%zu)", ld->file,
                 p->problem_mark.line + 1, p->problem_mark.column + 1, problem, p->context,
                 p->context_mark.line + 1, p->context_mark.column + 1);
    else
        snprintf(ld->err, ld->errlen, "%s:%zu:%zu: YAML syntax error: %s", ld->file,
                 p->problem_mark.line + 1, p->problem_mark.column + 1, problem);
    return MX_ECONF;
}


/* Reads the one document of <p> into <c>. */
static int
load(ld_t *ld, yaml_parser_t *p, mx_conf_t *c)
{
    yaml_document_t doc, extra;
    int rc = MX_ECONF;

    if (!yaml_parser_load(p, &doc))
        return syntax_error(ld, p);
    ld->doc = &doc;
    ld->conf = c;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root == NULL) {
        snprintf(ld->err, ld->errlen, "%s:1:1: empty configuration (services: is required)",
                 ld->file);
    } else if (walk_map(ld, root, conf_keys, c) == MX_OK) {
        if (!yaml_parser_load(p, &extra)) {
            rc = syntax_error(ld, p);
        } else {
            yaml_node_t *more = yaml_document_get_root_node(&extra);
            rc = more ? fail(ld, more, "a second YAML document (one is allowed)") : MX_OK;
            yaml_document_delete(&extra);
        }
    }
    yaml_document_delete(&doc);
    return rc;
}


int
mx_conf_load_string(const char *name, const char *yaml, size_t len, mx_conf_t **out, char *err,
                    size_t errlen)
{
    ld_t ld = {.file = name, .err = err, .errlen = errlen};
    yaml_parser_t p;

    *out = NULL;
    if (!yaml_parser_initialize(&p)) {
        snprintf(err, errlen, "%s: cannot initialize the YAML parser", name);
        return MX_ECONF;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)yaml, len);
    mx_conf_t *c = conf_new(name);
    int rc = load(&ld, &p, c);
    yaml_parser_delete(&p);
    if (rc != MX_OK) {
        mx_conf_free(c);
        return rc;
    }
    *out = c;
    return MX_OK;
}


/* The health_check of moxy.balancer.new{} (lb_api.c): <yaml> is a flow mapping the Lua side
 * wrote from its table; it goes through the very keys and checks of an upstream group's
 * health_check: (on_health), so YAML and Lua cannot drift. Fills <h> (defaults first; free
 * its path and host with mx_free). */
int
mx_conf_health_parse(const char *yaml, size_t len, mx_conf_health_t *h, char *err, size_t errlen)
{
    ld_t ld = {.file = "health_check", .err = err, .errlen = errlen};
    mx_conf_upstream_t u = {0};
    yaml_parser_t p;
    yaml_document_t doc;
    int rc = MX_ECONF;

    mx_conf_upstream_defaults(&u);
    if (!yaml_parser_initialize(&p)) {
        snprintf(err, errlen, "cannot initialize the YAML parser");
        return MX_ECONF;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)yaml, len);
    if (!yaml_parser_load(&p, &doc)) {
        rc = syntax_error(&ld, &p);
        yaml_parser_delete(&p);
        return rc;
    }
    ld.doc = &doc;
    push(&ld, "health_check", 0);
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root == NULL || root->type != YAML_MAPPING_NODE)
        rc = root ? type_error(&ld, root, "a table") : fail(&ld, &(yaml_node_t){0}, "empty");
    else
        rc = on_health(&ld, root, &u);
    yaml_document_delete(&doc);
    yaml_parser_delete(&p);
    *h = u.health;
    if (rc != MX_OK) {
        mx_free(h->path);
        mx_free(h->host);
        h->path = h->host = NULL;
    }
    return rc;
}


int
mx_conf_load(const char *path, mx_conf_t **out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    int rc = MX_ECONF;

    *out = NULL;
    if (f == NULL) {
        snprintf(err, errlen, "%s: cannot open (%s)", path, strerror(errno));
        return MX_ECONF;
    }
    char *text = mx_alloc(MAX_CONF_BYTES + 1);
    size_t n = fread(text, 1, MAX_CONF_BYTES + 1, f);
    if (ferror(f))
        snprintf(err, errlen, "%s: cannot read (%s)", path, strerror(errno));
    else if (n > MAX_CONF_BYTES)
        snprintf(err, errlen, "%s: larger than %d bytes", path, MAX_CONF_BYTES);
    else
        rc = mx_conf_load_string(path, text, n, out, err, errlen);
    fclose(f);
    mx_free(text);
    return rc;
}


void
mx_conf_free(mx_conf_t *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->nupstreams; i++) {
        mx_conf_upstream_t *u = &c->upstreams[i];
        mx_free(u->name);
        mx_free(u->backends);
        mx_free(u->health.path);
        mx_free(u->health.host);
        mx_free(u->hash_key_name);
    }
    for (size_t i = 0; i < c->nservices; i++) {
        mx_conf_service_t *svc = &c->services[i];
        for (size_t j = 0; j < svc->nlisteners; j++) {
            mx_free(svc->listeners[j].tls_cert);
            mx_free(svc->listeners[j].tls_key);
        }
        mx_free(svc->listeners);
        mx_free(svc->name);
        mx_free(svc->script);
        mx_free(svc->script_config);
        mx_free(svc->upstream);
    }
    for (size_t i = 0; i < c->nshared_dicts; i++)
        mx_free(c->shared_dicts[i].name);
    mx_free(c->shared_dicts);
    mx_free(c->upstreams);
    mx_free(c->services);
    mx_free(c->file);
    mx_free(c->pid_file);
    mx_free(c->error_log);
    mx_free(c->access_log);
    mx_free(c->upgrade_sock);
    mx_free(c->user);
    mx_free(c->group);
    mx_free(c->lua_path);
    mx_free(c);
}


const char *
mx_log_level_str(mx_log_level_t l)
{
    return (unsigned)l < mx_countof(level_names) - 1 ? level_names[l] : "unknown";
}


const char *
mx_lb_algorithm_str(mx_lb_algorithm_t a)
{
    return (unsigned)a < mx_countof(lb_names) - 1 ? lb_names[a] : "unknown";
}
