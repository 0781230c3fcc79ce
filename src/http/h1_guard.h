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


/* What a log line says when mx_h1_guard_begin() refused the bytes (llhttp
 * never saw them, so it has no reason of its own), else llhttp's reason. */
static inline const char *
mx_h1_guard_reason(int refused, const char *llhttp_reason)
{
    if (refused)
        return "no CRLF after chunk data";
    return llhttp_reason != NULL ? llhttp_reason : "-";
}


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
    /* RFC 9110 tchar: ALPHA / DIGIT / "!#$%&'*+-.^_`|~", one table load per byte. */
#define T1(c) [c] = 1
    static const unsigned char tchar[256] = {
        T1('!'), T1('#'), T1('$'), T1('%'), T1('&'), T1('\''), T1('*'), T1('+'), T1('-'),
        T1('.'), T1('^'), T1('_'), T1('`'), T1('|'), T1('~'),
        T1('0'), T1('1'), T1('2'), T1('3'), T1('4'), T1('5'), T1('6'), T1('7'), T1('8'),
        T1('9'),
        T1('A'), T1('B'), T1('C'), T1('D'), T1('E'), T1('F'), T1('G'), T1('H'), T1('I'),
        T1('J'), T1('K'), T1('L'), T1('M'), T1('N'), T1('O'), T1('P'), T1('Q'), T1('R'),
        T1('S'), T1('T'), T1('U'), T1('V'), T1('W'), T1('X'), T1('Y'), T1('Z'),
        T1('a'), T1('b'), T1('c'), T1('d'), T1('e'), T1('f'), T1('g'), T1('h'), T1('i'),
        T1('j'), T1('k'), T1('l'), T1('m'), T1('n'), T1('o'), T1('p'), T1('q'), T1('r'),
        T1('s'), T1('t'), T1('u'), T1('v'), T1('w'), T1('x'), T1('y'), T1('z'),
    };
#undef T1
    if (name.len == 0)
        return -1;
    unsigned char ok = 1;
    for (size_t i = 0; i < name.len; i++)
        ok &= tchar[(unsigned char)name.data[i]];
    return ok ? 0 : -1;
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
