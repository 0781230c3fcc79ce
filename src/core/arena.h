/* A per-request bump allocator: everything whose life is the request's
 * (header copies, URI, strings) comes from here and is released at once by
 * mx_arena_reset() when the request ends. The first block is embedded in the
 * owner's allocation; further blocks are malloc'ed and freed on reset. */
#ifndef MX_CORE_ARENA_H
#define MX_CORE_ARENA_H

#include <stdint.h>
#include <string.h>

#include "core/types.h"

typedef struct mx_arena_block_s mx_arena_block_t;

struct mx_arena_s {
    char *p;    /* next free byte in the current block */
    char *end;  /* end of the current block */
    mx_arena_block_t *blocks; /* extra blocks, newest first */
    char *first;     /* the first block (owner's memory), may be NULL */
    size_t first_len;
};

void mx_arena_init(mx_arena_t *a, void *first, size_t len);
/* The slow path of mx_arena_alloc(): a new block. */
void *mx_arena_alloc_block(mx_arena_t *a, size_t n);

/* Returns <n> bytes aligned to 8, never NULL (aborts on OOM). Inline: a request
 * takes some thirty of them, nearly all from the current block. */
static inline void *
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
    return mx_arena_alloc_block(a, n);
}

/* Copies <n> bytes of <s> and NUL-terminates the copy. */
static inline char *
mx_arena_strndup(mx_arena_t *a, const char *s, size_t n)
{
    char *p = mx_arena_alloc(a, n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}
/* Frees the extra blocks and rewinds to the first. */
void mx_arena_reset(mx_arena_t *a);
void mx_arena_dispose(mx_arena_t *a);

#endif
