/* The proxied exchange between one downstream request and its upstream, and
 * the two connections it joins. A downstream connection (mx_h1conn_t, the
 * HTTP/1 codec in http/h1_server.c) owns at most one session at a time; the
 * session borrows an upstream connection (mx_upconn_t, upstream/upconn.c)
 * from the worker's pool and gives it back when the response ends cleanly. */
#ifndef MX_PROXY_SESSION_H
#define MX_PROXY_SESSION_H

#include <llhttp.h>
#include <uv.h>

#include "core/arena.h"
#include "core/buf.h"
#include "core/list.h"
#include "http/h1_guard.h"
#include "http/headers.h"
#include "http/uri.h"
#include "net/wstream.h"
#include "worker/worker.h"

typedef enum {
    MX_SESS_READ_HEAD = 0, /* reading the request head from downstream */
    MX_SESS_PHASES,        /* running request phases (may yield into Lua) */
    MX_SESS_CONNECT,       /* getting an upstream connection (pool or connect) */
    MX_SESS_PROXY,         /* request going up, response coming down */
    MX_SESS_TUNNEL,        /* after 101 / CONNECT 2xx: bytes both ways */
    MX_SESS_DONE,          /* response finished (or aborted); logging ran */
} mx_sess_state_t;

const char *mx_sess_state_str(mx_sess_state_t st);

/* A downstream HTTP/1.x connection. Freed in its close callback once both
 * its handles are closed and no session points at it. */
struct mx_h1conn_s {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    mx_timeq_entry_t tq; /* header, body, keepalive and send timeouts, in w->conn_tq */
    int handles_open;    /* uv handles not yet closed; freed at 0 */
    mx_worker_t *w;
    mx_gen_t *gen;                /* the generation it serves on (a reference) */
    size_t listener;              /* the running listener it came from */
    const mx_conf_service_t *svc; /* in gen's config */
    mx_list_t node; /* in w->conns */
    mx_wstream_t ws;
    struct mx_rd_s *rd; /* its reader in the worker's ring (net/ring.h), if any */
    llhttp_t parser;
    mx_h1_guard_t guard;
    char *rbuf;  /* MX_RBUF_SIZE from the worker, NULL when idle */
    size_t rpos; /* [rpos, rlen) received and not yet parsed */
    size_t rlen;
    mx_session_t *s; /* the request in progress, or NULL */
    mx_buf_t span;   /* a header name, value or URL split across reads */
    mx_buf_t out;    /* a response head waiting to go out with the first body bytes */
    char client_addr[64];
    int client_port;
    uint64_t id;       /* per worker, for s.conn_ctx */
    uint32_t nrequests;
    unsigned lua_conn_ctx : 1; /* Lua keeps an s.conn_ctx for it: dropped at close */
    unsigned reading : 1;
    unsigned paused : 1;    /* parser stopped after a message (pipelining) */
    unsigned closing : 1;   /* uv_close called, or will be once writes drain */
    unsigned close_after : 1; /* close once the current response is written */
    unsigned in_process : 1;  /* inside conn_process(): do not recurse */
    unsigned eof : 1;         /* the client half-closed */
    unsigned upgraded : 1;    /* the head asked for a protocol switch */
    unsigned tunnel : 1;      /* bytes now flow raw to the session */
    unsigned send_timer : 1;  /* the timer waits for the client to take queued bytes */
};

/* An upstream connection: connecting, carrying one session, or idle in the
 * pool. Freed in its close callback. */
