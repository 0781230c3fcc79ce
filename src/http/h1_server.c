/* The downstream HTTP/1.x codec: reads requests with llhttp in strict mode
 * (no lenient flag is ever set: a lenient parser is the usual smuggling
 * hole), hands them to a session, and frames the session's response.
 * Pipelined requests wait in the read buffer while the parser is paused. */
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/errors.h"
#include "core/log.h"
#include "core/stats.h"
#include "http/status.h"
#include "lua/vm.h"
#include "net/addr.h"
#include "net/ring.h"
#include "proxy/session.h"

static int on_message_begin(llhttp_t *p);
static int on_url(llhttp_t *p, const char *at, size_t n);
static int on_url_complete(llhttp_t *p);
static int on_header_field(llhttp_t *p, const char *at, size_t n);
static int on_header_field_complete(llhttp_t *p);
static int on_header_value(llhttp_t *p, const char *at, size_t n);
static int on_header_value_complete(llhttp_t *p);
static int on_headers_complete(llhttp_t *p);
static int on_chunk_header(llhttp_t *p);
static int on_body(llhttp_t *p, const char *at, size_t n);
static int on_message_complete(llhttp_t *p);
static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);
static void on_timeout(mx_timeq_entry_t *e);
static void on_close(uv_handle_t *h);
static void on_drain(mx_wstream_t *ws, int status);
static void conn_process(mx_h1conn_t *c);
static void finish_session(mx_h1conn_t *c);

static llhttp_settings_t settings;
static int settings_ready;

/* Per-thread cache of header span / response head buffers (small_take()). */
#define SMALL_BUF  256 /* mx_buf_reserve()'s first capacity */
#define SMALL_KEEP 64
static __thread char *small_bufs[SMALL_KEEP];
static __thread int nsmall;

#define MS(seconds) ((uint64_t)((seconds) * 1000.0))


static void
init_settings(void)
{
    llhttp_settings_init(&settings);
    settings.on_message_begin = on_message_begin;
    settings.on_url = on_url;
    settings.on_url_complete = on_url_complete;
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


void
mx_h1_on_accept(uv_stream_t *server, int status)
{
    mx_accept_t *a = server->data;
    mx_worker_t *w = a->w;
    if (status < 0) {
        mx_log_error("accept failed (%s)", uv_err_name(status));
        return;
    }
    if (!settings_ready)
        init_settings();

    mx_h1conn_t *c = mx_calloc(1, sizeof(*c));
    c->w = w;
    c->id = ++w->conn_seq;
    c->listener = a->index;
    c->gen = mx_gen_ref(w->gen);
    c->svc = mx_gen_service(c->gen, a->index);
    if (a->is_unix)
        uv_pipe_init(&w->loop, &c->h.pipe, 0);
    else
        uv_tcp_init(&w->loop, &c->h.tcp);
    c->h.handle.data = c;
    mx_timeq_entry_init(&c->tq);
    c->handles_open = 1;
    mx_list_push(&w->conns, &c->node);
    w->nconns++;
    mx_stats_add(connections_accepted, 1);
    mx_stats_add(connections_open, 1);

    if (uv_accept(server, &c->h.stream) < 0) {
        mx_h1_close(c);
        return;
    }
    if (a->is_unix) {
        snprintf(c->client_addr, sizeof(c->client_addr), "unix:");
    } else {
        struct sockaddr_storage ss;
        int len = sizeof(ss);
        uv_tcp_nodelay(&c->h.tcp, 1);
        if (uv_tcp_getpeername(&c->h.tcp, (struct sockaddr *)&ss, &len) == 0) {
            char buf[80];
            mx_addr_format((struct sockaddr *)&ss, buf, sizeof(buf));
            /* "1.2.3.4:5678" or "[::1]:5678": keep the host part only. */
            char *colon = strrchr(buf, ':');
            if (colon != NULL)
                *colon = '\0';
            const char *h = buf;
            size_t hl = strlen(h);
            if (h[0] == '[') {
                h++;
                hl -= 2;
            }
            snprintf(c->client_addr, sizeof(c->client_addr), "%.*s", (int)hl, h);
            c->client_port = ss.ss_family == AF_INET6
                                 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                 : ntohs(((struct sockaddr_in *)&ss)->sin_port);
        }
    }
    mx_wstream_init(&c->ws, &c->h.stream, c->w->ring, on_drain);
    llhttp_init(&c->parser, HTTP_REQUEST, &settings);
    c->parser.data = c;
    mx_h1_set_timeout(c, MS(c->svc->client_header_timeout));
    mx_h1_read_pause(c, false);
}


void
mx_h1_read_pause(mx_h1conn_t *c, bool pause)
{
    if (c->closing)
        return;
    if (pause && c->reading) {
        mx_ring_read_stop(c->w->ring, &c->rd, &c->h.stream);
        c->reading = 0;
    } else if (!pause && !c->reading && !c->eof) {
        if (c->rlen == MX_RBUF_SIZE && c->rpos == 0)
            return; /* full of pipelined input: resumes once it is parsed */
        if (mx_ring_read_start(c->w->ring, &c->rd, &c->h.stream, on_alloc, on_read) == 0)
            c->reading = 1;
    }
}


void
mx_h1_worker_exit(mx_worker_t *w)
{
    (void)w;
    while (nsmall > 0)
        mx_free(small_bufs[--nsmall]);
}


void
mx_h1_set_timeout(mx_h1conn_t *c, uint64_t ms)
{
    if (c->closing || c->send_timer)
        return; /* a client not taking its response: send_timeout stands until it drains */
    if (ms == 0)
        mx_timeq_cancel(&c->tq);
    else
        mx_worker_timeout(c->w, &c->tq, ms, on_timeout);
}


static void
on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    mx_h1conn_t *c = h->data;
    (void)hint;
    if (c->rbuf == NULL) {
        c->rbuf = mx_worker_buf_get(c->w);
        c->rpos = c->rlen = 0;
    } else if (c->rpos == c->rlen) {
        c->rpos = c->rlen = 0;
    } else if (c->rpos > 0) {
        memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
        c->rlen -= c->rpos;
        c->rpos = 0;
    }
    *buf = uv_buf_init(c->rbuf + c->rlen, (unsigned)(MX_RBUF_SIZE - c->rlen));
}


