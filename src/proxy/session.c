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
static int filter_body(mx_session_t *s, const char *p, size_t n, bool eos,
                       void (*done)(mx_session_t *, int));
static void after_connected(mx_session_t *s, int rc);
static void after_upstream_response_filter(mx_session_t *s, int rc);
static void after_response_head_filters(mx_session_t *s, int rc);
static void after_response_chunk(mx_session_t *s, int rc);
static void after_last_chunk(mx_session_t *s, int rc);
static void after_trailers(mx_session_t *s, int rc);
static void after_fail_to_connect(mx_session_t *s, int rc);
static void after_error_while_proxy(mx_session_t *s, int rc);
static void after_fail_to_proxy(mx_session_t *s, int rc);
static void after_error_page_filter(mx_session_t *s, int rc);
static void after_local_filter(mx_session_t *s, int rc);
static void after_logging(mx_session_t *s, int rc);
static void rbf_drain(mx_session_t *s);
static void upstream_error_tail(mx_session_t *s, int err, bool fresh);
static bool rbf_active(const mx_session_t *s);
static void start_connect(mx_session_t *s);
static void resolve_cancel(mx_session_t *s);
static void after_retry_resolved(mx_session_t *s, int rc);
static void defer_cancel(mx_session_t *s);
static void send_buffered_response(mx_session_t *s);

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
    mx_worker_t *w = c->w;
    /* Blocks of sessions that ended wait in the worker: a 7 KiB malloc and free per
     * request cost more than the rest of the session's set-up. */
    mx_session_t *s = w->nfree_sessions > 0 ? w->free_sessions[--w->nfree_sessions]
                                            : mx_alloc(sizeof(*s) + ARENA_FIRST);
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
    s->phase_mask = mx_vm_mask(s->gen->vm, s->svc_index);
    mx_arena_init(&s->arena, s + 1, ARENA_FIRST);
    mx_headers_init(&s->req_headers);
    mx_headers_init(&s->resp_headers);
    mx_headers_init(&s->resp_trailers);
    mx_buf_init(&s->up_head);
    mx_buf_init(&s->pending);
    mx_buf_init(&s->body_repl);
    mx_buf_init(&s->body_buf);
    mx_buf_init(&s->log_fields);
    mx_buf_init(&s->fb_held);
    mx_buf_init(&s->fb_keep);
    mx_buf_init(&s->rbf_queue);
    mx_buf_init(&s->resp_body_buf);
    return s;
}


/* Sessions of this worker thread whose logging waits after their connection let go. */
static __thread mx_list_t orphans;


void
mx_session_orphans_abort(void)
{
    if (orphans.next == NULL)
        return;
    while (!mx_list_empty(&orphans)) {
        mx_session_t *s = mx_container_of(orphans.next, mx_session_t, orphan_node);
        s->log_pending = 0;
        mx_session_free(s);
    }
}


bool
mx_session_orphans_pending(void)
{
    return orphans.next != NULL && !mx_list_empty(&orphans);
}


void
mx_session_free(mx_session_t *s)
{
    if (s->log_pending && !s->orphan) {
        /* logging waits: the connection goes on without it; after_logging() frees it. */
        s->c = NULL;
        s->orphan = 1;
        if (orphans.next == NULL)
            mx_list_init(&orphans);
        mx_list_push(&orphans, &s->orphan_node);
        return;
    }
    if (s->orphan) {
        mx_list_remove(&s->orphan_node);
        s->orphan = 0;
        mx_worker_conn_closed(s->w); /* a draining worker may exit now */
    }
    mx_lua_release(s);
    resolve_cancel(s);
    defer_cancel(s);
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
    mx_buf_dispose(&s->fb_held);
    mx_buf_dispose(&s->fb_keep);
    mx_buf_dispose(&s->rbf_queue);
    mx_buf_dispose(&s->resp_body_buf);
    mx_arena_dispose(&s->arena);
    mx_gen_unref(s->gen);
    mx_worker_t *w = s->w;
#ifdef __SANITIZE_ADDRESS__
    /* Not under ASan: a reused block would hide a use after free. */
    if (0)
#else
    if (w->nfree_sessions < (int)mx_countof(w->free_sessions))
#endif
        w->free_sessions[w->nfree_sessions++] = s;
    else
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
        /* "<each X-Forwarded-For value>, " then the client, built in the arena. */
        size_t addr_len = strlen(s->c->client_addr), len = addr_len;
        for (ssize_t i = mx_headers_find(h, MX_STR("x-forwarded-for"), 0); i >= 0;
             i = mx_headers_find(h, MX_STR("x-forwarded-for"), (size_t)i + 1))
            len += h->v[i].value.len + 2;
        char *v = mx_arena_alloc(a, len), *p = v;
        for (ssize_t i = mx_headers_find(h, MX_STR("x-forwarded-for"), 0); i >= 0;
             i = mx_headers_find(h, MX_STR("x-forwarded-for"), (size_t)i + 1)) {
            memcpy(p, h->v[i].value.data, h->v[i].value.len);
            p += h->v[i].value.len;
            memcpy(p, ", ", 2);
            p += 2;
        }
        memcpy(p, s->c->client_addr, addr_len);
        mx_headers_set(h, a, MX_STR("X-Forwarded-For"), (mx_str_t){v, len});
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
    /* request_body_filter may change the length: the body goes up chunked.
     * s.req:set_body() fixes it instead. */
    s->up_chunked = rbf_active(s);
    if (s->body_set)
        mx_buf_reset(&s->pending); /* client bytes from before s.req:set_body() */
    if (s->up_chunked || s->body_set)
        mx_headers_remove(h, MX_STR("content-length"));
    mx_headers_serialize(h, b);
    if (s->body_set)
        mx_buf_printf(b, "Content-Length: %zu\r\n", s->set_body.len);
    else if (s->req_chunked || s->up_chunked)
        mx_buf_append_str(b, MX_STR("Transfer-Encoding: chunked\r\n"));
    if (s->req_upgrade && s->llmethod != HTTP_CONNECT) {
        mx_str_t up = mx_headers_get(h, MX_STR("upgrade"));
        if (up.data != NULL)
            mx_buf_printf(b, "Connection: upgrade\r\nUpgrade: %.*s\r\n", (int)up.len, up.data);
    }
    mx_buf_append_str(b, MX_STR("\r\n"));
    if (s->body_set) /* kept with the head: a retry resends it */
        mx_buf_append(b, s->set_body.data, s->set_body.len);
}


