/* The proxy state machine for one request: choose the upstream, send the
 * request up with the forwarding headers, stream the response down, map
 * failures to statuses (one place: status_for()), write the access log. */
#include "proxy/session.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "core/errors.h"
#include "core/log.h"
#include "http/status.h"
#include "lua/vm.h"
#include "upstream/group.h"

#define ARENA_FIRST   4096
#define HIGH_WATER    (256 * 1024) /* queued bytes before the reading side pauses */

static void finish(mx_session_t *s);
static void send_local(mx_session_t *s);
static void prepare_body_filter(mx_session_t *s);
static int filter_body(mx_session_t *s, const char *p, size_t n, bool eos);

/* Timeouts for a peer a script chose outside any YAML group. */
static const mx_conf_upstream_t script_peer_defaults = {
    .name = "(script)",
    .max_retries = 0,
    .connect_timeout = 2,
    .read_timeout = 30,
    .write_timeout = 30,
    .idle_timeout = 60,
};


const char *
mx_sess_state_str(mx_sess_state_t st)
{
    static const char *names[] = {"READ_HEAD", "PHASES", "CONNECT", "PROXY", "TUNNEL", "DONE"};
    return st <= MX_SESS_DONE ? names[st] : "?";
}


/* The only place that assigns s->state. */
static void
set_state(mx_session_t *s, mx_sess_state_t next)
{
    if (mx_log_level <= MX_LOG_DEBUG)
        mx_log_debug("#%llu session %s -> %s", (unsigned long long)s->id,
                     mx_sess_state_str(s->state), mx_sess_state_str(next));
    s->state = next;
}


mx_session_t *
mx_session_new(mx_h1conn_t *c)
{
    mx_session_t *s = mx_alloc(sizeof(*s) + ARENA_FIRST);
    memset(s, 0, sizeof(*s));
    mx_gen_conn_adopt(c); /* a request after a reload runs on the new generation */
    s->c = c;
    s->w = c->w;
    s->gen = mx_gen_ref(c->gen);
    s->id = ++c->w->req_seq;
    s->start_ms = uv_now(&c->w->loop);
    s->lua_phase = -1;
    s->pick_index = -1;
    s->svc_index = (size_t)(c->svc - s->gen->conf->services);
    mx_arena_init(&s->arena, s + 1, ARENA_FIRST);
    mx_headers_init(&s->req_headers);
    mx_headers_init(&s->resp_headers);
    mx_headers_init(&s->resp_trailers);
    mx_buf_init(&s->up_head);
    mx_buf_init(&s->pending);
    mx_buf_init(&s->body_repl);
    mx_buf_init(&s->body_buf);
    mx_buf_init(&s->log_fields);
    return s;
}


void
mx_session_free(mx_session_t *s)
{
    mx_lua_release(s);
    if (s->u != NULL) {
        mx_upconn_t *u = s->u;
        s->u = NULL;
        u->s = NULL;
        mx_upconn_close(u);
    }
    mx_session_lb_release(s);
    mx_buf_dispose(&s->up_head);
    mx_buf_dispose(&s->pending);
    mx_buf_dispose(&s->body_repl);
    mx_buf_dispose(&s->body_buf);
    mx_buf_dispose(&s->log_fields);
    mx_arena_dispose(&s->arena);
    mx_gen_unref(s->gen);
    mx_free(s);
}


static int
status_for(int err)
{
    switch (err) {
    case UV_ETIMEDOUT:
        return 504;
    case MX_ETOOLARGE:
        return 413;
    case MX_EBADREQ:
        return 400;
    default:
        return 502;
    }
}


/* Logs like nginx: cause, what the session was doing, and its context. */
static void
log_upstream_error(mx_session_t *s, int err)
{
    mx_log_error("#%llu upstream %s (%s) while %s, client: %s, request: \"%.*s %.*s HTTP/%d.%d\", "
                 "upstream: \"%s\"",
                 (unsigned long long)s->id,
                 err == UV_ETIMEDOUT ? "timed out" : mx_strerror(err),
                 err < 0 && err > -5000 ? uv_err_name(err) : "protocol",
                 s->action ? s->action : "proxying", s->c ? s->c->client_addr : "-",
                 (int)s->method.len, s->method.data, (int)s->target_raw.len, s->target_raw.data,
                 s->http_major, s->http_minor, s->peer ? s->peer->text : "-");
}


/* The upstream exchange is over: the backend no longer counts this request in flight
 * (least_conn), even though the response may still be on its way to the client. */
static void
lb_done(mx_session_t *s)
{
    if (s->backend != NULL && s->lb_counted) {
        atomic_fetch_sub(&s->backend->inflight, 1);
        s->lb_counted = 0;
    }
}


/* Ends the request's claim on its backend (inflight) and drops its group references. */
void
mx_session_lb_release(mx_session_t *s)
{
    if (s->backend != NULL) {
        lb_done(s);
        if (s->peer == &s->backend->addr)
            s->peer = NULL; /* its list may go with the view */
        s->backend = NULL;
    }
    mx_group_view_release(s->view);
    s->view = NULL;
    if (s->group != NULL) {
        mx_group_unref(s->group);
        s->group = NULL;
    }
}


/* The first value of <name>=value in <list> (items split by <sep>, blanks skipped). */
static mx_str_t
find_pair(mx_str_t list, mx_str_t name, char sep)
{
    const char *p = list.data, *end = list.data + list.len;
    while (p != NULL && p < end) {
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        const char *item_end = memchr(p, sep, (size_t)(end - p));
        if (item_end == NULL)
            item_end = end;
        const char *eq = memchr(p, '=', (size_t)(item_end - p));
        if (eq != NULL && (size_t)(eq - p) == name.len && memcmp(p, name.data, name.len) == 0)
            return (mx_str_t){eq + 1, (size_t)(item_end - eq - 1)};
        p = item_end + 1;
    }
    return (mx_str_t){"", 0};
}