static void
release_rbuf(mx_h1conn_t *c)
{
    if (c->rbuf != NULL && c->rpos == c->rlen) {
        mx_worker_buf_put(c->w, c->rbuf);
        c->rbuf = NULL;
        c->rpos = c->rlen = 0;
    }
}


/* The header span and response head buffers start at mx_buf's first size;
 * a connection takes them from this per-thread cache when a request begins
 * and gives them back when it goes idle (malloc + free per request cost
 * about 400 instructions), so an idle connection holds none. */
static void
small_take(mx_buf_t *b)
{
    if (b->data == NULL && nsmall > 0) {
        b->data = small_bufs[--nsmall];
        b->cap = SMALL_BUF;
        b->len = 0;
    }
}


static void
small_give(mx_buf_t *b)
{
    if (b->len > 0)
        return;
    if (b->cap == SMALL_BUF && nsmall < SMALL_KEEP) {
        small_bufs[nsmall++] = b->data;
        mx_buf_init(b);
    } else {
        mx_buf_dispose(b); /* grown past its first size: the memory goes back */
    }
}


static void
new_session(mx_h1conn_t *c)
{
    c->s = mx_session_new(c);
    mx_stats_add(requests, 1);
    small_take(&c->span);
    small_take(&c->out);
}


/* Between requests a connection keeps no buffer: the read buffer goes back
 * to the worker, the header span and response head buffers to the cache or
 * the heap (they grow to the largest request seen; 10,000 idle clients
 * would keep them). */
static void
release_idle_bufs(mx_h1conn_t *c)
{
    release_rbuf(c);
    small_give(&c->span);
    small_give(&c->out);
}


static void
on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    mx_h1conn_t *c = st->data;
    (void)buf;
    if (nread == 0 || c->closing)
        return;
    if (nread < 0) {
        c->eof = 1;
        mx_ring_read_stop(c->w->ring, &c->rd, st);
        c->reading = 0;
        mx_session_t *s = c->s;
        if (s != NULL && c->tunnel) {
            mx_session_tunnel_eof(s, false);
        } else if (s == NULL || (!s->req_done && s->state != MX_SESS_DONE)) {
            /* Idle keepalive close, or a client gone mid-request. */
            if (s != NULL && nread != UV_EOF)
                mx_log_info("#%llu client read failed (%s) while reading request",
                            (unsigned long long)s->id, uv_err_name((int)nread));
            mx_h1_close(c);
        }
        /* Else the request is complete: answer it and whatever complete
         * requests are buffered behind it; close when the input runs out. */
        return;
    }
    c->rlen += (size_t)nread;
    if (c->tunnel) {
        size_t n = c->rlen - c->rpos;
        c->rpos = c->rlen;
        mx_session_tunnel_down(c->s, c->rbuf + c->rlen - n, n);
        release_rbuf(c);
        return;
    }
    conn_process(c);
}