/* True while a handler of this request runs or waits: its coroutine can
 * start no other phase until it is done. */
static bool
lua_busy(const mx_session_t *s)
{
    return s->lua_phase >= 0;
}


/* True when the request's script has a handler for <phase>. */
static bool
has_phase(const mx_session_t *s, int phase)
{
    return (s->phase_mask >> phase) & 1;
}


/* True when <phase> has a handler and the request's coroutine is free. */
static bool
can_run(const mx_session_t *s, int phase)
{
    return has_phase(s, phase) && !lua_busy(s);
}


/* Runs <phase> if the script has it, then continues with <next> (now, or
 * when a yielded handler finishes). Returns MX_AGAIN when the handler waits
 * (<s> is alive), else MX_OK: <next> ran, and may have ended (freed) <s>. */
static int
run_phase(mx_session_t *s, int phase, void (*next)(mx_session_t *, int))
{
    if (!has_phase(s, phase)) {
        next(s, MX_OK);
        return MX_OK;
    }
    if (lua_busy(s)) {
        /* Never resume a coroutine that waits in another phase with a new one. */
        mx_log_error("#%llu lua %s cannot run while %s waits", (unsigned long long)s->id,
                     mx_phase_name(phase), mx_phase_name(s->lua_phase));
        next(s, MX_ELUA);
        return MX_OK;
    }
    s->lua_next = next;
    int rc = mx_lua_run(s, phase);
    if (rc == MX_AGAIN)
        return MX_AGAIN;
    s->lua_next = NULL;
    next(s, rc);
    return MX_OK;
}


void
mx_session_on_phase_done(mx_session_t *s, int rc)
{
    void (*next)(mx_session_t *, int) = s->lua_next;
    s->lua_next = NULL;
    if (s->log_after_wait) {
        /* The request ended (client gone, upstream failed) while this handler waited:
         * its phase has no continuation any more, but logging still runs, once. */
        s->log_after_wait = 0;
        run_phase(s, MX_PH_LOGGING, after_logging);
        return;
    }
    if (next != NULL && (s->state != MX_SESS_DONE || s->log_pending))
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
        s->c != NULL && !s->body_set) {
        mx_h1_send_continue(s->c);
        s->sent_continue = 1;
    }
    start_connect(s);
}


static void
start_connect(mx_session_t *s)
{
    s->action = "connecting to upstream";
    s->connect_start_ms = uv_now(&s->w->loop);
    mx_upconn_acquire(s, s->ups, s->peer, false);
}


/* --- host names in script peers: resolved off the loop (uv_getaddrinfo) --- */

typedef struct {
    uv_getaddrinfo_t req;
    mx_session_t *s; /* NULL once the session ended */
    void (*next)(mx_session_t *s, int rc);
} resolve_t;


static void
on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    resolve_t *r = mx_container_of(req, resolve_t, req);
    mx_session_t *s = r->s;
    void (*next)(mx_session_t *, int) = r->next;
    mx_free(r);
    if (s == NULL) {
        uv_freeaddrinfo(res);
        return;
    }
    s->resolving = NULL;
    if (status < 0 || res == NULL) {
        s->action = "resolving the upstream's host name";
        log_upstream_error(s, status < 0 ? status : UV_EAI_NONAME);
        uv_freeaddrinfo(res);
        mx_session_respond_error(s, 502, status < 0 ? status : UV_EAI_NONAME);
        return;
    }
    memset(&s->peer_addr.sa, 0, sizeof(s->peer_addr.sa));
    memcpy(&s->peer_addr.sa, res->ai_addr, res->ai_addrlen);
    uv_freeaddrinfo(res);
    s->peer_resolve = 0;
    next(s, MX_OK);
}


/* Resolves the script's peer when upstream_peer named a host, then <next>. */
static void
resolve_peer(mx_session_t *s, void (*next)(mx_session_t *, int))
{
    if (!s->peer_set || !s->peer_resolve) {
        next(s, MX_OK);
        return;
    }
    char port[8];
    const char *colon = strrchr(s->peer_addr.text, ':');
    snprintf(port, sizeof(port), "%s", colon ? colon + 1 : "80");
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    resolve_t *r = mx_alloc(sizeof(*r));
    r->s = s;
    r->next = next;
    s->action = "resolving the upstream's host name";
    int rc = uv_getaddrinfo(&s->w->loop, &r->req, on_resolved, s->peer_addr.host, port, &hints);
    if (rc < 0) {
        mx_free(r);
        log_upstream_error(s, rc);
        mx_session_respond_error(s, 502, rc);
        return;
    }
    s->resolving = r;
}


static void
resolve_cancel(mx_session_t *s)
{
    resolve_t *r = s->resolving;
    if (r != NULL) {
        r->s = NULL; /* on_resolved frees it */
        s->resolving = NULL;
    }
}


static void after_peer_resolved(mx_session_t *s, int rc);


/* --- defer: runs <fn>(s) from the loop on its next turn (never from inside a
 * parser callback or a running handler). One at a time per session. --- */

typedef struct {
    uv_timer_t timer;
    mx_session_t *s; /* NULL once the session ended */
    void (*fn)(mx_session_t *s);
} defer_t;


static void
on_defer_close(uv_handle_t *h)
{
    mx_free(mx_container_of((uv_timer_t *)h, defer_t, timer));
}


static void
on_defer(uv_timer_t *t)
{
    defer_t *d = mx_container_of(t, defer_t, timer);
    mx_session_t *s = d->s;
    void (*fn)(mx_session_t *) = d->fn;
    uv_close((uv_handle_t *)t, on_defer_close);
    if (s == NULL)
        return;
    s->deferred = NULL;
    fn(s);
}


static void
defer(mx_session_t *s, void (*fn)(mx_session_t *))
{
    defer_t *d = s->deferred;
    if (d != NULL) {
        d->fn = fn; /* the later wish wins: both callers re-check the state */
        return;
    }
    d = mx_alloc(sizeof(*d));
    d->s = s;
    d->fn = fn;
    uv_timer_init(&s->w->loop, &d->timer);
    uv_timer_start(&d->timer, on_defer, 0, 0);
    s->deferred = d;
}


