/* The ABI Lua reaches through LuaJIT FFI (lua/moxy/live.lua declares the
 * same prototypes; `nm -D moxy | grep ' moxy_'` lists them). Every call
 * checks the phase against its allowed mask and returns a code; on failure
 * moxy_last_error() tells why, and the Lua wrapper raises it. Strings go
 * out as views into request memory: Lua copies them only when asked. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/errors.h"
#include "core/log.h"
#include "core/stats.h"
#include "http/headers.h"
#include "lua/task.h"
#include "lua/vm.h"
#include "net/addr.h"
#include "proxy/session.h"
#include "upstream/group.h"

#define MX_ABI_VERSION 1
#define PH(p)          (1u << (p))

/* Which phases may call what. */
#define REQ_SET                                                                                    \
    (PH(MX_PH_EARLY_REQUEST_FILTER) | PH(MX_PH_REQUEST_FILTER) | PH(MX_PH_UPSTREAM_PEER) |        \
     PH(MX_PH_UPSTREAM_REQUEST_FILTER) | PH(MX_PH_PROXY_UPSTREAM_FILTER))
#define RESPOND  REQ_SET
/* Waiting (moxy.sleep...): every phase of a request (each runs in its coroutine). */
#define WAIT     (((1u << MX_PH_RELEASE) - 1) & ~PH(MX_PH_INIT))
#define REQ_BODY REQ_SET /* s.req:body(), body_chunks(): the request phases */
#define RESP_SET (PH(MX_PH_RESPONSE_FILTER) | PH(MX_PH_UPSTREAM_RESPONSE_FILTER))
#define PEER     PH(MX_PH_UPSTREAM_PEER)
#define RESP_GET                                                                                   \
    (PH(MX_PH_RESPONSE_FILTER) | PH(MX_PH_LOGGING) | PH(MX_PH_FAIL_TO_PROXY) |                   \
     PH(MX_PH_RESPONSE_BODY_FILTER) | PH(MX_PH_UPSTREAM_RESPONSE_FILTER) |                    \
     PH(MX_PH_RESPONSE_TRAILER_FILTER) | PH(MX_PH_UPSTREAM_RESPONSE_BODY_FILTER))

static __thread char last_error[256];

int moxy_abi_version(void);
const char *moxy_phase_name(int phase);
int moxy_last_error(char *buf, size_t len);
int moxy_req_str(mx_session_t *s, int what, mx_str_t *out);
int moxy_header_get(mx_session_t *s, int resp, const char *n, size_t nl, mx_str_t *out);
int moxy_header_count(mx_session_t *s, int resp);
int moxy_header_at(mx_session_t *s, int resp, int i, mx_str_t *name, mx_str_t *value);
int moxy_header_set(mx_session_t *s, int resp, int mode, const char *n, size_t nl, const char *v,
                    size_t vl);
int moxy_req_set(mx_session_t *s, int what, const char *v, size_t vl);
int moxy_resp_status(mx_session_t *s);
int moxy_resp_set_status(mx_session_t *s, int status);
int moxy_respond(mx_session_t *s, int status, const char *body, size_t len);
int moxy_responded(mx_session_t *s);
int moxy_resp_source(mx_session_t *s);
int moxy_conn_str(mx_session_t *s, int what, mx_str_t *out);
int moxy_conn_num(mx_session_t *s, int what);
double moxy_session_num(mx_session_t *s, int what);
int moxy_session_phase(mx_session_t *s);
int moxy_set_peer(mx_session_t *s, const char *addr, size_t len);
int moxy_set_upstream(mx_session_t *s, const char *name, size_t len);
int moxy_session_error(mx_session_t *s, char *buf, size_t len);
int moxy_body_chunk(mx_session_t *s, mx_str_t *out);
int moxy_body_replace(mx_session_t *s, const char *p, size_t len);
int moxy_fail_status(mx_session_t *s, int status);
int moxy_set_retry(mx_session_t *s, int retry);
int moxy_peer_str(mx_session_t *s, mx_str_t *out);
int moxy_no_proxy(mx_session_t *s);
int moxy_upstream_reused(mx_session_t *s);
int moxy_timer_start(double id, double seconds, int every);
int moxy_timer_cancel(double id);
void moxy_lua_io(mx_lua_io_t *io);
int moxy_log_field(mx_session_t *s, const char *k, size_t kl, const char *v, size_t vl);
int moxy_req_body(mx_session_t *s, size_t max, mx_str_t *out);
double moxy_now(void);
int moxy_set_peer_timeouts(mx_session_t *s, double connect, double read, double write,
                           double idle);
