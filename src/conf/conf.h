/* The YAML configuration (shared/CONFIG.md is the contract) as typed,
 * validated structs. Everything is owned by the mx_conf_t and freed by
 * mx_conf_free(). Durations are seconds as doubles (fractions allowed). */
#ifndef MX_CONF_CONF_H
#define MX_CONF_CONF_H

#include "core/types.h"
#include "net/addr.h"

typedef enum {
    MX_LOG_DEBUG = 0,
    MX_LOG_INFO,
    MX_LOG_WARN,
    MX_LOG_ERROR,
} mx_log_level_t;

/* lua_error_policy: what a failing Lua phase means for the request. */
#define MX_LUA_FAIL_CLOSED 0 /* LUA_API.md's per-phase error answers */
#define MX_LUA_FAIL_OPEN   1 /* the failing phase is skipped (logged), the request goes on */

typedef enum {
    MX_LB_ROUND_ROBIN = 0,
    MX_LB_WEIGHTED,
    MX_LB_RANDOM,
    MX_LB_FNV,
    MX_LB_KETAMA,
    MX_LB_LEAST_CONN,
} mx_lb_algorithm_t;

/* hash_key: what fnv and ketama hash for a request (conf/README.md). */
typedef enum {
    MX_HASH_KEY_URI = 0, /* default: path and query as sent */
    MX_HASH_KEY_PATH,
    MX_HASH_KEY_CLIENT_IP,
    MX_HASH_KEY_HOST,
    MX_HASH_KEY_HEADER, /* header:NAME */
    MX_HASH_KEY_ARG,    /* arg:NAME */
    MX_HASH_KEY_COOKIE, /* cookie:NAME */
} mx_hash_key_kind_t;

typedef struct {
    mx_addr_t addr;
    int weight; /* >= 1, default 1 */
} mx_conf_backend_t;

typedef struct {
    bool enabled;   /* a health_check mapping was given */
    char type[8];   /* "tcp" | "http" */
    char *path;     /* http: default "/" */
    char *host;     /* http: Host header, default none */
    double interval; /* default 2 */
    int rise;       /* default 2 */
    int fall;       /* default 3 */
    double timeout; /* default 1 */
    int port;       /* check this port instead of the backend's; 0 (default): the backend's */
    uint64_t expect[10]; /* http: bit s set when status s passes (100..599); default 200..399 */
    char method[8];       /* http: "GET" (default) or "HEAD" */
    char headers[1024];   /* http: extra request header lines "Name: value\r\n", "" for none */
    char expect_body[128]; /* http: text the response body must contain; "" not checked */
} mx_conf_health_t;

struct mx_conf_upstream_s {
    char *name;
    mx_conf_backend_t *backends;
    size_t nbackends; /* >= 1 */
    mx_lb_algorithm_t algorithm;
    mx_conf_health_t health;
    int max_retries;        /* default 1 */
    mx_hash_key_kind_t hash_key; /* default uri */
    char *hash_key_name;         /* header/arg/cookie name, NULL otherwise */
    /* passive_health: (nginx's max_fails / fail_timeout) */
    int max_fails;          /* default 1; 0 turns passive health off */
    double fail_timeout;    /* default 10: seconds a failed backend is skipped */
    bool fail_on_5xx;       /* key on_5xx, default false: a 5xx counts as a failure */
    double connect_timeout; /* default 2 */
    double read_timeout;    /* default 30 */
    double write_timeout;   /* default 30 */
    double idle_timeout;    /* default 60: idle pooled connections closed after */
    double resolve_interval; /* default 30: DNS-named backends re-resolved; 0: at start only */
};

typedef struct {
    mx_addr_t addr;
    bool tls; /* a tls mapping was given: refused at load until TLS lands */
    char *tls_cert;
    char *tls_key;
    int backlog; /* default 511 */
} mx_conf_listener_t;

struct mx_conf_service_s {
    char *name;
    mx_conf_listener_t *listeners;
    size_t nlisteners; /* >= 1 */
    char *script;      /* NULL when absent */
    char *script_config; /* `config:` mapping as JSON text for init(config), NULL when absent */
    char *upstream;    /* name of an upstreams: entry, NULL when absent */
    const mx_conf_upstream_t *upstream_ref; /* resolved by the loader */

