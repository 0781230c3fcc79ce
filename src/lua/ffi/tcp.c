/* moxy.tcp: a yielding TCP (or unix socket) client for Lua, like
 * OpenResty's cosocket (lua/moxy/tcp.lua is the Lua half). Each operation is
 * pull-style: the FFI call does what it can at once (a pooled connection, a
 * write the kernel takes whole, a line already buffered) and returns MX_OK;
 * otherwise it starts the I/O, arms the socket's wait under the current task
 * (lua/task.h) and returns MX_AGAIN; Lua yields and, once woken, calls
 * moxy_tcp_take() for the result or receives again from the buffer.
 *
 * A socket (moxy_tcp_t) is owned by Lua (ffi.gc -> moxy_tcp_free); the
 * connection it uses (conn_t, the uv handles) is owned by the socket, or by
 * the per-worker keepalive pool after setkeepalive(), and is freed in its
 * close callbacks. A connected socket belongs to the task that connected it:
 * when that request or timer ends, the socket is closed. */
#define _GNU_SOURCE /* memmem */
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/errors.h"
#include "core/log.h"
#include "lua/task.h"
#include "proxy/session.h"

#define READ_CHUNK (16 * 1024)

typedef struct mx_lua_tcp_s moxy_tcp_t;

enum { OP_NONE = 0, OP_CONNECT, OP_READ, OP_WRITE };
enum { RECV_LINE = 0, RECV_ALL, RECV_BYTES, RECV_ANY, RECV_UNTIL };

typedef struct resolve_s resolve_t;

/* A connection: used by one socket, or idle in the pool. */
typedef struct {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    uv_timer_t timer; /* the pending operation's timeout, or the idle timeout */
    uv_connect_t connect_req;
    uv_write_t write_req;
    int handles_open;
    moxy_tcp_t *sock; /* NULL when pooled or closing */
    mx_list_t node;   /* in the pool */
    char *key;        /* pool key ("host:port", "unix:/path" or the caller's) */
    mx_buf_t wbuf;    /* what uv_try_write() left, being written */
    uint32_t reused;  /* times taken from the pool */
    unsigned connected : 1;
    unsigned closing : 1;
    unsigned pooled : 1;
} conn_t;

struct mx_lua_tcp_s {
    conn_t *c;
    mx_lua_task_t *task; /* the task that connected it, NULL when not connected */
    mx_lua_cleanup_t cleanup;
    mx_lua_wait_t wait;
    resolve_t *resolving;
    int op;         /* OP_* in progress */
    int pending_rc; /* the finished operation's result, for moxy_tcp_take() */
    int read_rc;    /* a read error (UV_*) to report, 0 if none */
    unsigned eof : 1;
    unsigned until_hit : 1; /* RECV_UNTIL found its pattern (MX_DONE) */
    mx_buf_t rbuf; /* received, [rpos, len) not yet returned */
    size_t rpos;
    int rmode; /* what the pending receive waits for */
    size_t rn;
    size_t rmax;
    mx_buf_t pat;
    int port;
};

struct resolve_s {
    uv_getaddrinfo_t req;
    moxy_tcp_t *sock; /* NULL once abandoned */
};

static __thread mx_list_t pool;       /* conn_t.node, most recent first */
static __thread bool pool_closed;     /* the worker drains: pool nothing more */

int moxy_tcp_new(moxy_tcp_t **out);
void moxy_tcp_free(moxy_tcp_t *t);
int moxy_tcp_connect(moxy_tcp_t *t, double id, const char *host, size_t hl, int port,
                     const char *key, size_t kl, double timeout_ms);
int moxy_tcp_send(moxy_tcp_t *t, double id, const char *p, size_t n, double timeout_ms);
int moxy_tcp_receive(moxy_tcp_t *t, double id, int mode, size_t n, size_t max, const char *pat,
                     size_t pl, double timeout_ms, mx_str_t *out);
int moxy_tcp_take(moxy_tcp_t *t);
int moxy_tcp_setkeepalive(moxy_tcp_t *t, double idle_ms, int pool_size);
int moxy_tcp_close(moxy_tcp_t *t, int force);
int moxy_tcp_reused(moxy_tcp_t *t);
int moxy_tcp_pool_count(const char *key, size_t kl);
const char *moxy_tcp_strerror(int rc);

static void on_close(uv_handle_t *h);
static void on_timer(uv_timer_t *h);