struct mx_upconn_s {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    mx_timeq_entry_t tq; /* connect, write, read and idle timeouts, in w->conn_tq */
    uv_connect_t connect_req;
    int handles_open;
    mx_worker_t *w;
    const mx_conf_upstream_t *ups;
    const mx_addr_t *addr; /* -> addr_copy: a script's peer dies with its session */
    mx_addr_t addr_copy;
    mx_wstream_t ws;
    struct mx_rd_s *rd; /* its reader in the worker's ring (net/ring.h), if any */
    llhttp_t parser;
    mx_h1_guard_t guard;
    char *rbuf;
    size_t rpos;
    size_t rlen;
    mx_session_t *s; /* the session using it, NULL when idle or closing */
    mx_list_t node;  /* in the pool's idle list */
    uint64_t idle_since_ms;
    uint32_t nrequests;
    unsigned connected : 1;
    unsigned reading : 1;
    unsigned closing : 1;
    unsigned got_bytes : 1; /* a response byte arrived for the current request */
    unsigned in_trailers : 1;
    unsigned done : 1;    /* the response message completed inside the parser */
    unsigned tunnel : 1;
    unsigned timer_mode : 3;
    unsigned held : 1;    /* a Lua phase waits: the parser is paused at rbuf[rpos] */
    int error;            /* set inside the parser, handled after it returns */
    mx_buf_t span;
    mx_str_t cur_name;
};

struct mx_session_s {
    mx_h1conn_t *c;
    mx_worker_t *w;
    mx_gen_t *gen; /* config and VM of the request (a reference; kept across a reload) */
    uint64_t id;
    mx_sess_state_t state;
    mx_arena_t arena;
    uint64_t start_ms;

    /* the downstream request */
    int http_major;
    int http_minor;
    uint8_t llmethod; /* llhttp_method_t */
    mx_str_t method;
    mx_str_t target_raw;
    mx_target_t target;
    mx_headers_t req_headers;
    size_t head_bytes;  /* request line + fields so far, for the 431 limit */
    int reject_status;  /* set by a parser callback to refuse the request */
    uint64_t req_body_bytes;
    unsigned req_chunked : 1;
    unsigned req_has_body : 1;
    unsigned req_done : 1;      /* the whole request was read */
    unsigned req_keepalive : 1; /* downstream allows another request after */
    unsigned req_upgrade : 1;   /* Upgrade or CONNECT: may become a tunnel */
    unsigned expect_continue : 1;
    unsigned host_count : 2;
    mx_str_t cur_name; /* header name waiting for its value */

    /* the upstream side */
    const mx_conf_upstream_t *ups;
    const mx_addr_t *peer;
    mx_upconn_t *u;
    int tries;
    /* load balancing (upstream/group.h): */
    struct mx_group_s *group;        /* the group choosing the backend (a reference), or NULL */
    struct mx_group_view_s *view;    /* the backend list <backend> is in (a reference) */
    struct mx_backend_s *backend;    /* the backend chosen; counted in its inflight */
    struct mx_backend_s *tried[20];  /* backends this request already tried */
    unsigned ntried;
    unsigned lb_counted : 1;         /* <backend>'s inflight counts this request */
    int pick_index;                  /* upstream_peer's choice in list <pick_gen>, -1 none */
    uint64_t pick_gen;
    mx_str_t pick_key;               /* upstream_peer's hash key (arena); data NULL: none */
    mx_buf_t up_head; /* the request head as sent upstream (kept for a retry) */
    mx_buf_t pending; /* request body bytes waiting for the upstream connection */
    unsigned reused : 1;
    unsigned up_req_sent : 1; /* the head went out on the current upstream connection */
    unsigned up_body_started : 1; /* body bytes went upstream: no more retries */

    /* the response */
    int status;
    mx_str_t reason;
    mx_headers_t resp_headers;
    mx_headers_t resp_trailers;
    uint64_t resp_body_bytes;
    unsigned resp_head_sent : 1;
    unsigned resp_chunked : 1; /* downstream framing is chunked */
    unsigned resp_no_body : 1;
    unsigned resp_done : 1;
    unsigned sent_continue : 1;
    int err; /* the first failure (UV_E* or MX_E*), 0 if none */

