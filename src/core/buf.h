/* A growable byte buffer (heap). Used for output that must outlive the
 * caller's stack: response heads, leftovers of a partial write. */
#ifndef MX_CORE_BUF_H
#define MX_CORE_BUF_H

#include <stdarg.h>

#include "core/types.h"

struct mx_buf_s {
    char *data;
    size_t len;
    size_t cap;
};

void mx_buf_init(mx_buf_t *b);
void mx_buf_reserve(mx_buf_t *b, size_t extra);
void mx_buf_append(mx_buf_t *b, const void *p, size_t n);
void mx_buf_append_str(mx_buf_t *b, mx_str_t s);
void mx_buf_printf(mx_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Writes <n> as lower-case hex followed by CRLF (a chunk-size line) into
 * <out> (at least 20 bytes); returns the length. No printf on the hot path. */
size_t mx_fmt_chunk_size(char *out, size_t n);
/* Appends "HTTP/1.1 <status> <reason>\r\n". */
void mx_buf_status_line(mx_buf_t *b, int status, mx_str_t reason);
/* Drops the first <n> bytes. */
void mx_buf_consume(mx_buf_t *b, size_t n);
void mx_buf_reset(mx_buf_t *b);
void mx_buf_dispose(mx_buf_t *b);

#endif
