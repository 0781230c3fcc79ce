/* The per-worker keepalive pool of idle upstream connections, most recently
 * used first. Idle connections keep reading so that an origin's close is
 * seen; before one is handed out for a request that could not be resent, a
 * non-blocking peek makes sure the origin has not closed it in the meantime
 * (a FIN not yet seen by the loop). */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "core/alloc.h"
#include "core/log.h"
#include "proxy/session.h"

struct mx_pool_s {
    mx_worker_t *w;
    mx_list_t idle; /* mx_upconn_t.node, newest first */
    size_t n;
    size_t cap;
};


mx_pool_t *
mx_pool_new(mx_worker_t *w, size_t cap)
{
    mx_pool_t *p = mx_calloc(1, sizeof(*p));
    p->w = w;
    p->cap = cap;
    mx_list_init(&p->idle);
    return p;
}


void
mx_pool_close_idle(mx_pool_t *p)
{
    while (!mx_list_empty(&p->idle)) {
        mx_upconn_t *u = mx_container_of(p->idle.next, mx_upconn_t, node);
        mx_pool_remove(p, u);
        mx_upconn_close(u);
    }
}


void
mx_pool_free(mx_pool_t *p)
{
    mx_pool_close_idle(p);
    mx_free(p);
}


/* True when the connection has neither data nor EOF waiting. */
static bool
still_open(mx_upconn_t *u)
{
    uv_os_fd_t fd;
    if (uv_fileno(&u->h.handle, &fd) != 0)
        return false;
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}


mx_upconn_t *
mx_pool_get(mx_pool_t *p, const mx_addr_t *addr, bool peek)
{
    mx_list_t *n = p->idle.next;
    while (n != &p->idle) {
        mx_upconn_t *u = mx_container_of(n, mx_upconn_t, node);
        n = n->next;
        if (u->addr != addr && strcmp(u->addr->text, addr->text) != 0)
            continue;
        mx_pool_remove(p, u);
        if (!peek || still_open(u))
            return u;
        mx_upconn_close(u);
    }
    return NULL;
}


void
mx_pool_put(mx_pool_t *p, mx_upconn_t *u)
{
    if (p->cap == 0) {
        mx_upconn_close(u);
        return;
    }
    if (p->n >= p->cap) {
        mx_upconn_t *old = mx_container_of(p->idle.prev, mx_upconn_t, node);
        mx_pool_remove(p, old);
        mx_upconn_close(old);
    }
    mx_list_push(&p->idle, &u->node);
    p->n++;
}


void
mx_pool_remove(mx_pool_t *p, mx_upconn_t *u)
{
    if (!mx_list_linked(&u->node))
        return;
    mx_list_remove(&u->node);
    p->n--;
}