/* Maps a parser error to the status that refuses the request. */
static int
parse_error_status(mx_h1conn_t *c, llhttp_errno_t e)
{
    if (c->s != NULL && c->s->reject_status)
        return c->s->reject_status;
    switch (e) {
    case HPE_INVALID_METHOD:
        return 400;
    case HPE_INVALID_VERSION:
        return 505;
    default:
        return 400;
    }
}


static void
conn_process(mx_h1conn_t *c)
{
    if (c->in_process)
        return;
    c->in_process = 1;
    while (!c->closing && !c->paused && c->rpos < c->rlen) {
        if (c->s == NULL) {
            new_session(c);
            mx_h1_set_timeout(c, MS(c->svc->client_header_timeout));
        }
        const char *p = c->rbuf + c->rpos;
        llhttp_errno_t e = HPE_USER;
        int refused = mx_h1_guard_begin(&c->guard, p, c->rlen - c->rpos) != 0;
        if (!refused)
            e = llhttp_execute(&c->parser, p, c->rlen - c->rpos);
        if (e == HPE_OK) {
            c->rpos = c->rlen;
        } else if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
            c->rpos = (size_t)(llhttp_get_error_pos(&c->parser) - c->rbuf);
            c->paused = 1;
            if (e == HPE_PAUSED_UPGRADE)
                c->upgraded = 1;
        } else {
            mx_session_t *s = c->s;
            c->rpos = c->rlen;
            if (s != NULL && s->state != MX_SESS_DONE) {
                int status = parse_error_status(c, e);
                if (status == 400)
                    mx_log_info("#%llu client sent invalid request: %s (%s), client: %s",
                                (unsigned long long)s->id, llhttp_errno_name(e),
                                mx_h1_guard_reason(refused, llhttp_get_error_reason(&c->parser)),
                                c->client_addr);
                c->close_after = 1;
                mx_session_respond_error(s, status, MX_EBADREQ);
            } else {
                c->close_after = 1;
            }
        }
        if (c->s != NULL && c->s->state == MX_SESS_DONE)
            finish_session(c);
    }
    c->in_process = 0;
    if (c->closing)
        return;
    if (c->eof && c->rpos == c->rlen &&
        (c->s == NULL || (c->s->state == MX_SESS_READ_HEAD && !c->paused))) {
        /* Half-closed and nothing complete left: a partial request never ends. */
        if (c->s == NULL && c->ws.queued > 0)
            c->close_after = 1;
        else
            mx_h1_close(c);
        return;
    }
    if (c->s == NULL && c->close_after) {
        if (c->ws.queued == 0)
            mx_h1_close(c);
        return;
    }
    if (c->rpos == c->rlen && c->s == NULL)
        release_idle_bufs(c);
    else if (c->rlen == MX_RBUF_SIZE && c->rpos == 0)
        mx_h1_read_pause(c, true);
}


/* Ends the connection's current session: another request may follow on the
 * same connection, or the connection closes once its writes drain. */
static void
finish_session(mx_h1conn_t *c)
{
    mx_session_t *s = c->s;
    mx_h1_flush(c);
    bool keep = s->req_done && s->req_keepalive && !c->close_after && !c->upgraded &&
                !c->w->draining && s->err != MX_EBADREQ && (!c->eof || c->rpos < c->rlen);
    c->s = NULL;
    mx_session_free(s);
    c->nrequests++;
    if (!keep) {
        c->close_after = 1;
        mx_h1_set_timeout(c, 0);
        mx_h1_read_pause(c, true);
        if (c->ws.queued == 0 && !c->in_process)
            mx_h1_close(c);
        return;
    }
    if (c->paused) {
        llhttp_resume(&c->parser);
        c->paused = 0;
    }
    mx_h1_set_timeout(c, MS(c->svc->keepalive_timeout));
    mx_h1_read_pause(c, false);
    if (!c->in_process)
        conn_process(c);
}