static void
defer_cancel(mx_session_t *s)
{
    defer_t *d = s->deferred;
    if (d != NULL) {
        d->s = NULL;
        uv_timer_stop(&d->timer);
        uv_close((uv_handle_t *)&d->timer, on_defer_close);
        s->deferred = NULL;
    }
}


/* The request ended while s.req:body()/body_chunks()/s.resp:read_body() waited:
 * they return what they can ("client_closed" for the request body). */
static void
wake_waiter(mx_session_t *s)
{
    if (!s->body_waiting)
        return;
    s->resp_body_waiting = 0;
    s->body_waiting = 0;
    mx_lua_resume(s);
}


/* s.resp:read_body() waits (it sets body_waiting too): wake it (from the loop). */
static void
wake_body_reader(mx_session_t *s)
{
    if (s->resp_body_waiting)
        wake_waiter(s);
}


static void
continue_upstream(mx_session_t *s)
{
    if (s->u != NULL)
        mx_upconn_continue(s->u);
}


/* s.resp:read_body{max} (api.c): MX_OK with the body in <out>, MX_ETOOLARGE,
 * or MX_AGAIN (the handler yields until the body is there or too large). */
int
mx_session_read_resp_body(mx_session_t *s, size_t max, mx_str_t *out)
{
    if (s->resp_body_set) {
        *out = s->resp_set_body;
        return MX_OK;
    }
    if (s->local_status) {
        *out = s->local_body.data ? s->local_body : MX_STR("");
        return MX_OK;
    }
    if (s->in_error_page || s->resp_no_body || (s->u == NULL && !s->resp_body_complete)) {
        *out = MX_STR("");
        return MX_OK;
    }
    if (s->resp_head_sent)
        return MX_EBADARG;
    if (s->resp_body_buf.len > max)
        return MX_ETOOLARGE;
    if (s->resp_body_complete) {
        *out = (mx_str_t){s->resp_body_buf.data ? s->resp_body_buf.data : "",
                          s->resp_body_buf.len};
        return MX_OK;
    }
    s->resp_buffering = 1;
    s->resp_body_max = max;
    s->resp_body_waiting = 1;
    s->body_waiting = 1; /* vm.c: the handler waits on a body */
    if (s->u != NULL && s->u->held)
        defer(s, continue_upstream); /* a phase waited before: the parser is paused */
    return MX_AGAIN;
}


/* moxy.peer{ connect_timeout = ..., ... }: the chosen timeouts over the
 * service's group's (or the script defaults). */
static void
apply_peer_timeouts(mx_session_t *s)
{
    mx_conf_upstream_t *u = &s->peer_ups_copy;
    if (s->ups != u)
        *u = *s->ups;
    u->nbackends = 0; /* a copy: never a round-robin source */
    u->backends = NULL;
    u->max_retries = 0;
    if (s->peer_timeout[0] >= 0)
        u->connect_timeout = s->peer_timeout[0];
    if (s->peer_timeout[1] >= 0)
        u->read_timeout = s->peer_timeout[1];
    if (s->peer_timeout[2] >= 0)
        u->write_timeout = s->peer_timeout[2];
    if (s->peer_timeout[3] >= 0)
        u->idle_timeout = s->peer_timeout[3];
    s->ups = u;
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
        if (s->peer_timeouts)
            apply_peer_timeouts(s);
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
    resolve_peer(s, after_peer_resolved);
}