int moxy_req_set_body(mx_session_t *s, const char *p, size_t len);
int moxy_req_body_chunk(mx_session_t *s, size_t pos, mx_str_t *out);
int moxy_downstream_reused(mx_session_t *s);
double moxy_upstream_num(mx_session_t *s, int what);
int moxy_resp_read_body(mx_session_t *s, size_t max, mx_str_t *out);
int moxy_resp_set_body(mx_session_t *s, const char *p, size_t len);
void moxy_log(int level, const char *msg, size_t len);
int moxy_worker_id(void);
int moxy_worker_count(void);
int moxy_stats(double *out, int n);
int moxy_worker_stats(double *out, int n);


static int
fail(int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    return rc;
}


/* MX_OK when the current phase is in <mask>, else MX_EBADPHASE with the
 * allowed phases in the last error ("allowed: request_filter, ..."). */
static int
allowed(const mx_session_t *s, uint32_t mask)
{
    if (s->lua_phase >= 0 && (mask & PH(s->lua_phase)))
        return MX_OK;
    int n = snprintf(last_error, sizeof(last_error), "in %s (allowed: ", mx_phase_name(s->lua_phase));
    const char *sep = "";
    for (int p = 0; p < MX_PH_MAX && n < (int)sizeof(last_error) - 40; p++) {
        if (mask & PH(p)) {
            n += snprintf(last_error + n, sizeof(last_error) - n, "%s%s", sep, mx_phase_name(p));
            sep = ", ";
        }
    }
    snprintf(last_error + n, sizeof(last_error) - n, ")");
    return MX_EBADPHASE;
}


int
moxy_abi_version(void)
{
    return MX_ABI_VERSION;
}


/* Lets moxy.live check that its phase ids are the binary's. */
const char *
moxy_phase_name(int phase)
{
    return mx_phase_name(phase);
}


int
moxy_last_error(char *buf, size_t len)
{
    return snprintf(buf, len, "%s", last_error);
}


int
moxy_req_str(mx_session_t *s, int what, mx_str_t *out)
{
    static const char *versions[] = {"1.0", "1.1"};
    switch (what) {
    case 0:
        *out = s->method;
        return MX_OK;
    case 1:
        if (s->target.form == MX_TARGET_ORIGIN || s->target.form == MX_TARGET_ABSOLUTE)
            *out = s->target.path_and_query;
        else
            *out = s->target_raw;
        return MX_OK;
    case 2:
        out->data = versions[s->http_minor >= 1];
        out->len = 3;
        return MX_OK;
    case 3:
        *out = MX_STR("http");
        return MX_OK;
    }
    return fail(MX_EBADARG, "unknown request field %d", what);
}


/* <which>: 0 the request, 1 the response, 2 the response's trailers. */
static mx_headers_t *
headers_of(mx_session_t *s, int which)
{
    return which == 2 ? &s->resp_trailers : which ? &s->resp_headers : &s->req_headers;
}


#define TRAILERS     PH(MX_PH_RESPONSE_TRAILER_FILTER)
#define BODY_FILTERS                                                                               \
    (PH(MX_PH_RESPONSE_BODY_FILTER) | PH(MX_PH_UPSTREAM_RESPONSE_BODY_FILTER) |                   \
     PH(MX_PH_REQUEST_BODY_FILTER))


int
moxy_header_get(mx_session_t *s, int resp, const char *n, size_t nl, mx_str_t *out)
{
    if (resp == 2 ? allowed(s, TRAILERS) != MX_OK
                  : resp && !s->local_status && allowed(s, RESP_GET) != MX_OK)
        return MX_EBADPHASE;
    mx_headers_t *h = headers_of(s, resp);
    for (ssize_t i = mx_headers_find(h, (mx_str_t){n, nl}, 0); i >= 0;
         i = mx_headers_find(h, (mx_str_t){n, nl}, (size_t)i + 1)) {
        if (!(h->v[i].flags & MX_HDR_HOP)) {
            *out = h->v[i].value;
            if (out->data == NULL)
                *out = MX_STR("");
            return MX_OK;
        }
    }
    return MX_DECLINED;
}