/* The hash key of this request for <u>'s hash_key (conf/README.md): raw bytes, not
 * decoded (nginx's $request_uri, $arg_NAME, $cookie_NAME are not either), from the
 * request as the script left it (lua/moxy/balancer.lua request_key() is the twin). */
static mx_str_t
request_hash_key(mx_session_t *s, const mx_conf_upstream_t *u)
{
    mx_str_t name = {u->hash_key_name, u->hash_key_name ? strlen(u->hash_key_name) : 0};
    /* The uri as s.req:uri() gives it (a script's set_uri counts), split at '?'. */
    mx_str_t uri = s->target.form == MX_TARGET_ORIGIN || s->target.form == MX_TARGET_ABSOLUTE
                       ? s->target.path_and_query
                       : s->target_raw;
    const char *qm = uri.data ? memchr(uri.data, '?', uri.len) : NULL;
    mx_str_t path = {uri.data, qm ? (size_t)(qm - uri.data) : uri.len};
    mx_str_t query = qm ? (mx_str_t){qm + 1, uri.len - path.len - 1} : (mx_str_t){"", 0};
    switch (u->hash_key) {
    case MX_HASH_KEY_PATH:
        return path;
    case MX_HASH_KEY_CLIENT_IP:
        return s->c ? (mx_str_t){s->c->client_addr, strlen(s->c->client_addr)} : MX_STR("");
    case MX_HASH_KEY_HOST: {
        mx_str_t h = mx_headers_get(&s->req_headers, MX_STR("host"));
        return h.data ? h : s->target.authority;
    }
    case MX_HASH_KEY_HEADER: {
        mx_str_t h = mx_headers_get(&s->req_headers, name);
        return h.data ? h : MX_STR("");
    }
    case MX_HASH_KEY_ARG:
        return find_pair(query, name, '&');
    case MX_HASH_KEY_COOKIE:
        for (ssize_t i = mx_headers_find(&s->req_headers, MX_STR("cookie"), 0); i >= 0;
             i = mx_headers_find(&s->req_headers, MX_STR("cookie"), (size_t)i + 1)) {
            mx_str_t v = find_pair(s->req_headers.v[i].value, name, ';');
            if (v.len > 0)
                return v;
        }
        return MX_STR("");
    case MX_HASH_KEY_URI:
    default:
        return uri;
    }
}


/* Chooses s->backend from s->group: upstream_peer's pick when it still stands, else the
 * group's algorithm over the backends not tried yet. Returns MX_OK and sets s->peer, or
 * MX_ENOUPSTREAM when every backend was tried. */
static int
pick_backend(mx_session_t *s)
{
    if (s->backend != NULL) {
        lb_done(s);
        if (s->peer == &s->backend->addr)
            s->peer = NULL; /* its list may go with the view */
        s->backend = NULL;
    }
    mx_group_view_release(s->view);
    s->view = mx_group_view(s->group);
    ssize_t i = -1;
    bool forced = false;
    if (s->pick_index >= 0 && mx_group_view_gen(s->view) == s->pick_gen) {
        mx_backend_t *b = mx_group_view_backend(s->view, (size_t)s->pick_index);
        i = s->pick_index;
        for (unsigned k = 0; k < s->ntried && b != NULL; k++)
            if (s->tried[k] == b)
                i = -1; /* a retry: upstream_peer's pick already failed */
        if (b == NULL)
            i = -1;
    }
    s->pick_index = -1;
    if (i < 0) {
        const mx_conf_upstream_t *u = mx_group_conf(s->group);
        mx_lb_algorithm_t alg = u->algorithm;
        mx_str_t key = {NULL, 0};
        if (alg == MX_LB_FNV || alg == MX_LB_KETAMA)
            key = s->pick_key.data != NULL ? s->pick_key : request_hash_key(s, u);
        i = mx_group_select(s->view, key.data, key.len, s->tried, s->ntried, &forced);
    }
    if (i < 0)
        return MX_ENOUPSTREAM;
    mx_backend_t *b = mx_group_view_backend(s->view, (size_t)i);
    if (forced)
        mx_log_warn("#%llu upstream %s has no usable backend, trying %s anyway",
                    (unsigned long long)s->id, mx_group_name(s->group), b->name);
    s->backend = b;
    atomic_fetch_add(&b->inflight, 1);
    s->lb_counted = 1;
    if (s->ntried < mx_countof(s->tried))
        s->tried[s->ntried++] = b;
    s->peer = &b->addr;
    return MX_OK;
}


/* true when another backend of the group is left to try. */
static bool
untried_backend_left(mx_session_t *s)
{
    if (s->group == NULL || s->view == NULL)
        return false;
    size_t n = mx_group_view_count(s->view);
    for (size_t i = 0; i < n; i++) {
        mx_backend_t *b = mx_group_view_backend(s->view, i);
        bool tried = false;
        for (unsigned k = 0; k < s->ntried; k++)
            tried = tried || s->tried[k] == b;
        if (!tried)
            return true;
    }
    return false;
}


/* Adds X-Forwarded-For and Via, fixes Host, hides Expect (moxy answers
 * 100-continue itself): the request as upstream_request_filter sees it. */