static void
after_peer_resolved(mx_session_t *s, int rc)
{
    (void)rc;
    prepare_upstream_headers(s);
    if (has_phase(s, MX_PH_FAIL_TO_CONNECT) ||
        has_phase(s, MX_PH_ERROR_WHILE_PROXY)) {
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
    if (s->body_waiting && !s->resp_body_waiting &&
        (s->req_done || s->body_buf.len > s->body_max)) {
        s->body_waiting = 0;
        mx_lua_resume(s);
    }
}


/* --- request_body_filter: the client's body, chunk by chunk, once the
 * upstream connection is ready; the filtered body goes up chunked. Chunks
 * that arrive before, or while the coroutine is busy, wait in rbf_queue
 * (the client pauses past HIGH_WATER). --- */

static bool
rbf_active(const mx_session_t *s)
{
    return s->req_has_body && !s->body_set &&
           has_phase(s, MX_PH_REQUEST_BODY_FILTER);
}


static bool
rbf_ready(const mx_session_t *s)
{
    return s->state == MX_SESS_PROXY && s->u != NULL && s->up_req_sent && !lua_busy(s) &&
           !s->fb_busy && !s->head_busy;
}


/* The request went up whole: wait for the response (arms read_timeout). */
static bool
req_sent_whole(const mx_session_t *s)
{
    return s->req_done && (!rbf_active(s) || s->rbf_done);
}


/* Sends a filtered piece up as a chunk; <eos> adds the terminal chunk. */
static void
rbf_output(mx_session_t *s, mx_str_t cur, bool eos)
{
    if (cur.len > 0) {
        char size[24];
        size_t len = mx_fmt_chunk_size(size, cur.len);
        uv_buf_t b[3] = {uv_buf_init(size, (unsigned)len),
                         uv_buf_init((char *)cur.data, (unsigned)cur.len),
                         uv_buf_init("\r\n", 2)};
        s->up_bytes_out += cur.len;
        send_up(s, b, 3);
    }
    if (eos && s->u != NULL) {
        uv_buf_t b = uv_buf_init("0\r\n\r\n", 5);
        s->rbf_done = 1;
        send_up(s, &b, 1);
        if (s->u != NULL && s->pending.len == 0)
            mx_upconn_request_sent(s->u);
    }
}


static void
after_rbf(mx_session_t *s, int rc)
{
    if (rc != MX_OK) {
        mx_session_respond_error(s, 500, MX_ELUA); /* after the head: aborts */
        return;
    }
    rbf_drain(s);
}


/* Runs request_body_filter over what waits, in order, until it is all sent
 * or the filter waits; then a response head that came meanwhile goes on. */
static void
rbf_drain(mx_session_t *s)
{
    while (rbf_ready(s)) {
        int rc;
        if (s->rbf_queue.len > 0) {
            /* The queue becomes the chunk (fb_keep); new bytes queue behind it. */
            mx_buf_t tmp = s->fb_keep;
            s->fb_keep = s->rbf_queue;
            s->rbf_queue = tmp;
            mx_buf_reset(&s->rbf_queue);
            s->fb_req = 1;
            rc = filter_body(s, s->fb_keep.data, s->fb_keep.len, false, after_rbf);
        } else if (s->rbf_eos_queued && !s->rbf_done) {
            s->rbf_eos_queued = 0;
            s->fb_req = 1;
            rc = filter_body(s, NULL, 0, true, after_rbf);
        } else {
            break;
        }
        if (rc == MX_AGAIN)
            return;
        if (rc != MX_OK) {
            mx_session_respond_error(s, 500, MX_ELUA);
            return;
        }
    }
    if (s->state != MX_SESS_PROXY)
        return;
    if (s->head_deferred && !lua_busy(s) && !s->fb_busy) {
        /* The origin answered while the filter waited: run its head phases now. */
        s->head_deferred = 0;
        s->head_busy = 1;
        s->head_async = 1;
        run_phase(s, MX_PH_UPSTREAM_RESPONSE_FILTER, after_upstream_response_filter);
        return;
    }
    if (s->resp_body_buf.len > 0 && !lua_busy(s) && !s->fb_busy && !s->resp_buffering &&
        !s->resp_body_set) {
        /* A response chunk came while the filter waited: its turn now. */
        mx_buf_t tmp = s->fb_keep;
        s->fb_keep = s->resp_body_buf;
        s->resp_body_buf = tmp;
        mx_buf_reset(&s->resp_body_buf);
        int rc = filter_body(s, s->fb_keep.data, s->fb_keep.len, false, after_response_chunk);
        if (rc != MX_AGAIN)
            after_response_chunk(s, rc);
        return;
    }
    if (s->resp_end_deferred && !lua_busy(s) && !s->fb_busy) {
        s->resp_end_deferred = 0;
        mx_session_on_response_done(s);
        return;
    }
    if (s->c != NULL && !s->req_done && s->rbf_queue.len < HIGH_WATER && s->u != NULL &&
        s->u->ws.queued <= HIGH_WATER)
        mx_h1_read_pause(s->c, false);
}


void
mx_session_on_request_body(mx_session_t *s, const char *p, size_t n)
{
    if (s->state == MX_SESS_PHASES || s->state == MX_SESS_READ_HEAD) {
        mx_buf_append(&s->body_buf, p, n); /* for s.req:body() */
        body_progress(s);
    }
    if (s->body_set || s->state == MX_SESS_DONE)
        return; /* s.req:set_body() replaced it: the client's bytes are read and dropped */
    if (rbf_active(s)) {
        mx_buf_append(&s->rbf_queue, p, n);
        if (rbf_ready(s)) {
            rbf_drain(s);
        } else if (s->rbf_queue.len > HIGH_WATER && s->c != NULL && !s->body_waiting) {
            mx_h1_read_pause(s->c, true);
        }
        return;
    }
    s->up_bytes_out += n;
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
    if (s->state == MX_SESS_DONE || s->body_set)
        return;
    if (rbf_active(s)) {
        s->rbf_eos_queued = 1;
        rbf_drain(s);
        return;
    }
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
    s->connect_ms = uv_now(&s->w->loop) - s->connect_start_ms;
    /* A notification (it may wait); an error in it is logged only. */
    if (can_run(s, MX_PH_CONNECTED_TO_UPSTREAM)) {
        run_phase(s, MX_PH_CONNECTED_TO_UPSTREAM, after_connected);
        return;
    }
    after_connected(s, MX_OK);
}


static void
after_connected(mx_session_t *s, int rc)
{
    (void)rc;
    mx_upconn_t *u = s->u;
    if (u == NULL || s->state != MX_SESS_PROXY)
        return; /* the upstream failed while the handler waited */
    s->action = "sending request to upstream";
    uv_buf_t b[2] = {uv_buf_init(s->up_head.data, (unsigned)s->up_head.len),
                     uv_buf_init(s->pending.data, (unsigned)s->pending.len)};
    if (s->pending.len > 0)
        s->up_body_started = 1;
    s->up_req_sent = 1;
    rc = mx_upconn_write(u, b, s->pending.len > 0 ? 2 : 1);
    mx_buf_reset(&s->pending);
    if (rc < 0)
        return; /* reported through mx_session_on_upstream_error() */
    s->action = "reading response header from upstream";
    if (rbf_active(s)) {
        rbf_drain(s);
        return;
    }
    if (req_sent_whole(s) || s->body_set)
        mx_upconn_request_sent(u);
    if (s->c != NULL && !s->req_done)
        mx_h1_read_pause(s->c, u->ws.queued > HIGH_WATER);
}


/* The group's failover applies: another backend, up to max_retries more tries, only
 * while nothing went upstream (the caller checks that). */
static bool
failover_allowed(mx_session_t *s)
{
    return !s->peer_set && s->group != NULL &&
           s->tries < mx_group_conf(s->group)->max_retries && untried_backend_left(s);
}


bool
mx_session_idempotent(const mx_session_t *s)
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
        if (s->peer_timeouts)
            apply_peer_timeouts(s);
    } else if (s->group != NULL && pick_backend(s) != MX_OK) {
        /* The script asked for a retry with every backend tried: start over. */
        s->ntried = 0;
        if (pick_backend(s) != MX_OK) {
            mx_session_respond_error(s, 502, MX_ENOUPSTREAM);
            return;
        }
    }
    resolve_peer(s, after_retry_resolved);
}


static void
after_retry_resolved(mx_session_t *s, int rc)
{
    (void)rc;
    mx_headers_t *h = &s->req_headers;
    mx_headers_init(h);
    for (size_t i = 0; i < s->up_headers_base.n; i++)
        mx_headers_add(h, &s->arena, s->up_headers_base.v[i].name, s->up_headers_base.v[i].value);
    memcpy(h->v, s->up_headers_base.v, s->up_headers_base.n * sizeof(mx_header_t)); /* flags */
    set_state(s, MX_SESS_PHASES);
    run_phase(s, MX_PH_UPSTREAM_REQUEST_FILTER, after_upstream_request_filter);
}


/* Asks upstream_peer again for a retry that fail_to_connect or
 * error_while_proxy wanted (their err:set_retry(true)). */