/* Counts and indexes skip hop-by-hop fields: scripts see what is forwarded. */
int
moxy_header_count(mx_session_t *s, int resp)
{
    if (resp == 2 ? allowed(s, TRAILERS) != MX_OK
                  : resp && !s->local_status && allowed(s, RESP_GET) != MX_OK)
        return MX_EBADPHASE;
    mx_headers_t *h = headers_of(s, resp);
    int n = 0;
    for (size_t i = 0; i < h->n; i++)
        n += !(h->v[i].flags & MX_HDR_HOP);
    return n;
}


int
moxy_header_at(mx_session_t *s, int resp, int i, mx_str_t *name, mx_str_t *value)
{
    mx_headers_t *h = headers_of(s, resp);
    for (size_t k = 0; k < h->n; k++) {
        if (h->v[k].flags & MX_HDR_HOP)
            continue;
        if (i-- == 0) {
            *name = h->v[k].name;
            *value = h->v[k].value.data ? h->v[k].value : MX_STR("");
            return MX_OK;
        }
    }
    return MX_DECLINED;
}


static bool
valid_field(const char *p, size_t n, bool name)
{
    if (name)
        return mx_h1_guard_name((mx_str_t){p, n}) == 0; /* a token has no CR, LF, NUL */
    if (n > 48) {
        /* memchr scans a vector at a time: three of them beat a byte loop on long values. */
        return memchr(p, '\n', n) == NULL && memchr(p, '\r', n) == NULL &&
               memchr(p, '\0', n) == NULL;
    }
    /* A short one (most are) costs less in one pass than in three calls. */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c <= '\r' && (c == '\0' || c == '\n' || c == '\r'))
            return false;
    }
    return true;
}


/* True for the fields moxy manages itself (message framing and connection handling),
 * which scripts may not set: told apart by length first, as no other name pays a
 * comparison. */
static bool
managed_field(mx_str_t n)
{
    switch (n.len) {
    case 2:
        return mx_str_caseeq(n, MX_STR("te"));
    case 7:
        return mx_str_caseeq(n, MX_STR("upgrade")) || mx_str_caseeq(n, MX_STR("trailer"));
    case 10:
        return mx_str_caseeq(n, MX_STR("connection")) || mx_str_caseeq(n, MX_STR("keep-alive"));
    case 14:
        return mx_str_caseeq(n, MX_STR("content-length"));
    case 16:
        return mx_str_caseeq(n, MX_STR("proxy-connection"));
    case 17:
        return mx_str_caseeq(n, MX_STR("transfer-encoding"));
    }
    return false;
}


/* <mode> 0 set (replace every field of that name), 1 add, 2 remove. */
int
moxy_header_set(mx_session_t *s, int resp, int mode, const char *n, size_t nl, const char *v,
                size_t vl)
{
    uint32_t mask = resp == 2 ? TRAILERS : resp ? RESP_SET : REQ_SET;
    if (!(resp && s->local_status && (REQ_SET & PH(s->lua_phase))) && allowed(s, mask) != MX_OK)
        return MX_EBADPHASE;
    if (!valid_field(n, nl, true))
        return fail(MX_EBADARG, "invalid header name");
    if (mode != 2 && !valid_field(v, vl, false))
        return fail(MX_EBADARG, "header value contains CR, LF or NUL");
    if (managed_field((mx_str_t){n, nl}))
        return fail(MX_EBADARG,
                    "%.*s is managed by moxy (message framing and connection handling)",
                    (int)nl, n);
    mx_headers_t *h = headers_of(s, resp);
    mx_str_t name = {mx_arena_strndup(&s->arena, n, nl), nl};
    if (mode == 2) {
        mx_headers_remove(h, name);
        return MX_OK;
    }
    mx_str_t value = {mx_arena_strndup(&s->arena, v, vl), vl};
    if (mode == 0)
        mx_headers_set(h, &s->arena, name, value);
    else
        mx_headers_add(h, &s->arena, name, value);
    return MX_OK;
}


