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
mx_arena_alloc_block(mx_arena_t *a, size_t n)
{
    size_t len = n > BLOCK_MIN ? n : BLOCK_MIN;
    mx_arena_block_t *b = mx_alloc(sizeof(*b) + len);
    b->len = len;
    b->next = a->blocks;
    a->blocks = b;
    a->p = b->data + n;
    a->end = b->data + len;
    return b->data;
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
