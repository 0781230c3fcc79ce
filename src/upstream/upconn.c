/* Upstream HTTP/1.1 connections: connect with a timeout, write the request,
 * parse the response with llhttp (strict: two Content-Lengths, a bad one, or
 * Content-Length with Transfer-Encoding from an origin are a 502 — RFC 9112
 * §6.3), and go back to the worker's pool when the exchange ended cleanly. */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "core/alloc.h"
#include "core/errors.h"
#include "core/log.h"
#include "core/stats.h"
#include "net/ring.h"
#include "proxy/session.h"

enum { TM_NONE = 0, TM_CONNECT, TM_WRITE, TM_READ, TM_IDLE };

static void on_connect(uv_connect_t *req, int status);
static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);
static void on_timeout(mx_timeq_entry_t *e);
static void on_close(uv_handle_t *h);
static void on_drain(mx_wstream_t *ws, int status);
static int on_status(llhttp_t *p, const char *at, size_t n);
static int on_status_complete(llhttp_t *p);
static int on_header_field(llhttp_t *p, const char *at, size_t n);
static int on_header_field_complete(llhttp_t *p);
static int on_header_value(llhttp_t *p, const char *at, size_t n);
static int on_header_value_complete(llhttp_t *p);
static int on_headers_complete(llhttp_t *p);
static int on_chunk_header(llhttp_t *p);
static int on_body(llhttp_t *p, const char *at, size_t n);
static int on_message_complete(llhttp_t *p);

static llhttp_settings_t settings;
static int settings_ready;

#define MAX_RESP_HEAD (64 * 1024)


static void
init_settings(void)
{
    llhttp_settings_init(&settings);
    settings.on_status = on_status;
    settings.on_status_complete = on_status_complete;
    settings.on_header_field = on_header_field;
    settings.on_header_field_complete = on_header_field_complete;
    settings.on_header_value = on_header_value;
    settings.on_header_value_complete = on_header_value_complete;
    settings.on_headers_complete = on_headers_complete;
    settings.on_chunk_header = on_chunk_header;
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;
    settings_ready = 1;
}


static void
set_timer(mx_upconn_t *u, int mode, double seconds)
{
    if (u->closing || u->error)
        return; /* an error report is pending (report_later): it goes first */
    u->timer_mode = mode;
    if (mode == TM_NONE || seconds <= 0)
        mx_timeq_cancel(&u->tq);
    else
        mx_worker_timeout(u->w, &u->tq, (uint64_t)(seconds * 1000.0), on_timeout);
}


/* Reports <err> to the session from the loop, not from inside the caller: a
 * report can end (free) the session, and callers are deep in session code. */
static void
report_later(mx_upconn_t *u, int err, int mode)
{
    if (u->closing)
        return; /* its entry must not re-enter the queue: the memory goes at on_close */
    u->error = err;
    u->timer_mode = mode;
    mx_worker_timeout(u->w, &u->tq, 0, on_timeout); /* the next loop tick (1 ms) */
}


/* A pooled connection is handed over at once; a new one calls back from
 * on_connect(). */