static void
pool_init(void)
{
    if (pool.next == NULL)
        mx_list_init(&pool);
}


static void
conn_close(conn_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->sock = NULL;
    if (c->pooled) {
        mx_list_remove(&c->node);
        c->pooled = 0;
    }
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_close);
    uv_close(&c->h.handle, on_close);
}


static void
on_close(uv_handle_t *h)
{
    conn_t *c = h->data;
    if (--c->handles_open > 0)
        return;
    mx_buf_dispose(&c->wbuf);
    mx_free(c->key);
    mx_free(c);
}


static conn_t *
conn_new(bool unix_path, const char *key, size_t kl)
{
    conn_t *c = mx_calloc(1, sizeof(*c));
    uv_loop_t *loop = &mx_current_worker->loop;
    if (unix_path)
        uv_pipe_init(loop, &c->h.pipe, 0);
    else
        uv_tcp_init(loop, &c->h.tcp);
    uv_timer_init(loop, &c->timer);
    c->h.handle.data = c;
    c->timer.data = c;
    c->handles_open = 2;
    c->key = mx_strndup(key, kl);
    mx_buf_init(&c->wbuf);
    return c;
}


/* Detaches and closes the socket's connection (and any lookup in flight). */
static void
sock_close(moxy_tcp_t *t)
{
    mx_lua_wait_disarm(&t->wait);
    if (t->resolving != NULL) {
        t->resolving->sock = NULL;
        uv_cancel((uv_req_t *)&t->resolving->req);
        t->resolving = NULL;
    }
    if (t->c != NULL) {
        conn_close(t->c);
        t->c = NULL;
    }
    mx_lua_cleanup_remove(&t->cleanup);
    t->task = NULL;
    t->op = OP_NONE;
    t->eof = 0;
    t->read_rc = 0;
    mx_buf_reset(&t->rbuf);
    t->rpos = 0;
}


/* The socket's task ended: close it; nothing is woken. */
static void
on_task_end(mx_lua_cleanup_t *cl)
{
    sock_close(mx_container_of(cl, moxy_tcp_t, cleanup));
}


/* The operation in progress finished with <rc>: wake its waiter. */
static void
op_done(moxy_tcp_t *t, int rc)
{
    conn_t *c = t->c;
    if (c != NULL)
        uv_timer_stop(&c->timer);
    t->op = OP_NONE;
    t->pending_rc = rc;
    mx_lua_wake(&t->wait); /* last: the resumed Lua may free <t> */
}


static void
timer_arm(conn_t *c, double ms)
{
    if (ms > 0)
        uv_timer_start(&c->timer, on_timer, (uint64_t)ms, 0);
}


static void
on_timer(uv_timer_t *h)
{
    conn_t *c = h->data;
    moxy_tcp_t *t = c->sock;
    if (t == NULL) { /* pooled: the idle timeout */
        conn_close(c);
        return;
    }
    if (t->op == OP_READ) {
        /* A read timeout leaves the connection usable (as OpenResty does). */
        uv_read_stop(&c->h.stream);
        op_done(t, UV_ETIMEDOUT);
        return;
    }
    /* connect or send timed out: the connection is unusable. */
    if (t->resolving != NULL) {
        t->resolving->sock = NULL;
        uv_cancel((uv_req_t *)&t->resolving->req);
        t->resolving = NULL;
    }
    conn_close(c);
    t->c = NULL;
    op_done(t, UV_ETIMEDOUT);
}


/* Who may run an operation on <t> now: MX_OK with <*task>, or an error. */
static int
check_op(moxy_tcp_t *t, mx_lua_task_t **task)
{
    int rc;
    *task = NULL; /* set on every path: callers use it only after MX_OK */
    if (mx_current_worker == NULL)
        return mx_lua_ffi_fail(MX_EBADPHASE, "outside a worker (moxy -t)");
    *task = mx_lua_task_current(&rc);
    if (*task == NULL)
        return rc;
    if (t->op != OP_NONE)
        return mx_lua_ffi_fail(MX_EBADARG, "socket busy (another operation is in progress)");
    if (t->task != NULL && t->task != *task)
        return mx_lua_ffi_fail(MX_EBADARG,
                               "the socket belongs to another request or timer");
    return MX_OK;
}


int
moxy_tcp_new(moxy_tcp_t **out)
{
    moxy_tcp_t *t = mx_calloc(1, sizeof(*t));
    mx_buf_init(&t->rbuf);
    mx_buf_init(&t->pat);
    t->cleanup.fn = on_task_end;
    *out = t;
    return MX_OK;
}


