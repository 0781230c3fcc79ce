/* Active health checks: the rise/fall state machine, one probe (TCP connect or
 * HTTP status) on a uv loop, and the address-set helpers of DNS discovery.
 * The service that runs them on its own thread is at the end of the file. */
#define _GNU_SOURCE /* strcasestr, memmem */
#include "upstream/health.h"

#include <arpa/inet.h>
#include <stdatomic.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/errors.h"
#include "core/log.h"
#include "upstream/group.h"

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
    case MX_HEALTH_BODY_MISMATCH:
        snprintf(buf, len, "status %d without the expected body", status);
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
    int closes; /* handles whose close callback is still due */
    bool done;  /* the callback ran (or was cancelled): ignore late events */
    bool http;
    const mx_conf_health_t *conf;
    mx_health_probe_cb cb;
    void *arg;
    char *req; /* the HTTP request, while being written */
    size_t reqlen;
    int status; /* the status once read and expected, while the body is searched */
    size_t len; /* bytes of head[] read */
    size_t cap; /* size of head[]: PROBE_HEAD_MAX, or MX_HEALTH_BODY_MAX for a body check */
    char head[];
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
    size_t cap = h->expect_body[0] ? MX_HEALTH_BODY_MAX : PROBE_HEAD_MAX;
    mx_health_probe_t *p = mx_calloc(1, sizeof(*p) + cap);
    struct sockaddr_storage sa;
    int rc;

    p->cap = cap;
    p->conf = h;
    p->cb = cb;
    p->arg = arg;
    p->http = strcmp(h->type, "http") == 0;
    p->io.handle.data = p;
    p->timer.data = p;
    p->connect.data = p;
    p->write.data = p;
    if (p->http) {
        const char *fmt = "%s %s HTTP/1.1\r\nHost: %s\r\n%sAccept: */*\r\n%s"
                          "Connection: close\r\n\r\n";
        const char *path = h->path ? h->path : "/";
        const char *method = h->method[0] ? h->method : "GET";
        const char *ua = "User-Agent: moxy-health-check\r\n";
        /* The configured headers may name their own User-Agent. */
        if (strncasecmp(h->headers, "user-agent:", 11) == 0 ||
            strcasestr(h->headers, "\nuser-agent:") != NULL)
            ua = "";
        host = h->host ? h->host : host;
        size_t n = strlen(fmt) + strlen(method) + strlen(path) + strlen(host) + strlen(ua) +
                   strlen(h->headers) + 1;
        p->req = mx_alloc(n);
        p->reqlen = (size_t)snprintf(p->req, n, fmt, method, path, host, ua, h->headers);
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
    *buf = uv_buf_init(p->head + p->len, (unsigned)(p->cap - p->len));
}


/* True when the body read so far (after the head's blank line) holds expected_body. */
static bool
probe_body_found(const mx_health_probe_t *p)
{
    const char *end = memmem(p->head, p->len, "\r\n\r\n", 4);
    if (end == NULL)
        return false;
    const char *body = end + 4, *want = p->conf->expect_body;
    return memmem(body, p->len - (size_t)(body - p->head), want, strlen(want)) != NULL;
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
        if (p->status != 0) /* the whole response came without the text */
            probe_finish(p, MX_HEALTH_BODY_MISMATCH, p->status);
        else
            probe_finish(p, n == UV_EOF ? MX_EUPCLOSED : (int)n, 0);
        return;
    }
    p->len += (size_t)n;
    if (p->status == 0) {
        int rc = mx_health_parse_status(p->head, p->len, &status);
        if (rc == MX_AGAIN)
            return;
        if (rc == MX_OK && !mx_health_status_expected(p->conf, status))
            rc = MX_DECLINED;
        if (rc != MX_OK || p->conf->expect_body[0] == '\0') {
            probe_finish(p, rc, status);
            return;
        }
        p->status = status;
    }
    if (probe_body_found(p))
        probe_finish(p, MX_OK, p->status);
    else if (p->len == p->cap)
        probe_finish(p, MX_HEALTH_BODY_MISMATCH, p->status);
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


/* ---------------------------------------------------------------- service */