static void
prepare_upstream_headers(mx_session_t *s)
{
    if (s->up_headers_ready)
        return;
    s->up_headers_ready = 1;
    const mx_conf_service_t *svc = s->c->svc;
    mx_headers_t *h = &s->req_headers;
    mx_arena_t *a = &s->arena;

    if (s->target.form == MX_TARGET_ABSOLUTE)
        mx_headers_set(h, a, MX_STR("Host"), s->target.authority);
    else if (mx_headers_find(h, MX_STR("host"), 0) < 0)
        mx_headers_add(h, a, MX_STR("Host"),
                       (mx_str_t){s->peer->text, strlen(s->peer->text)});
    for (ssize_t i = mx_headers_find(h, MX_STR("expect"), 0); i >= 0;
         i = mx_headers_find(h, MX_STR("expect"), (size_t)i + 1))
        h->v[i].flags |= MX_HDR_HOP;

    if (svc->x_forwarded_for) {
        mx_buf_t v;
        mx_buf_init(&v);
        for (ssize_t i = mx_headers_find(h, MX_STR("x-forwarded-for"), 0); i >= 0;
             i = mx_headers_find(h, MX_STR("x-forwarded-for"), (size_t)i + 1)) {
            mx_buf_append_str(&v, h->v[i].value);
            mx_buf_append_str(&v, MX_STR(", "));
        }
        mx_buf_append(&v, s->c->client_addr, strlen(s->c->client_addr));
        char *copy = mx_arena_strndup(a, v.data, v.len);
        mx_headers_set(h, a, MX_STR("X-Forwarded-For"), (mx_str_t){copy, v.len});
        mx_buf_dispose(&v);
    }
    if (svc->via) {
        const char *via = s->http_minor >= 1 ? "1.1 moxy" : "1.0 moxy";
        int n = 8;
        ssize_t i = mx_headers_find(h, MX_STR("via"), 0);
        if (i >= 0) {
            size_t len = h->v[i].value.len + 2 + (size_t)n;
            char *p = mx_arena_alloc(a, len);
            memcpy(p, h->v[i].value.data, h->v[i].value.len);
            memcpy(p + h->v[i].value.len, ", ", 2);
            memcpy(p + h->v[i].value.len + 2, via, (size_t)n);
            h->v[i].value = (mx_str_t){p, len};
        } else {
            mx_headers_add(h, a, MX_STR("Via"), (mx_str_t){via, (size_t)n});
        }
    }
}


/* Serializes the upstream request head into s->up_head. */
static void
serialize_upstream_head(mx_session_t *s)
{
    mx_headers_t *h = &s->req_headers;
    mx_buf_t *b = &s->up_head;
    mx_str_t target = s->target.form == MX_TARGET_ORIGIN || s->target.form == MX_TARGET_ABSOLUTE
                          ? s->target.path_and_query
                          : s->target_raw;
    mx_buf_append_str(b, s->method);
    mx_buf_append(b, " ", 1);
    mx_buf_append_str(b, target);
    mx_buf_append_str(b, MX_STR(" HTTP/1.1\r\n"));
    mx_headers_serialize(h, b);
    if (s->req_chunked)
        mx_buf_append_str(b, MX_STR("Transfer-Encoding: chunked\r\n"));
    if (s->req_upgrade && s->llmethod != HTTP_CONNECT) {
        mx_str_t up = mx_headers_get(h, MX_STR("upgrade"));
        if (up.data != NULL)
            mx_buf_printf(b, "Connection: upgrade\r\nUpgrade: %.*s\r\n", (int)up.len, up.data);
    }
    mx_buf_append_str(b, MX_STR("\r\n"));
}


/* Runs <phase> if the script has it, then continues with <next> (now, or
 * when a yielded handler finishes). */
static void
run_phase(mx_session_t *s, int phase, void (*next)(mx_session_t *, int))
{
    if (!mx_vm_has(s->gen->vm, s->svc_index, phase)) {
        next(s, MX_OK);
        return;
    }
    s->lua_next = next;
    int rc = mx_lua_run(s, phase);
    if (rc != MX_AGAIN) {
        s->lua_next = NULL;
        next(s, rc);
    }
}


void
mx_session_on_phase_done(mx_session_t *s, int rc)
{
    void (*next)(mx_session_t *, int) = s->lua_next;
    s->lua_next = NULL;
    if (next != NULL && s->state != MX_SESS_DONE)
        next(s, rc);
}


/* The request phases ended (<rc>): a Lua error is a 500, a local answer
 * goes out, else true when proxying should go on. */
static bool
phase_ok(mx_session_t *s, int rc)
{
    if (rc == MX_ELUA) {
        mx_session_respond_error(s, 500, MX_ELUA);
        return false;
    }
    if (s->local_status) {
        send_local(s);
        return false;
    }
    return true;
}


static void
after_upstream_request_filter(mx_session_t *s, int rc)
{
    if (!phase_ok(s, rc))
        return;
    mx_buf_reset(&s->up_head);
    serialize_upstream_head(s);
    set_state(s, MX_SESS_CONNECT);
    if (s->expect_continue && s->req_has_body && !s->req_done && !s->sent_continue &&
        s->c != NULL) {
        mx_h1_send_continue(s->c);
        s->sent_continue = 1;
    }
    s->action = "connecting to upstream";
    mx_upconn_acquire(s, s->ups, s->peer, false);
}


static void
after_upstream_peer(mx_session_t *s, int rc)
{
    if (!phase_ok(s, rc))
        return;
    const mx_conf_service_t *svc = s->c->svc;
    if (s->peer_set) {
        s->peer = &s->peer_addr;
        if (s->ups == NULL)
            s->ups = svc->upstream_ref ? svc->upstream_ref : &script_peer_defaults;
    } else {
        if (s->group == NULL && svc->upstream != NULL) {
            s->group = mx_groups_find(s->gen->conf->groups, svc->upstream,
                                      strlen(svc->upstream));
            if (s->group != NULL)
                mx_group_ref(s->group);
        }
        if (s->group == NULL) {
            mx_log_error("#%llu no upstream for service \"%s\": upstream_peer chose none and "
                         "the service has no upstream group",
                         (unsigned long long)s->id, svc->name);
            mx_session_respond_error(s, 500, MX_ENOUPSTREAM);
            return;
        }
        if (s->ups == NULL)
            s->ups = svc->upstream_ref ? svc->upstream_ref : &script_peer_defaults;
        if (pick_backend(s) != MX_OK) {
            mx_session_respond_error(s, 502, MX_ENOUPSTREAM);
            return;
        }
    }
    prepare_upstream_headers(s);
    if (mx_vm_has(s->gen->vm, s->svc_index, MX_PH_FAIL_TO_CONNECT)) {
        /* Keep the request as it is now: a retry's filter starts from it. */
        mx_headers_t *b = &s->up_headers_base;
        mx_headers_init(b);
        for (size_t i = 0; i < s->req_headers.n; i++)
            mx_headers_add(b, &s->arena, s->req_headers.v[i].name, s->req_headers.v[i].value);
        if (b->n > 0)
            memcpy(b->v, s->req_headers.v, b->n * sizeof(mx_header_t));
    }
    run_phase(s, MX_PH_UPSTREAM_REQUEST_FILTER, after_upstream_request_filter);
}


