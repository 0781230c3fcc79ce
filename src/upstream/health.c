/* Active health checks: the rise/fall state machine, one probe (TCP connect or
 * HTTP status) on a uv loop, and the address-set helpers of DNS discovery.
 * The service that runs them on its own thread is at the end of the file. */
#include "upstream/health.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/errors.h"
#include "core/log.h"

#define PROBE_HEAD_MAX 1024 /* a status line longer than this is malformed */

static void on_probe_connect(uv_connect_t *req, int status);
static void on_probe_write(uv_write_t *req, int status);
static void on_probe_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void on_probe_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);
static void on_probe_timeout(uv_timer_t *t);
static void on_probe_close(uv_handle_t *h);


/* ---------------------------------------------------------- state machine */

void
mx_health_state_init(mx_health_state_t *st, bool up)
{
    st->up = up;
    st->run = 0;
    st->fails = 0;
}


bool
mx_health_feed(mx_health_state_t *st, bool passed, int rise, int fall)
{
    st->fails = passed ? 0 : st->fails + 1;
    if (passed == st->up) {
        st->run = 0;
        return false;
    }
    st->run++;
    if (st->run < (st->up ? fall : rise))
        return false;
    st->up = !st->up;
    st->run = 0;
    return true;
}


/* ------------------------------------------------------------ HTTP helpers */

int
mx_health_parse_status(const char *buf, size_t len, int *status)
{
    static const char proto[] = "HTTP/1.";
    /* "HTTP/1.1 200" then SP or CR: 13 bytes decide everything. */
    size_t n = len < 13 ? len : 13;

    for (size_t i = 0; i < n; i++) {
        char c = buf[i];
        bool ok = i < 7    ? c == proto[i]
                  : i == 7 ? c >= '0' && c <= '9'
                  : i == 8 ? c == ' '
                  : i < 12 ? c >= '0' && c <= '9'
                           : c == ' ' || c == '\r';
        if (!ok)
            return MX_EBADRESP;
    }
    if (len < 13 || memchr(buf, '\n', len) == NULL)
        return len >= PROBE_HEAD_MAX ? MX_EBADRESP : MX_AGAIN;
    *status = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
    return *status >= 100 ? MX_OK : MX_EBADRESP;
}


bool
mx_health_status_expected(const mx_conf_health_t *h, int status)
{
    if (status < 0 || status >= 64 * (int)mx_countof(h->expect))
        return false;
    return (h->expect[status / 64] >> (status % 64)) & 1;
}


const char *
mx_health_cause(int rc, int status, char *buf, size_t len)
{
    switch (rc) {
    case MX_OK:
        return "passed";
    case MX_DECLINED:
        snprintf(buf, len, "status %d", status);
        return buf;
    case UV_ETIMEDOUT:
        return "timed out";
    case MX_EBADRESP:
        return "malformed status line";
    case MX_EUPCLOSED:
        return "closed before the status line";
    }
    if (rc < 0 && rc > -5000)
        return uv_strerror(rc);
    return mx_strerror(rc);
}


/* ------------------------------------------------------------------ probe */

/* One check in flight. Owned by itself: freed when its two handles are closed. */
struct mx_health_probe_s {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } io;
    uv_timer_t timer;
    uv_connect_t connect;
    uv_write_t write;
    int closes;  /* handles whose close callback is still due */
    bool done;   /* the callback ran (or was cancelled): ignore late events */
    bool http;
    const mx_conf_health_t *conf;
    mx_health_probe_cb cb;
    void *arg;
    char *req; /* the HTTP request, while being written */
    size_t reqlen;
    size_t len; /* bytes of head[] read */
    char head[PROBE_HEAD_MAX];
};


static void
probe_close(mx_health_probe_t *p)
{
    p->done = true;
    uv_timer_stop(&p->timer);
    p->closes = 2;
    uv_close(&p->io.handle, on_probe_close);
    uv_close((uv_handle_t *)&p->timer, on_probe_close);
}


/* Ends the probe with <rc> (once): reports, then closes. */
static void
probe_finish(mx_health_probe_t *p, int rc, int status)
{
    if (p->done)
        return;
    p->cb(p->arg, rc, status);
    probe_close(p);
}


int
mx_health_probe_start(uv_loop_t *loop, const mx_conf_health_t *h, const mx_addr_t *addr,
                      const char *host, mx_health_probe_cb cb, void *arg, mx_health_probe_t **out)
{
    mx_health_probe_t *p = mx_calloc(1, sizeof(*p));
    struct sockaddr_storage sa;
    int rc;

    p->conf = h;
    p->cb = cb;
    p->arg = arg;
    p->http = strcmp(h->type, "http") == 0;
    p->io.handle.data = p;
    p->timer.data = p;
    p->connect.data = p;
    p->write.data = p;
    if (p->http) {
        const char *fmt = "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: moxy-health-check\r\n"
                          "Accept: */*\r\nConnection: close\r\n\r\n";
        const char *path = h->path ? h->path : "/";
        host = h->host ? h->host : host;
        size_t n = strlen(fmt) + strlen(path) + strlen(host) + 1;
        p->req = mx_alloc(n);
        p->reqlen = (size_t)snprintf(p->req, n, fmt, path, host);
    }
    uv_timer_init(loop, &p->timer);
    if (addr->kind == MX_ADDR_UNIX) {
        uv_pipe_init(loop, &p->io.pipe, 0);
        uv_pipe_connect(&p->connect, &p->io.pipe, addr->host, on_probe_connect);
    } else {
        memcpy(&sa, &addr->sa, sizeof(sa));
        if (h->port > 0) {
            if (sa.ss_family == AF_INET)
                ((struct sockaddr_in *)&sa)->sin_port = htons((uint16_t)h->port);
            else
                ((struct sockaddr_in6 *)&sa)->sin6_port = htons((uint16_t)h->port);
        }
        uv_tcp_init(loop, &p->io.tcp);
        rc = uv_tcp_connect(&p->connect, &p->io.tcp, (struct sockaddr *)&sa, on_probe_connect);
        if (rc < 0) {
            /* No callback will come: close quietly and say why to the caller. */
            probe_close(p);
            return rc;
        }
    }
    uv_timer_start(&p->timer, on_probe_timeout, (uint64_t)(h->timeout * 1000.0 + 0.5), 0);
    *out = p;
    return MX_OK;
}


