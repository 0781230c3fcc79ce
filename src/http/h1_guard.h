/* Checks llhttp 8.1 does not make even in strict mode, shared by the
 * downstream and upstream parsers:
 * - chunk data must be followed by CRLF (llhttp skips any two bytes there:
 *   "5\r\nhelloXX0\r\n\r\n" parses as one chunk, the smuggling hole of
 *   proxies that forwarded the rest as a second request);
 * - obs-fold (a header line starting with SP/HTAB) is refused (RFC 9112 §5.2):
 *   llhttp reports it as a second value span of the same field;
 * - a field name must be a token (llhttp accepts "X-A : b").
 * The owner calls mx_h1_guard_begin() before each llhttp_execute(). */
#ifndef MX_HTTP_H1_GUARD_H
#define MX_HTTP_H1_GUARD_H

#include "core/types.h"

typedef struct {
    const char *start; /* the buffer being parsed */
    const char *end;
    uint64_t chunk_left; /* bytes of the current chunk still to come */
    uint8_t crlf_left;   /* 2: expect "\r\n", 1: expect "\n", 0: nothing pending */
    uint8_t in_value;    /* a value span of the current field was seen */
    uint8_t value_at_end; /* ... and it ended at the end of its buffer */
} mx_h1_guard_t;


/* Returns 0, or -1 when the bytes owed after a chunk are not CRLF. */
static inline int
mx_h1_guard_begin(mx_h1_guard_t *g, const char *p, size_t n)
{
    g->start = p;
    g->end = p + n;
    while (g->crlf_left > 0 && n > 0) {
        char want = g->crlf_left == 2 ? '\r' : '\n';
        if (*p != want)
            return -1;
        g->crlf_left--;
        p++;
        n--;
    }
    return 0;
}


static inline int
mx_h1_guard_value(mx_h1_guard_t *g, const char *at, size_t n)
{
    if (g->in_value && !(at == g->start && g->value_at_end))
        return -1; /* a continuation that is not a buffer split: obs-fold */
    g->in_value = 1;
    g->value_at_end = at + n == g->end;
    return 0;
}


static inline void
mx_h1_guard_value_done(mx_h1_guard_t *g)
{
    g->in_value = 0;
}


/* RFC 9110 §5.6.2 tchar. */
static inline int
mx_h1_guard_name(mx_str_t name)
{
    static const char *extra = "!#$%&'*+-.^_`|~";
    if (name.len == 0)
        return -1;
    for (size_t i = 0; i < name.len; i++) {
        unsigned char ch = (unsigned char)name.data[i];
        if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z'))
            continue;
        const char *e = extra;
        while (*e && *e != ch)
            e++;
        if (*e == '\0')
            return -1;
    }
    return 0;
}


static inline void
mx_h1_guard_chunk(mx_h1_guard_t *g, uint64_t size)
{
    g->chunk_left = size;
}


/* Call for body bytes of a chunked message. Returns -1 when the chunk's data
 * is not followed by CRLF (as far as this buffer shows). */
static inline int
mx_h1_guard_body(mx_h1_guard_t *g, const char *at, size_t n)
{
    g->chunk_left -= n < g->chunk_left ? n : g->chunk_left;
    if (g->chunk_left > 0)
        return 0;
    const char *p = at + n;
    g->crlf_left = 2;
    while (g->crlf_left > 0 && p < g->end) {
        char want = g->crlf_left == 2 ? '\r' : '\n';
        if (*p != want)
            return -1;
        g->crlf_left--;
        p++;
    }
    return 0;
}

#endif
