/* The keepalive pool over real loopback connections: a connection the origin
 * closed is never handed out, the size cap evicts the oldest, and peers do
 * not mix. */
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <string.h>
#include <unistd.h>

#include "core/alloc.h"
#include "net/addr.h"
#include "proxy/session.h"

static mx_worker_t w;
static int lfd;
static mx_addr_t addr, other;


static void
setup(void)
{
    memset(&w, 0, sizeof(w));
    uv_loop_init(&w.loop);
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    cr_assert_eq(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    cr_assert_eq(listen(lfd, 16), 0);
    socklen_t len = sizeof(sin);
    getsockname(lfd, (struct sockaddr *)&sin, &len);
    char text[64], err[128];
    snprintf(text, sizeof(text), "127.0.0.1:%d", ntohs(sin.sin_port));
    cr_assert_eq(mx_addr_parse(text, &addr, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(mx_addr_parse("127.0.0.1:1", &other, err, sizeof(err)), 0, "%s", err);
}


static void
teardown(void)
{
    close(lfd);
    uv_run(&w.loop, UV_RUN_NOWAIT);
    cr_assert_eq(uv_loop_close(&w.loop), 0, "handles left open");
    for (size_t i = 0; i < w.nfree; i++)
        mx_free(w.free_bufs[i]);
    mx_free(w.free_bufs);
}


static void
on_connect(uv_connect_t *req, int status)
{
    cr_assert_eq(status, 0);
    *(int *)req->data = 1;
}


/* A connected upstream connection as the pool sees it; returns the origin's
 * end of it in <*peer>. */
static mx_upconn_t *
connect_one(mx_worker_t *wk, const mx_addr_t *a, int *peer)
{
    mx_upconn_t *u = mx_calloc(1, sizeof(*u));
    u->w = wk;
    u->addr = a;
    mx_list_init(&u->node);
    uv_tcp_init(&wk->loop, &u->h.tcp);
    u->h.handle.data = u;
    mx_timeq_entry_init(&u->tq);
    u->handles_open = 1;
    int done = 0;
    u->connect_req.data = &done;
    uv_tcp_connect(&u->connect_req, &u->h.tcp, (const struct sockaddr *)&addr.sa, on_connect);
    while (!done)
        uv_run(&wk->loop, UV_RUN_ONCE);
    *peer = accept(lfd, NULL, NULL);
    cr_assert_geq(*peer, 0);
    u->connected = 1;
    return u;
}


TestSuite(pool, .init = setup, .fini = teardown);


Test(pool, hands_out_a_live_connection_and_not_a_closed_one)
{
    mx_pool_t *p = mx_pool_new(&w, 4);
    int peer;
    mx_upconn_t *u = connect_one(&w, &addr, &peer);
    mx_pool_put(p, u);
    cr_assert_eq(mx_pool_get(p, &addr, true), u, "a live idle connection is reused");
    mx_pool_put(p, u);

    close(peer); /* the origin closes; the loop has not seen the FIN yet */
    usleep(20000);
    cr_assert_null(mx_pool_get(p, &addr, true), "a connection the origin closed was handed out");
    mx_pool_free(p);
    uv_run(&w.loop, UV_RUN_NOWAIT);
}


/* Without the peek (an idempotent request, resent once if the connection turns out
 * closed) the pool hands out what it has: no syscall. */
Test(pool, without_peek_hands_out_the_idle_connection_as_is)
{
    mx_pool_t *p = mx_pool_new(&w, 4);
    int peer;
    mx_upconn_t *u = connect_one(&w, &addr, &peer);
    mx_pool_put(p, u);
    close(peer);
    usleep(20000);
    cr_assert_eq(mx_pool_get(p, &addr, false), u, "no peek: the idle connection is handed out");
    mx_upconn_close(u);
    mx_pool_free(p);
    uv_run(&w.loop, UV_RUN_NOWAIT);
}


Test(pool, refuses_a_connection_with_stray_bytes)
{
    mx_pool_t *p = mx_pool_new(&w, 4);
    int peer;
    mx_upconn_t *u = connect_one(&w, &addr, &peer);
    mx_pool_put(p, u);
    cr_assert_eq(write(peer, "HTTP/1.1 200 OK\r\n", 17), 17);
    usleep(20000);
    cr_assert_null(mx_pool_get(p, &addr, true), "an idle connection with unread bytes was reused");
    close(peer);
    mx_pool_free(p);
    uv_run(&w.loop, UV_RUN_NOWAIT);
}


Test(pool, evicts_the_oldest_past_its_cap_and_keeps_peers_apart)
{
    mx_pool_t *p = mx_pool_new(&w, 2);
    int peers[3];
    mx_upconn_t *u[3];
    for (int i = 0; i < 3; i++) {
        u[i] = connect_one(&w, &addr, &peers[i]);
        mx_pool_put(p, u[i]);
    }
    cr_assert(u[0]->closing, "the oldest connection was not evicted");
    cr_assert_null(mx_pool_get(p, &other, true), "a connection to another peer was handed out");
    cr_assert_eq(mx_pool_get(p, &addr, true), u[2], "not most recently used first");
    cr_assert_eq(mx_pool_get(p, &addr, true), u[1]);
    cr_assert_null(mx_pool_get(p, &addr, true));
    mx_upconn_close(u[1]);
    mx_upconn_close(u[2]);
    for (int i = 0; i < 3; i++)
        close(peers[i]);
    mx_pool_free(p);
    uv_run(&w.loop, UV_RUN_NOWAIT);
}
