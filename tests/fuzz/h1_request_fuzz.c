/* libFuzzer target: HTTP/1 requests as the downstream codec reads them.
 *
 * src/http/h1_server.c is compiled into this file as is: the bytes go
 * through its own mx_h1_on_accept(), on_alloc() and on_read() callbacks,
 * conn_process(), llhttp in strict mode, the h1_guard checks, the header
 * and URI code, parse_error_status(), and the response framing. Only the
 * socket (fuzz_loop.h) and the session it hands requests to (below) are
 * stand-ins: the session checks what the codec accepted and answers like
 * the real one (error pages as mx_session_respond_error() writes them, a
 * local answer, or an answer when the request is complete, as a proxied
 * one comes; upgrades become tunnels).
 *
 * Input: byte 0 chooses the configuration and the answer mode (FL_*), byte
 * 1's low 3 bits a number k of extra read boundaries, the k bytes after it
 * the gap before each boundary (byte + 1); the rest is what the client
 * sends. After the last byte the client closes, resets, or goes quiet
 * until every timeout fired.
 *
 * Invariants: no sanitizer report, no leak; a request the codec refuses
 * gets a status it is allowed to refuse with (4xx, or 501 / 505); a
 * request it accepts has a valid target, one Host (HTTP/1.1), token field
 * names, values without CR, LF, NUL or edge whitespace, at most one
 * Content-Length and not with Transfer-Encoding, a body as long as its
 * Content-Length, and respects the configured limits; the connection is
 * closed and the generation released at the end. */
#include "fuzz_loop.h"

#include "http/h1_server.c"

enum {
    FL_SMALL_LIMITS = 0x01,
    FL_ALLOW_CONNECT = 0x02,
    FL_MODE_SHIFT = 2, /* 2 bits: answer_mode_t */
    FL_UNIX = 0x10,
    FL_TIMEOUT = 0x20, /* at the end the client goes quiet: timeouts fire */
    FL_RESET = 0x40,   /* at the end the read fails (ECONNRESET), not EOF */
    FL_BODY_LIMIT = 0x80,
};

typedef enum {
    ANSWER_WHEN_DONE = 0, /* a proxied answer, at the loop turn after the request ends */
    ANSWER_AT_HEAD,       /* a script's s:respond() in a request phase */
    ANSWER_EARLY,         /* a proxied answer at the turn after the head, body or not */
    ANSWER_TUNNEL,        /* as WHEN_DONE; upgrades and CONNECT become tunnels */
} answer_mode_t;

#define ARENA_FIRST 1024

static struct {
    answer_mode_t mode;
    mx_session_t *due; /* the session whose answer goes out at the next turn */
    int sessions;      /* open sessions: 0 at the end */
} shim;


static void
shim_finish(mx_session_t *s)
{
    if (shim.due == s)
        shim.due = NULL;
    s->state = MX_SESS_DONE;
    if (s->c != NULL)
        mx_h1_session_done(s->c);
}


mx_session_t *
mx_session_new(mx_h1conn_t *c)
{
    mx_session_t *s = mx_alloc(sizeof(*s) + ARENA_FIRST);
    memset(s, 0, sizeof(*s));
    s->c = c;
    s->w = c->w;
    s->gen = mx_gen_ref(c->gen);
    s->id = ++c->w->req_seq;
    mx_arena_init(&s->arena, s + 1, ARENA_FIRST);
    mx_headers_init(&s->req_headers);
    mx_headers_init(&s->resp_headers);
    mx_headers_init(&s->resp_trailers);
    shim.sessions++;
    return s;
}


void
mx_session_free(mx_session_t *s)
{
    fuzz_check(s->state == MX_SESS_DONE, "session freed in state %d", s->state);
    if (shim.due == s)
        shim.due = NULL;
    mx_arena_dispose(&s->arena);
    mx_gen_unref(s->gen);
    shim.sessions--;
    mx_free(s);
}


/* Sends a response of <status> with a short body, as error pages go out. */
static void
shim_answer(mx_session_t *s, int status)
{
    static const char body[] = "fuzz\n";
    mx_h1conn_t *c = s->c;
    if (c == NULL || s->resp_head_sent) {
        if (c != NULL)
            c->close_after = 1;
        shim_finish(s);
        return;
    }
    if (status >= 400 && status < 500 && status != 404)
        c->close_after = 1;
    mx_headers_init(&s->resp_headers);
    mx_headers_add(&s->resp_headers, &s->arena, MX_STR("Server"), MX_STR("moxy"));
    mx_headers_add(&s->resp_headers, &s->arena, MX_STR("Content-Length"), MX_STR("5"));
    s->status = status;
    s->resp_no_body = s->llmethod == HTTP_HEAD;
    if (s->http_major == 0) {
        s->http_major = 1;
        s->http_minor = 1;
    }
    size_t before = fl.out.len;
    mx_h1_send_head(c, s);
    if (!s->resp_no_body)
        mx_h1_send_body(c, s, body, sizeof(body) - 1);
    mx_h1_flush(c);
    fuzz_check(fl.out.len > before + 12 && memcmp(fl.out.data + before, "HTTP/1.1 ", 9) == 0,
               "no status line written");
    s->resp_done = 1;
    shim_finish(s);
}