/* The service runs on its own thread and loop; everything below is touched
 * by that thread only, except between start and the thread's creation and
 * after it was joined (main thread). Backends are shared with the workers:
 * the checker never keeps a reference to one, only its pointer as an
 * identity, and writes `healthy` inside mx_group_foreach() where the group's
 * lock keeps it alive. */

typedef struct hgroup_s hgroup_t;
typedef struct hsvc_s hsvc_t;
typedef struct lookup_s lookup_t;

/* One backend as the checker knows it. */
typedef struct {
    hgroup_t *hg;
    const mx_backend_t *b; /* identity only: compared, dereferenced inside foreach */
    char *name;            /* b->name */
    mx_addr_t addr;        /* b->addr */
    mx_health_state_t st;
    mx_health_probe_t *probe; /* the check in flight, or NULL */
    bool seen;                /* still in the group (sync) */
} target_t;

/* One configured backend of a group: a static address or a DNS name with the
 * addresses it resolved to last. */
typedef struct {
    hgroup_t *hg;
    char *name; /* "app.internal:8080", the backends' name in the group */
    char *host; /* "app.internal"; NULL for a static address */
    int port;
    int weight;
    mx_addr_t *addrs; /* sorted; one (the configured one) for a static address */
    size_t naddrs;
    lookup_t *lookup; /* in flight, or NULL */
} member_t;

/* One getaddrinfo() on a detached thread of its own. libuv's threadpool
 * (uv_getaddrinfo) would do, but it joins its threads when the process
 * exits, so a resolver that never answers would hold even a fast shutdown
 * for its whole timeout; a detached thread is simply dropped at exit. The
 * resolver thread owns the lookup until it hands it to <owner>'s queue;
 * an owner that stops first clears <owner>, and the thread frees it. */
struct lookup_s {
    hsvc_t *owner; /* under lookups_lock; NULL once the owner stopped */
    member_t *m;   /* the owner's, valid while owner is set */
    char *host;
    int rc; /* getaddrinfo's EAI_* (0: ok) */
    struct addrinfo *res;
    lookup_t *next; /* in owner->answers */
};

static pthread_mutex_t lookups_lock = PTHREAD_MUTEX_INITIALIZER;

struct hgroup_s {
    hsvc_t *s;
    mx_group_t *g;
    const char *name;          /* the group's */
    const mx_conf_health_t *h; /* in the config given to start */
    double resolve_interval;
    bool check;             /* health_check: given */
    bool discover;          /* a member is a DNS name and resolve_interval > 0 */
    uv_timer_t check_timer; /* every `tick` ms: the next `batch` targets are checked */
    uint64_t tick;
    size_t batch;
    size_t cursor; /* next target to check; a new round (and a sync) at 0 */
    uv_timer_t resolve_timer;
    target_t **targets;
    size_t ntargets;
    member_t *members;
    size_t nmembers;
    int lookups;  /* in flight */
    bool changed; /* an answer differed from the last: replace once all are in */
    hgroup_t *next; /* dynamic groups (moxy.balancer.new{}): s->dyn list */
    int closing;    /* dynamic: handles still to close before it is freed */
};

/* One running service (start to stop). */
struct hsvc_s {
    uv_thread_t thread;
    uv_loop_t loop;
    uv_async_t stop;
    hgroup_t *groups;
    size_t ngroups;
    bool stopping;     /* service thread: on_stop ran */
    uv_async_t answer; /* a resolver thread queued an answer */
    lookup_t *answers; /* under lookups_lock */
    uv_async_t changes; /* mx_health_add/remove queued an op */
    hgroup_t *dyn;      /* the dynamic groups checked now (service thread) */
};

static hsvc_t *svc; /* the running service; NULL when stopped (under dyn_lock) */

/* Dynamic groups (moxy.balancer.new{}): any thread queues an add or a remove; the
 * service thread applies them in order. The queue holds a reference per add. */
typedef struct dyn_op_s {
    bool add;
    mx_group_t *g;
    struct dyn_op_s *next;
} dyn_op_t;

static pthread_mutex_t dyn_lock = PTHREAD_MUTEX_INITIALIZER;
static dyn_op_t *dyn_ops, **dyn_tail = &dyn_ops;