void
mx_upconn_acquire(mx_session_t *s, const mx_conf_upstream_t *ups, const mx_addr_t *addr,
                  bool fresh)
{
    mx_worker_t *w = s->w;
    /* An idempotent request that meets a pooled connection the origin closed is
     * resent once on a new one (mx_session_on_upstream_error), as nginx does: no
     * peek syscall for it. Others are not resent, so their connection is peeked. */
    mx_upconn_t *u = fresh ? NULL : mx_pool_get(w->pool, addr, !mx_session_idempotent(s));
    mx_stats_add(upstream_requests, 1);
    if (u != NULL) {
        mx_stats_add(upstream_reused, 1);
        u->s = s;
        u->ups = ups;
        u->got_bytes = 0;
        s->reused = 1;
        set_timer(u, TM_NONE, 0);
        mx_session_on_connected(s, u);
        return;
    }
    if (!settings_ready)
        init_settings();
    u = mx_calloc(1, sizeof(*u));
    u->w = w;
    u->ups = ups;
    u->addr_copy = *addr;
    u->addr = &u->addr_copy;
    u->s = s;
    mx_list_init(&u->node);
    if (addr->kind == MX_ADDR_UNIX)
        uv_pipe_init(&w->loop, &u->h.pipe, 0);
    else
        uv_tcp_init(&w->loop, &u->h.tcp);
    u->h.handle.data = u;
    mx_timeq_entry_init(&u->tq);
    u->handles_open = 1;
    mx_wstream_init(&u->ws, &u->h.stream, w->ring, on_drain);
    llhttp_init(&u->parser, HTTP_RESPONSE, &settings);
    u->parser.data = u;
    s->reused = 0;
    s->u = u;

    u->connect_req.data = u;
    if (addr->kind == MX_ADDR_UNIX) {
        uv_pipe_connect(&u->connect_req, &u->h.pipe, addr->host, on_connect);
    } else {
        int rc = uv_tcp_connect(&u->connect_req, &u->h.tcp, (const struct sockaddr *)&addr->sa,
                                on_connect);
        if (rc < 0) {
            /* Reported from the loop, like any connect failure. */
            report_later(u, rc, TM_CONNECT);
            return;
        }
    }
    set_timer(u, TM_CONNECT, ups->connect_timeout);
}


static void
on_connect(uv_connect_t *req, int status)
{
    mx_upconn_t *u = req->data;
    if (status == UV_ECANCELED || u->closing)
        return;
    mx_session_t *s = u->s;
    if (status < 0) {
        if (s != NULL)
            mx_session_on_upstream_error(s, status);
        else
            mx_upconn_close(u);
        return;
    }
    u->connected = 1;
    set_timer(u, TM_NONE, 0);
    if (u->addr->kind == MX_ADDR_TCP)
        uv_tcp_nodelay(&u->h.tcp, 1);
    mx_upconn_read_pause(u, false);
    if (s != NULL)
        mx_session_on_connected(s, u);
}


int
mx_upconn_write(mx_upconn_t *u, const uv_buf_t *bufs, unsigned n)
{
    int rc = mx_wstream_write(&u->ws, bufs, n);
    if (rc < 0) {
        if (u->s != NULL)
            report_later(u, rc, TM_WRITE);
        return rc;
    }
    if (u->ws.queued > 0 && u->timer_mode != TM_READ)
        set_timer(u, TM_WRITE, u->ups->write_timeout);
    return MX_OK;
}


void
mx_upconn_request_sent(mx_upconn_t *u)
{
    if (u->ws.queued == 0)
        set_timer(u, TM_READ, u->ups->read_timeout);
}


void
mx_upconn_read_pause(mx_upconn_t *u, bool pause)
{
    if (u->closing || (!pause && u->held))
        return; /* held: a waiting phase resumes it (mx_upconn_continue) */
    if (pause && u->reading) {
        mx_ring_read_stop(u->w->ring, &u->rd, &u->h.stream);
        u->reading = 0;
        /* A slow client, not the origin, holds us: read_timeout waits too. */
        if (u->timer_mode == TM_READ)
            mx_timeq_cancel(&u->tq);
    } else if (!pause && !u->reading) {
        if (mx_ring_read_start(u->w->ring, &u->rd, &u->h.stream, on_alloc, on_read) == 0)
            u->reading = 1;
        if (u->timer_mode == TM_READ && u->s != NULL)
            set_timer(u, TM_READ, u->ups->read_timeout);
    }
}


static void
on_drain(mx_wstream_t *ws, int status)
{
    mx_upconn_t *u = mx_container_of(ws, mx_upconn_t, ws);
    if (u->closing)
        return;
    if (status < 0) {
        if (u->s != NULL)
            mx_session_on_upstream_error(u->s, status);
        else
            mx_upconn_close(u);
        return;
    }
    if (u->timer_mode == TM_WRITE)
        set_timer(u, TM_NONE, 0);
    if (u->s != NULL)
        mx_session_on_upstream_drain(u->s);
}