void
moxy_tcp_free(moxy_tcp_t *t)
{
    if (t == NULL)
        return;
    sock_close(t);
    mx_buf_dispose(&t->rbuf);
    mx_buf_dispose(&t->pat);
    mx_free(t);
}


static void
on_connect(uv_connect_t *req, int status)
{
    conn_t *c = req->handle->data;
    moxy_tcp_t *t = c->sock;
    if (c->closing || t == NULL)
        return;
    if (status < 0) {
        conn_close(c);
        t->c = NULL;
        op_done(t, status);
        return;
    }
    c->connected = 1;
    op_done(t, MX_OK);
}


static int
start_connect(moxy_tcp_t *t, const struct sockaddr *sa)
{
    conn_t *c = t->c;
    return uv_tcp_connect(&c->connect_req, &c->h.tcp, sa, on_connect);
}


static void
on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    resolve_t *r = mx_container_of(req, resolve_t, req);
    moxy_tcp_t *t = r->sock;
    mx_free(r);
    if (t == NULL) {
        uv_freeaddrinfo(res);
        return;
    }
    t->resolving = NULL;
    int rc = status;
    if (rc == 0 && res == NULL)
        rc = UV_EAI_NONAME;
    if (rc == 0) {
        /* IPv4 first, as OpenResty's resolver (ipv6=off by default); else the first. */
        struct addrinfo *ai = res;
        for (struct addrinfo *p = res; p != NULL; p = p->ai_next)
            if (p->ai_family == AF_INET) {
                ai = p;
                break;
            }
        if (ai->ai_family == AF_INET)
            ((struct sockaddr_in *)ai->ai_addr)->sin_port = htons((uint16_t)t->port);
        else
            ((struct sockaddr_in6 *)ai->ai_addr)->sin6_port = htons((uint16_t)t->port);
        rc = start_connect(t, ai->ai_addr);
    }
    uv_freeaddrinfo(res);
    if (rc < 0) {
        conn_close(t->c);
        t->c = NULL;
        op_done(t, rc);
    }
}


/* connect(host, port) or ("unix:/path"): from the pool when it holds a
 * connection under <key> (MX_OK at once), else MX_AGAIN. */
int
moxy_tcp_connect(moxy_tcp_t *t, double id, const char *host, size_t hl, int port,
                 const char *key, size_t kl, double timeout_ms)
{
    mx_lua_task_t *task;
    int rc = check_op(t, &task);
    if (rc != MX_OK)
        return rc;
    sock_close(t); /* connect() on a connected socket closes the old connection */
    pool_init();
    for (mx_list_t *n = pool.next; n != &pool; n = n->next) {
        conn_t *c = mx_container_of(n, conn_t, node);
        if (strlen(c->key) == kl && memcmp(c->key, key, kl) == 0) {
            mx_list_remove(&c->node);
            c->pooled = 0;
            uv_timer_stop(&c->timer);
            uv_read_stop(&c->h.stream);
            c->reused++;
            c->sock = t;
            t->c = c;
            t->task = task;
            mx_lua_cleanup_add(task, &t->cleanup);
            return MX_OK;
        }
    }

    char name[256];
    bool unix_path = hl > 5 && memcmp(host, "unix:", 5) == 0;
    if (hl == 0 || hl >= sizeof(name))
        return mx_lua_ffi_fail(MX_EBADARG, "bad host");
    memcpy(name, host, hl);
    name[hl] = '\0';
    struct sockaddr_storage ss;
    bool numeric = false;
    if (!unix_path) {
        if (port < 1 || port > 65535)
            return mx_lua_ffi_fail(MX_EBADARG, "port must be 1..65535");
        char *h = name;
        if (h[0] == '[' && hl > 2 && h[hl - 1] == ']') {
            h[hl - 1] = '\0';
            h++;
        }
        numeric = uv_ip4_addr(h, port, (struct sockaddr_in *)&ss) == 0 ||
                  uv_ip6_addr(h, port, (struct sockaddr_in6 *)&ss) == 0;
        if (h != name)
            memmove(name, h, strlen(h) + 1);
    } else if (hl - 5 >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        return mx_lua_ffi_fail(MX_EBADARG, "unix socket path too long");
    }

    conn_t *c = conn_new(unix_path, key, kl);
    c->sock = t;
    t->c = c;
    t->port = port;
    if (unix_path) {
        uv_pipe_connect(&c->connect_req, &c->h.pipe, name + 5, on_connect);
    } else if (numeric) {
        rc = start_connect(t, (struct sockaddr *)&ss);
    } else {
        resolve_t *r = mx_calloc(1, sizeof(*r));
        r->sock = t;
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        rc = uv_getaddrinfo(&mx_current_worker->loop, &r->req, on_resolved, name, NULL, &hints);
        if (rc == 0)
            t->resolving = r;
        else
            mx_free(r);
    }
    if (rc < 0) {
        conn_close(c);
        t->c = NULL;
        return rc;
    }
    t->task = task;
    mx_lua_cleanup_add(task, &t->cleanup);
    t->op = OP_CONNECT;
    timer_arm(c, timeout_ms);
    return mx_lua_wait_arm(task, &t->wait, id);
}