static void on_check_tick(uv_timer_t *t);
static void on_resolve_tick(uv_timer_t *t);
static void on_answer(uv_async_t *a);
static void on_probe_result(void *arg, int rc, int status);
static void on_stop(uv_async_t *a);
static void on_changes(uv_async_t *a);
static void service_main(void *arg);


static uint64_t
ms(double seconds)
{
    return (uint64_t)(seconds * 1000.0 + 0.5);
}


static void
target_free(target_t *t)
{
    if (t->probe != NULL)
        mx_health_probe_cancel(t->probe); /* no callback will come */
    mx_free(t->name);
    mx_free(t);
}


typedef struct {
    hgroup_t *hg;
    target_t **found; /* targets made for backends new to the checker */
    size_t n, cap;
} sync_t;


/* Under the group's lock: finds or makes the target of <b>. Copies only. */
static void
sync_one(mx_backend_t *b, void *arg)
{
    sync_t *s = arg;
    hgroup_t *hg = s->hg;

    for (size_t i = 0; i < hg->ntargets; i++) {
        target_t *t = hg->targets[i];
        if (t->b == b && !t->seen && strcmp(t->name, b->name) == 0) {
            t->seen = true;
            return;
        }
    }
    target_t *t = mx_calloc(1, sizeof(*t));
    t->hg = hg;
    t->b = b;
    t->name = mx_strdup(b->name);
    t->addr = b->addr;
    t->seen = true;
    mx_health_state_init(&t->st, atomic_load(&b->healthy) != 0);
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 8;
        s->found = mx_realloc(s->found, s->cap * sizeof(*s->found));
    }
    s->found[s->n++] = t;
}


/* Spreads a round of checks over the interval (HAProxy's spread-checks), so
 * that a large group does not open all its check connections at one moment:
 * every `tick` ms the next `batch` targets are checked, each target once per
 * interval. Ticks are at least 10 ms apart. */
static void
pace(hgroup_t *hg)
{
    uint64_t interval = ms(hg->h->interval), n = hg->ntargets ? hg->ntargets : 1;
    uint64_t tick = interval / n < 10 ? 10 : interval / n;
    if (tick > interval)
        tick = interval ? interval : 1;
    hg->batch = (size_t)((n * tick + interval - 1) / (interval ? interval : 1));
    if (hg->batch == 0)
        hg->batch = 1;
    if (tick != hg->tick) {
        hg->tick = tick;
        uv_timer_set_repeat(&hg->check_timer, tick);
    }
}


/* Makes hg->targets match the group's current backends: a backend kept by
 * mx_group_replace() keeps its target (and state); a new one starts with the
 * verdict its `healthy` holds; a removed one's check is cancelled. */
static void
sync_targets(hgroup_t *hg)
{
    sync_t s = {.hg = hg};
    size_t k = 0;

    for (size_t i = 0; i < hg->ntargets; i++)
        hg->targets[i]->seen = false;
    mx_group_foreach(hg->g, sync_one, &s);
    for (size_t i = 0; i < hg->ntargets; i++) {
        if (hg->targets[i]->seen)
            hg->targets[k++] = hg->targets[i];
        else
            target_free(hg->targets[i]);
    }
    hg->targets = mx_realloc(hg->targets, (k + s.n + 1) * sizeof(*hg->targets));
    for (size_t i = 0; i < s.n; i++)
        hg->targets[k++] = s.found[i];
    hg->ntargets = k;
    mx_free(s.found);
    pace(hg);
}


/* Under the group's lock: stores the target's verdict in its backend if that
 * backend is still in the group. Coming up also ends a passive-health
 * cool-off (mx_backend_set_healthy): `rise` checks in a row just proved the
 * backend reachable, and the failures that started the cool-off were those of
 * its outage; else a restarted backend would wait out fail_timeout after
 * being seen up. */
static void
store_verdict(mx_backend_t *b, void *arg)
{
    target_t *t = arg;

    if (b == t->b && strcmp(b->name, t->name) == 0)
        mx_backend_set_healthy(b, t->st.up);
}


