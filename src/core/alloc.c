#include "core/alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static void
oom(size_t n)
{
    fprintf(stderr, "moxy: out of memory allocating %zu bytes\n", n);
    abort();
}


void *
mx_alloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        oom(n);
    return p;
}


void *
mx_calloc(size_t nmemb, size_t size)
{
    void *p = calloc(nmemb ? nmemb : 1, size ? size : 1);
    if (p == NULL)
        oom(nmemb * size);
    return p;
}


void *
mx_realloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (q == NULL)
        oom(n);
    return q;
}


char *
mx_strndup(const char *s, size_t n)
{
    char *p = mx_alloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}


char *
mx_strdup(const char *s)
{
    return mx_strndup(s, strlen(s));
}


void
mx_free(void *p)
{
    free(p);
}