/* The result of the operation that just woke the caller (MX_OK or UV_E*). */
int
moxy_tcp_take(moxy_tcp_t *t)
{
    int rc = t->pending_rc;
    t->pending_rc = 0;
    return rc;
}


static void
on_write(uv_write_t *req, int status)
{
    conn_t *c = req->handle->data;
    moxy_tcp_t *t = c->sock;
    mx_buf_reset(&c->wbuf);
    if (c->closing || t == NULL)
        return;
    if (status < 0) {
        conn_close(c);
        t->c = NULL;
        op_done(t, status);
        return;
    }
    op_done(t, MX_OK);
}


/* send(data): MX_OK when the kernel took it all at once, MX_AGAIN while the
 * rest is written, or UV_E* (the connection is then closed). */
int
moxy_tcp_send(moxy_tcp_t *t, double id, const char *p, size_t n, double timeout_ms)
{
    mx_lua_task_t *task;
    int rc = check_op(t, &task);
    if (rc != MX_OK)
        return rc;
    conn_t *c = t->c;
    if (c == NULL || !c->connected)
        return UV_EOF;
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    int w = n > 0 ? uv_try_write(&c->h.stream, &b, 1) : 0;
    if (w == (int)n)
        return MX_OK;
    if (w < 0 && w != UV_EAGAIN) {
        sock_close(t);
        return w;
    }
    if (w < 0)
        w = 0;
    mx_buf_append(&c->wbuf, p + w, n - (size_t)w);
    b = uv_buf_init(c->wbuf.data, (unsigned)c->wbuf.len);
    rc = uv_write(&c->write_req, &c->h.stream, &b, 1, on_write);
    if (rc < 0) {
        sock_close(t);
        return rc;
    }
    t->op = OP_WRITE;
    timer_arm(c, timeout_ms);
    return mx_lua_wait_arm(task, &t->wait, id);
}


/* Whether the buffered bytes complete the pending receive: true with the
 * length to return in <*len> and how many bytes to drop after it in <*skip>
 * (a line's LF or CRLF, the pattern). "*a" completes only at the close. */
static bool
satisfied(moxy_tcp_t *t, size_t *len, size_t *skip)
{
    const char *p = t->rbuf.data + t->rpos;
    size_t have = t->rbuf.len - t->rpos;
    *skip = 0;
    switch (t->rmode) {
    case RECV_LINE: {
        const char *nl = have ? memchr(p, '\n', have) : NULL;
        if (nl == NULL)
            return false;
        *len = (size_t)(nl - p);
        *skip = 1;
        if (*len > 0 && p[*len - 1] == '\r') {
            (*len)--;
            *skip = 2;
        }
        return true;
    }
    case RECV_BYTES:
        *len = t->rn;
        return have >= t->rn;
    case RECV_ANY:
        *len = have < t->rn ? have : t->rn;
        return have > 0 || t->rn == 0;
    case RECV_UNTIL: {
        /* With <rn> > 0 (reader(size)): at most rn bytes before the pattern;
         * rn bytes are safe once no match can start among them. */
        const char *hit = have >= t->pat.len ? memmem(p, have, t->pat.data, t->pat.len) : NULL;
        if (hit != NULL && (t->rn == 0 || (size_t)(hit - p) <= t->rn)) {
            *len = (size_t)(hit - p);
            *skip = t->pat.len;
            t->until_hit = 1;
            return true;
        }
        if (t->rn > 0 && (hit != NULL || have >= t->rn + t->pat.len - 1)) {
            *len = t->rn;
            return true;
        }
        return false;
    }
    }
    return false;
}