static void
after_proxy_upstream_filter(mx_session_t *s, int rc)
{
    if (!phase_ok(s, rc))
        return;
    if (s->err == MX_ENOPROXY) {
        mx_session_respond_error(s, 502, MX_ENOPROXY); /* fail_to_proxy may say otherwise */
        return;
    }
    run_phase(s, MX_PH_UPSTREAM_PEER, after_upstream_peer);
}


static void
after_request_filter(mx_session_t *s, int rc)
{
    if (!phase_ok(s, rc))
        return;
    run_phase(s, MX_PH_PROXY_UPSTREAM_FILTER, after_proxy_upstream_filter);
}


static void
after_early_request_filter(mx_session_t *s, int rc)
{
    if (!phase_ok(s, rc))
        return;
    run_phase(s, MX_PH_REQUEST_FILTER, after_request_filter);
}


void
mx_session_on_request_head(mx_session_t *s)
{
    set_state(s, MX_SESS_PHASES);
    run_phase(s, MX_PH_EARLY_REQUEST_FILTER, after_early_request_filter);
}


/* Sends <n> bytes of request body (already framed) up, or keeps them until
 * the upstream connection is ready; pauses the client when too much waits. */
static void
send_up(mx_session_t *s, const uv_buf_t *bufs, unsigned n)
{
    mx_upconn_t *u = s->u;
    if (u != NULL && u->connected && s->up_req_sent) {
        s->up_body_started = 1;
        if (mx_upconn_write(u, bufs, n) < 0)
            return; /* the upconn reports the error */
        if (u->ws.queued > HIGH_WATER && s->c != NULL)
            mx_h1_read_pause(s->c, true);
        return;
    }
    for (unsigned i = 0; i < n; i++)
        mx_buf_append(&s->pending, bufs[i].base, bufs[i].len);
    if (s->pending.len > HIGH_WATER && s->c != NULL && !s->body_waiting)
        mx_h1_read_pause(s->c, true);
}


/* s.req:body() is waiting: wake it when the body is complete or too large. */
static void
body_progress(mx_session_t *s)
{
    if (s->body_waiting && (s->req_done || s->body_buf.len > s->body_max)) {
        s->body_waiting = 0;
        mx_lua_resume(s);
    }
}


void
mx_session_on_request_body(mx_session_t *s, const char *p, size_t n)
{
    if (s->state == MX_SESS_PHASES || s->state == MX_SESS_READ_HEAD) {
        mx_buf_append(&s->body_buf, p, n); /* for s.req:body() */
        body_progress(s);
    }
    if (!s->req_chunked) {
        uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
        send_up(s, &b, 1);
        return;
    }
    char size[24];
    size_t len = mx_fmt_chunk_size(size, n);
    uv_buf_t b[3] = {uv_buf_init(size, (unsigned)len), uv_buf_init((char *)p, (unsigned)n),
                     uv_buf_init("\r\n", 2)};
    send_up(s, b, 3);
}


void
mx_session_on_request_done(mx_session_t *s)
{
    body_progress(s);
    if (s->state == MX_SESS_DONE)
        return;
    if (s->req_chunked) {
        uv_buf_t b = uv_buf_init("0\r\n\r\n", 5);
        send_up(s, &b, 1);
    }
    if (s->u != NULL && s->up_req_sent && s->pending.len == 0 && s->state == MX_SESS_PROXY)
        mx_upconn_request_sent(s->u);
}


void
mx_session_on_connected(mx_session_t *s, mx_upconn_t *u)
{
    s->u = u;
    set_state(s, MX_SESS_PROXY);
    /* A notification (it cannot wait); an error in it is logged only. */
    if (mx_vm_has(s->gen->vm, s->svc_index, MX_PH_CONNECTED_TO_UPSTREAM))
        mx_lua_run(s, MX_PH_CONNECTED_TO_UPSTREAM);
    s->action = "sending request to upstream";
    uv_buf_t b[2] = {uv_buf_init(s->up_head.data, (unsigned)s->up_head.len),
                     uv_buf_init(s->pending.data, (unsigned)s->pending.len)};
    if (s->pending.len > 0)
        s->up_body_started = 1;
    s->up_req_sent = 1;
    int rc = mx_upconn_write(u, b, s->pending.len > 0 ? 2 : 1);
    mx_buf_reset(&s->pending);
    if (rc < 0)
        return; /* reported through mx_session_on_upstream_error() */
    s->action = "reading response header from upstream";
    if (s->req_done)
        mx_upconn_request_sent(u);
    if (s->c != NULL && !s->req_done)
        mx_h1_read_pause(s->c, u->ws.queued > HIGH_WATER);
}


static bool
idempotent(const mx_session_t *s)
{
    switch (s->llmethod) {
    case HTTP_GET:
    case HTTP_HEAD:
    case HTTP_OPTIONS:
    case HTTP_TRACE:
    case HTTP_PUT:
    case HTTP_DELETE:
        return true;
    default:
        return false;
    }
}


