/* libFuzzer target: upstream responses as the proxy reads them.
 *
 * src/upstream/upconn.c is compiled into this file as is: a connection is
 * made with mx_upconn_acquire(), connected through its on_connect(), and the
 * origin's bytes go through its on_alloc() and on_read() callbacks, parse()
 * (llhttp in strict mode, the h1_guard checks), its header, body and
 * message callbacks, the pause and resume of a waiting phase
 * (mx_upconn_continue()), the switch to a tunnel, and the keepalive pool.
 * The socket (fuzz_loop.h) and the session are stand-ins; the session does
 * what the real one does with the head (1xx dropped, 101 without an
 * upgrade refused, HEAD / 204 / 304 without a body, CONNECT 2xx and 101 as
 * tunnels) and may hold the parser as a waiting Lua phase would.
 *
 * Input: byte 0 chooses the request and the session's behaviour (FL_*),
 * byte 1's low 3 bits a number k of extra read boundaries, the k bytes
 * after it the gap before each boundary (byte + 1); the rest is what the
 * origin sends. After the last byte the origin closes, resets, or goes
 * quiet until every timeout fired.
 *
 * Invariants: no sanitizer report, no leak; a head the session receives has
 * token field names, values without CR, LF, NUL or edge whitespace, at most
 * one valid Content-Length and not with Transfer-Encoding; a body never
 * exceeds its Content-Length, and a response that completes has exactly
 * that many bytes; nothing reaches the session after it ended; the
 * connection is closed (or pooled, then closed) and freed at the end. */
#include "fuzz_loop.h"

#include "upstream/upconn.c"

enum {
    FL_METHOD_MASK = 0x03, /* GET, HEAD, CONNECT, GET with Upgrade */
    FL_HOLD_HEAD = 0x04,   /* response phases wait: the parser is held at the head */
    FL_HOLD_BODY = 0x08,   /* a body filter waits on each piece */
    FL_UNIX = 0x10,        /* the origin listens on a unix socket */
    FL_TIMEOUT = 0x20,     /* at the end the origin goes quiet: timeouts fire */
    FL_RESET = 0x40,       /* at the end the read fails (ECONNRESET), not EOF */
    FL_BODY_STOP = 0x80,   /* the session ends as the first body bytes arrive */
};

#define ARENA_FIRST 1024

static struct {
    uint8_t flags;
    mx_list_t pool; /* idle connections */
    bool held;      /* the parser waits for the session: resumed at the next turn */
    bool ended;     /* the session ended: nothing may reach it any more */
    bool has_cl;    /* the final head had a Content-Length ... */
    uint64_t cl;    /* ... of this */
    int responses;  /* final heads */
} shim;


/* --- the keepalive pool --- */

mx_upconn_t *
mx_pool_get(mx_pool_t *p, const mx_addr_t *addr, bool peek)
{
    (void)p;
    (void)addr;
    (void)peek;
    return NULL;
}


void
mx_pool_put(mx_pool_t *p, mx_upconn_t *u)
{
    (void)p;
    fuzz_check(!mx_list_linked(&u->node), "pooled twice");
    mx_list_push(&shim.pool, &u->node);
}


void
mx_pool_remove(mx_pool_t *p, mx_upconn_t *u)
{
    (void)p;
    fuzz_check(mx_list_linked(&u->node), "removed from the pool while not in it");
    mx_list_remove(&u->node);
}


/* --- the session --- */

static void
shim_end(mx_session_t *s)
{
    if (s->u != NULL) {
        mx_upconn_t *u = s->u;
        s->u = NULL;
        u->s = NULL;
        mx_upconn_close(u);
    }
    s->state = MX_SESS_DONE;
    shim.ended = true;
}


static void
alive(mx_session_t *s, const char *what)
{
    fuzz_check(!shim.ended && s->state != MX_SESS_DONE, "%s after the session ended", what);
}


bool
mx_session_idempotent(const mx_session_t *s)
{
    return s->llmethod == HTTP_GET || s->llmethod == HTTP_HEAD;
}


void
mx_session_on_connected(mx_session_t *s, mx_upconn_t *u)
{
    static const char head[] = "GET / HTTP/1.1\r\nHost: origin\r\n\r\n";
    alive(s, "connected");
    s->u = u;
    s->state = MX_SESS_PROXY;
    uv_buf_t b = uv_buf_init((char *)head, sizeof(head) - 1);
    if (mx_upconn_write(u, &b, 1) < 0)
        return;
    s->req_done = 1;
    mx_upconn_request_sent(u);
}