static void
start_probe(target_t *t)
{
    hgroup_t *hg = t->hg;
    mx_health_probe_t *p;
    const char *host = t->addr.kind == MX_ADDR_UNIX ? "localhost" : t->name;

    int rc = mx_health_probe_start(&hg->s->loop, hg->h, &t->addr, host, on_probe_result, t, &p);
    if (rc < 0) {
        on_probe_result(t, rc, 0); /* a check that could not start failed */
        return;
    }
    t->probe = p;
}


static void
on_check_tick(uv_timer_t *timer)
{
    hgroup_t *hg = timer->data;

    if (hg->cursor == 0)
        sync_targets(hg);
    for (size_t k = 0; k < hg->batch && hg->cursor < hg->ntargets; k++, hg->cursor++) {
        target_t *t = hg->targets[hg->cursor];
        if (t->probe == NULL) /* a check slower than the interval is not doubled */
            start_probe(t);
    }
    if (hg->cursor >= hg->ntargets)
        hg->cursor = 0;
}


static void
on_probe_result(void *arg, int rc, int status)
{
    target_t *t = arg;
    hgroup_t *hg = t->hg;
    const mx_conf_health_t *h = hg->h;
    char buf[64], addr[sizeof(t->addr.text) + 8] = "";

    t->probe = NULL;
    if (hg->s->stopping)
        return;
    bool passed = rc == MX_OK;
    if (!mx_health_feed(&t->st, passed, h->rise, h->fall)) {
        if (!passed)
            mx_log_debug("upstream %s backend %s: %s check failed (%s)", hg->name, t->name, h->type,
                         mx_health_cause(rc, status, buf, sizeof(buf)));
        return;
    }
    mx_group_foreach(hg->g, store_verdict, t);
    if (strcmp(t->name, t->addr.text) != 0)
        snprintf(addr, sizeof(addr), " (%s)", t->addr.text);
    if (t->st.up)
        mx_log_info("upstream %s backend %s%s is up (%d check%s passed)", hg->name, t->name, addr,
                    h->rise, h->rise == 1 ? "" : "s");
    else
        mx_log_warn("upstream %s backend %s%s is down (%s check: %s, %d fail%s)", hg->name, t->name,
                    addr, h->type, mx_health_cause(rc, status, buf, sizeof(buf)), t->st.fails,
                    t->st.fails == 1 ? "" : "s");
}


/* ------------------------------------------------------------- discovery */

/* Hands the members' current addresses to the group; unchanged backends
 * keep their struct and health (mx_group_replace()). */
static void
apply_members(hgroup_t *hg)
{
    size_t n = 0;

    for (size_t i = 0; i < hg->nmembers; i++)
        n += hg->members[i].naddrs;
    const char **names = mx_alloc((n + 1) * sizeof(*names));
    mx_addr_t *addrs = mx_alloc((n + 1) * sizeof(*addrs));
    int *weights = mx_alloc((n + 1) * sizeof(*weights));
    size_t k = 0;
    for (size_t i = 0; i < hg->nmembers; i++) {
        member_t *m = &hg->members[i];
        for (size_t j = 0; j < m->naddrs; j++, k++) {
            names[k] = m->name;
            addrs[k] = m->addrs[j];
            weights[k] = m->weight;
        }
    }
    int rc = mx_group_replace(hg->g, names, addrs, weights, n);
    if (rc != MX_OK)
        mx_log_error("upstream %s: cannot replace the backend list (%s)", hg->name,
                     mx_strerror(rc));
    mx_free(names);
    mx_free(addrs);
    mx_free(weights);
}


static void
addrs_text(const mx_addr_t *a, size_t n, char *buf, size_t len)
{
    size_t off = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < n && off < len; i++) {
        int w = snprintf(buf + off, len - off, "%s%s", i ? ", " : "", a[i].text);
        if (w < 0)
            break;
        off += (size_t)w;
    }
    if (n == 0)
        snprintf(buf, len, "nothing");
}


/* Takes the answer <res> (or the getaddrinfo() failure <rc>) for member <m>.
 * Returns true when its address set changed. A failed or empty lookup keeps
 * the last known addresses: a resolver hiccup must not empty a group. */