int
moxy_req_set(mx_session_t *s, int what, const char *v, size_t vl)
{
    if (allowed(s, REQ_SET) != MX_OK)
        return MX_EBADPHASE;
    if (vl == 0 || !valid_field(v, vl, what == 0))
        return fail(MX_EBADARG, what == 0 ? "invalid method" : "invalid uri");
    char *copy = mx_arena_strndup(&s->arena, v, vl);
    if (what == 0) {
        /* Keep llhttp's id in step: HEAD has no response body, idempotency
         * decides retries. A method llhttp does not name counts as POST. */
        static const struct {
            const char *name;
            uint8_t id;
        } ids[] = {{"GET", HTTP_GET},         {"HEAD", HTTP_HEAD},   {"POST", HTTP_POST},
                   {"PUT", HTTP_PUT},         {"DELETE", HTTP_DELETE}, {"OPTIONS", HTTP_OPTIONS},
                   {"TRACE", HTTP_TRACE},     {"PATCH", HTTP_PATCH}};
        if (vl == 7 && memcmp(copy, "CONNECT", 7) == 0)
            return fail(MX_EBADARG, "the method cannot become CONNECT");
        s->method = (mx_str_t){copy, vl};
        s->llmethod = HTTP_POST;
        for (size_t i = 0; i < mx_countof(ids); i++)
            if (strlen(ids[i].name) == vl && memcmp(copy, ids[i].name, vl) == 0)
                s->llmethod = ids[i].id;
        return MX_OK;
    }
    if (copy[0] != '/')
        return fail(MX_EBADARG, "uri must start with '/'");
    for (size_t i = 0; i < vl; i++)
        if ((unsigned char)copy[i] <= 0x20 || copy[i] == 0x7f || copy[i] == '#')
            return fail(MX_EBADARG, "uri contains a space, control character or '#'");
    s->target.form = MX_TARGET_ORIGIN;
    s->target.path_and_query = (mx_str_t){copy, vl};
    return MX_OK;
}


int
moxy_resp_status(mx_session_t *s)
{
    if (s->local_status && !(RESP_GET & PH(s->lua_phase)))
        return s->local_status;
    if (allowed(s, RESP_GET) != MX_OK)
        return MX_EBADPHASE;
    return s->status;
}


int
moxy_resp_set_status(mx_session_t *s, int status)
{
    if (allowed(s, RESP_SET) != MX_OK)
        return MX_EBADPHASE;
    if (status < 200 || status > 599)
        return fail(MX_EBADARG, "status must be 200..599");
    s->status = status;
    s->reason = (mx_str_t){NULL, 0};
    return MX_OK;
}


int
moxy_respond(mx_session_t *s, int status, const char *body, size_t len)
{
    if (allowed(s, RESPOND) != MX_OK)
        return MX_EBADPHASE;
    if (status < 200 || status > 599)
        return fail(MX_EBADARG, "status must be 200..599");
    if (s->local_status)
        return fail(MX_EBADARG, "the request was already answered");
    s->local_status = status;
    s->local_body = (mx_str_t){body ? mx_arena_strndup(&s->arena, body, len) : NULL, len};
    mx_headers_init(&s->resp_headers);
    return MX_OK;
}


int
moxy_responded(mx_session_t *s)
{
    return s->local_status != 0;
}


int
moxy_resp_source(mx_session_t *s)
{
    if (s->local_status)
        return 1;
    return s->err != 0 ? 2 : 0;
}


int
moxy_conn_str(mx_session_t *s, int what, mx_str_t *out)
{
    static __thread char buf[80];
    if (s->c == NULL && what == 0 && s->client_copy[0]) { /* logging after the connection */
        *out = (mx_str_t){s->client_copy, strlen(s->client_copy)};
        return MX_OK;
    }
    if (s->c == NULL)
        return MX_DECLINED;
    if (what == 0) {
        *out = (mx_str_t){s->c->client_addr, strlen(s->c->client_addr)};
        return MX_OK;
    }
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (s->c->h.handle.type != UV_TCP ||
        uv_tcp_getsockname(&s->c->h.tcp, (struct sockaddr *)&ss, &len) != 0)
        return MX_DECLINED;
    mx_addr_format((struct sockaddr *)&ss, buf, sizeof(buf));
    char *colon = strrchr(buf, ':');
    if (colon != NULL)
        *colon = '\0';
    const char *h = buf[0] == '[' ? buf + 1 : buf;
    size_t hl = strlen(h);
    if (buf[0] == '[' && hl > 0)
        hl--;
    *out = (mx_str_t){h, hl};
    return MX_OK;
}


int
moxy_conn_num(mx_session_t *s, int what)
{
    if (s->c == NULL)
        return what == 0 ? s->client_port_copy : 0;
    if (what == 0)
        return s->c->client_port;
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (s->c->h.handle.type != UV_TCP ||
        uv_tcp_getsockname(&s->c->h.tcp, (struct sockaddr *)&ss, &len) != 0)
        return 0;
    return ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                          : ((struct sockaddr_in *)&ss)->sin_port);
}