/* upstream_peer ran again after fail_to_connect asked for a retry: the new
 * try starts from the request as it was before upstream_request_filter. */
static void
after_retry_peer(mx_session_t *s, int rc)
{
    if (!phase_ok(s, rc))
        return;
    if (s->peer_set) {
        s->peer = &s->peer_addr;
        mx_session_lb_release(s); /* the script chose an address: no backend of a group */
    } else if (s->group != NULL && pick_backend(s) != MX_OK) {
        /* The script asked for a retry with every backend tried: start over. */
        s->ntried = 0;
        if (pick_backend(s) != MX_OK) {
            mx_session_respond_error(s, 502, MX_ENOUPSTREAM);
            return;
        }
    }
    mx_headers_t *h = &s->req_headers;
    mx_headers_init(h);
    for (size_t i = 0; i < s->up_headers_base.n; i++)
        mx_headers_add(h, &s->arena, s->up_headers_base.v[i].name, s->up_headers_base.v[i].value);
    memcpy(h->v, s->up_headers_base.v, s->up_headers_base.n * sizeof(mx_header_t)); /* flags */
    set_state(s, MX_SESS_PHASES);
    run_phase(s, MX_PH_UPSTREAM_REQUEST_FILTER, after_upstream_request_filter);
}


/* Lets fail_to_connect decide, starting from the default <dflt>. Returns 1 when it
 * retried (upstream_peer runs again), 0 when it declined, -1 when there is no handler
 * or it failed: then the default stands, as without the handler. */
static int
lua_retry(mx_session_t *s, int err, bool dflt)
{
    /* A script's own retries (beyond the group's failover) stop after 3. */
    if (!mx_vm_has(s->gen->vm, s->svc_index, MX_PH_FAIL_TO_CONNECT) || (!dflt && s->tries >= 3))
        return -1;
    s->err = err;
    s->retry_requested = dflt;
    int rc = mx_lua_run(s, MX_PH_FAIL_TO_CONNECT);
    if (rc != MX_OK || !s->retry_requested) {
        s->retry_requested = 0;
        s->err = 0;
        return rc != MX_OK ? -1 : 0;
    }
    log_upstream_error(s, err);
    mx_log_info("#%llu fail_to_connect asked for a retry (try %d)", (unsigned long long)s->id,
                s->tries + 2);
    s->err = 0;
    s->tries++;
    s->peer_set = 0;
    run_phase(s, MX_PH_UPSTREAM_PEER, after_retry_peer);
    return 1;
}


void
mx_session_on_upstream_error(mx_session_t *s, int err)
{
    bool reused = s->reused, got_bytes = s->u != NULL && s->u->got_bytes;
    bool connecting = s->state == MX_SESS_CONNECT;
    if (connecting && !reused && s->backend != NULL && s->group != NULL)
        mx_group_report(s->group, s->backend, false); /* passive health */
    if (s->u != NULL) {
        mx_upconn_t *u = s->u;
        s->u = NULL;
        u->s = NULL;
        mx_upconn_close(u);
    }
    if (s->state == MX_SESS_DONE || s->c == NULL)
        return;
    s->up_req_sent = 0;

    if (!s->resp_head_sent && !got_bytes && !s->up_body_started) {
        /* A pooled connection the origin had closed: resend once on a fresh one. */
        if (reused && idempotent(s) && err != UV_ETIMEDOUT) {
            mx_log_info("#%llu reused upstream connection failed (%s), retrying on a new one",
                        (unsigned long long)s->id, mx_strerror(err));
            s->reused = 0;
            set_state(s, MX_SESS_CONNECT);
            s->action = "connecting to upstream";
            mx_upconn_acquire(s, s->ups, s->peer, true);
            return;
        }
        /* Failover: another backend of the group, up to max_retries more tries, only
         * while nothing went upstream; fail_to_connect sees this default and may change it. */
        bool failover = connecting && !s->peer_set && s->group != NULL &&
                        s->tries < mx_group_conf(s->group)->max_retries &&
                        untried_backend_left(s);
        if (connecting) {
            int r = lua_retry(s, err, failover);
            if (r == 1)
                return;
            if (r == 0)
                failover = false; /* the script said no */
        }
        if (failover) {
            log_upstream_error(s, err);
            s->tries++;
            if (pick_backend(s) == MX_OK) {
                mx_log_info("#%llu retrying on upstream %s backend %s (try %d)",
                            (unsigned long long)s->id, mx_group_name(s->group),
                            s->backend->name, s->tries + 1);
                s->action = "connecting to upstream";
                mx_upconn_acquire(s, s->ups, s->peer, false);
                return;
            }
        }
    }
    lb_done(s);
    log_upstream_error(s, err);
    s->err = err;
    mx_session_respond_error(s, status_for(err), err);
}


