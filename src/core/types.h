/* Every forward typedef of moxy, so headers can name each other's types
 * without including each other. */
#ifndef MX_CORE_TYPES_H
#define MX_CORE_TYPES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A byte view into memory someone else owns. Not NUL-terminated. */
typedef struct mx_str_s {
    const char *data;
    size_t len;
} mx_str_t;

#define MX_STR(lit) ((mx_str_t){(lit), sizeof(lit) - 1})

typedef struct mx_conf_s mx_conf_t;
typedef struct mx_conf_upstream_s mx_conf_upstream_t;
typedef struct mx_conf_service_s mx_conf_service_t;
typedef struct mx_addr_s mx_addr_t;
typedef struct mx_arena_s mx_arena_t;
typedef struct mx_buf_s mx_buf_t;
typedef struct mx_worker_s mx_worker_t;
typedef struct mx_server_s mx_server_t;
typedef struct mx_listener_s mx_listener_t;
typedef struct mx_headers_s mx_headers_t;
typedef struct mx_header_s mx_header_t;
typedef struct mx_session_s mx_session_t;
typedef struct mx_h1conn_s mx_h1conn_t;
typedef struct mx_upconn_s mx_upconn_t;
typedef struct mx_pool_s mx_pool_t;
typedef struct mx_upgroup_s mx_upgroup_t;
typedef struct mx_gen_s mx_gen_t;

/* clang-format off */
#define mx_container_of(ptr, type, member) \
    ((type *)((char *)(ptr) - offsetof(type, member)))
/* clang-format on */

#define mx_countof(a) (sizeof(a) / sizeof((a)[0]))
#define mx_likely(x) __builtin_expect(!!(x), 1)
#define mx_unlikely(x) __builtin_expect(!!(x), 0)

#endif
