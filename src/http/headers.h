/* A header section as an ordered list of (name, value) views, kept in wire
 * order and case. The views point into memory the caller keeps alive for the
 * list's life (the request arena); the array itself grows in the arena. */
#ifndef MX_HTTP_HEADERS_H
#define MX_HTTP_HEADERS_H

#include <sys/types.h>

#include "core/arena.h"
#include "core/buf.h"
#include "core/types.h"

#define MX_HDR_HOP 0x1u /* hop-by-hop (RFC 9110 §7.6.1): never forwarded */

struct mx_header_s {
    mx_str_t name;
    mx_str_t value;
    uint32_t flags; /* MX_HDR_* */
};

struct mx_headers_s {
    mx_header_t *v;
    size_t n;
    size_t cap;
};

void mx_headers_init(mx_headers_t *h);
/* Appends (name, value) without copying the bytes; the array grows in <a>. */
void mx_headers_add(mx_headers_t *h, mx_arena_t *a, mx_str_t name, mx_str_t value);
/* Index of the first header named <name> (any case) at or after <from>, or -1. */
ssize_t mx_headers_find(const mx_headers_t *h, mx_str_t name, size_t from);
/* The first value of <name>, or a {NULL, 0} view when absent. */
mx_str_t mx_headers_get(const mx_headers_t *h, mx_str_t name);
/* Removes every header named <name> keeping the others' order; returns how many. */
size_t mx_headers_remove(mx_headers_t *h, mx_str_t name);
/* Replaces every <name> by one (name, value) at the first one's place, or appends. */
void mx_headers_set(mx_headers_t *h, mx_arena_t *a, mx_str_t name, mx_str_t value);
/* Sets MX_HDR_HOP on Connection, Proxy-Connection, Keep-Alive, TE,
 * Transfer-Encoding, Upgrade, and on every field named by a Connection token. */
void mx_headers_mark_hop_by_hop(mx_headers_t *h);

/* Appends every field but the hop-by-hop ones as "Name: value\r\n" lines. */
void mx_headers_serialize(const mx_headers_t *h, mx_buf_t *b);

/* Case-insensitive equality of two views. */
bool mx_str_caseeq_bytes(const char *a, const char *b, size_t n);

/* ASCII case-insensitive equality. Inline: most calls compare names of different
 * lengths (hop-by-hop and managed header lists) and stop at the length test. */
static inline bool
mx_str_caseeq(mx_str_t a, mx_str_t b)
{
    return a.len == b.len && mx_str_caseeq_bytes(a.data, b.data, a.len);
}
/* True when the comma-separated list <value> holds <token> (any case, OWS
 * around elements ignored): mx_header_has_token("keep-alive, Upgrade", "upgrade"). */
bool mx_header_has_token(mx_str_t value, mx_str_t token);
/* Parses a decimal Content-Length. Returns MX_OK and sets <*out>, or
 * MX_EBADREQ for an empty, signed, non-digit, or overflowing value. A list of
 * identical values ("5, 5") is refused too: moxy is strict. */
int mx_http_parse_content_length(mx_str_t v, uint64_t *out);

#endif