void
mx_session_on_upstream_error(mx_session_t *s, int err)
{
    alive(s, "upstream error");
    fuzz_check(err < 0, "upstream error %d", err);
    s->err = err;
    shim_end(s);
}


/* Checks a final head as upconn.c hands it over. */
static void
check_head(mx_session_t *s)
{
    size_t cls = 0, tes = 0;

    fuzz_check(s->status >= 100 && s->status <= 999, "status %d", s->status);
    for (size_t i = 0; i < s->resp_headers.n; i++) {
        mx_str_t name = s->resp_headers.v[i].name, v = s->resp_headers.v[i].value;
        fuzz_check_field(name, v);
        if (mx_str_caseeq(name, MX_STR("content-length"))) {
            cls++;
            fuzz_check(mx_http_parse_content_length(v, &shim.cl) == MX_OK,
                       "Content-Length \"%.*s\"", (int)v.len, v.data);
        }
        if (mx_str_caseeq(name, MX_STR("transfer-encoding")))
            tes++;
    }
    fuzz_check(cls <= 1, "%zu Content-Length fields", cls);
    fuzz_check(!(cls && tes), "Content-Length with Transfer-Encoding");
    shim.has_cl = cls == 1;
}


int
mx_session_on_response_head(mx_session_t *s)
{
    int status = s->status;
    alive(s, "response head");
    if (status >= 100 && status < 200 && status != 101) {
        mx_headers_init(&s->resp_headers); /* 1xx: forwarded, then forgotten */
        s->reason = (mx_str_t){NULL, 0};
        return 1;
    }
    bool tunnel = (status == 101 && s->req_upgrade && s->llmethod != HTTP_CONNECT) ||
                  (s->llmethod == HTTP_CONNECT && status >= 200 && status < 300);
    if (status == 101 && !tunnel) {
        s->u->error = MX_EBADRESP;
        return -1;
    }
    check_head(s);
    shim.responses++;
    fuzz_check(shim.responses == 1, "a second final response");
    s->resp_no_body = s->llmethod == HTTP_HEAD || status == 204 || status == 304 || tunnel;
    s->head_rc = tunnel ? 2 : s->resp_no_body ? 1 : 0;
    if (tunnel)
        s->state = MX_SESS_TUNNEL;
    if (shim.flags & FL_HOLD_HEAD) {
        s->head_busy = 1;
        s->head_async = 1;
        shim.held = true;
        return HPE_PAUSED;
    }
    return s->head_rc;
}


int
mx_session_on_response_body(mx_session_t *s, const char *p, size_t n, bool last)
{
    alive(s, "response body");
    fuzz_check(shim.responses == 1 && s->state == MX_SESS_PROXY, "body before a final head");
    fuzz_check(p != NULL && n > 0, "empty body piece");
    fuzz_check(!s->resp_no_body, "body for a %d response that has none", s->status);
    s->up_bytes_in += n;
    if (shim.has_cl) {
        fuzz_check(s->up_bytes_in <= shim.cl, "body past its Content-Length");
        fuzz_check(last == (s->up_bytes_in == shim.cl), "<last> wrong at %llu of %llu",
                   (unsigned long long)s->up_bytes_in, (unsigned long long)shim.cl);
    }
    if (shim.flags & FL_BODY_STOP) {
        shim_end(s); /* a client gone, a filter failing: the session ends mid-body */
        return 0;
    }
    if (shim.flags & FL_HOLD_BODY) {
        shim.held = true;
        return HPE_PAUSED;
    }
    return 0;
}


void
mx_session_on_response_done(mx_session_t *s)
{
    alive(s, "response done");
    fuzz_check(shim.responses == 1, "response done without a final head");
    if (shim.has_cl && !s->resp_no_body)
        fuzz_check(s->up_bytes_in == shim.cl, "response of %llu bytes for Content-Length %llu",
                   (unsigned long long)s->up_bytes_in, (unsigned long long)shim.cl);
    s->head_busy = 0;
    mx_upconn_t *u = s->u;
    s->u = NULL;
    u->s = NULL;
    mx_upconn_release(u, s->req_done && llhttp_should_keep_alive(&u->parser));
    shim_end(s);
}