static bool
member_answer(member_t *m, int rc, const struct addrinfo *res)
{
    mx_addr_t *v = NULL;
    size_t n = rc == 0 ? mx_health_addrs_from_ai(res, m->port, &v) : 0;
    char was[512], now[512];

    if (n == 0) {
        mx_log_warn("upstream %s: cannot resolve %s (%s): keeping its %zu address%s", m->hg->name,
                    m->host, rc ? gai_strerror(rc) : "no IPv4/IPv6 address", m->naddrs,
                    m->naddrs == 1 ? "" : "es");
        mx_free(v);
        return false;
    }
    if (mx_health_addrs_same(v, n, m->addrs, m->naddrs)) {
        mx_free(v);
        return false;
    }
    addrs_text(m->addrs, m->naddrs, was, sizeof(was));
    addrs_text(v, n, now, sizeof(now));
    mx_log_info("upstream %s: %s resolves to %s (was %s)", m->hg->name, m->name, now, was);
    mx_free(m->addrs);
    m->addrs = v;
    m->naddrs = n;
    return true;
}


static void
lookup_free(lookup_t *l)
{
    if (l->res != NULL)
        freeaddrinfo(l->res);
    mx_free(l->host);
    mx_free(l);
}


static void *
lookup_main(void *arg)
{
    lookup_t *l = arg;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};

    l->rc = getaddrinfo(l->host, NULL, &hints, &l->res);
    if (l->rc != 0)
        l->res = NULL;
    pthread_mutex_lock(&lookups_lock);
    hsvc_t *s = l->owner;
    if (s != NULL) {
        l->next = s->answers;
        s->answers = l;
        uv_async_send(&s->answer); /* before on_stop can close it: it takes the lock first */
    }
    pthread_mutex_unlock(&lookups_lock);
    if (s == NULL)
        lookup_free(l);
    return NULL;
}


static void
on_resolve_tick(uv_timer_t *timer)
{
    hgroup_t *hg = timer->data;
    pthread_attr_t attr;
    pthread_t th;

    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (size_t i = 0; i < hg->nmembers; i++) {
        member_t *m = &hg->members[i];
        if (m->host == NULL || m->lookup != NULL)
            continue;
        lookup_t *l = mx_calloc(1, sizeof(*l));
        l->owner = hg->s;
        l->m = m;
        l->host = mx_strdup(m->host);
        m->lookup = l;
        hg->lookups++;
        int rc = pthread_create(&th, &attr, lookup_main, l);
        if (rc != 0) {
            mx_log_warn("upstream %s: cannot resolve %s (no thread: %s)", hg->name, m->host,
                        strerror(rc));
            m->lookup = NULL;
            hg->lookups--;
            lookup_free(l);
        }
    }
    pthread_attr_destroy(&attr);
}


/* Takes one answer; once every lookup of the group is in, a changed set of
 * addresses goes to the group. */
static void
lookup_done(lookup_t *l)
{
    member_t *m = l->m;
    hgroup_t *hg = m->hg;

    m->lookup = NULL;
    hg->lookups--;
    if (member_answer(m, l->rc, l->res))
        hg->changed = true;
    lookup_free(l);
    if (hg->lookups > 0 || !hg->changed)
        return;
    hg->changed = false;
    apply_members(hg);
    if (hg->check)
        sync_targets(hg);
}


static void
on_answer(uv_async_t *a)
{
    hsvc_t *s = a->data;

    pthread_mutex_lock(&lookups_lock);
    lookup_t *l = s->answers;
    s->answers = NULL;
    pthread_mutex_unlock(&lookups_lock);
    while (l != NULL) {
        lookup_t *next = l->next;
        if (s->stopping)
            lookup_free(l);
        else
            lookup_done(l);
        l = next;
    }
}


/* ------------------------------------------------------- start and stop */

/* Fills hg's members from the configured backends of <u>; a DNS name is
 * resolved now (blocking: the main thread, before workers serve) to every
 * address it has, as nginx does for a name with several addresses. */