/* A 101 (or a 200 to CONNECT), then bytes flow raw. */
static void
shim_tunnel(mx_session_t *s)
{
    mx_h1conn_t *c = s->c;
    bool connect = s->llmethod == HTTP_CONNECT;
    mx_headers_init(&s->resp_headers);
    if (!connect)
        mx_headers_add(&s->resp_headers, &s->arena, MX_STR("Upgrade"),
                       mx_headers_get(&s->req_headers, MX_STR("upgrade")));
    s->status = connect ? 200 : 101;
    s->resp_no_body = 1;
    s->state = MX_SESS_TUNNEL;
    mx_h1_send_head(c, s);
    mx_h1_flush(c);
    mx_h1_tunnel(c);
}


/* Checks what on_headers_complete() let through. */
static void
check_head(mx_session_t *s)
{
    const mx_conf_service_t *svc = s->c->svc;
    mx_target_t t;
    size_t hosts = 0, cls = 0, tes = 0;

    fuzz_check(s->state == MX_SESS_READ_HEAD, "head in state %d", s->state);
    fuzz_check(s->http_major == 1, "HTTP/%d.%d accepted", s->http_major, s->http_minor);
    fuzz_check(mx_target_parse(s->target_raw, s->method, &t) == MX_OK, "bad target accepted");
    fuzz_check(s->target_raw.len <= svc->max_request_line, "request line over the limit");
    fuzz_check(s->head_bytes <= svc->max_header_bytes, "head over the limit");
    fuzz_check(s->req_headers.n <= svc->max_headers, "%zu fields", s->req_headers.n);
    if (s->llmethod == HTTP_CONNECT)
        fuzz_check(svc->allow_connect && t.form == MX_TARGET_AUTHORITY, "CONNECT accepted");
    for (size_t i = 0; i < s->req_headers.n; i++) {
        mx_str_t name = s->req_headers.v[i].name, v = s->req_headers.v[i].value;
        fuzz_check_field(name, v);
        if (mx_str_caseeq(name, MX_STR("host")))
            hosts++;
        if (mx_str_caseeq(name, MX_STR("content-length"))) {
            uint64_t n;
            cls++;
            fuzz_check(mx_http_parse_content_length(v, &n) == MX_OK, "bad Content-Length");
        }
        if (mx_str_caseeq(name, MX_STR("transfer-encoding"))) {
            tes++;
            fuzz_check(mx_str_caseeq(v, MX_STR("chunked")), "Transfer-Encoding %.*s", (int)v.len,
                       v.data);
        }
    }
    fuzz_check(s->http_minor == 0 ? hosts <= 1 : hosts == 1, "%zu Host fields", hosts);
    fuzz_check(cls <= 1, "%zu Content-Length fields", cls);
    fuzz_check(!(cls && tes), "Content-Length with Transfer-Encoding");
    fuzz_check((tes > 0) == s->req_chunked, "chunked flag disagrees with the fields");
    if (svc->max_body_bytes > 0 && cls > 0 && !s->req_chunked)
        fuzz_check(s->c->parser.content_length <= svc->max_body_bytes, "body over the limit");
}


void
mx_session_on_request_head(mx_session_t *s)
{
    check_head(s);
    s->state = MX_SESS_PHASES;
    s->action = "fuzzing";
    if (shim.mode == ANSWER_AT_HEAD)
        shim_answer(s, 200);
    else if (shim.mode == ANSWER_EARLY)
        shim.due = s;
}


void
mx_session_on_request_body(mx_session_t *s, const char *p, size_t n)
{
    fuzz_check(n > 0 && p != NULL, "empty body piece");
    fuzz_check(s->state != MX_SESS_READ_HEAD, "body before the head");
    s->up_bytes_out += n;
}