void
mx_h1_session_done(mx_h1conn_t *c)
{
    if (c->in_process || c->s == NULL)
        return; /* conn_process() finishes it when the parser returns */
    finish_session(c);
}


static void
on_timeout(mx_timeq_entry_t *e)
{
    mx_h1conn_t *c = mx_container_of(e, mx_h1conn_t, tq);
    mx_session_t *s = c->s;
    if (c->send_timer) {
        mx_log_info("client timed out (send_timeout) while taking the response, client: %s",
                    c->client_addr);
        mx_h1_close(c);
        return;
    }
    if (s == NULL) {
        mx_h1_close(c); /* keepalive timeout */
        return;
    }
    if (s->state == MX_SESS_READ_HEAD) {
        mx_log_info("#%llu client timed out while reading request head, client: %s",
                    (unsigned long long)s->id, c->client_addr);
        if (s->head_bytes > 0 || c->rlen > c->rpos) {
            c->close_after = 1;
            mx_session_respond_error(s, 408, MX_ETIMEOUT_HDR);
            mx_h1_session_done(c);
        } else {
            mx_h1_close(c);
        }
        return;
    }
    /* Waiting for body bytes that do not come. */
    mx_log_info("#%llu client timed out while reading request body, client: %s",
                (unsigned long long)s->id, c->client_addr);
    c->close_after = 1;
    if (!s->resp_head_sent) {
        mx_session_respond_error(s, 408, UV_ETIMEDOUT);
        mx_h1_session_done(c);
    } else {
        mx_h1_close(c);
    }
}


void
mx_h1_close(mx_h1conn_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    mx_session_t *s = c->s;
    if (s != NULL) {
        c->s = NULL;
        s->c = NULL;
        if (s->state != MX_SESS_DONE)
            mx_session_abort(s, MX_ECLIENT);
        mx_session_free(s);
    }
    mx_timeq_cancel(&c->tq);
    mx_ring_read_close(c->w->ring, &c->rd);
    mx_wstream_close(&c->ws);
    uv_close(&c->h.handle, on_close);
}


static void
on_close(uv_handle_t *h)
{
    mx_h1conn_t *c = h->data;
    if (--c->handles_open > 0)
        return;
    mx_worker_t *w = c->w;
    if (c->lua_conn_ctx)
        mx_vm_conn_closed(c->gen->vm, c->id); /* a uv callback: no Lua is running */
    mx_gen_unref(c->gen);
    c->gen = NULL;
    if (c->rbuf != NULL)
        mx_worker_buf_put(w, c->rbuf);
    mx_buf_dispose(&c->span);
    mx_buf_dispose(&c->out);
    mx_list_remove(&c->node);
    w->nconns--;
    mx_stats_sub(connections_open, 1);
    mx_free(c);
    mx_worker_conn_closed(w);
}


static void
on_drain(mx_wstream_t *ws, int status)
{
    mx_h1conn_t *c = mx_container_of(ws, mx_h1conn_t, ws);
    if (c->closing)
        return;
    if (status < 0) {
        if (c->s != NULL)
            mx_log_info("#%llu client write failed (%s)", (unsigned long long)c->s->id,
                        uv_err_name(status));
        mx_h1_close(c);
        return;
    }
    if (c->s == NULL && c->close_after) {
        mx_h1_close(c);
        return;
    }
    if (c->send_timer) {
        c->send_timer = 0;
        if (c->s == NULL)
            mx_h1_set_timeout(c, MS(c->svc->keepalive_timeout));
        else if (c->s->state == MX_SESS_READ_HEAD)
            mx_h1_set_timeout(c, MS(c->svc->client_header_timeout));
        else
            mx_h1_set_timeout(c, 0);
    }
    if (c->s != NULL)
        mx_session_on_downstream_drain(c->s);
}


int
mx_h1_write(mx_h1conn_t *c, const uv_buf_t *bufs, unsigned n)
{
    if (c->closing)
        return MX_ECLIENT;
    int rc;
    if (c->send_timer == 0 && c->ws.queued == 0 && c->out.len == 0 && n == 0)
        return MX_OK;
    if (c->out.len > 0) {
        uv_buf_t all[8];
        all[0] = uv_buf_init(c->out.data, (unsigned)c->out.len);
        for (unsigned i = 0; i < n && i < 7; i++)
            all[i + 1] = bufs[i];
        rc = mx_wstream_write(&c->ws, all, n + 1);
        mx_buf_reset(&c->out);
    } else {
        rc = mx_wstream_write(&c->ws, bufs, n);
    }
    if (rc >= 0 && c->ws.queued > 0 && !c->send_timer) {
        /* The kernel did not take it all: the client has send_timeout to. */
        mx_worker_timeout(c->w, &c->tq, MS(c->svc->send_timeout), on_timeout);
        c->send_timer = 1;
    }
    if (rc < 0) {
        c->close_after = 1;
        return rc;
    }
    return MX_OK;
}


