#include "core/arena.h"

#include <string.h>

#include "core/alloc.h"

#define BLOCK_MIN 4096

struct mx_arena_block_s {
    mx_arena_block_t *next;
    size_t len;
    char data[];
};


void
mx_arena_init(mx_arena_t *a, void *first, size_t len)
{
    a->first = first;
    a->first_len = len;
    a->blocks = NULL;
    a->p = first;
    a->end = first ? (char *)first + len : NULL;
}


void *
mx_arena_alloc(mx_arena_t *a, size_t n)
{
    n = (n + 7) & ~(size_t)7;
    if (a->p != NULL) {
        uintptr_t p = ((uintptr_t)a->p + 7) & ~(uintptr_t)7;
        if (p + n <= (uintptr_t)a->end) {
            a->p = (char *)(p + n);
            return (void *)p;
        }
    }
    size_t len = n > BLOCK_MIN ? n : BLOCK_MIN;
    mx_arena_block_t *b = mx_alloc(sizeof(*b) + len);
    b->len = len;
    b->next = a->blocks;
    a->blocks = b;
    a->p = b->data + n;
    a->end = b->data + len;
    return b->data;
}


char *
mx_arena_strndup(mx_arena_t *a, const char *s, size_t n)
{
    char *p = mx_arena_alloc(a, n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}


void
mx_arena_reset(mx_arena_t *a)
{
    mx_arena_block_t *b = a->blocks;
    while (b != NULL) {
        mx_arena_block_t *next = b->next;
        mx_free(b);
        b = next;
    }
    mx_arena_init(a, a->first, a->first_len);
}


void
mx_arena_dispose(mx_arena_t *a)
{
    mx_arena_reset(a);
}