double
moxy_session_num(mx_session_t *s, int what)
{
    if (what == 0)
        return (double)s->id;
    return (double)s->start_ms / 1000.0;
}


int
moxy_session_phase(mx_session_t *s)
{
    return s->lua_phase;
}


/* The chunk the body filter is called with; returns 1 at the end of the
 * body (eos), 0 before. */
int
moxy_body_chunk(mx_session_t *s, mx_str_t *out)
{
    if (allowed(s, BODY_FILTERS) != MX_OK)
        return MX_EBADPHASE;
    *out = s->body_chunk.data ? s->body_chunk : MX_STR("");
    return s->body_eos;
}


int
moxy_body_replace(mx_session_t *s, const char *p, size_t len)
{
    if (allowed(s, BODY_FILTERS) != MX_OK)
        return MX_EBADPHASE;
    mx_buf_reset(&s->body_repl);
    mx_buf_append(&s->body_repl, p, len);
    s->body_replaced = 1;
    return MX_OK;
}


/* What went wrong, for logging(s, err) and fail_to_proxy(s, err): the Lua
 * error's first line, "upstream: <cause>", or "" when nothing did. */
int
moxy_session_error(mx_session_t *s, char *buf, size_t len)
{
    if (s->err == 0)
        return 0;
    if (s->err == MX_ELUA && s->lua_error.len > 0)
        return snprintf(buf, len, "%.*s", (int)s->lua_error.len, s->lua_error.data);
    if (s->err == MX_ECLIENT)
        return snprintf(buf, len, "client: closed connection");
    if (s->err == MX_EBADREQ)
        return snprintf(buf, len, "client: bad request");
    if (s->err == MX_ENOPROXY)
        return snprintf(buf, len, "%s", mx_strerror(s->err));
    const char *cause = s->err == UV_ETIMEDOUT ? "timeout" : mx_strerror(s->err);
    return snprintf(buf, len, "upstream: %s", cause);
}


int
moxy_fail_status(mx_session_t *s, int status)
{
    if (allowed(s, PH(MX_PH_FAIL_TO_PROXY)) != MX_OK)
        return MX_EBADPHASE;
    if (status < 400 || status > 599)
        return fail(MX_EBADARG, "fail_to_proxy must return a status in 400..599, got %d", status);
    s->fail_status = status;
    return MX_OK;
}


/* s.req:body{max}: MX_OK with the whole body, MX_ETOOLARGE past <max>,
 * MX_AGAIN when it has not all arrived (the wrapper yields; the session
 * resumes it when it has). */
int
moxy_req_body(mx_session_t *s, size_t max, mx_str_t *out)
{
    if (allowed(s, REQ_BODY) != MX_OK)
        return MX_EBADPHASE;
    if (s->body_buf.len > max)
        return MX_ETOOLARGE;
    if (s->state == MX_SESS_DONE && !s->req_done && s->req_has_body)
        return MX_ECLIENT; /* the request ended (client gone) before its body */
    if (s->req_done || !s->req_has_body) {
        *out = (mx_str_t){s->body_buf.data ? s->body_buf.data : "", s->body_buf.len};
        return MX_OK;
    }
    if (s->expect_continue && !s->sent_continue && s->c != NULL) {
        mx_h1_send_continue(s->c); /* the client waits for it before sending the body */
        s->sent_continue = 1;
    }
    s->body_waiting = 1;
    s->body_max = max;
    if (s->c != NULL)
        mx_h1_read_pause(s->c, false);
    return MX_AGAIN;
}


/* s:log_field(k, v): appended to the request's access-log line as k="v"
 * (quotes, backslashes and control bytes escaped; at most 2 KiB in all). */