static void
init_members(hgroup_t *hg, const mx_conf_upstream_t *u)
{
    hg->members = mx_calloc(u->nbackends, sizeof(member_t));
    hg->nmembers = u->nbackends;
    for (size_t i = 0; i < u->nbackends; i++) {
        const mx_addr_t *a = &u->backends[i].addr;
        member_t *m = &hg->members[i];
        char name[sizeof(a->host) + 16];

        if (a->kind == MX_ADDR_UNIX)
            snprintf(name, sizeof(name), "unix:%s", a->host);
        else if (strchr(a->host, ':') != NULL)
            snprintf(name, sizeof(name), "[%s]:%d", a->host, a->port);
        else
            snprintf(name, sizeof(name), "%s:%d", a->host, a->port);
        m->hg = hg;
        m->name = mx_strdup(name);
        m->port = a->port;
        m->weight = u->backends[i].weight;
        m->addrs = mx_alloc(sizeof(mx_addr_t));
        m->addrs[0] = *a;
        m->naddrs = 1;
        if (a->kind != MX_ADDR_TCP || !mx_health_is_name(a->host))
            continue;
        m->host = mx_strdup(a->host);
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
        int rc = getaddrinfo(m->host, NULL, &hints, &res);
        if (rc == 0) {
            if (member_answer(m, 0, res))
                hg->changed = true;
            freeaddrinfo(res);
        }
        /* (A failure here is rare: the config loader resolved it a moment ago.) */
        if (u->resolve_interval > 0)
            hg->discover = true;
    }
}


/* Frees <s> and what it owns (not the groups: they are the workers'). */
static void
svc_free(hsvc_t *s)
{
    for (size_t i = 0; i < s->ngroups; i++) {
        hgroup_t *hg = &s->groups[i];
        for (size_t j = 0; j < hg->ntargets; j++)
            target_free(hg->targets[j]);
        mx_free(hg->targets);
        for (size_t j = 0; j < hg->nmembers; j++) {
            mx_free(hg->members[j].name);
            mx_free(hg->members[j].host);
            mx_free(hg->members[j].addrs);
        }
        mx_free(hg->members);
    }
    mx_free(s->groups);
    /* Dynamic groups still registered (a restart of the service): queued again, with
     * their reference, for the next start. */
    pthread_mutex_lock(&dyn_lock);
    for (hgroup_t *hg = s->dyn, *next; hg != NULL; hg = next) {
        next = hg->next;
        for (size_t j = 0; j < hg->ntargets; j++)
            target_free(hg->targets[j]);
        mx_free(hg->targets);
        dyn_op_t *op = mx_calloc(1, sizeof(*op));
        op->add = true;
        op->g = hg->g;
        op->next = dyn_ops;
        if (dyn_ops == NULL)
            dyn_tail = &op->next;
        dyn_ops = op;
        mx_free(hg);
    }
    pthread_mutex_unlock(&dyn_lock);
    for (lookup_t *l = s->answers, *next; l != NULL; l = next) {
        next = l->next;
        lookup_free(l);
    }
    mx_free(s);
}


