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