/* --- request parsing callbacks --- */

static inline mx_session_t *
cb_session(llhttp_t *p)
{
    mx_h1conn_t *c = p->data;
    return c->s;
}


static int
reject(mx_session_t *s, int status)
{
    s->reject_status = status;
    return -1;
}


static int
on_message_begin(llhttp_t *p)
{
    mx_h1conn_t *c = p->data;
    if (c->s == NULL)
        new_session(c);
    return 0;
}


static int
span_append(mx_session_t *s, const char *at, size_t n, size_t limit, int status)
{
    mx_h1conn_t *c = s->c;
    s->head_bytes += n;
    if (s->head_bytes > limit || c->span.len + n > limit)
        return reject(s, status);
    mx_buf_append(&c->span, at, n);
    return 0;
}


static mx_str_t
span_take(mx_session_t *s)
{
    mx_h1conn_t *c = s->c;
    mx_str_t v = {mx_arena_strndup(&s->arena, c->span.data ? c->span.data : "", c->span.len),
                  c->span.len};
    c->span.len = 0;
    return v;
}


static int
on_url(llhttp_t *p, const char *at, size_t n)
{
    mx_session_t *s = cb_session(p);
    size_t limit = s->c->svc->max_request_line;
    if (s->c->span.len + n > limit)
        return reject(s, 414);
    return span_append(s, at, n, s->c->svc->max_header_bytes, 431);
}


static int
on_url_complete(llhttp_t *p)
{
    mx_session_t *s = cb_session(p);
    s->target_raw = span_take(s);
    return 0;
}


static int
on_header_field(llhttp_t *p, const char *at, size_t n)
{
    mx_session_t *s = cb_session(p);
    mx_h1_guard_value_done(&s->c->guard);
    if (s->state != MX_SESS_READ_HEAD)
        return 0; /* request trailers: not forwarded */
    return span_append(s, at, n, s->c->svc->max_header_bytes, 431);
}


static int
on_header_field_complete(llhttp_t *p)
{
    mx_session_t *s = cb_session(p);
    if (s->state != MX_SESS_READ_HEAD)
        return 0;
    s->head_bytes += 4; /* ": " and CRLF */
    s->cur_name = span_take(s);
    return mx_h1_guard_name(s->cur_name) == 0 ? 0 : reject(s, 400);
}


static int
on_header_value(llhttp_t *p, const char *at, size_t n)
{
    mx_session_t *s = cb_session(p);
    if (mx_h1_guard_value(&s->c->guard, at, n) < 0)
        return reject(s, 400); /* obs-fold */
    if (s->state != MX_SESS_READ_HEAD)
        return 0;
    return span_append(s, at, n, s->c->svc->max_header_bytes, 431);
}


static int
on_header_value_complete(llhttp_t *p)
{
    mx_session_t *s = cb_session(p);
    mx_h1_guard_value_done(&s->c->guard);
    if (s->state != MX_SESS_READ_HEAD)
        return 0;
    mx_str_t v = span_take(s);
    /* llhttp leaves trailing whitespace in the value: trim it (RFC 9110 §5.5). */
    while (v.len > 0 && (v.data[v.len - 1] == ' ' || v.data[v.len - 1] == '\t'))
        v.len--;
    if (s->req_headers.n >= s->c->svc->max_headers)
        return reject(s, 431);
    mx_headers_add(&s->req_headers, &s->arena, s->cur_name, v);
    return 0;
}


