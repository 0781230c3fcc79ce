/* An intrusive doubly-linked list (circular, with a head node). */
#ifndef MX_CORE_LIST_H
#define MX_CORE_LIST_H

#include <stdbool.h>

typedef struct mx_list_s mx_list_t;
struct mx_list_s {
    mx_list_t *prev;
    mx_list_t *next;
};

static inline void
mx_list_init(mx_list_t *l)
{
    l->prev = l->next = l;
}


static inline bool
mx_list_empty(const mx_list_t *l)
{
    return l->next == l;
}


static inline bool
mx_list_linked(const mx_list_t *n)
{
    return n->next != NULL && n->next != n;
}


/* Inserts <n> right after <head> (at the front). */
static inline void
mx_list_push(mx_list_t *head, mx_list_t *n)
{
    n->next = head->next;
    n->prev = head;
    head->next->prev = n;
    head->next = n;
}


static inline void
mx_list_remove(mx_list_t *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

#endif