int
moxy_log_field(mx_session_t *s, const char *k, size_t kl, const char *v, size_t vl)
{
    if (mx_h1_guard_name((mx_str_t){k, kl}) != 0)
        return fail(MX_EBADARG, "log field names are tokens");
    if (s->log_fields.len + kl + vl > 2048)
        return fail(MX_EBADARG, "log fields over 2 KiB");
    mx_buf_t *b = &s->log_fields;
    mx_buf_append(b, " ", 1);
    mx_buf_append(b, k, kl);
    mx_buf_append(b, "=\"", 2);
    for (size_t i = 0; i < vl; i++) {
        unsigned char ch = (unsigned char)v[i];
        if (ch == '"' || ch == '\\')
            mx_buf_printf(b, "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f)
            mx_buf_printf(b, "\\x%02x", ch);
        else
            mx_buf_append(b, v + i, 1);
    }
    mx_buf_append(b, "\"", 1);
    return MX_OK;
}


/* The request coroutine's body registers its io block, an FFI struct it owns and its
 * session objects hold (vm.h says what C and the body pass through it). */
void
moxy_lua_io(mx_lua_io_t *io)
{
    mx_session_t *s = mx_lua_cur_session;
    if (s == NULL || s->lua_co == NULL)
        return;
    mx_lua_attach(s, io);
}


int
moxy_timer_start(double id, double seconds, int every)
{
    if (!(seconds >= 0) || seconds > 31536000.0)
        return fail(MX_EBADARG, "seconds must be 0..31536000");
    int rc = mx_vm_timer_start(id, seconds, every != 0);
    return rc == MX_OK ? MX_OK : fail(rc, "no Lua VM on this thread");
}


int
moxy_timer_cancel(double id)
{
    return mx_vm_timer_cancel(id);
}


int
moxy_upstream_reused(mx_session_t *s)
{
    return s->reused;
}


/* proxy_upstream_filter returned false: the request is not proxied. */
int
moxy_no_proxy(mx_session_t *s)
{
    if (allowed(s, PH(MX_PH_PROXY_UPSTREAM_FILTER)) != MX_OK)
        return MX_EBADPHASE;
    s->err = MX_ENOPROXY;
    return MX_OK;
}


/* The peer the request went (or tried to go) to, as "host:port" text. */
int
moxy_peer_str(mx_session_t *s, mx_str_t *out)
{
    if (s->peer == NULL)
        return MX_DECLINED;
    *out = (mx_str_t){s->peer->text, strlen(s->peer->text)};
    return MX_OK;
}


int
moxy_set_retry(mx_session_t *s, int retry)
{
    if (allowed(s, PH(MX_PH_FAIL_TO_CONNECT) | PH(MX_PH_ERROR_WHILE_PROXY)) != MX_OK)
        return MX_EBADPHASE;
    s->retry_requested = retry != 0;
    return MX_OK;
}


/* upstream_peer's answer: "host:port" (numeric: no blocking DNS on a
 * worker) or "unix:/path". */
int
moxy_set_peer(mx_session_t *s, const char *addr, size_t len)
{
    if (allowed(s, PEER) != MX_OK)
        return MX_EBADPHASE;
    char text[256], err[160];
    if (len == 0 || len >= sizeof(text))
        return fail(MX_EBADARG, "invalid peer address");
    memcpy(text, addr, len);
    text[len] = '\0';
    s->peer_resolve = 0;
    if (strncmp(text, "unix:", 5) != 0) {
        /* A host name is resolved later by the session (uv_getaddrinfo, off the
         * loop): mx_addr_parse would block the worker in getaddrinfo. */
        const char *colon = strrchr(text, ':');
        bool numeric = colon != NULL;
        for (const char *p = text; colon != NULL && p < colon; p++)
            if (!(*p == '.' || *p == ':' || *p == '[' || *p == ']' || (*p >= '0' && *p <= '9') ||
                  (*p >= 'a' && *p <= 'f') || (*p >= 'A' && *p <= 'F')))
                numeric = false;
        if (colon != NULL && text[0] != '[' && !numeric) {
            size_t hl = (size_t)(colon - text);
            char *end;
            long port = strtol(colon + 1, &end, 10);
            if (hl == 0 || hl >= sizeof(s->peer_addr.host) || len >= sizeof(s->peer_addr.text) ||
                *end != '\0' || port < 1 || port > 65535 || colon[1] == '\0')
                return fail(MX_EBADARG, "peer \"%s\": expected host:port with a port 1..65535",
                            text);
            for (size_t i = 0; i < hl; i++)
                if (!(text[i] == '.' || text[i] == '-' || text[i] == '_' ||
                      (text[i] >= '0' && text[i] <= '9') || (text[i] >= 'a' && text[i] <= 'z') ||
                      (text[i] >= 'A' && text[i] <= 'Z')))
                    return fail(MX_EBADARG, "peer \"%s\": invalid host name", text);
            memset(&s->peer_addr, 0, sizeof(s->peer_addr));
            s->peer_addr.kind = MX_ADDR_TCP;
            memcpy(s->peer_addr.text, text, len + 1);
            memcpy(s->peer_addr.host, text, hl);
            s->peer_addr.host[hl] = '\0';
            s->peer_resolve = 1;
            s->peer_set = 1;
            return MX_OK;
        }
    }
    if (mx_addr_parse(text, &s->peer_addr, err, sizeof(err)) != MX_OK)
        return fail(MX_EBADARG, "peer \"%s\": %s", text, err);
    s->peer_set = 1;
    return MX_OK;
}


int
moxy_set_upstream(mx_session_t *s, const char *name, size_t len)
{
    if (allowed(s, PEER) != MX_OK)
        return MX_EBADPHASE;
    mx_group_t *g = mx_groups_find(s->gen->conf->groups, name, len); /* its generation's */
    if (g != NULL) {
        mx_group_ref(g);
        mx_session_lb_release(s);
        s->group = g;
        s->pick_index = -1;
        s->pick_key = (mx_str_t){NULL, 0};
        s->ups = mx_group_conf(g);
        return MX_OK;
    }
    return fail(MX_EBADARG, "no upstream group named \"%.*s\" in the config", (int)len, name);
}


double
moxy_now(void)
{
    if (mx_current_worker != NULL && mx_current_worker->epoch_ms != 0)
        return (double)(uv_now(&mx_current_worker->loop) + mx_current_worker->epoch_ms) / 1000.0;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}


/* moxy.peer{ connect_timeout, read_timeout, write_timeout, idle_timeout }
 * (seconds; < 0 keeps the group's or the default). */
int
moxy_set_peer_timeouts(mx_session_t *s, double connect, double read, double write, double idle)
{
    if (allowed(s, PEER) != MX_OK)
        return MX_EBADPHASE;
    double v[4] = {connect, read, write, idle};
    for (int i = 0; i < 4; i++)
        if (v[i] > 86400.0 || v[i] != v[i])
            return fail(MX_EBADARG, "peer timeouts must be 0..86400 seconds");
    memcpy(s->peer_timeout, v, sizeof(v));
    s->peer_timeouts = 1;
    return MX_OK;
}


/* s.req:set_body(str): the body sent upstream instead of the client's, with
 * its Content-Length. Before proxying only. */
int
moxy_req_set_body(mx_session_t *s, const char *p, size_t len)
{
    if (allowed(s, REQ_SET) != MX_OK)
        return MX_EBADPHASE;
    s->set_body = (mx_str_t){len ? mx_arena_strndup(&s->arena, p, len) : "", len};
    s->body_set = 1;
    return MX_OK;
}


/* s.req:body_chunks(): the body from byte <pos> as it has arrived. MX_OK with
 * what is there, MX_DECLINED at the end, MX_AGAIN to wait for more. */
int
moxy_req_body_chunk(mx_session_t *s, size_t pos, mx_str_t *out)
{
    if (allowed(s, REQ_BODY) != MX_OK)
        return MX_EBADPHASE;
    if (pos < s->body_buf.len) {
        *out = (mx_str_t){s->body_buf.data + pos, s->body_buf.len - pos};
        return MX_OK;
    }
    if (s->req_done || !s->req_has_body)
        return MX_DECLINED;
    if (s->state == MX_SESS_DONE)
        return MX_ECLIENT; /* the request ended (client gone) before its body */
    if (s->expect_continue && !s->sent_continue && s->c != NULL) {
        mx_h1_send_continue(s->c);
        s->sent_continue = 1;
    }
    s->body_waiting = 1;
    s->body_max = pos; /* wake at the first byte past it */
    if (s->c != NULL)
        mx_h1_read_pause(s->c, false);
    return MX_AGAIN;
}


/* s.resp:read_body{max}: the whole response body (buffered mode). */
int
moxy_resp_read_body(mx_session_t *s, size_t max, mx_str_t *out)
{
    if (allowed(s, RESP_SET) != MX_OK)
        return MX_EBADPHASE;
    int rc = mx_session_read_resp_body(s, max, out);
    if (rc == MX_EBADARG)
        return fail(rc, "the response head was already sent");
    return rc;
}


/* s.resp:set_body(str): the body sent downstream instead, with its length. */
int
moxy_resp_set_body(mx_session_t *s, const char *p, size_t len)
{
    if (allowed(s, RESP_SET) != MX_OK)
        return MX_EBADPHASE;
    if (s->resp_head_sent)
        return fail(MX_EBADARG, "the response head was already sent");
    if (s->in_error_page && !s->local_status)
        return fail(MX_EBADARG, "moxy's error page cannot be replaced (use fail_to_proxy)");
    if (s->head_rc == 2 && !s->local_status)
        return fail(MX_EBADARG, "a protocol switch (101) has no body");
    mx_str_t body = {len ? mx_arena_strndup(&s->arena, p, len) : "", len};
    if (s->local_status) {
        s->local_body = body;
        if (s->status != 204 && s->status != 304) {
            char n[24];
            int ln = snprintf(n, sizeof(n), "%zu", len);
            mx_headers_set(&s->resp_headers, &s->arena, MX_STR("Content-Length"),
                           (mx_str_t){mx_arena_strndup(&s->arena, n, ln), (size_t)ln});
        }
        return MX_OK;
    }
    s->resp_set_body = body;
    s->resp_body_set = 1;
    return MX_OK;
}


int
moxy_downstream_reused(mx_session_t *s)
{
    return s->c != NULL && s->c->nrequests > 0;
}


/* s:upstream(): 0 status, 1 tries, 2 reused, 3 connect_ms, 4 header_ms,
 * 5 bytes_in (response body), 6 bytes_out (request body); -1 when unknown. */
double
moxy_upstream_num(mx_session_t *s, int what)
{
    switch (what) {
    case 0:
        return s->peer != NULL && s->status >= 200 && !s->local_status && !s->in_error_page
                   ? s->status
                   : -1;
    case 1:
        return s->peer != NULL ? s->tries + 1 : 0;
    case 2:
        return s->reused;
    case 3:
        return s->connect_start_ms ? (double)s->connect_ms : -1;
    case 4:
        return s->up_header_seen ? (double)s->header_ms : -1;
    case 5:
        return (double)s->up_bytes_in;
    case 6:
        return (double)s->up_bytes_out;
    }
    return -1;
}


int
mx_lua_ffi_fail(int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    return rc;
}


int
mx_lua_ffi_check_wait(const mx_session_t *s)
{
    return allowed(s, WAIT);
}


void
moxy_log(int level, const char *msg, size_t len)
{
    mx_log_level_t l = level <= 0 ? MX_LOG_DEBUG : level >= 3 ? MX_LOG_ERROR : (mx_log_level_t)level;
    mx_log(l, "[lua] %.*s", (int)len, msg);
}


int
moxy_worker_id(void)
{
    return mx_current_worker ? mx_current_worker->id - 1 : 0; /* 0-based, as moxy.worker.id() */
}


int
moxy_worker_count(void)
{
    return mx_current_vm != NULL ? mx_vm_conf(mx_current_vm)->threads : 1;
}


/* moxy.stats(): the process-wide counters (core/stats.h) in their order.
 * Returns how many it wrote. Phases: all. */
int
moxy_stats(double *out, int n)
{
    uint64_t v[MX_STATS_FIELDS] = {
        mx_stats_get(requests),          mx_stats_get(connections_accepted),
        mx_stats_get(connections_open),  mx_stats_get(upstream_requests),
        mx_stats_get(upstream_reused),
    };
    int k = n < MX_STATS_FIELDS ? n : MX_STATS_FIELDS;
    for (int i = 0; i < k; i++)
        out[i] = (double)v[i];
    return k;
}


/* moxy.worker.stats(): this worker's downstream connections, how many sit
 * idle between requests, and the buffer bytes those idle ones still hold
 * (read buffer, header span, response head). Walks the connection list:
 * for inspection, not for every request. Returns how many it wrote. */
int
moxy_worker_stats(double *out, int n)
{
    mx_worker_t *w = mx_current_worker;
    double v[4] = {0, 0, 0, 0};
    if (w != NULL) {
        v[0] = (double)w->nconns;
        for (mx_list_t *l = w->conns.next; l != &w->conns; l = l->next) {
            mx_h1conn_t *c = mx_container_of(l, mx_h1conn_t, node);
            if (c->s != NULL || c->closing)
                continue;
            v[1]++;
            v[2] += (double)(c->span.cap + c->out.cap + (c->rbuf ? MX_RBUF_SIZE : 0));
        }
        v[3] = (double)w->nfree * MX_RBUF_SIZE;
    }
    int k = n < 4 ? n : 4;
    for (int i = 0; i < k; i++)
        out[i] = v[i];
    return k;
}