    /* Lua (lua/vm.c) */
    size_t svc_index;
    uint32_t phase_mask; /* bit <phase> set when the service's script handles it */
    int lua_co_ref;  /* registry ref of the request's coroutine, 0 if none */
    void *lua_co;    /* its lua_State */
    int lua_phase;   /* the phase running or yielded, -1 when none */
    struct mx_lua_io_s *lua_io; /* its coroutine's io block (vm.h), NULL if none */
    void (*lua_next)(mx_session_t *s, int rc); /* continues the state machine */
    void *lua_wait;  /* its task (lua/task.c): armed waits, sockets; NULL if none */
    int local_status; /* s:respond() status, 0 when not responded */
    int fail_status;  /* fail_to_proxy's choice, 0 for the default */
    mx_str_t body_chunk; /* the chunk response_body_filter is looking at */
    mx_buf_t body_repl;  /* its replacement */
    unsigned body_eos : 1;
    unsigned body_replaced : 1;
    mx_str_t lua_error; /* the first line of the last Lua error */
    unsigned in_error_page : 1;
    unsigned retry_requested : 1; /* fail_to_connect asked for another try */
    unsigned body_waiting : 1;    /* s.req:body() waits for the rest of the body */
    mx_buf_t body_buf;            /* the decoded request body, kept during request phases */
    mx_buf_t log_fields;          /* s:log_field()s, as ' key="value"' for the access log */
    size_t body_max;
    unsigned up_headers_ready : 1; /* XFF/Via/Host added (once, even across retries) */
    mx_headers_t up_headers_base; /* the request before upstream_request_filter, per try */
    mx_str_t local_body;
    unsigned lua_headers_local : 1; /* resp_headers hold s:respond()'s headers */
    unsigned peer_set : 1;          /* upstream_peer chose s->peer_addr */
    mx_addr_t peer_addr;            /* the peer a script chose */
    const char *action; /* "connecting to upstream", for log lines */

    /* Phases that wait (proxy/session.c): the response side runs as continuations. */
    mx_str_t fb_cur;  /* the chunk going through the body filters */
    mx_buf_t fb_held; /* a first filter's replacement, kept across the second */
    mx_buf_t fb_keep; /* the chunk copied when a filter waits */
    void (*fb_done)(mx_session_t *s, int rc); /* called when a waiting chain ends */
    int fb_rc;
    int fb_phase;
    unsigned fb_busy : 1;
    unsigned fb_async : 1;
    unsigned fb_eos : 1;
    unsigned fb_req : 1;        /* the chain is request_body_filter */
    unsigned head_busy : 1;     /* response head phases are running */
    unsigned head_async : 1;    /* ... and one of them waited */
    unsigned head_deferred : 1; /* the head arrived while another phase waited */
    unsigned err_filters : 1;   /* the error page passes fail_to_proxy / response_filter */
    unsigned log_pending : 1;   /* logging waits: the session outlives its request */
    unsigned orphan : 1;        /* ... and its connection let go of it */
    unsigned up_chunked : 1;    /* the upstream request body goes chunked (filtered) */
    unsigned rbf_eos_queued : 1;
    unsigned rbf_done : 1;      /* the terminal chunk went up */
    unsigned body_set : 1;      /* s.req:set_body() replaced the request body */
    unsigned resp_buffering : 1; /* s.resp:read_body(): upstream body bytes go to resp_body_buf */
    unsigned resp_body_waiting : 1; /* ... and the handler waits for them */
    unsigned resp_body_complete : 1; /* the upstream response ended while buffered */
    unsigned resp_body_set : 1;  /* s.resp:set_body(): resp_set_body replaces the body */
    mx_str_t resp_set_body;
    void *deferred;              /* a pending defer() timer, or NULL */
    unsigned log_after_wait : 1; /* the request ended while a handler waited: logging after it */
    unsigned resp_end_deferred : 1; /* the response ended while request_body_filter waited */
    mx_list_t orphan_node;       /* in the worker thread's orphans while orphan */
    unsigned up_header_seen : 1; /* s:upstream().header_ms is known */
    int head_rc;
    int err_status;
    int pending_err;            /* what fail_to_connect / error_while_proxy look at */
    mx_buf_t rbf_queue;         /* request body waiting for request_body_filter */
    mx_buf_t resp_body_buf;     /* the buffered response body */
    size_t resp_body_max;
    char client_copy[64]; /* the client address, once the connection let go */
    int client_port_copy;
    uint64_t connect_start_ms;
    uint64_t connect_ms;
    uint64_t header_ms;
    uint64_t up_bytes_out;
    uint64_t up_bytes_in;
    mx_conf_upstream_t peer_ups_copy; /* moxy.peer{} timeouts over the group's */
    double peer_timeout[4];           /* connect, read, write, idle; < 0 unset */
    unsigned peer_timeouts : 1;
    unsigned peer_resolve : 1;        /* the script's peer names a host: resolve it */
    void *resolving;                  /* the pending uv_getaddrinfo, or NULL */
    mx_str_t set_body;                /* s.req:set_body() */
};