static void
lua_retry(mx_session_t *s, int err, const char *who)
{
    log_upstream_error(s, err);
    mx_log_info("#%llu %s asked for a retry (try %d)", (unsigned long long)s->id, who,
                s->tries + 2);
    s->err = 0;
    s->tries++;
    s->peer_set = 0;
    s->up_body_started = 0;
    s->status = 0;
    s->reason = (mx_str_t){NULL, 0};
    mx_headers_init(&s->resp_headers); /* whatever a failed try parsed */
    mx_headers_init(&s->resp_trailers);
    mx_buf_reset(&s->pending);
    set_state(s, MX_SESS_PHASES);
    run_phase(s, MX_PH_UPSTREAM_PEER, after_retry_peer);
}


/* error_while_proxy may resend only what is safe to: an idempotent request,
 * nothing sent downstream yet, and no body or one moxy still has. */
static bool
resendable(const mx_session_t *s)
{
    return mx_session_idempotent(s) && !s->resp_head_sent && (!s->req_has_body || s->body_set);
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
    s->head_busy = 0;

    bool fresh = !s->resp_head_sent && !got_bytes && !s->up_body_started;
    if (fresh) {
        /* A pooled connection the origin had closed: resend once on a fresh one. */
        if (reused && mx_session_idempotent(s) && err != UV_ETIMEDOUT && !lua_busy(s)) {
            mx_log_info("#%llu reused upstream connection failed (%s), retrying on a new one",
                        (unsigned long long)s->id, mx_strerror(err));
            s->reused = 0;
            set_state(s, MX_SESS_CONNECT);
            s->action = "connecting to upstream";
            mx_upconn_acquire(s, s->ups, s->peer, true);
            return;
        }
        /* Failover: another backend of the group, up to max_retries more tries, only
         * while nothing went upstream; fail_to_connect sees this default and may change it
         * (a script's own retries, beyond the group's failover, stop after 3). */
        bool failover = connecting && failover_allowed(s);
        if (connecting && (failover || s->tries < 3) && can_run(s, MX_PH_FAIL_TO_CONNECT)) {
            s->err = err;
            s->pending_err = err;
            s->retry_requested = failover;
            run_phase(s, MX_PH_FAIL_TO_CONNECT, after_fail_to_connect);
            return;
        }
        if (connecting) {
            upstream_error_tail(s, err, failover);
            return;
        }
    }
    if (!connecting && !s->resp_head_sent && s->tries < 3 &&
        can_run(s, MX_PH_ERROR_WHILE_PROXY)) {
        /* The connection was up: the request (or its response) broke on the way. */
        s->err = err;
        s->pending_err = err;
        s->retry_requested = 0;
        run_phase(s, MX_PH_ERROR_WHILE_PROXY, after_error_while_proxy);
        return;
    }
    upstream_error_tail(s, err, false);
}


static void
after_fail_to_connect(mx_session_t *s, int rc)
{
    int err = s->pending_err;
    if (rc == MX_OK && s->retry_requested) {
        lua_retry(s, err, "fail_to_connect");
        return;
    }
    s->retry_requested = 0;
    /* The script said no: no failover; it failed: the default stands, as without it. */
    upstream_error_tail(s, err, rc != MX_OK && failover_allowed(s));
}


static void
after_error_while_proxy(mx_session_t *s, int rc)
{
    int err = s->pending_err;
    if (rc == MX_OK && s->retry_requested) {
        if (resendable(s)) {
            lua_retry(s, err, "error_while_proxy");
            return;
        }
        mx_log_info("#%llu error_while_proxy asked for a retry, but the request cannot be "
                    "resent (%s)", (unsigned long long)s->id,
                    !mx_session_idempotent(s)       ? "method not idempotent"
                    : s->resp_head_sent ? "response already sent"
                                        : "its body was streamed");
    }
    upstream_error_tail(s, err, false);
}


/* No script retry: the group's failover to another backend (<failover>), else the
 * error page. */
static void
upstream_error_tail(mx_session_t *s, int err, bool failover)
{
    if (failover) {
        log_upstream_error(s, err);
        s->tries++;
        if (pick_backend(s) == MX_OK) {
            mx_log_info("#%llu retrying on upstream %s backend %s (try %d)",
                        (unsigned long long)s->id, mx_group_name(s->group), s->backend->name,
                        s->tries + 1);
            s->err = 0;
            set_state(s, MX_SESS_CONNECT);
            start_connect(s);
            return;
        }
    }
    lb_done(s);
    log_upstream_error(s, err);
    s->err = err;
    mx_session_respond_error(s, status_for(err), err);
}


static void after_buffered_body(mx_session_t *s, int rc);


/* The head phases are done and the body was buffered (s.resp:read_body()) or
 * replaced (s.resp:set_body()): one body with its length when moxy has all of
 * it, then the end; else the buffered part, then the rest streams. */
static void
send_buffered_response(mx_session_t *s)
{
    bool whole = s->resp_body_set || s->resp_body_complete;
    s->resp_buffering = 0;
    mx_str_t body;
    if (s->resp_body_set) {
        body = s->resp_set_body;
    } else {
        /* Moved aside: bytes parsed later must not move it under a waiting filter. */
        mx_buf_t tmp = s->fb_keep;
        s->fb_keep = s->resp_body_buf;
        s->resp_body_buf = tmp;
        mx_buf_reset(&s->resp_body_buf);
        body = (mx_str_t){s->fb_keep.data ? s->fb_keep.data : "", s->fb_keep.len};
    }
    if (whole && s->status != 204 && s->status != 304) {
        char len[24];
        int ln = snprintf(len, sizeof(len), "%zu", body.len);
        mx_headers_remove(&s->resp_headers, MX_STR("transfer-encoding"));
        mx_headers_set(&s->resp_headers, &s->arena, MX_STR("Content-Length"),
                       (mx_str_t){mx_arena_strndup(&s->arena, len, ln), (size_t)ln});
    }
    prepare_body_filter(s); /* a body filter may change the length: chunked */
    if (s->c != NULL)
        mx_h1_send_head(s->c, s);
    if (s->resp_no_body) {
        after_buffered_body(s, MX_OK);
        return;
    }
    int rc = filter_body(s, body.data, body.len, false, after_buffered_body);
    if (rc != MX_AGAIN)
        after_buffered_body(s, rc);
}