static void
on_timeout(mx_timeq_entry_t *e)
{
    mx_upconn_t *u = mx_container_of(e, mx_upconn_t, tq);
    int mode = u->timer_mode;
    u->timer_mode = TM_NONE;
    if (u->s == NULL) {
        if (mode == TM_IDLE)
            mx_pool_remove(u->w->pool, u);
        mx_upconn_close(u);
        return;
    }
    int err = u->error ? u->error : UV_ETIMEDOUT;
    if (mode == TM_CONNECT && u->error == 0)
        u->s->action = "connecting to upstream";
    else if (mode == TM_WRITE)
        u->s->action = "sending request to upstream";
    mx_session_on_upstream_error(u->s, err);
}


static void
on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    mx_upconn_t *u = h->data;
    (void)hint;
    if (u->rbuf == NULL)
        u->rbuf = mx_worker_buf_get(u->w);
    u->rpos = u->rlen = 0;
    *buf = uv_buf_init(u->rbuf, MX_RBUF_SIZE);
}


static void
release_rbuf(mx_upconn_t *u)
{
    if (u->rbuf != NULL) {
        mx_worker_buf_put(u->w, u->rbuf);
        u->rbuf = NULL;
    }
}


static void parse(mx_upconn_t *u, size_t from, size_t to);


/* Runs the parser over the bytes read and acts on what it found once it has
 * returned (never releasing the connection from inside a callback). */
static void
on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    mx_upconn_t *u = st->data;
    (void)buf;
    if (nread == 0 || u->closing)
        return;
    mx_session_t *s = u->s;
    if (s == NULL) {
        /* Idle in the pool: EOF or stray bytes both end it. */
        release_rbuf(u);
        mx_pool_remove(u->w->pool, u);
        mx_upconn_close(u);
        return;
    }
    if (nread < 0) {
        release_rbuf(u);
        if (u->tunnel) {
            mx_session_tunnel_eof(s, true);
            return;
        }
        llhttp_errno_t fin = nread == UV_EOF && u->got_bytes ? llhttp_finish(&u->parser) : HPE_OK;
        if (nread == UV_EOF && u->got_bytes && (fin == HPE_OK || fin == HPE_PAUSED) && u->done) {
            u->done = 0;
            mx_session_on_response_done(s);
            return;
        }
        mx_session_on_upstream_error(s, nread == UV_EOF ? MX_EUPCLOSED : (int)nread);
        return;
    }
    if (u->tunnel) {
        mx_session_tunnel_up(s, u->rbuf, (size_t)nread);
        release_rbuf(u);
        return;
    }
    u->got_bytes = 1;
    if (u->timer_mode == TM_READ)
        set_timer(u, TM_READ, u->ups->read_timeout);
    u->rpos = 0;
    u->rlen = (size_t)nread;
    parse(u, 0, (size_t)nread);
}


/* Parses rbuf[from, to). A Lua phase that waits inside a parser callback
 * pauses the parser (u->held): the rest of the buffer stays in rbuf, reading
 * stops, and mx_upconn_continue() picks up from there. */
static void
parse(mx_upconn_t *u, size_t from, size_t to)
{
    mx_session_t *s = u->s;
    llhttp_errno_t e = HPE_USER;
    int refused = mx_h1_guard_begin(&u->guard, u->rbuf + from, to - from) != 0;
    if (!refused)
        e = llhttp_execute(&u->parser, u->rbuf + from, to - from);
    if (u->closing || u->s != s) {
        release_rbuf(u);
        return;
    }
    if (e == HPE_PAUSED_UPGRADE) {
        size_t off = (size_t)(llhttp_get_error_pos(&u->parser) - u->rbuf);
        mx_session_start_tunnel(s);
        if (off < to && u->s != NULL)
            mx_session_tunnel_up(s, u->rbuf + off, to - off);
        release_rbuf(u);
        return;
    }
    if (e != HPE_OK && e != HPE_PAUSED) {
        int err = u->error ? u->error : MX_EBADRESP;
        if (err == MX_EBADRESP)
            mx_log_error("#%llu upstream sent invalid response: %s (%s), upstream: \"%s\"",
                         (unsigned long long)s->id, llhttp_errno_name(e),
                         mx_h1_guard_reason(refused, llhttp_get_error_reason(&u->parser)),
                         u->addr->text);
        release_rbuf(u);
        mx_session_on_upstream_error(s, err);
        return;
    }
    mx_session_flush(s);
    if (e == HPE_PAUSED && u->held && !u->done) {
        u->rpos = (size_t)(llhttp_get_error_pos(&u->parser) - u->rbuf);
        u->rlen = to;
        mx_upconn_read_pause(u, true);
        return;
    }
    if (u->done) {
        /* Bytes after the response are a protocol violation: do not reuse. */
        if (e == HPE_PAUSED && llhttp_get_error_pos(&u->parser) != u->rbuf + to)
            u->parser.flags |= F_CONNECTION_CLOSE;
        u->done = 0;
        release_rbuf(u);
        mx_session_on_response_done(s); /* it pauses reading if a phase there waits */
        return;
    }
    release_rbuf(u);
}