void
mx_session_on_request_done(mx_session_t *s)
{
    fuzz_check(s->state == MX_SESS_PHASES, "request done in state %d", s->state);
    if (!s->req_chunked && s->req_has_body) {
        mx_str_t cl = mx_headers_get(&s->req_headers, MX_STR("content-length"));
        uint64_t n = 0;
        fuzz_check(mx_http_parse_content_length(cl, &n) == MX_OK && n == s->up_bytes_out,
                   "body of %llu bytes for Content-Length %.*s",
                   (unsigned long long)s->up_bytes_out, (int)cl.len, cl.data);
    }
    shim.due = s;
}


void
mx_session_abort(mx_session_t *s, int err)
{
    if (s->state == MX_SESS_DONE)
        return;
    if (s->err == 0)
        s->err = err;
    shim_finish(s);
}


void
mx_session_respond_error(mx_session_t *s, int status, int err)
{
    if (err == MX_EBADREQ)
        fuzz_check((status >= 400 && status < 500) || status == 501 || status == 505,
                   "request refused with %d", status);
    if (err == MX_ETIMEOUT_HDR)
        fuzz_check(status == 408, "header timeout answered %d", status);
    if (s->state == MX_SESS_DONE)
        return;
    if (s->err == 0)
        s->err = err;
    shim_answer(s, status);
}


void
mx_session_tunnel_down(mx_session_t *s, const char *p, size_t n)
{
    fuzz_check(s->state == MX_SESS_TUNNEL, "tunnel bytes in state %d", s->state);
    fuzz_check(n > 0 && p != NULL, "empty tunnel piece");
    s->up_bytes_out += n;
}


void
mx_session_tunnel_eof(mx_session_t *s, bool from_upstream)
{
    (void)from_upstream;
    if (s->c != NULL)
        s->c->close_after = 1;
    shim_finish(s);
}


void
mx_session_on_downstream_drain(mx_session_t *s)
{
    (void)s;
}


/* The loop turn after a read: a due answer goes out (the upstream's). */
static void
turn(void)
{
    mx_session_t *s = shim.due;
    if (s != NULL && s->state != MX_SESS_DONE) {
        shim.due = NULL;
        if (shim.mode == ANSWER_TUNNEL && s->req_upgrade && s->req_done && s->c != NULL)
            shim_tunnel(s);
        else
            shim_answer(s, 200);
    }
    fuzz_loop_turn();
}


/* Limits small enough for short inputs to cross them. */
static void
small_limits(mx_conf_service_t *svc)
{
    svc->max_header_bytes = 200;
    svc->max_headers = 4;
    svc->max_request_line = 48;
    svc->client_header_timeout = 1;
    svc->client_body_timeout = 2;
    svc->keepalive_timeout = 3;
    svc->send_timeout = 4;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_input_t in;
    if (!fuzz_input_split(&in, data, size))
        return 0;
    uint8_t flags = in.flags;

    mx_conf_service_t svc = {0};
    mx_conf_service_defaults(&svc);
    if (flags & FL_SMALL_LIMITS)
        small_limits(&svc);
    svc.allow_connect = (flags & FL_ALLOW_CONNECT) != 0;
    svc.max_body_bytes = flags & FL_BODY_LIMIT ? 10 : 0;
    fuzz_loop_begin(&svc);
    memset(&shim, 0, sizeof(shim));
    shim.mode = (answer_mode_t)((flags >> FL_MODE_SHIFT) & 3);
    fl.peer_port = (uint16_t)(40000 + size);

    mx_accept_t a = {.w = &fuzz_worker, .index = 0, .is_unix = (flags & FL_UNIX) != 0};
    uv_stream_t server;
    memset(&server, 0, sizeof(server));
    server.data = &a;
    mx_h1_on_accept(&server, 0);
    fuzz_check(fuzz_worker.nconns == 1, "no connection accepted");

    /* The reads, split at the chosen boundaries, with a loop turn after each. */
    while (fuzz_input_read_next(&in)) {
        turn();
        turn(); /* an answer due may have let the next pipelined request through */
    }
    if (flags & FL_TIMEOUT) {
        fuzz_loop_expire_all();
        turn();
    }
    fuzz_loop_read_error(flags & FL_RESET ? UV_ECONNRESET : UV_EOF);
    for (int i = 0; i < 4 && shim.due != NULL; i++)
        turn();
    if (fuzz_worker.nconns > 0) {
        /* Still open (a tunnel, a request waiting on its answer): the worker stops. */
        mx_h1conn_t *c = mx_container_of(fuzz_worker.conns.next, mx_h1conn_t, node);
        mx_h1_close(c);
    }
    turn();
    fuzz_check(fuzz_worker.nconns == 0, "connection not freed");
    fuzz_check(shim.sessions == 0, "%d sessions not freed", shim.sessions);
    mx_h1_worker_exit(&fuzz_worker);
    fuzz_loop_end();
    return 0;
}