/* --- session (proxy/session.c) --- */
/* A yielded Lua phase finished (lua/vm.c): continue the state machine. */
void mx_session_on_phase_done(mx_session_t *s, int rc);
mx_session_t *mx_session_new(mx_h1conn_t *c);
void mx_session_free(mx_session_t *s);
/* The worker stops now (force): sessions whose logging still waits after their
 * connection went are dropped (their waits cancelled). From a uv callback. */
void mx_session_orphans_abort(void);
/* True while such sessions exist (a draining worker waits for them). */
bool mx_session_orphans_pending(void);
/* The request head is complete and valid: pick the upstream and connect. */
void mx_session_on_request_head(mx_session_t *s);
/* A piece of request body (decoded) / the end of the request. */
void mx_session_on_request_body(mx_session_t *s, const char *p, size_t n);
void mx_session_on_request_done(mx_session_t *s);
/* The client went away or timed out: abort everything upstream. */
void mx_session_abort(mx_session_t *s, int err);
/* Answers locally with <status> (error page) and ends the session. */
void mx_session_respond_error(mx_session_t *s, int status, int err);
/* Bytes the client sent after the head of an upgraded request. */
void mx_session_tunnel_down(mx_session_t *s, const char *p, size_t n);
void mx_session_tunnel_eof(mx_session_t *s, bool from_upstream);

/* GET, HEAD, OPTIONS, TRACE, PUT, DELETE: may be sent again. */
bool mx_session_idempotent(const mx_session_t *s);

/* Ends the request's claim on its load-balanced backend (inflight) and group. */
void mx_session_lb_release(mx_session_t *s);

/* Called by upconn.c as the upstream response arrives. */
void mx_session_on_connected(mx_session_t *s, mx_upconn_t *u);
void mx_session_on_upstream_error(mx_session_t *s, int err);
int mx_session_on_response_head(mx_session_t *s);
/* Returns HPE_PAUSED when a body filter waits (the caller pauses its parser
 * until mx_upconn_continue()), else 0. <last>: these bytes end a Content-Length
 * body, so the client may have the whole response before the message completes. */
int mx_session_on_response_body(mx_session_t *s, const char *p, size_t n, bool last);
void mx_session_on_response_done(mx_session_t *s);
/* s.resp:read_body{max}: MX_OK (<out>), MX_ETOOLARGE, or MX_AGAIN (wait). */
int mx_session_read_resp_body(mx_session_t *s, size_t max, mx_str_t *out);
/* The upstream connection wrote everything queued: read more request body. */
void mx_session_on_upstream_drain(mx_session_t *s);
/* The client connection wrote everything queued: read more response body. */
void mx_session_on_downstream_drain(mx_session_t *s);
/* Upgraded connection: bytes from upstream. */
void mx_session_tunnel_up(mx_session_t *s, const char *p, size_t n);
void mx_session_start_tunnel(mx_session_t *s);
/* End of a read from upstream: a held response head goes out now. */
void mx_session_flush(mx_session_t *s);