static void
after_buffered_body(mx_session_t *s, int rc)
{
    if (rc != MX_OK) {
        mx_session_respond_error(s, 500, MX_ELUA); /* the head went out: aborts */
        return;
    }
    if (s->resp_body_set && !s->resp_body_complete && s->u != NULL) {
        /* The origin's own body is not wanted: do not wait for it. */
        mx_upconn_t *u = s->u;
        s->u = NULL;
        u->s = NULL;
        mx_upconn_close(u);
        mx_headers_init(&s->resp_trailers);
    }
    if (s->resp_body_set || s->resp_body_complete) {
        if (s->resp_no_body) {
            after_last_chunk(s, MX_OK);
            return;
        }
        rc = filter_body(s, NULL, 0, true, after_last_chunk);
        if (rc == MX_AGAIN && s->u != NULL)
            mx_upconn_read_pause(s->u, true); /* nothing more from it while a filter waits */
        if (rc != MX_AGAIN)
            after_last_chunk(s, rc);
        return;
    }
    continue_upstream(s); /* past read_body's max: the rest streams */
}


/* The head phases ran (or waited and ran): send the head, let the parser on. */
static void
after_response_head_filters(mx_session_t *s, int rc)
{
    s->head_busy = 0;
    if (rc != MX_OK) {
        s->in_error_page = 1; /* a plain page: the filter that failed is not run again */
        mx_session_respond_error(s, 500, MX_ELUA);
        return;
    }
    if (s->resp_buffering || s->resp_body_set) {
        send_buffered_response(s);
        return;
    }
    prepare_body_filter(s);
    if (s->c != NULL)
        mx_h1_send_head(s->c, s);
    if (s->head_rc == 2)
        set_state(s, MX_SESS_TUNNEL);
    if (!s->head_async)
        return; /* on_headers_complete returns head_rc itself */
    s->head_async = 0;
    mx_upconn_t *u = s->u;
    if (u == NULL)
        return;
    /* What on_headers_complete would have returned: 1 no body, 2 upgrade. */
    if (s->head_rc >= 1)
        u->parser.flags |= F_SKIPBODY;
    if (s->head_rc == 2)
        u->parser.upgrade = 1;
    mx_session_flush(s);
    mx_upconn_continue(u);
}


static void
after_upstream_response_filter(mx_session_t *s, int rc)
{
    if (rc != MX_OK) {
        s->head_busy = 0;
        mx_session_respond_error(s, 502, MX_ELUA);
        return;
    }
    run_phase(s, MX_PH_RESPONSE_FILTER, after_response_head_filters);
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
        return 1; /* no body, whatever its framing fields say (RFC 9112 §6.3) */
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
    /* 1: llhttp must not read a body, as it would for a 204 or 304 with a
     * Content-Length or chunked framing; the bytes would reach the client
     * behind a head that says there are none. */
    s->head_rc = tunnel ? 2 : s->resp_no_body ? 1 : 0;
    s->header_ms = uv_now(&s->w->loop) - s->connect_start_ms;
    s->up_header_seen = 1;
    if (lua_busy(s) || s->fb_busy) {
        /* request_body_filter waits: the head goes through its phases after it. */
        s->head_deferred = 1;
        return HPE_PAUSED;
    }
    s->head_busy = 1;
    s->head_async = 0;
    mx_upconn_t *u = s->u;
    run_phase(s, MX_PH_UPSTREAM_RESPONSE_FILTER, after_upstream_response_filter);
    if (u == NULL || u->closing || u->s != s)
        return -1; /* the session ended (an error page went out): <s> may be freed */
    if (s->head_busy) {
        if (s->resp_buffering)
            return s->head_rc; /* s.resp:read_body() waits: the parser reads the body on */
        s->head_async = 1; /* a phase waits: the parser pauses until it is done */
        return HPE_PAUSED;
    }
    return s->state == MX_SESS_DONE ? -1 : s->head_rc;
}


static bool
has_upstream_body_filter(mx_session_t *s)
{
    return !s->local_status &&
           has_phase(s, MX_PH_UPSTREAM_RESPONSE_BODY_FILTER);
}


/* --- body filters: a chunk passes upstream_response_body_filter (upstream
 * responses), then response_body_filter, then goes out; or it passes
 * request_body_filter and goes up (s->fb_req). Any of them may wait: the
 * chain then ends later in s->fb_done. --- */

static void fb_step(mx_session_t *s);


static void
fb_finish(mx_session_t *s, int rc)
{
    s->fb_busy = 0;
    s->fb_req = 0;
    s->body_chunk = (mx_str_t){NULL, 0};
    if (s->fb_async) {
        s->fb_async = 0;
        s->fb_done(s, rc);
    } else {
        s->fb_rc = rc;
    }
}


static void
after_body_phase(mx_session_t *s, int rc)
{
    s->body_chunk = (mx_str_t){NULL, 0};
    if (rc != MX_OK) {
        fb_finish(s, MX_ELUA);
        return;
    }
    if (s->body_replaced) { /* the next filter reuses body_repl: keep it */
        mx_buf_reset(&s->fb_held);
        mx_buf_append(&s->fb_held, s->body_repl.data, s->body_repl.len);
        s->fb_cur = (mx_str_t){s->fb_held.data ? s->fb_held.data : "", s->fb_held.len};
    }
    fb_step(s);
}


static void
fb_step(mx_session_t *s)
{
    for (;;) {
        int stage = s->fb_phase++;
        int phase = -1;
        if (s->fb_req) {
            if (stage == 0)
                phase = MX_PH_REQUEST_BODY_FILTER;
        } else if (stage == 0) {
            if (has_upstream_body_filter(s))
                phase = MX_PH_UPSTREAM_RESPONSE_BODY_FILTER;
        } else if (stage == 1) {
            phase = MX_PH_RESPONSE_BODY_FILTER;
        }
        if (phase >= 0 && has_phase(s, phase)) {
            s->body_chunk = s->fb_cur;
            s->body_eos = s->fb_eos;
            s->body_replaced = 0;
            if (run_phase(s, phase, after_body_phase) != MX_AGAIN)
                return; /* done (the chain went on; <s> may be gone) */
            if (s->fb_cur.len > 0 &&
                s->fb_cur.data != s->fb_keep.data && s->fb_cur.data != s->fb_held.data) {
                /* It waits: the chunk's bytes may not outlive this call. */
                mx_buf_reset(&s->fb_keep);
                mx_buf_append(&s->fb_keep, s->fb_cur.data, s->fb_cur.len);
                s->fb_cur = (mx_str_t){s->fb_keep.data, s->fb_keep.len};
            }
            return;
        }
        if (stage >= (s->fb_req ? 1 : 2)) {
            if (s->fb_req)
                rbf_output(s, s->fb_cur, s->fb_eos);
            else if (s->c != NULL)
                mx_h1_send_body(s->c, s, s->fb_cur.data, s->fb_cur.len);
            fb_finish(s, MX_OK);
            return;
        }
    }
}