static int
on_headers_complete(llhttp_t *p)
{
    mx_session_t *s = cb_session(p);
    mx_h1conn_t *c = s->c;
    const mx_conf_service_t *svc = c->svc;

    s->http_major = p->http_major;
    s->http_minor = p->http_minor;
    if (p->http_major != 1)
        return reject(s, 505);
    s->llmethod = p->method;
    const char *m = llhttp_method_name((llhttp_method_t)p->method);
    s->method = (mx_str_t){m, strlen(m)};
    if (p->method == HTTP_CONNECT && !svc->allow_connect)
        return reject(s, 405);
    if (mx_target_parse(s->target_raw, s->method, &s->target) != MX_OK)
        return reject(s, 400);

    /* RFC 9112 §3.2: exactly one Host in HTTP/1.1; CL must be one valid value. */
    size_t hosts = 0, cls = 0;
    for (size_t i = 0; i < s->req_headers.n; i++) {
        mx_header_t *h = &s->req_headers.v[i];
        if (mx_str_caseeq(h->name, MX_STR("host"))) {
            hosts++;
        } else if (mx_str_caseeq(h->name, MX_STR("content-length"))) {
            uint64_t v;
            if (++cls > 1 || mx_http_parse_content_length(h->value, &v) != MX_OK)
                return reject(s, 400);
        } else if (mx_str_caseeq(h->name, MX_STR("transfer-encoding"))) {
            /* Only "chunked" alone: moxy applies no other transfer coding. */
            if (!mx_str_caseeq(h->value, MX_STR("chunked")))
                return reject(s, 501);
            /* ... as llhttp reads it too: it does not take "chunked\t" (the
             * tab trimmed above) for chunked, and refuses that request only
             * after this callback, once the session has started. */
            if (!(p->flags & F_CHUNKED))
                return reject(s, 400);
        } else if (mx_str_caseeq(h->name, MX_STR("expect"))) {
            if (mx_str_caseeq(h->value, MX_STR("100-continue")))
                s->expect_continue = p->http_minor >= 1;
            else
                return reject(s, 417);
        }
    }
    if (hosts > 1 || (hosts == 0 && p->http_minor >= 1))
        return reject(s, 400);

    s->req_chunked = (p->flags & F_CHUNKED) != 0;
    s->req_has_body = s->req_chunked || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);
    /* RFC 9110 §9.3.6: CONNECT has no content. llhttp takes what follows the
     * head for the tunnel whatever the framing fields say; an upstream that
     * reads them as a body would not. */
    if (s->req_has_body && p->method == HTTP_CONNECT)
        return reject(s, 400);
    if (svc->max_body_bytes > 0 && (p->flags & F_CONTENT_LENGTH) &&
        p->content_length > svc->max_body_bytes)
        return reject(s, 413);
    s->req_keepalive = llhttp_should_keep_alive(p) != 0;
    s->req_upgrade = p->upgrade != 0;
    mx_headers_mark_hop_by_hop(&s->req_headers);

    mx_h1_set_timeout(c, s->req_has_body ? MS(svc->client_body_timeout) : 0);
    mx_session_on_request_head(s);
    if (s->state == MX_SESS_DONE && s->req_has_body)
        return -1; /* answered before its body: stop parsing this connection */
    return 0;     /* (a bodyless request answered at once still reaches its end) */
}


static int
on_chunk_header(llhttp_t *p)
{
    mx_h1conn_t *c = p->data;
    mx_h1_guard_chunk(&c->guard, p->content_length);
    return 0;
}


static int
on_body(llhttp_t *p, const char *at, size_t n)
{
    mx_session_t *s = cb_session(p);
    mx_h1conn_t *c = s->c;
    if (s->state == MX_SESS_DONE)
        return -1;
    if (s->req_chunked && mx_h1_guard_body(&c->guard, at, n) < 0)
        return reject(s, 400);
    s->req_body_bytes += n;
    if (c->svc->max_body_bytes > 0 && s->req_body_bytes > c->svc->max_body_bytes) {
        if (!s->resp_head_sent)
            return reject(s, 413);
        return -1;
    }
    mx_h1_set_timeout(c, MS(c->svc->client_body_timeout));
    mx_session_on_request_body(s, at, n);
    return s->state == MX_SESS_DONE ? -1 : 0;
}


static int
on_message_complete(llhttp_t *p)
{
    mx_session_t *s = cb_session(p);
    mx_h1conn_t *c = s->c;
    s->req_done = 1;
    mx_h1_set_timeout(c, 0);
    if (s->state != MX_SESS_DONE)
        mx_session_on_request_done(s);
    if (p->upgrade)
        return 0; /* llhttp returns HPE_PAUSED_UPGRADE: the rest is not HTTP */
    return HPE_PAUSED;
}


/* --- response framing --- */

