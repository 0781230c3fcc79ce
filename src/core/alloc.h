/* Small internal allocations abort on out-of-memory (as h2o and Redis do):
 * sizes that come from the wire are bounded by config before they get here. */
#ifndef MX_CORE_ALLOC_H
#define MX_CORE_ALLOC_H

#include <stddef.h>

void *mx_alloc(size_t n);
void *mx_calloc(size_t nmemb, size_t size);
void *mx_realloc(void *p, size_t n);
char *mx_strdup(const char *s);
char *mx_strndup(const char *s, size_t n);
void mx_free(void *p);

#endif