/* Passes one chunk (<eos> for the end) through the body filters and sends
 * the result. Returns MX_OK, MX_ELUA (the caller can only cut the message
 * short), or MX_AGAIN: a filter waits, <done>(s, rc) follows later. */
static int
filter_body(mx_session_t *s, const char *p, size_t n, bool eos,
            void (*done)(mx_session_t *, int))
{
    s->fb_cur = (mx_str_t){p ? p : "", n};
    s->fb_eos = eos;
    s->fb_done = done;
    s->fb_busy = 1;
    s->fb_async = 0;
    s->fb_phase = 0;
    s->fb_rc = MX_OK;
    fb_step(s);
    if (s->fb_busy) {
        s->fb_async = 1;
        return MX_AGAIN;
    }
    return s->fb_rc;
}


/* A body filter may change the length: the response goes chunked. */
static void
prepare_body_filter(mx_session_t *s)
{
    if (!s->resp_no_body &&
        (has_phase(s, MX_PH_RESPONSE_BODY_FILTER) ||
         has_upstream_body_filter(s)))
        mx_headers_remove(&s->resp_headers, MX_STR("content-length"));
}


/* request_body_filter's chunks may go up between response chunks: kick them. */
static void
rbf_kick(mx_session_t *s)
{
    if (rbf_active(s) && (s->rbf_queue.len > 0 || (s->rbf_eos_queued && !s->rbf_done)))
        rbf_drain(s);
}


int
mx_session_on_response_body(mx_session_t *s, const char *p, size_t n, bool last)
{
    if (s->c == NULL)
        return 0;
    if (last)
        lb_done(s); /* before the bytes go out: the client's next request sees the count */
    s->up_bytes_in += n;
    if (s->head_busy) {
        /* Only with s.resp:read_body() waiting (else the parser is held at the head). */
        if (s->resp_body_set)
            return 0; /* replaced by s.resp:set_body(): dropped */
        mx_buf_append(&s->resp_body_buf, p, n);
        if (s->resp_body_buf.len > s->resp_body_max) {
            defer(s, wake_body_reader); /* too large: no more buffering, hold the parser */
            return HPE_PAUSED;
        }
        return 0;
    }
    bool filters = has_phase(s, MX_PH_RESPONSE_BODY_FILTER) ||
                   has_upstream_body_filter(s);
    if (filters && (s->fb_busy || lua_busy(s))) {
        /* request_body_filter waits: keep the chunk, hold the parser. */
        mx_buf_append(&s->resp_body_buf, p, n);
        return HPE_PAUSED;
    }
    int rc = filter_body(s, p, n, false, after_response_chunk);
    if (rc == MX_AGAIN)
        return HPE_PAUSED;
    if (rc != MX_OK) {
        mx_session_respond_error(s, 500, MX_ELUA); /* headers sent: aborts the stream */
        return 0;
    }
    if (s->c->ws.queued > HIGH_WATER && s->u != NULL)
        mx_upconn_read_pause(s->u, true);
    return 0;
}


/* A waiting body filter finished with an upstream chunk: parse on. */
static void
after_response_chunk(mx_session_t *s, int rc)
{
    if (rc != MX_OK) {
        mx_session_respond_error(s, 500, MX_ELUA);
        return;
    }
    mx_upconn_t *u = s->u;
    rbf_kick(s);
    if (u == NULL || u->closing || u->s != s)
        return; /* the session ended: <s> may be freed */
    if (s->fb_busy || lua_busy(s))
        return;
    mx_upconn_continue(u);
}


void
mx_session_on_response_done(mx_session_t *s)
{
    lb_done(s); /* before the end goes out: the client's next request sees the count */
    if (s->head_busy) {
        /* The whole body arrived while s.resp:read_body() waited. */
        s->resp_body_complete = 1;
        defer(s, wake_body_reader);
        return;
    }
    if (lua_busy(s) || s->fb_busy) {
        s->resp_end_deferred = 1; /* request_body_filter waits: the end's phases after it */
        return;
    }
    if (s->c != NULL && !s->resp_no_body) {
        int rc = filter_body(s, NULL, 0, true, after_last_chunk);
        if (rc == MX_AGAIN && s->u != NULL)
            mx_upconn_read_pause(s->u, true); /* nothing more from it while a filter waits */
        if (rc != MX_AGAIN)
            after_last_chunk(s, rc);
        return;
    }
    after_last_chunk(s, MX_OK);
}


static void
after_last_chunk(mx_session_t *s, int rc)
{
    if (rc != MX_OK) {
        mx_session_respond_error(s, 500, MX_ELUA);
        return;
    }
    /* The origin's trailers (gRPC status...) pass the script before they go out. */
    if (s->c != NULL && s->resp_trailers.n > 0 &&
        has_phase(s, MX_PH_RESPONSE_TRAILER_FILTER)) {
        mx_upconn_t *u = s->u;
        if (run_phase(s, MX_PH_RESPONSE_TRAILER_FILTER, after_trailers) == MX_AGAIN && u != NULL)
            mx_upconn_read_pause(u, true); /* nothing more from it while the filter waits */
        return;
    }
    after_trailers(s, MX_OK);
}