void
mx_session_start_tunnel(mx_session_t *s)
{
    alive(s, "tunnel start");
    fuzz_check(s->state == MX_SESS_TUNNEL, "tunnel without a 101 or CONNECT 2xx");
    mx_upconn_tunnel(s->u);
}


void
mx_session_tunnel_up(mx_session_t *s, const char *p, size_t n)
{
    alive(s, "tunnel bytes");
    fuzz_check(s->state == MX_SESS_TUNNEL && p != NULL && n > 0, "tunnel bytes out of place");
    s->resp_body_bytes += n;
}


void
mx_session_tunnel_eof(mx_session_t *s, bool from_upstream)
{
    alive(s, "tunnel end");
    fuzz_check(from_upstream, "tunnel end from the client");
    shim_end(s);
}


void
mx_session_flush(mx_session_t *s)
{
    (void)s;
}


void
mx_session_on_upstream_drain(mx_session_t *s)
{
    (void)s;
}


/* The loop turn after a read: a waiting phase finishes and lets the parser on
 * (as after_response_head_filters() and after_response_chunk() do). */
static void
turn(mx_session_t *s)
{
    if (shim.held && !shim.ended && s->u != NULL) {
        mx_upconn_t *u = s->u;
        shim.held = false;
        if (s->head_async) {
            s->head_async = 0;
            s->head_busy = 0;
            if (s->head_rc >= 1)
                u->parser.flags |= F_SKIPBODY;
            if (s->head_rc == 2)
                u->parser.upgrade = 1;
        }
        mx_upconn_continue(u);
    }
    fuzz_loop_turn();
}


/* The config defaults, as a service and an upstream with no keys get them. */
static mx_conf_upstream_t ups = {.name = "origin"};
static mx_conf_service_t svc;


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const llhttp_method_t methods[] = {HTTP_GET, HTTP_HEAD, HTTP_CONNECT, HTTP_GET};
    fuzz_input_t in;
    if (!fuzz_input_split(&in, data, size))
        return 0;
    uint8_t flags = in.flags;

    mx_conf_upstream_defaults(&ups);
    mx_conf_service_defaults(&svc);
    fuzz_loop_begin(&svc);
    memset(&shim, 0, sizeof(shim));
    shim.flags = flags;
    mx_list_init(&shim.pool);

    mx_session_t *s = mx_alloc(sizeof(*s) + ARENA_FIRST);
    memset(s, 0, sizeof(*s));
    s->w = &fuzz_worker;
    s->id = 1;
    s->state = MX_SESS_CONNECT;
    s->llmethod = (uint8_t)methods[flags & FL_METHOD_MASK];
    s->req_upgrade = (flags & FL_METHOD_MASK) >= 2;
    mx_arena_init(&s->arena, s + 1, ARENA_FIRST);
    mx_headers_init(&s->resp_headers);
    mx_headers_init(&s->resp_trailers);
    mx_addr_t addr = {.kind = MX_ADDR_TCP, .text = "127.0.0.1:1", .port = 1};
    if (flags & FL_UNIX)
        addr = (mx_addr_t){.kind = MX_ADDR_UNIX, .text = "unix:/o.sock", .host = "/o.sock"};

    mx_upconn_acquire(s, &ups, &addr, false);
    fuzz_check(fl.connect_cb != NULL, "no connect started");
    fl.connect_cb(fl.connect_req, 0);

    while (fuzz_input_read_next(&in)) {
        turn(s);
        turn(s); /* a resumed parser may have paused again */
    }
    if (flags & FL_TIMEOUT) {
        fuzz_loop_expire_all();
        turn(s);
    }
    fuzz_loop_read_error(flags & FL_RESET ? UV_ECONNRESET : UV_EOF);
    turn(s);
    if (!shim.ended)
        shim_end(s); /* the client went away: the session closes its upstream side */
    while (!mx_list_empty(&shim.pool)) /* the worker stops: idle connections close */
        mx_upconn_close(mx_container_of(shim.pool.next, mx_upconn_t, node));
    if (getenv("FUZZ_DEBUG") != NULL)
        fprintf(stderr, "--- status %d, %d final heads, error %s, body %llu, tunnel %llu\n",
                s->status, shim.responses, s->err ? mx_strerror(s->err) : "none",
                (unsigned long long)s->up_bytes_in, (unsigned long long)s->resp_body_bytes);
    fuzz_loop_end();
    mx_arena_dispose(&s->arena);
    mx_free(s);
    return 0;
}