    /* limits: */
    size_t max_header_bytes;  /* default 16384: whole head incl. request line -> 431 */
    size_t max_headers;       /* default 100 -> 431 */
    size_t max_request_line;  /* default 8192 -> 414 */
    uint64_t max_body_bytes;  /* default 0 = unlimited -> 413 */

    /* timeouts (seconds): */
    double client_header_timeout; /* default 10 -> 408 */
    double client_body_timeout;   /* default 60: between body reads */
    double keepalive_timeout;     /* default 60: idle keepalive connection */
    double send_timeout;          /* default 60: response bytes the client does not take */

    /* headers added upstream (RFC 9110 §7.6.3, de-facto XFF): */
    bool x_forwarded_for; /* key `x_forwarded_for`, default true */
    bool via;             /* key `via`, default true */
    bool allow_connect;   /* key `allow_connect`, default false: CONNECT -> 405 */
};

typedef struct {
    char *name;  /* the key under shared_dicts: */
    size_t size; /* bytes, 8192..2^40 */
} mx_conf_shdict_t;

struct mx_conf_s {
    char *file; /* path the config was read from */
    int version;
    int threads; /* default: number of online cores */
    bool daemon;
    char *pid_file;     /* NULL: none */
    char *error_log;    /* NULL: stderr */
    mx_log_level_t log_level;
    char *access_log;   /* NULL: off ("off" in YAML maps to NULL) */
    char *upgrade_sock; /* default "/tmp/moxy_upgrade.sock" */
    char *user;         /* NULL: keep */
    char *group;        /* NULL: keep */
    double grace_period_seconds;              /* default 1 */
    double graceful_shutdown_timeout_seconds; /* default 30 */
    int upstream_keepalive_pool_size;         /* default 128 */
    bool io_uring; /* default true: workers read sockets through io_uring when the kernel allows */
    char *lua_path;                           /* NULL when absent */
    int lua_error_policy; /* MX_LUA_FAIL_CLOSED (default: error answers) or MX_LUA_FAIL_OPEN */

    mx_conf_upstream_t *upstreams;
    size_t nupstreams;
    mx_conf_service_t *services;
    size_t nservices; /* >= 1 */
    mx_conf_shdict_t *shared_dicts; /* moxy.shared.dict(name), see lua/shdict.h */
    size_t nshared_dicts;

    /* Run time, not YAML: the upstream groups built from this config (a reference,
     * upstream/group.h), set by the server; NULL means the current registry. */
    struct mx_groups_s *groups;
};

/* Loads and validates the YAML file at <path>. On success returns MX_OK and
 * sets <*out> (free with mx_conf_free). On failure returns MX_ECONF and
 * writes one line into <err> naming file, line, column and key:
 * "conf/moxy.yaml:14:7: services[0].listeners[1]: \"0.0.0.0:99999\" is not a
 * valid address (port 99999 out of range)". */
int mx_conf_load(const char *path, mx_conf_t **out, char *err, size_t errlen);

/* The same, from a string in memory; <name> stands for the file in errors. */
int mx_conf_load_string(const char *name, const char *yaml, size_t len, mx_conf_t **out,
                        char *err, size_t errlen);

/* A health_check mapping alone (moxy.balancer.new{}), with the rules of an upstream
 * group's health_check:. Errors name the key: "health_check:1:10: health_check.rise: ...". */
int mx_conf_health_parse(const char *yaml, size_t len, mx_conf_health_t *h, char *err,
                         size_t errlen);

void mx_conf_free(mx_conf_t *c);

/* The values a service or upstream starts from before its YAML keys apply
 * (CONFIG.md's defaults); the fields with no default are left as they are. */
void mx_conf_service_defaults(mx_conf_service_t *svc);
void mx_conf_upstream_defaults(mx_conf_upstream_t *u);

const char *mx_log_level_str(mx_log_level_t l);
const char *mx_lb_algorithm_str(mx_lb_algorithm_t a);

#endif