int
mx_session_on_response_head(mx_session_t *s)
{
    mx_h1conn_t *c = s->c;
    int status = s->status;
    s->action = "reading response from upstream";

    if (status >= 100 && status < 200 && status != 101) {
        /* 1xx: forward to HTTP/1.1 clients (not a second 100 after ours). */
        if (s->http_minor >= 1 && !(status == 100 && s->sent_continue)) {
            mx_headers_mark_hop_by_hop(&s->resp_headers);
            mx_h1_send_head(c, s);
            mx_h1_flush(c);
        }
        mx_headers_init(&s->resp_headers);
        s->reason = (mx_str_t){NULL, 0};
        return 0;
    }
    bool tunnel = (status == 101 && s->req_upgrade && s->llmethod != HTTP_CONNECT) ||
                  (s->llmethod == HTTP_CONNECT && status >= 200 && status < 300);
    if (status == 101 && !tunnel) {
        s->u->error = MX_EBADRESP;
        return -1;
    }
    if (s->backend != NULL && s->group != NULL)
        mx_group_report(s->group, s->backend,
                        !(status >= 500 && mx_group_conf(s->group)->fail_on_5xx));
    mx_headers_mark_hop_by_hop(&s->resp_headers);
    if (c->svc->via) {
        const char *via = s->u->parser.http_minor >= 1 ? "1.1 moxy" : "1.0 moxy";
        int n = 8;
        ssize_t i = mx_headers_find(&s->resp_headers, MX_STR("via"), 0);
        if (i >= 0) {
            mx_str_t old = s->resp_headers.v[i].value;
            char *p = mx_arena_alloc(&s->arena, old.len + 2 + (size_t)n);
            memcpy(p, old.data, old.len);
            memcpy(p + old.len, ", ", 2);
            memcpy(p + old.len + 2, via, (size_t)n);
            s->resp_headers.v[i].value = (mx_str_t){p, old.len + 2 + (size_t)n};
        } else {
            mx_headers_add(&s->resp_headers, &s->arena, MX_STR("Via"),
                           (mx_str_t){via, (size_t)n});
        }
    }
    s->resp_no_body = s->llmethod == HTTP_HEAD || status == 204 || status == 304 || tunnel;
    if (mx_vm_has(s->gen->vm, s->svc_index, MX_PH_UPSTREAM_RESPONSE_FILTER) &&
        mx_lua_run(s, MX_PH_UPSTREAM_RESPONSE_FILTER) != MX_OK) {
        mx_session_respond_error(s, 502, MX_ELUA);
        return -1;
    }
    if (mx_vm_has(s->gen->vm, s->svc_index, MX_PH_RESPONSE_FILTER) &&
        mx_lua_run(s, MX_PH_RESPONSE_FILTER) != MX_OK) {
        s->in_error_page = 1; /* a plain page: the filter that failed is not run again */
        mx_session_respond_error(s, 500, MX_ELUA);
        return -1;
    }
    prepare_body_filter(s);
    mx_h1_send_head(c, s);
    if (tunnel) {
        set_state(s, MX_SESS_TUNNEL);
        return 2; /* llhttp: no body, return HPE_PAUSED_UPGRADE */
    }
    return s->llmethod == HTTP_HEAD ? 1 : 0;
}


/* Runs response_body_filter over one chunk (<eos> for the end) and sends
 * what it returned, or the chunk itself. Returns MX_OK or MX_ELUA (the
 * headers went out: the caller can only cut the response short). */
/* Runs body filter <phase> over <*cur>; a replacement becomes the new
 * <*cur> (in s->body_repl). Returns MX_OK or MX_ELUA. */
static int
body_phase(mx_session_t *s, int phase, mx_str_t *cur, bool eos)
{
    s->body_chunk = *cur;
    s->body_eos = eos;
    s->body_replaced = 0;
    int rc = mx_lua_run(s, phase);
    s->body_chunk = (mx_str_t){NULL, 0};
    if (rc != MX_OK)
        return MX_ELUA;
    if (s->body_replaced)
        *cur = (mx_str_t){s->body_repl.data, s->body_repl.len};
    return MX_OK;
}


static bool
has_upstream_body_filter(mx_session_t *s)
{
    return !s->local_status &&
           mx_vm_has(s->gen->vm, s->svc_index, MX_PH_UPSTREAM_RESPONSE_BODY_FILTER);
}


/* Sends a chunk through upstream_response_body_filter (upstream responses
 * only) then response_body_filter. Returns MX_OK, or MX_ELUA (the head went
 * out: the caller can only cut the response short). */
static int
filter_body(mx_session_t *s, const char *p, size_t n, bool eos)
{
    mx_str_t cur = {p, n};
    mx_buf_t held;
    mx_buf_init(&held);
    int rc = MX_OK;
    if (has_upstream_body_filter(s)) {
        rc = body_phase(s, MX_PH_UPSTREAM_RESPONSE_BODY_FILTER, &cur, eos);
        if (rc == MX_OK && s->body_replaced) { /* the next filter reuses body_repl */
            mx_buf_append(&held, cur.data, cur.len);
            cur = (mx_str_t){held.data, held.len};
        }
    }
    if (rc == MX_OK && mx_vm_has(s->gen->vm, s->svc_index, MX_PH_RESPONSE_BODY_FILTER))
        rc = body_phase(s, MX_PH_RESPONSE_BODY_FILTER, &cur, eos);
    if (rc == MX_OK)
        mx_h1_send_body(s->c, s, cur.data, cur.len);
    mx_buf_dispose(&held);
    return rc;
}


/* A body filter may change the length: the response goes chunked. */
static void
prepare_body_filter(mx_session_t *s)
{
    if (!s->resp_no_body &&
        (mx_vm_has(s->gen->vm, s->svc_index, MX_PH_RESPONSE_BODY_FILTER) ||
         has_upstream_body_filter(s)))
        mx_headers_remove(&s->resp_headers, MX_STR("content-length"));
}


void
mx_session_on_response_body(mx_session_t *s, const char *p, size_t n)
{
    if (s->c == NULL)
        return;
    if (filter_body(s, p, n, false) != MX_OK) {
        mx_session_respond_error(s, 500, MX_ELUA); /* headers sent: aborts the stream */
        return;
    }
    if (s->c->ws.queued > HIGH_WATER && s->u != NULL)
        mx_upconn_read_pause(s->u, true);
}


