#include "core/buf.h"

#include <stdio.h>
#include <string.h>

#include "core/alloc.h"


void
mx_buf_init(mx_buf_t *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}


void
mx_buf_reserve(mx_buf_t *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra)
        cap *= 2;
    b->data = mx_realloc(b->data, cap);
    b->cap = cap;
}


void
mx_buf_append(mx_buf_t *b, const void *p, size_t n)
{
    if (n == 0)
        return;
    mx_buf_reserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}


void
mx_buf_append_str(mx_buf_t *b, mx_str_t s)
{
    mx_buf_append(b, s.data, s.len);
}


void
mx_buf_printf(mx_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n <= 0)
        return;
    mx_buf_reserve(b, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}


size_t
mx_fmt_chunk_size(char *out, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    char tmp[16];
    size_t k = 0;
    do {
        tmp[k++] = hex[n & 0xf];
        n >>= 4;
    } while (n != 0);
    for (size_t i = 0; i < k; i++)
        out[i] = tmp[k - 1 - i];
    out[k] = '\r';
    out[k + 1] = '\n';
    return k + 2;
}


void
mx_buf_status_line(mx_buf_t *b, int status, mx_str_t reason)
{
    mx_buf_reserve(b, 16 + reason.len);
    char *p = b->data + b->len;
    memcpy(p, "HTTP/1.1 ", 9);
    p[9] = (char)('0' + status / 100 % 10);
    p[10] = (char)('0' + status / 10 % 10);
    p[11] = (char)('0' + status % 10);
    p[12] = ' ';
    memcpy(p + 13, reason.data, reason.len);
    memcpy(p + 13 + reason.len, "\r\n", 2);
    b->len += 15 + reason.len;
}


void
mx_buf_consume(mx_buf_t *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}


void
mx_buf_reset(mx_buf_t *b)
{
    b->len = 0;
}


void
mx_buf_dispose(mx_buf_t *b)
{
    mx_free(b->data);
    mx_buf_init(b);
}