/* The session's waiting phase finished: parse what was left and read on.
 * Called from the loop (a resumed coroutine), never from a parser callback. */
void
mx_upconn_continue(mx_upconn_t *u)
{
    if (u == NULL || !u->held || u->closing)
        return;
    u->held = 0;
    llhttp_resume(&u->parser);
    if (u->rbuf != NULL) {
        /* Even with no byte left: the parser may owe a callback (the message's end). */
        mx_session_t *s = u->s;
        parse(u, u->rpos, u->rlen);
        if (u->closing || u->held || u->s != s)
            return;
    }
    if (u->s != NULL)
        mx_upconn_read_pause(u, false);
}


void
mx_upconn_tunnel(mx_upconn_t *u)
{
    u->tunnel = 1;
    set_timer(u, TM_NONE, 0);
}


/* Back to the pool, or closed. */
void
mx_upconn_release(mx_upconn_t *u, bool reusable)
{
    u->s = NULL;
    u->nrequests++;
    if (!reusable || u->closing || u->tunnel || u->w->draining || u->ws.queued > 0) {
        mx_upconn_close(u);
        return;
    }
    llhttp_init(&u->parser, HTTP_RESPONSE, &settings);
    u->parser.data = u;
    memset(&u->guard, 0, sizeof(u->guard));
    u->got_bytes = 0;
    u->in_trailers = 0;
    u->held = 0;
    u->span.len = 0;
    u->idle_since_ms = uv_now(&u->w->loop);
    mx_upconn_read_pause(u, false);
    set_timer(u, TM_IDLE, u->ups->idle_timeout);
    u->ups = NULL; /* idle: its group may belong to a generation a reload retires */
    mx_pool_put(u->w->pool, u);
}


void
mx_upconn_close(mx_upconn_t *u)
{
    if (u->closing)
        return;
    u->closing = 1;
    u->s = NULL;
    if (mx_list_linked(&u->node))
        mx_pool_remove(u->w->pool, u);
    mx_timeq_cancel(&u->tq);
    mx_ring_read_close(u->w->ring, &u->rd);
    mx_wstream_close(&u->ws);
    uv_close(&u->h.handle, on_close);
}


static void
on_close(uv_handle_t *h)
{
    mx_upconn_t *u = h->data;
    if (--u->handles_open > 0)
        return;
    release_rbuf(u);
    mx_buf_dispose(&u->span);
    mx_free(u);
}


/* --- response parsing callbacks --- */

static int
span_append(mx_upconn_t *u, const char *at, size_t n)
{
    if (u->span.len + n > MAX_RESP_HEAD)
        return -1;
    mx_buf_append(&u->span, at, n);
    return 0;
}


static mx_str_t
span_take(mx_upconn_t *u)
{
    mx_str_t v = {mx_arena_strndup(&u->s->arena, u->span.data ? u->span.data : "", u->span.len),
                  u->span.len};
    u->span.len = 0;
    return v;
}


static int
on_status(llhttp_t *p, const char *at, size_t n)
{
    return span_append(p->data, at, n);
}


static int
on_status_complete(llhttp_t *p)
{
    mx_upconn_t *u = p->data;
    u->s->reason = span_take(u);
    return 0;
}


static int
on_header_field(llhttp_t *p, const char *at, size_t n)
{
    mx_upconn_t *u = p->data;
    mx_h1_guard_value_done(&u->guard);
    return span_append(u, at, n);
}