void
mx_session_on_response_done(mx_session_t *s)
{
    mx_upconn_t *u = s->u;
    lb_done(s); /* before the end goes out: the client's next request sees the count */
    if (s->c != NULL && !s->resp_no_body && filter_body(s, NULL, 0, true) != MX_OK) {
        mx_session_respond_error(s, 500, MX_ELUA);
        return;
    }
    /* The origin's trailers (gRPC status...) pass the script before they go out. */
    if (s->c != NULL && s->resp_trailers.n > 0 &&
        mx_vm_has(s->gen->vm, s->svc_index, MX_PH_RESPONSE_TRAILER_FILTER) &&
        mx_lua_run(s, MX_PH_RESPONSE_TRAILER_FILTER) != MX_OK) {
        mx_session_respond_error(s, 500, MX_ELUA); /* the head went out: aborts the stream */
        return;
    }
    if (s->c != NULL)
        mx_h1_send_end(s->c, s);
    s->resp_done = 1;
    if (u != NULL) {
        s->u = NULL;
        u->s = NULL;
        /* Reusable only when the whole request went up and the origin keeps it. */
        bool reusable = s->req_done && s->pending.len == 0 && llhttp_should_keep_alive(&u->parser);
        mx_upconn_release(u, reusable);
    }
    if (!s->req_done && s->c != NULL)
        s->c->close_after = 1; /* the origin answered before the body ended */
    finish(s);
}


void
mx_session_flush(mx_session_t *s)
{
    if (s->c != NULL)
        mx_h1_flush(s->c);
}


void
mx_session_on_downstream_drain(mx_session_t *s)
{
    if (s->u != NULL && s->c != NULL && s->c->ws.queued == 0)
        mx_upconn_read_pause(s->u, false);
}


void
mx_session_on_upstream_drain(mx_session_t *s)
{
    if (s->c == NULL || s->state == MX_SESS_DONE)
        return;
    if (s->req_done && s->state == MX_SESS_PROXY && s->u != NULL)
        mx_upconn_request_sent(s->u);
    else if (s->state == MX_SESS_PROXY || s->state == MX_SESS_TUNNEL)
        mx_h1_read_pause(s->c, false);
}


void
mx_session_tunnel_down(mx_session_t *s, const char *p, size_t n)
{
    if (s->u == NULL || s->state != MX_SESS_TUNNEL) {
        mx_buf_append(&s->pending, p, n); /* before the 101: keep for later */
        return;
    }
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    if (mx_upconn_write(s->u, &b, 1) < 0)
        return; /* the session ended: <s> may be freed */
    if (s->u != NULL && s->u->ws.queued > HIGH_WATER && s->c != NULL)
        mx_h1_read_pause(s->c, true);
}


void
mx_session_tunnel_up(mx_session_t *s, const char *p, size_t n)
{
    if (s->c == NULL)
        return;
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    s->resp_body_bytes += n;
    mx_h1_write(s->c, &b, 1);
    if (s->c->ws.queued > HIGH_WATER && s->u != NULL)
        mx_upconn_read_pause(s->u, true);
}


/* Starts forwarding raw bytes both ways after a 101 (or CONNECT 2xx). */
void
mx_session_start_tunnel(mx_session_t *s)
{
    mx_upconn_tunnel(s->u);
    if (s->c == NULL)
        return;
    mx_h1_flush(s->c);
    if (s->pending.len > 0) {
        uv_buf_t b = uv_buf_init(s->pending.data, (unsigned)s->pending.len);
        if (mx_upconn_write(s->u, &b, 1) < 0)
            return; /* the session ended: <s> may be freed */
        mx_buf_reset(&s->pending);
    }
    mx_h1_tunnel(s->c);
}


void
mx_session_tunnel_eof(mx_session_t *s, bool from_upstream)
{
    (void)from_upstream;
    if (s->c != NULL)
        s->c->close_after = 1;
    finish(s);
}


void
mx_session_abort(mx_session_t *s, int err)
{
    if (s->state == MX_SESS_DONE)
        return;
    if (err == MX_ECLIENT && s->state != MX_SESS_READ_HEAD && s->state != MX_SESS_TUNNEL)
        mx_log_info("#%llu client closed connection while %s, request: \"%.*s %.*s\"",
                    (unsigned long long)s->id, s->action ? s->action : "waiting",
                    (int)s->method.len, s->method.data, (int)s->target_raw.len,
                    s->target_raw.data);
    if (s->err == 0)
        s->err = err;
    if (!s->resp_head_sent && s->status == 0)
        s->status = 499; /* nginx's "client closed request" in the access log */
    finish(s);
}