int
mx_h1_flush(mx_h1conn_t *c)
{
    if (c->out.len == 0)
        return MX_OK;
    return mx_h1_write(c, NULL, 0);
}


/* Serializes the head into c->out; it leaves with the first body bytes or at
 * the next mx_h1_flush(), whichever comes first. */
int
mx_h1_send_head(mx_h1conn_t *c, mx_session_t *s)
{
    mx_buf_t *b = &c->out;
    int status = s->status;
    bool info = status >= 100 && status < 200 && status != 101;
    mx_str_t reason = s->reason.len ? s->reason : (mx_str_t){mx_http_reason(status), 0};
    if (reason.len == 0)
        reason.len = strlen(reason.data);
    mx_buf_status_line(b, status, reason);
    mx_headers_serialize(&s->resp_headers, b);

    if (status == 101 || (s->llmethod == HTTP_CONNECT && status >= 200 && status < 300)) {
        if (status == 101) {
            mx_str_t up = mx_headers_get(&s->resp_headers, MX_STR("upgrade"));
            if (up.data != NULL)
                mx_buf_printf(b, "Upgrade: %.*s\r\nConnection: upgrade\r\n", (int)up.len,
                              up.data);
        }
    } else if (!info) {
        bool has_cl = mx_headers_find(&s->resp_headers, MX_STR("content-length"), 0) >= 0;
        bool http11 = s->http_minor >= 1;
        bool keep = s->req_keepalive && !c->close_after && !c->w->draining && !c->upgraded;
        if (!s->resp_no_body && !has_cl) {
            if (http11)
                s->resp_chunked = 1;
            else
                keep = false; /* HTTP/1.0: the close delimits the body */
        }
        if (s->resp_chunked)
            mx_buf_append_str(b, MX_STR("Transfer-Encoding: chunked\r\n"));
        if (!keep) {
            c->close_after = 1;
            mx_buf_append_str(b, MX_STR("Connection: close\r\n"));
        } else if (!http11) {
            mx_buf_append_str(b, MX_STR("Connection: keep-alive\r\n"));
        }
    }
    mx_buf_append_str(b, MX_STR("\r\n"));
    if (!info)
        s->resp_head_sent = 1;
    return MX_OK;
}


int
mx_h1_send_continue(mx_h1conn_t *c)
{
    static const char line[] = "HTTP/1.1 100 Continue\r\n\r\n";
    uv_buf_t b = uv_buf_init((char *)line, sizeof(line) - 1);
    return mx_h1_write(c, &b, 1);
}


int
mx_h1_send_body(mx_h1conn_t *c, mx_session_t *s, const char *p, size_t n)
{
    if (n == 0)
        return MX_OK;
    s->resp_body_bytes += n;
    if (!s->resp_chunked) {
        uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
        return mx_h1_write(c, &b, 1);
    }
    char size[24];
    size_t len = mx_fmt_chunk_size(size, n);
    uv_buf_t b[3] = {uv_buf_init(size, (unsigned)len), uv_buf_init((char *)p, (unsigned)n),
                     uv_buf_init("\r\n", 2)};
    return mx_h1_write(c, b, 3);
}


int
mx_h1_send_end(mx_h1conn_t *c, mx_session_t *s)
{
    if (!s->resp_chunked)
        return mx_h1_flush(c);
    if (s->resp_trailers.n == 0) {
        uv_buf_t b = uv_buf_init("0\r\n\r\n", 5);
        return mx_h1_write(c, &b, 1);
    }
    mx_buf_t b;
    mx_buf_init(&b);
    mx_buf_append_str(&b, MX_STR("0\r\n"));
    mx_headers_serialize(&s->resp_trailers, &b);
    mx_buf_append_str(&b, MX_STR("\r\n"));
    uv_buf_t ub = uv_buf_init(b.data, (unsigned)b.len);
    int rc = mx_h1_write(c, &ub, 1);
    mx_buf_dispose(&b);
    return rc;
}


void
mx_h1_tunnel(mx_h1conn_t *c)
{
    c->tunnel = 1;
    if (c->rbuf != NULL && c->rpos < c->rlen) {
        size_t n = c->rlen - c->rpos;
        c->rpos = c->rlen;
        mx_session_tunnel_down(c->s, c->rbuf + c->rlen - n, n);
    }
    mx_h1_set_timeout(c, 0);
    mx_h1_read_pause(c, false);
}