static int
on_header_field_complete(llhttp_t *p)
{
    mx_upconn_t *u = p->data;
    u->cur_name = span_take(u);
    return mx_h1_guard_name(u->cur_name);
}


static int
on_header_value(llhttp_t *p, const char *at, size_t n)
{
    mx_upconn_t *u = p->data;
    if (mx_h1_guard_value(&u->guard, at, n) < 0)
        return -1; /* obs-fold */
    return span_append(u, at, n);
}


static int
on_header_value_complete(llhttp_t *p)
{
    mx_upconn_t *u = p->data;
    mx_session_t *s = u->s;
    mx_h1_guard_value_done(&u->guard);
    mx_str_t v = span_take(u);
    while (v.len > 0 && (v.data[v.len - 1] == ' ' || v.data[v.len - 1] == '\t'))
        v.len--;
    if (v.len == 0 && !u->in_trailers && mx_str_caseeq(u->cur_name, MX_STR("transfer-encoding"))) {
        /* llhttp takes an empty Transfer-Encoding for none at all, beside a
         * Content-Length too (any other value with one is its error). */
        u->error = MX_EBADRESP;
        return -1;
    }
    mx_headers_t *h = u->in_trailers ? &s->resp_trailers : &s->resp_headers;
    if (h->n >= 1000)
        return -1;
    mx_headers_add(h, &s->arena, u->cur_name, v);
    return 0;
}


static int
on_headers_complete(llhttp_t *p)
{
    mx_upconn_t *u = p->data;
    mx_session_t *s = u->s;
    if (p->status_code < 100) {
        /* llhttp 8.1 takes one or two digits ("HTTP/1.1 20 OK") and "099";
         * RFC 9112 §4 says 3DIGIT, and the client would get "HTTP/1.1 020". */
        u->error = MX_EBADRESP;
        return -1;
    }
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > (uint64_t)INT64_MAX) {
        /* llhttp takes up to 2^64 - 1; moxy's limit for every Content-Length
         * (mx_http_parse_content_length) is 2^63 - 1. */
        u->error = MX_EBADRESP;
        return -1;
    }
    s->status = p->status_code;
    if (s->status >= 200 || s->status == 101)
        set_timer(u, TM_READ, u->ups->read_timeout);
    u->in_trailers = 1; /* fields after this point are trailers */
    int status = s->status;
    int rc = mx_session_on_response_head(s);
    if (u->closing || u->s != s)
        return -1; /* the session ended (an error page went out): <s> may be freed */
    if (rc == HPE_PAUSED) {
        u->held = 1; /* a phase waits: mx_upconn_continue() resumes the parser */
        return HPE_PAUSED;
    }
    if (status >= 100 && status < 200 && status != 101)
        u->in_trailers = 0;
    return rc;
}


static int
on_chunk_header(llhttp_t *p)
{
    mx_upconn_t *u = p->data;
    mx_h1_guard_chunk(&u->guard, p->content_length);
    return 0;
}


static int
on_body(llhttp_t *p, const char *at, size_t n)
{
    mx_upconn_t *u = p->data;
    if (n == 0)
        return 0; /* a span restarted at the end of a buffer (after a pause) */
    if ((p->flags & F_CHUNKED) && mx_h1_guard_body(&u->guard, at, n) < 0)
        return -1;
    mx_session_t *s = u->s;
    /* llhttp has already taken these bytes off content_length. */
    bool last = !(p->flags & F_CHUNKED) && (p->flags & F_CONTENT_LENGTH) &&
                p->content_length == 0;
    int rc = mx_session_on_response_body(s, at, n, last);
    if (u->s != s || u->closing)
        return -1;
    if (rc == HPE_PAUSED) {
        u->held = 1; /* a body filter waits: stop reading until it is done */
        return HPE_PAUSED;
    }
    return 0;
}


static int
on_message_complete(llhttp_t *p)
{
    mx_upconn_t *u = p->data;
    int status = p->status_code;
    if (status >= 100 && status < 200 && status != 101)
        return 0; /* an interim response: the final one follows */
    if (status == 101 || u->s->state == MX_SESS_TUNNEL)
        return 0;
    u->done = 1;
    return HPE_PAUSED;
}