/* --- downstream codec (http/h1_server.c) --- */
void mx_h1_on_accept(uv_stream_t *server, int status);
/* Sends the head of s->status / s->resp_headers, choosing the framing
 * (Content-Length as given, chunked for HTTP/1.1 when the length is unknown,
 * close-delimited for HTTP/1.0) and Connection. <informational> for 1xx. */
int mx_h1_send_head(mx_h1conn_t *c, mx_session_t *s);
int mx_h1_send_continue(mx_h1conn_t *c);
int mx_h1_send_body(mx_h1conn_t *c, mx_session_t *s, const char *p, size_t n);
/* The terminal chunk with s->resp_trailers when chunked. */
int mx_h1_send_end(mx_h1conn_t *c, mx_session_t *s);
/* Writes <bufs> after any head still held in c->out (one writev). */
int mx_h1_write(mx_h1conn_t *c, const uv_buf_t *bufs, unsigned n);
/* Sends a held head now (end of a read from upstream, end of a response). */
int mx_h1_flush(mx_h1conn_t *c);
/* The session ended: keep the connection alive or close it. */
void mx_h1_session_done(mx_h1conn_t *c);
/* Stops or resumes reading from the client (backpressure). */
void mx_h1_read_pause(mx_h1conn_t *c, bool pause);
void mx_h1_close(mx_h1conn_t *c);
/* Switches to raw byte forwarding; buffered client bytes go to the session. */
void mx_h1_tunnel(mx_h1conn_t *c);
/* Arms the connection timer for <ms> (0 disarms). */
void mx_h1_set_timeout(mx_h1conn_t *c, uint64_t ms);
/* The worker is exiting: frees the thread's cached header/head buffers. */
void mx_h1_worker_exit(mx_worker_t *w);

/* --- upstream connection (upstream/upconn.c) --- */
/* Gets a pooled connection to <addr> or starts a new one; calls
 * mx_session_on_connected() or mx_session_on_upstream_error() later (never
 * from within this call). <fresh> skips the pool. */
void mx_upconn_acquire(mx_session_t *s, const mx_conf_upstream_t *ups, const mx_addr_t *addr,
                       bool fresh);
int mx_upconn_write(mx_upconn_t *u, const uv_buf_t *bufs, unsigned n);
/* The response ended cleanly: back to the pool if it can be reused. */
void mx_upconn_release(mx_upconn_t *u, bool reusable);
void mx_upconn_close(mx_upconn_t *u);
void mx_upconn_read_pause(mx_upconn_t *u, bool pause);
void mx_upconn_set_timeout(mx_upconn_t *u, double seconds);
/* The request was fully sent: wait for the response (arms read_timeout). */
void mx_upconn_request_sent(mx_upconn_t *u);
/* Switches to raw byte forwarding (after 101). */
void mx_upconn_tunnel(mx_upconn_t *u);
/* A phase that paused the response parser finished: parse on, read on. */
void mx_upconn_continue(mx_upconn_t *u);

/* --- keepalive pool (upstream/pool.c) --- */
mx_pool_t *mx_pool_new(mx_worker_t *w, size_t cap);
/* Closes every idle connection and frees the pool once they are closed. */
void mx_pool_free(mx_pool_t *p);
/* An idle connection to <addr> that is still open, or NULL. */
/* <peek>: check with a non-blocking peek that the origin has not closed it. */
mx_upconn_t *mx_pool_get(mx_pool_t *p, const mx_addr_t *addr, bool peek);
void mx_pool_put(mx_pool_t *p, mx_upconn_t *u);
void mx_pool_remove(mx_pool_t *p, mx_upconn_t *u);
void mx_pool_close_idle(mx_pool_t *p);

#endif