/* Returns the first <len> buffered bytes as a view and drops them and <skip>. */
static void
take_view(moxy_tcp_t *t, size_t len, size_t skip, mx_str_t *out)
{
    *out = (mx_str_t){t->rbuf.data ? t->rbuf.data + t->rpos : "", len};
    t->rpos += len + skip;
}


static void
on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    conn_t *c = h->data;
    moxy_tcp_t *t = c->sock;
    if (t == NULL) {
        static __thread char scratch[256];
        *buf = uv_buf_init(scratch, sizeof(scratch));
        return;
    }
    if (t->rpos > 0 && t->rpos == t->rbuf.len) {
        t->rbuf.len = 0;
        t->rpos = 0;
    } else if (t->rpos > 0 && t->rbuf.cap - t->rbuf.len < READ_CHUNK) {
        memmove(t->rbuf.data, t->rbuf.data + t->rpos, t->rbuf.len - t->rpos);
        t->rbuf.len -= t->rpos;
        t->rpos = 0;
    }
    mx_buf_reserve(&t->rbuf, READ_CHUNK);
    *buf = uv_buf_init(t->rbuf.data + t->rbuf.len, (unsigned)(t->rbuf.cap - t->rbuf.len));
}


static void
on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    conn_t *c = st->data;
    moxy_tcp_t *t = c->sock;
    if (t == NULL) { /* pooled: data or EOF means it is unusable */
        if (nread != 0 && !c->closing)
            conn_close(c);
        return;
    }
    if (nread == 0)
        return;
    if (nread < 0) {
        uv_read_stop(st);
        if (nread == UV_EOF)
            t->eof = 1;
        else
            t->read_rc = (int)nread;
        if (t->op == OP_READ)
            op_done(t, MX_OK);
        return;
    }
    t->rbuf.len += (size_t)nread;
    size_t len, skip;
    if (satisfied(t, &len, &skip) || (t->rmax && t->rbuf.len - t->rpos > t->rmax)) {
        uv_read_stop(st);
        if (t->op == OP_READ)
            op_done(t, MX_OK);
        return;
    }
    uv_timer_again(&c->timer); /* the read timeout runs between arrivals */
}


/* receive: <mode> RECV_LINE ("*l", the line without its LF or CRLF),
 * RECV_ALL ("*a", until the peer closes), RECV_BYTES (exactly <n>),
 * RECV_ANY (1..<n> bytes), RECV_UNTIL (up to the pattern <pat>, which is
 * dropped: MX_DONE; with <n> > 0 at most <n> bytes before it, MX_OK while
 * the pattern is not reached). <max> caps what a line, "*a" or a pattern search buffers (0: no
 * cap). MX_OK with <out> (a view valid until the next call on <t>),
 * MX_AGAIN, or an error with what arrived so far in <out>: UV_EOF (closed;
 * the connection is closed), UV_ETIMEDOUT (kept open), MX_ETOOLARGE, UV_E*. */
int
moxy_tcp_receive(moxy_tcp_t *t, double id, int mode, size_t n, size_t max, const char *pat,
                 size_t pl, double timeout_ms, mx_str_t *out)
{
    mx_lua_task_t *task;
    *out = (mx_str_t){"", 0};
    int rc = check_op(t, &task);
    if (rc != MX_OK)
        return rc;
    if (t->c == NULL || !t->c->connected)
        return UV_EOF;
    if (mode < RECV_LINE || mode > RECV_UNTIL || (mode == RECV_UNTIL && pl == 0))
        return mx_lua_ffi_fail(MX_EBADARG, "bad receive pattern");
    t->rmode = mode;
    t->rn = n;
    t->rmax = max;
    if (mode == RECV_UNTIL) {
        mx_buf_reset(&t->pat);
        mx_buf_append(&t->pat, pat, pl);
    }
    size_t len, skip;
    t->until_hit = 0;
    if (satisfied(t, &len, &skip)) {
        take_view(t, len, skip, out);
        return t->until_hit ? MX_DONE : MX_OK;
    }
    size_t have = t->rbuf.len - t->rpos;
    if (max && have > max) {
        take_view(t, have, 0, out);
        return MX_ETOOLARGE;
    }
    if (t->read_rc != 0 || t->eof) {
        rc = t->read_rc ? t->read_rc : UV_EOF;
        take_view(t, have, 0, out);
        if (mode == RECV_ALL && rc == UV_EOF)
            return MX_OK; /* "*a" ends at the close: a success */
        sock_close(t); /* resets rbuf's length only: <out> stays readable until the next call */
        return rc;
    }
    if (t->pending_rc == UV_ETIMEDOUT) {
        t->pending_rc = 0;
        take_view(t, have, 0, out);
        return UV_ETIMEDOUT;
    }
    rc = uv_read_start(&t->c->h.stream, on_alloc, on_read);
    if (rc < 0) {
        sock_close(t);
        return rc;
    }
    t->op = OP_READ;
    timer_arm(t->c, timeout_ms);
    if (timeout_ms > 0)
        uv_timer_set_repeat(&t->c->timer, (uint64_t)timeout_ms);
    return mx_lua_wait_arm(task, &t->wait, id);
}