int
mx_health_start(const mx_conf_t *conf)
{
    int rc;

    if (svc != NULL)
        return MX_OK;
    hsvc_t *s = mx_calloc(1, sizeof(*s));
    s->groups = mx_calloc(conf->nupstreams + 1, sizeof(hgroup_t));
    for (size_t i = 0; i < conf->nupstreams; i++) {
        const mx_conf_upstream_t *u = &conf->upstreams[i];
        mx_group_t *g = mx_group_by_name(u->name, strlen(u->name));
        if (g == NULL)
            continue;
        hgroup_t *hg = &s->groups[s->ngroups++];
        hg->s = s;
        hg->g = g;
        hg->name = u->name;
        hg->h = &u->health;
        hg->check = u->health.enabled;
        hg->resolve_interval = u->resolve_interval;
        init_members(hg, u);
        if (hg->changed) {
            hg->changed = false;
            apply_members(hg);
        }
        if (!hg->check && !hg->discover) { /* nothing to run for this group */
            for (size_t j = 0; j < hg->nmembers; j++) {
                mx_free(hg->members[j].name);
                mx_free(hg->members[j].host);
                mx_free(hg->members[j].addrs);
            }
            mx_free(hg->members);
            memset(hg, 0, sizeof(*hg));
            s->ngroups--;
        }
    }
    /* The thread runs even with no group to check: moxy.balancer.new{} may bring some. */
    if ((rc = uv_loop_init(&s->loop)) < 0) {
        svc_free(s);
        return rc;
    }
    uv_async_init(&s->loop, &s->stop, on_stop);
    s->stop.data = s;
    uv_async_init(&s->loop, &s->answer, on_answer);
    s->answer.data = s;
    uv_async_init(&s->loop, &s->changes, on_changes);
    s->changes.data = s;
    for (size_t i = 0; i < s->ngroups; i++) {
        hgroup_t *hg = &s->groups[i];
        uv_timer_init(&s->loop, &hg->check_timer);
        uv_timer_init(&s->loop, &hg->resolve_timer);
        hg->check_timer.data = hg;
        hg->resolve_timer.data = hg;
        if (hg->check) { /* the first round starts at once, spread over one interval */
            uv_timer_start(&hg->check_timer, on_check_tick, 0, ms(hg->h->interval));
            sync_targets(hg); /* sets the pace (main thread: the loop does not run yet) */
        }
        if (hg->discover)
            uv_timer_start(&hg->resolve_timer, on_resolve_tick, ms(hg->resolve_interval),
                           ms(hg->resolve_interval));
        char what[160] = "", *p = what;
        if (hg->check)
            p += snprintf(p, sizeof(what), "%s health checks every %gs (rise %d, fall %d)",
                          hg->h->type, hg->h->interval, hg->h->rise, hg->h->fall);
        if (hg->discover)
            snprintf(p, sizeof(what) - (size_t)(p - what), "%sDNS names re-resolved every %gs",
                     hg->check ? ", " : "", hg->resolve_interval);
        mx_log_info("upstream %s: %s", hg->name, what);
    }
    if ((rc = uv_thread_create(&s->thread, service_main, s)) < 0) {
        uv_close((uv_handle_t *)&s->stop, NULL);
        uv_close((uv_handle_t *)&s->answer, NULL);
        uv_close((uv_handle_t *)&s->changes, NULL);
        for (size_t i = 0; i < s->ngroups; i++) {
            uv_close((uv_handle_t *)&s->groups[i].check_timer, NULL);
            uv_close((uv_handle_t *)&s->groups[i].resolve_timer, NULL);
        }
        uv_run(&s->loop, UV_RUN_DEFAULT);
        uv_loop_close(&s->loop);
        svc_free(s);
        return rc;
    }
    pthread_mutex_lock(&dyn_lock);
    svc = s;
    uv_async_send(&s->changes); /* groups queued before the start */
    pthread_mutex_unlock(&dyn_lock);
    return MX_OK;
}


static void
service_main(void *arg)
{
    hsvc_t *s = arg;

    uv_run(&s->loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&s->loop);
    if (rc != 0)
        mx_log_error("health checks: loop closed with handles open (%s)", uv_err_name(rc));
}


/* On the service thread: cancels what is in flight and closes every handle,
 * so that uv_run() returns once the close callbacks are done. A DNS lookup
 * still running is let go: its thread frees it when getaddrinfo() returns. */
static void
on_stop(uv_async_t *a)
{
    hsvc_t *s = a->data;

    on_changes(&s->changes); /* removes queued before the stop: their references go */
    s->stopping = true;
    for (hgroup_t *hg = s->dyn; hg != NULL; hg = hg->next) {
        for (size_t j = 0; j < hg->ntargets; j++) {
            if (hg->targets[j]->probe != NULL) {
                mx_health_probe_cancel(hg->targets[j]->probe);
                hg->targets[j]->probe = NULL;
            }
        }
        uv_close((uv_handle_t *)&hg->check_timer, NULL);
    }
    uv_close((uv_handle_t *)&s->changes, NULL);
    for (size_t i = 0; i < s->ngroups; i++) {
        hgroup_t *hg = &s->groups[i];
        for (size_t j = 0; j < hg->ntargets; j++) {
            if (hg->targets[j]->probe != NULL) {
                mx_health_probe_cancel(hg->targets[j]->probe);
                hg->targets[j]->probe = NULL;
            }
        }
        pthread_mutex_lock(&lookups_lock);
        for (size_t j = 0; j < hg->nmembers; j++) {
            if (hg->members[j].lookup != NULL) {
                hg->members[j].lookup->owner = NULL;
                hg->members[j].lookup = NULL;
            }
        }
        pthread_mutex_unlock(&lookups_lock);
        uv_close((uv_handle_t *)&hg->check_timer, NULL);
        uv_close((uv_handle_t *)&hg->resolve_timer, NULL);
    }
    uv_close((uv_handle_t *)&s->answer, NULL);
    uv_close((uv_handle_t *)a, NULL);
}