static void
after_trailers(mx_session_t *s, int rc)
{
    if (rc != MX_OK) {
        mx_session_respond_error(s, 500, MX_ELUA); /* the head went out: aborts the stream */
        return;
    }
    mx_upconn_t *u = s->u;
    if (s->c != NULL)
        mx_h1_send_end(s->c, s);
    s->resp_done = 1;
    if (u != NULL) {
        s->u = NULL;
        u->s = NULL;
        /* Reusable only when the whole request went up and the origin keeps it. */
        bool reusable = s->req_done && s->pending.len == 0 && req_sent_whole(s) &&
                        llhttp_should_keep_alive(&u->parser);
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
    if (req_sent_whole(s) && s->state == MX_SESS_PROXY && s->u != NULL)
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
    s->head_busy = 0;
    if (s->c == NULL || s->resp_head_sent) {
        if (s->c != NULL)
            s->c->close_after = 1; /* headers went out: all we can do is cut it short */
        finish(s);
        return;
    }
    /* fail_to_proxy may choose the status; response_filter sees the page
     * (source "error") unless the failure was its own. */
    s->err_filters = !s->in_error_page && !lua_busy(s) && err != MX_EBADREQ &&
                     s->method.len > 0; /* a request that never parsed meets no script */
    s->in_error_page = 1;
    s->err_status = status;
    s->fail_status = 0;
    if (s->err_filters && has_phase(s, MX_PH_FAIL_TO_PROXY)) {
        run_phase(s, MX_PH_FAIL_TO_PROXY, after_fail_to_proxy);
        return;
    }
    after_fail_to_proxy(s, MX_DECLINED);
}


/* The error page's head, as moxy builds it. */
static void
error_page_head(mx_session_t *s, int status, size_t body_len)
{
    char len[24];
    int ln = snprintf(len, sizeof(len), "%zu", body_len);
    mx_arena_t *a = &s->arena;
    mx_headers_init(&s->resp_headers);
    mx_headers_add(&s->resp_headers, a, MX_STR("Server"), MX_STR("moxy"));
    mx_headers_add(&s->resp_headers, a, MX_STR("Content-Type"), MX_STR("text/plain"));
    mx_headers_add(&s->resp_headers, a, MX_STR("Content-Length"),
                   (mx_str_t){mx_arena_strndup(a, len, ln), (size_t)ln});
    s->status = status;
    s->reason = (mx_str_t){NULL, 0};
}


static void
after_fail_to_proxy(mx_session_t *s, int rc)
{
    int status = s->err_status;
    if (rc == MX_OK && s->fail_status)
        status = s->err_status = s->fail_status;
    if (s->c == NULL) {
        finish(s);
        return;
    }
    if (status >= 400 && status < 500 && status != 404)
        s->c->close_after = 1;
    error_page_head(s, status, strlen(mx_http_reason(status)) + 5);
    s->resp_no_body = s->llmethod == HTTP_HEAD;
    if (s->http_major == 0) {
        s->http_major = 1;
        s->http_minor = 1;
    }
    if (s->err_filters && has_phase(s, MX_PH_RESPONSE_FILTER)) {
        run_phase(s, MX_PH_RESPONSE_FILTER, after_error_page_filter);
        return;
    }
    after_error_page_filter(s, MX_OK);
}


static void
after_error_page_filter(mx_session_t *s, int rc)
{
    int status = s->err_status;
    char body[64];
    int n = snprintf(body, sizeof(body), "%d %s\n", status, mx_http_reason(status));
    if (rc != MX_OK) /* the filter failed on the error page itself: send it plain */
        error_page_head(s, status, (size_t)n);
    if (s->c == NULL) {
        finish(s);
        return;
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
    run_phase(s, MX_PH_RESPONSE_FILTER, after_local_filter);
}


static void
local_end(mx_session_t *s, int rc)
{
    if (rc != MX_OK) {
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
after_local_chunk(mx_session_t *s, int rc)
{
    if (rc == MX_OK) {
        rc = filter_body(s, NULL, 0, true, local_end);
        if (rc == MX_AGAIN)
            return;
    }
    local_end(s, rc);
}


static void
after_local_filter(mx_session_t *s, int rc)
{
    if (rc != MX_OK) {
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
    if (s->resp_no_body) {
        local_end(s, MX_OK);
        return;
    }
    rc = filter_body(s, s->local_body.data, s->local_body.len, false, after_local_chunk);
    if (rc != MX_AGAIN)
        after_local_chunk(s, rc);
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
                     s->c ? s->c->client_addr : s->client_copy[0] ? s->client_copy : "-", ts,
                     (int)s->method.len,
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


/* logging waits past the connection: s:client_addr() still answers from a copy. */
static void
keep_client_addr(mx_session_t *s)
{
    if (s->c == NULL)
        return;
    size_t n = strnlen(s->c->client_addr, sizeof(s->client_copy) - 1);
    memcpy(s->client_copy, s->c->client_addr, n); /* not snprintf: ~600 instructions */
    s->client_copy[n] = '\0';
    s->client_port_copy = s->c->client_port;
}


/* Ends the session: logging, then the connection decides keepalive. */
static void
finish(mx_session_t *s)
{
    if (s->state == MX_SESS_DONE)
        return;
    if (s->u != NULL) {
        mx_upconn_t *u = s->u;
        s->u = NULL;
        u->s = NULL;
        mx_upconn_close(u);
    }
    resolve_cancel(s);
    if (s->method.len > 0 && can_run(s, MX_PH_LOGGING)) {
        /* Errors are logged only. If it waits, the response is already out and
         * the connection goes on (keepalive) while the session lives on. */
        s->log_pending = 1;
        if (run_phase(s, MX_PH_LOGGING, after_logging) == MX_AGAIN)
            keep_client_addr(s);
    } else if (s->method.len > 0 && lua_busy(s) &&
               has_phase(s, MX_PH_LOGGING)) {
        /* A handler waits: logging runs once it is done (the session outlives its
         * connection meanwhile). A wait for bytes that will not come ends now. */
        keep_client_addr(s);
        s->log_pending = 1;
        s->log_after_wait = 1;
        if (s->body_waiting)
            defer(s, wake_waiter);
    }
    set_state(s, MX_SESS_DONE);
    if (s->method.len > 0 && !s->log_pending)
        access_log(s);
    if (s->c != NULL)
        mx_h1_session_done(s->c);
}


/* logging ended: at once (finish() goes on), or after a wait (the access
 * log line goes now; an orphan session is freed). */
static void
after_logging(mx_session_t *s, int rc)
{
    (void)rc;
    s->log_pending = 0;
    if (s->state != MX_SESS_DONE)
        return;
    access_log(s);
    if (s->orphan)
        mx_session_free(s);
}