void
mx_session_respond_error(mx_session_t *s, int status, int err)
{
    if (s->state == MX_SESS_DONE)
        return;
    if (s->err == 0)
        s->err = err;
    if (s->u != NULL) {
        mx_upconn_t *u = s->u;
        s->u = NULL;
        u->s = NULL;
        mx_upconn_close(u);
    }
    if (s->c == NULL || s->resp_head_sent) {
        if (s->c != NULL)
            s->c->close_after = 1; /* headers went out: all we can do is cut it short */
        finish(s);
        return;
    }
    /* fail_to_proxy may choose the status; response_filter sees the page
     * (source "error") unless the failure was its own. */
    bool filters = !s->in_error_page && s->lua_phase < 0 && err != MX_EBADREQ &&
                   s->method.len > 0; /* a request that never parsed meets no script */
    s->in_error_page = 1;
    if (filters && mx_vm_has(s->gen->vm, s->svc_index, MX_PH_FAIL_TO_PROXY) &&
        mx_lua_run(s, MX_PH_FAIL_TO_PROXY) == MX_OK && s->fail_status)
        status = s->fail_status;
    if (status >= 400 && status < 500 && status != 404)
        s->c->close_after = 1;
    char body[64];
    int n = snprintf(body, sizeof(body), "%d %s\n", status, mx_http_reason(status));
    char len[24];
    int ln = snprintf(len, sizeof(len), "%d", n);
    mx_arena_t *a = &s->arena;
    mx_headers_init(&s->resp_headers);
    mx_headers_add(&s->resp_headers, a, MX_STR("Server"), MX_STR("moxy"));
    mx_headers_add(&s->resp_headers, a, MX_STR("Content-Type"), MX_STR("text/plain"));
    mx_headers_add(&s->resp_headers, a, MX_STR("Content-Length"),
                   (mx_str_t){mx_arena_strndup(a, len, ln), (size_t)ln});
    s->status = status;
    s->reason = (mx_str_t){NULL, 0};
    s->resp_no_body = s->llmethod == HTTP_HEAD;
    if (s->http_major == 0) {
        s->http_major = 1;
        s->http_minor = 1;
    }
    if (filters && mx_vm_has(s->gen->vm, s->svc_index, MX_PH_RESPONSE_FILTER) &&
        mx_lua_run(s, MX_PH_RESPONSE_FILTER) != MX_OK) {
        /* The filter failed on the error page itself: send it plain. */
        mx_headers_init(&s->resp_headers);
        mx_headers_add(&s->resp_headers, a, MX_STR("Server"), MX_STR("moxy"));
        mx_headers_add(&s->resp_headers, a, MX_STR("Content-Type"), MX_STR("text/plain"));
        mx_headers_add(&s->resp_headers, a, MX_STR("Content-Length"),
                       (mx_str_t){mx_arena_strndup(a, len, ln), (size_t)ln});
        s->status = status;
    }
    mx_h1_send_head(s->c, s);
    if (!s->resp_no_body)
        mx_h1_send_body(s->c, s, body, (size_t)n);
    mx_h1_flush(s->c);
    s->resp_done = 1;
    finish(s);
}


/* Sends what s:respond() set, after response_filter (resp:source() is
 * "local" there), and ends the session. */
static void
send_local(mx_session_t *s)
{
    char len[24];
    int ln = snprintf(len, sizeof(len), "%zu", s->local_body.len);
    mx_arena_t *a = &s->arena;
    s->status = s->local_status;
    s->reason = (mx_str_t){NULL, 0};
    mx_headers_set(&s->resp_headers, a, MX_STR("Content-Length"),
                   (mx_str_t){mx_arena_strndup(a, len, ln), (size_t)ln});
    s->resp_no_body = s->llmethod == HTTP_HEAD || s->status == 204 || s->status == 304;
    if (s->resp_no_body && (s->status == 204 || s->status == 304))
        mx_headers_remove(&s->resp_headers, MX_STR("content-length"));
    if (mx_vm_has(s->gen->vm, s->svc_index, MX_PH_RESPONSE_FILTER) &&
        mx_lua_run(s, MX_PH_RESPONSE_FILTER) != MX_OK) {
        s->local_status = 0;
        s->in_error_page = 1;
        mx_session_respond_error(s, 500, MX_ELUA);
        return;
    }
    if (s->c == NULL) {
        finish(s);
        return;
    }
    if (!s->req_done && s->req_has_body)
        s->c->close_after = 1; /* the unread body would be parsed as a request */
    prepare_body_filter(s);
    mx_h1_send_head(s->c, s);
    if (!s->resp_no_body &&
        (filter_body(s, s->local_body.data, s->local_body.len, false) != MX_OK ||
         filter_body(s, NULL, 0, true) != MX_OK)) {
        s->c->close_after = 1; /* the head went out: cut the answer short */
        s->resp_done = 1;
        finish(s);
        return;
    }
    mx_h1_send_end(s->c, s);
    mx_h1_flush(s->c);
    s->resp_done = 1;
    finish(s);
}


static void
access_log(mx_session_t *s)
{
    if (!mx_access_log_enabled())
        return;
    char ts[40];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(ts, sizeof(ts), "%d/%b/%Y:%H:%M:%S %z", &tm);
    mx_str_t ua = mx_headers_get(&s->req_headers, MX_STR("user-agent"));
    mx_str_t ref = mx_headers_get(&s->req_headers, MX_STR("referer"));
    double rt = (double)(uv_now(&s->w->loop) - s->start_ms) / 1000.0;
    char line[4096];
    int n = snprintf(line, sizeof(line),
                     "%s - - [%s] \"%.*s %.*s HTTP/%d.%d\" %d %llu \"%.*s\" \"%.*s\" rt=%.3f "
                     "upstream=%s%.*s\n",
                     s->c ? s->c->client_addr : "-", ts, (int)s->method.len,
                     s->method.data ? s->method.data : "", (int)s->target_raw.len,
                     s->target_raw.data ? s->target_raw.data : "", s->http_major, s->http_minor,
                     s->status, (unsigned long long)s->resp_body_bytes,
                     ref.data ? (int)ref.len : 1, ref.data ? ref.data : "-",
                     ua.data ? (int)ua.len : 1, ua.data ? ua.data : "-", rt,
                     s->peer ? s->peer->text : "-", (int)s->log_fields.len,
                     s->log_fields.data ? s->log_fields.data : "");
    if (n > (int)sizeof(line) - 1) {
        n = sizeof(line) - 1;
        line[n - 1] = '\n';
    }
    if (n > 0)
        mx_access_log_write(line, (size_t)n);
}


/* Ends the session: logging, then the connection decides keepalive. */
static void
finish(mx_session_t *s)
{
    if (s->state == MX_SESS_DONE)
        return;
    if (s->method.len > 0 && mx_vm_has(s->gen->vm, s->svc_index, MX_PH_LOGGING) &&
        s->lua_phase < 0)
        mx_lua_run(s, MX_PH_LOGGING); /* errors are logged only */
    set_state(s, MX_SESS_DONE);
    if (s->method.len > 0)
        access_log(s);
    if (s->u != NULL) {
        mx_upconn_t *u = s->u;
        s->u = NULL;
        u->s = NULL;
        mx_upconn_close(u);
    }
    if (s->c != NULL)
        mx_h1_session_done(s->c);
}