/* setkeepalive(idle_ms, pool_size): the connection goes to the worker's
 * pool under its key (0 idle_ms: no idle timeout); the socket is closed.
 * Fails (and closes) with unread data or a broken connection. */
int
moxy_tcp_setkeepalive(moxy_tcp_t *t, double idle_ms, int pool_size)
{
    conn_t *c = t->c;
    if (c == NULL || !c->connected)
        return UV_EOF;
    if (t->op != OP_NONE)
        return mx_lua_ffi_fail(MX_EBADARG, "socket busy (another operation is in progress)");
    if (t->rpos < t->rbuf.len || t->eof || t->read_rc) {
        bool unread = t->rpos < t->rbuf.len;
        sock_close(t);
        return unread ? mx_lua_ffi_fail(MX_EBADARG, "unread data in buffer") : UV_EOF;
    }
    pool_init();
    if (pool_closed || mx_current_worker == NULL || mx_current_worker->draining) {
        sock_close(t);
        return MX_OK;
    }
    /* Over <pool_size> idle connections for this key: the oldest goes. */
    int same = 0;
    conn_t *oldest = NULL;
    for (mx_list_t *n = pool.next; n != &pool; n = n->next) {
        conn_t *o = mx_container_of(n, conn_t, node);
        if (strcmp(o->key, c->key) == 0) {
            same++;
            oldest = o;
        }
    }
    if (pool_size < 1)
        pool_size = 1;
    if (same >= pool_size && oldest != NULL)
        conn_close(oldest);
    t->c = NULL;
    sock_close(t); /* the socket is now closed; the connection lives on */
    c->sock = NULL;
    c->pooled = 1;
    mx_list_push(&pool, &c->node);
    if (idle_ms > 0)
        uv_timer_start(&c->timer, on_timer, (uint64_t)idle_ms, 0);
    if (uv_read_start(&c->h.stream, on_alloc, on_read) < 0)
        conn_close(c);
    return MX_OK;
}


/* close(): MX_OK, UV_EOF when it was not connected, or (without <force>)
 * MX_EBADARG while another coroutine's operation is in flight: it would
 * never be woken. <force>: a moxy.thread.kill() of that coroutine. */
int
moxy_tcp_close(moxy_tcp_t *t, int force)
{
    if (!force && t->op != OP_NONE)
        return mx_lua_ffi_fail(MX_EBADARG, "socket busy (another operation is in progress)");
    bool open = t->c != NULL && t->c->connected;
    sock_close(t);
    return open ? MX_OK : UV_EOF;
}


/* getreusedtimes(): how many times the connection came from the pool. */
int
moxy_tcp_reused(moxy_tcp_t *t)
{
    if (t->c == NULL || !t->c->connected)
        return UV_EOF;
    return (int)t->c->reused;
}


/* Idle pooled connections under <key> in this worker (for specs). */
int
moxy_tcp_pool_count(const char *key, size_t kl)
{
    pool_init();
    int n = 0;
    for (mx_list_t *p = pool.next; p != &pool; p = p->next) {
        conn_t *c = mx_container_of(p, conn_t, node);
        n += strlen(c->key) == kl && memcmp(c->key, key, kl) == 0;
    }
    return n;
}


const char *
moxy_tcp_strerror(int rc)
{
    return uv_strerror(rc);
}


void
mx_lua_tcp_pool_close(void)
{
    pool_init();
    pool_closed = true;
    while (!mx_list_empty(&pool))
        conn_close(mx_container_of(pool.next, conn_t, node));
}