void
mx_health_probe_cancel(mx_health_probe_t *p)
{
    if (!p->done)
        probe_close(p);
}


static void
on_probe_connect(uv_connect_t *req, int status)
{
    mx_health_probe_t *p = req->data;

    if (p->done)
        return;
    if (status < 0) {
        probe_finish(p, status, 0);
        return;
    }
    if (!p->http) {
        probe_finish(p, MX_OK, 0);
        return;
    }
    uv_buf_t b = uv_buf_init(p->req, (unsigned)p->reqlen);
    int rc = uv_write(&p->write, &p->io.stream, &b, 1, on_probe_write);
    if (rc == 0)
        rc = uv_read_start(&p->io.stream, on_probe_alloc, on_probe_read);
    if (rc < 0)
        probe_finish(p, rc, 0);
}


static void
on_probe_write(uv_write_t *req, int status)
{
    mx_health_probe_t *p = req->data;

    /* A write error also shows as a read error or EOF; ECANCELED comes after a close. */
    if (status < 0 && status != UV_ECANCELED && !p->done)
        probe_finish(p, status, 0);
}


static void
on_probe_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    mx_health_probe_t *p = h->data;

    (void)hint;
    *buf = uv_buf_init(p->head + p->len, (unsigned)(sizeof(p->head) - p->len));
}


static void
on_probe_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    mx_health_probe_t *p = s->data;
    int status = 0;

    (void)buf;
    if (p->done || n == 0)
        return;
    if (n < 0) {
        probe_finish(p, n == UV_EOF ? MX_EUPCLOSED : (int)n, 0);
        return;
    }
    p->len += (size_t)n;
    int rc = mx_health_parse_status(p->head, p->len, &status);
    if (rc == MX_AGAIN)
        return;
    if (rc == MX_OK && !mx_health_status_expected(p->conf, status))
        rc = MX_DECLINED;
    probe_finish(p, rc, status);
}


static void
on_probe_timeout(uv_timer_t *t)
{
    probe_finish(t->data, UV_ETIMEDOUT, 0);
}


static void
on_probe_close(uv_handle_t *h)
{
    mx_health_probe_t *p = h->data;

    if (--p->closes > 0)
        return;
    mx_free(p->req);
    mx_free(p);
}


/* ------------------------------------------------------ discovery helpers */

bool
mx_health_is_name(const char *host)
{
    struct in6_addr a6;
    struct in_addr a4;

    return inet_pton(AF_INET, host, &a4) != 1 && inet_pton(AF_INET6, host, &a6) != 1;
}


static int
addr_cmp(const void *x, const void *y)
{
    const mx_addr_t *a = x, *b = y;

    if (a->salen != b->salen)
        return a->salen < b->salen ? -1 : 1;
    return memcmp(&a->sa, &b->sa, a->salen);
}


size_t
mx_health_addrs_from_ai(const struct addrinfo *ai, int port, mx_addr_t **out)
{
    size_t n = 0, cap = 0;
    mx_addr_t *v = NULL;

    for (; ai != NULL; ai = ai->ai_next) {
        if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
            ai->ai_addrlen > sizeof(v->sa))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 4;
            v = mx_realloc(v, cap * sizeof(*v));
        }
        mx_addr_t *a = &v[n];
        memset(a, 0, sizeof(*a));
        a->kind = MX_ADDR_TCP;
        memcpy(&a->sa, ai->ai_addr, ai->ai_addrlen);
        a->salen = ai->ai_addrlen;
        a->port = port;
        if (ai->ai_family == AF_INET) {
            struct sockaddr_in *sin = (struct sockaddr_in *)&a->sa;
            sin->sin_port = htons((uint16_t)port);
            memset(sin->sin_zero, 0, sizeof(sin->sin_zero));
            inet_ntop(AF_INET, &sin->sin_addr, a->host, sizeof(a->host));
        } else {
            struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a->sa;
            sin6->sin6_port = htons((uint16_t)port);
            sin6->sin6_flowinfo = 0;
            inet_ntop(AF_INET6, &sin6->sin6_addr, a->host, sizeof(a->host));
        }
        mx_addr_format((struct sockaddr *)&a->sa, a->text, sizeof(a->text));
        n++;
    }
    if (n > 1) {
        qsort(v, n, sizeof(*v), addr_cmp);
        size_t k = 1;
        for (size_t i = 1; i < n; i++)
            if (addr_cmp(&v[i], &v[k - 1]) != 0)
                v[k++] = v[i];
        n = k;
    }
    *out = v;
    return n;
}


bool
mx_health_addrs_same(const mx_addr_t *a, size_t na, const mx_addr_t *b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (addr_cmp(&a[i], &b[i]) != 0)
            return false;
    return true;
}