void
mx_health_stop(void)
{
    hsvc_t *s = svc;

    if (s == NULL)
        return;
    pthread_mutex_lock(&dyn_lock);
    svc = NULL;
    pthread_mutex_unlock(&dyn_lock);
    uv_async_send(&s->stop);
    uv_thread_join(&s->thread);
    svc_free(s);
}


/* ------------------------------------------------------- dynamic groups */

static void
dyn_closed(uv_handle_t *h)
{
    hgroup_t *hg = h->data;

    mx_group_unref(hg->g);
    mx_free(hg);
}


/* Service thread: applies the queued adds and removes, in order. */
static void
on_changes(uv_async_t *a)
{
    hsvc_t *s = a->data;

    pthread_mutex_lock(&dyn_lock);
    dyn_op_t *ops = dyn_ops;
    dyn_ops = NULL;
    dyn_tail = &dyn_ops;
    pthread_mutex_unlock(&dyn_lock);
    for (dyn_op_t *op = ops, *next; op != NULL; op = next) {
        next = op->next;
        if (op->add) {
            const mx_conf_upstream_t *u = mx_group_conf(op->g);
            hgroup_t *hg = mx_calloc(1, sizeof(*hg));
            hg->s = s;
            hg->g = op->g; /* the op's reference, now the hgroup's */
            hg->name = mx_group_name(op->g);
            hg->h = &u->health;
            hg->check = true;
            uv_timer_init(&s->loop, &hg->check_timer);
            hg->check_timer.data = hg;
            sync_targets(hg);
            uv_timer_start(&hg->check_timer, on_check_tick, 0, hg->tick);
            hg->next = s->dyn;
            s->dyn = hg;
            mx_log_info("upstream %s: %s health checks every %gs (rise %d, fall %d)", hg->name,
                        hg->h->type, hg->h->interval, hg->h->rise, hg->h->fall);
        } else {
            for (hgroup_t **pp = &s->dyn; *pp != NULL; pp = &(*pp)->next) {
                hgroup_t *hg = *pp;
                if (hg->g != op->g)
                    continue;
                *pp = hg->next;
                for (size_t j = 0; j < hg->ntargets; j++)
                    target_free(hg->targets[j]); /* a check in flight is cancelled */
                mx_free(hg->targets);
                hg->targets = NULL;
                hg->ntargets = 0;
                uv_close((uv_handle_t *)&hg->check_timer, dyn_closed);
                break;
            }
        }
        mx_free(op);
    }
}


/* Queues <op>; a remove that meets the add of the same group still queued cancels it. */
static void
dyn_queue(bool add, mx_group_t *g)
{
    pthread_mutex_lock(&dyn_lock);
    if (!add) {
        for (dyn_op_t **pp = &dyn_ops; *pp != NULL; pp = &(*pp)->next) {
            dyn_op_t *op = *pp;
            if (op->add && op->g == g) {
                *pp = op->next;
                if (dyn_tail == &op->next)
                    dyn_tail = pp;
                pthread_mutex_unlock(&dyn_lock);
                mx_group_unref(g);
                mx_free(op);
                return;
            }
        }
    }
    dyn_op_t *op = mx_calloc(1, sizeof(*op));
    op->add = add;
    op->g = g;
    *dyn_tail = op;
    dyn_tail = &op->next;
    if (svc != NULL)
        uv_async_send(&svc->changes);
    pthread_mutex_unlock(&dyn_lock);
}


void
mx_health_add(mx_group_t *g)
{
    mx_group_ref(g);
    dyn_queue(true, g);
}


void
mx_health_remove(mx_group_t *g)
{
    dyn_queue(false, g);
}
