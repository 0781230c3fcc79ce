/* A fake event loop for fuzz targets that compile a codec's .c file into
 * themselves (h1_server.c, upconn.c): the codec's own libuv callbacks are
 * driven by hand, with no socket and no uv_loop.
 *
 * Include this header, then the codec's .c file: the uv_* calls the codec
 * makes on its handle are redirected here by macro (they must see a uv.h
 * already included, which proxy/session.h does). What stands for the worker
 * (read buffers, timeouts, the config generation) and for mx_wstream (every
 * byte written is kept in <fl.out>) is defined here too; the session the
 * codec talks to is the fuzz target's own. One connection per run. */
#ifndef MX_FUZZ_LOOP_H
#define MX_FUZZ_LOOP_H

#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf/conf.h"
#include "core/alloc.h"
#include "core/arena.h"
#include "core/buf.h"
#include "core/errors.h"
#include "core/log.h"
#include "core/timeq.h"
#include "http/h1_guard.h"
#include "lua/vm.h"
#include "proxy/session.h"
#include "worker/gen.h"
#include "worker/worker.h"
#include "fuzz_check.h"

#define FUZZ_MAX_CLOSES 4

typedef struct {
    uv_stream_t *stream; /* the one stream being read, once uv_read_start ran */
    uv_alloc_cb alloc_cb;
    uv_read_cb read_cb;
    bool reading;
    uv_handle_t *closing[FUZZ_MAX_CLOSES]; /* uv_close()d: callbacks run at the next turn */
    uv_close_cb close_cb[FUZZ_MAX_CLOSES];
    int nclosing;
    int closed;                /* close callbacks run */
    uv_connect_t *connect_req; /* a connect waiting for fuzz_connect_done() */
    uv_connect_cb connect_cb;
    uint64_t now; /* the loop's clock, ms */
    mx_buf_t out; /* every byte written, in order */
    uint16_t peer_port;
} fuzz_loop_t;

static fuzz_loop_t fl;
static mx_worker_t fuzz_worker;
static mx_conf_t fuzz_conf;
static mx_conf_service_t fuzz_svc;
static mx_genconf_t fuzz_gc;
static size_t fuzz_listener_svc[1];
static mx_gen_t fuzz_gen;


/* What both codecs promise of each field they hand over: the name is a token
 * and the value has no CR, LF or NUL and no blank at either end. */
static void
fuzz_check_field(mx_str_t name, mx_str_t v)
{
    fuzz_check(mx_h1_guard_name(name) == 0, "field name \"%.*s\"", (int)name.len, name.data);
    for (size_t j = 0; j < v.len; j++)
        fuzz_check(v.data[j] != '\r' && v.data[j] != '\n' && v.data[j] != '\0',
                   "CR, LF or NUL in the value of %.*s", (int)name.len, name.data);
    fuzz_check(v.len == 0 || (v.data[0] != ' ' && v.data[0] != '\t' && v.data[v.len - 1] != ' ' &&
                              v.data[v.len - 1] != '\t'),
               "untrimmed value of %.*s", (int)name.len, name.data);
}


static inline int
fake_read_start(uv_stream_t *st, uv_alloc_cb alloc_cb, uv_read_cb read_cb)
{
    fuzz_check(!fl.reading, "uv_read_start on a stream already reading");
    fl.stream = st;
    fl.alloc_cb = alloc_cb;
    fl.read_cb = read_cb;
    fl.reading = true;
    return 0;
}


static inline int
fake_read_stop(uv_stream_t *st)
{
    (void)st;
    fl.reading = false;
    return 0;
}


static inline void
fake_close(uv_handle_t *h, uv_close_cb cb)
{
    for (int i = 0; i < fl.nclosing; i++)
        fuzz_check(fl.closing[i] != h, "uv_close twice on one handle");
    fuzz_check(fl.nclosing < FUZZ_MAX_CLOSES, "too many uv_close");
    fl.closing[fl.nclosing] = h;
    fl.close_cb[fl.nclosing] = cb;
    fl.nclosing++;
    fl.reading = false;
}


static inline int
fake_tcp_init(uv_loop_t *loop, uv_tcp_t *h)
{
    (void)loop;
    (void)h;
    return 0;
}


static inline int
fake_pipe_init(uv_loop_t *loop, uv_pipe_t *h, int ipc)
{
    (void)loop;
    (void)h;
    (void)ipc;
    return 0;
}


static inline int
fake_accept(uv_stream_t *server, uv_stream_t *client)
{
    (void)server;
    (void)client;
    return 0;
}


static inline int
fake_tcp_nodelay(uv_tcp_t *h, int on)
{
    (void)h;
    (void)on;
    return 0;
}


static inline int
fake_tcp_getpeername(const uv_tcp_t *h, struct sockaddr *sa, int *len)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)sa;
    (void)h;
    memset(sa, 0, (size_t)*len);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(fl.peer_port);
    sin->sin_addr.s_addr = htonl(0x7f000001);
    *len = sizeof(*sin);
    return 0;
}


static inline int
fake_tcp_connect(uv_connect_t *req, uv_tcp_t *h, const struct sockaddr *sa, uv_connect_cb cb)
{
    (void)sa;
    req->handle = (uv_stream_t *)h;
    fl.connect_req = req;
    fl.connect_cb = cb;
    return 0;
}


static inline void
fake_pipe_connect(uv_connect_t *req, uv_pipe_t *h, const char *name, uv_connect_cb cb)
{
    (void)name;
    req->handle = (uv_stream_t *)h;
    fl.connect_req = req;
    fl.connect_cb = cb;
}


static inline uint64_t
fake_now(const uv_loop_t *loop)
{
    (void)loop;
    return fl.now;
}


/* Inline: a target uses only some of them. */
/* clang-format off */
#define uv_read_start       fake_read_start
#define uv_read_stop        fake_read_stop
#define uv_close            fake_close
#define uv_tcp_init         fake_tcp_init
#define uv_pipe_init        fake_pipe_init
#define uv_accept           fake_accept
#define uv_tcp_nodelay      fake_tcp_nodelay
#define uv_tcp_getpeername  fake_tcp_getpeername
#define uv_tcp_connect      fake_tcp_connect
#define uv_pipe_connect     fake_pipe_connect
#define uv_now              fake_now
/* clang-format on */


/* --- the worker, its generation and mx_wstream, as the codecs see them --- */

void *
mx_worker_buf_get(mx_worker_t *w)
{
    (void)w;
    return mx_alloc(MX_RBUF_SIZE);
}


void
mx_worker_buf_put(mx_worker_t *w, void *buf)
{
    (void)w;
    mx_free(buf);
}


void
mx_worker_timeout(mx_worker_t *w, mx_timeq_entry_t *e, uint64_t ms, mx_timeq_cb cb)
{
    mx_timeq_arm(&w->conn_tq, e, fl.now, ms, cb);
}


void
mx_worker_conn_closed(mx_worker_t *w)
{
    (void)w;
}


mx_gen_t *
mx_gen_ref(mx_gen_t *g)
{
    g->refs++;
    return g;
}


void
mx_gen_unref(mx_gen_t *g)
{
    fuzz_check(g->refs > 1, "generation reference count would reach %d", g->refs - 1);
    g->refs--;
}


const mx_conf_service_t *
mx_gen_service(const mx_gen_t *g, size_t listener)
{
    (void)listener;
    return &g->conf->services[0];
}


void
mx_gen_conn_adopt(mx_h1conn_t *c)
{
    (void)c;
}


void
mx_vm_conn_closed(mx_vm_t *vm, uint64_t id)
{
    (void)vm;
    (void)id;
}


void
mx_wstream_init(mx_wstream_t *ws, uv_stream_t *stream, struct mx_ring_s *ring,
                mx_wstream_cb on_drain)
{
    memset(ws, 0, sizeof(*ws));
    ws->stream = stream;
    ws->ring = ring;
    ws->fd = -1;
    ws->on_drain = on_drain;
}


void
mx_wstream_close(mx_wstream_t *ws)
{
    (void)ws;
}


/* The kernel takes everything at once: nothing is ever queued. */
int
mx_wstream_write(mx_wstream_t *ws, const uv_buf_t *bufs, unsigned n)
{
    (void)ws;
    for (unsigned i = 0; i < n; i++)
        mx_buf_append(&fl.out, bufs[i].base, bufs[i].len);
    return MX_OK;
}


/* Once per process: the error log goes to /dev/null at info level, so the
 * codec's log lines are formatted (and checked by the sanitizers) but not
 * printed. */
static void
fuzz_loop_init_once(void)
{
    mx_conf_t lc = {.error_log = "/dev/null", .log_level = MX_LOG_INFO};
    char err[256];
    if (mx_log_open(&lc, err, sizeof(err)) != MX_OK) {
        fprintf(stderr, "%s\n", err);
        abort();
    }
    /* The first line allocates what localtime_r() keeps for the process: not per input. */
    mx_log_info("fuzz target starting");
}


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_loop_init_once();
    return 0;
}


/* A fresh worker with a one-service config using <svc>'s limits. */
static void
fuzz_loop_begin(const mx_conf_service_t *svc)
{
    mx_buf_dispose(&fl.out);
    memset(&fl, 0, sizeof(fl));
    fl.now = 1000;
    fuzz_svc = *svc;
    fuzz_conf = (mx_conf_t){.services = &fuzz_svc, .nservices = 1};
    fuzz_gc =
        (mx_genconf_t){.conf = &fuzz_conf, .listener_svc = fuzz_listener_svc, .nlisteners = 1};
    fuzz_gen =
        (mx_gen_t){.refs = 1, .seq = 1, .w = &fuzz_worker, .gc = &fuzz_gc, .conf = &fuzz_conf};
    memset(&fuzz_worker, 0, sizeof(fuzz_worker));
    fuzz_worker.id = 1;
    fuzz_worker.gen = &fuzz_gen;
    mx_list_init(&fuzz_worker.conns);
    mx_list_init(&fuzz_worker.gens);
    mx_timeq_init(&fuzz_worker.conn_tq);
}


/* One loop turn: the clock moves 1 ms, due timeouts fire, then the close
 * callbacks of handles closed so far run. */
static void
fuzz_loop_turn(void)
{
    fl.now++;
    mx_timeq_expire(&fuzz_worker.conn_tq, fl.now);
    while (fl.closed < fl.nclosing) {
        int i = fl.closed++;
        if (fl.close_cb[i] != NULL)
            fl.close_cb[i](fl.closing[i]);
    }
}


/* Every timeout fires (the peer went quiet), then its consequences run. */
static void
fuzz_loop_expire_all(void)
{
    fl.now += 24 * 3600 * 1000;
    mx_timeq_expire(&fuzz_worker.conn_tq, fl.now);
    fuzz_loop_turn();
}


/* Delivers <n> bytes of <p> to the stream as libuv would, a read at a time
 * no larger than the buffer the codec's alloc callback offers. Returns the
 * bytes taken: fewer when the codec stopped reading. */
static size_t
fuzz_loop_read(const uint8_t *p, size_t n)
{
    size_t done = 0;
    while (done < n && fl.reading) {
        uv_buf_t b = {.base = NULL, .len = 0};
        fl.alloc_cb((uv_handle_t *)fl.stream, 65536, &b);
        fuzz_check(b.base != NULL && b.len > 0, "alloc callback gave no buffer");
        size_t k = n - done < b.len ? n - done : b.len;
        memcpy(b.base, p + done, k);
        fl.read_cb(fl.stream, (ssize_t)k, &b);
        done += k;
    }
    return done;
}


/* An input as the codec targets take it: byte 0 the target's flags, byte
 * 1's low 3 bits a number k of extra read boundaries, the k bytes after it
 * the gap before each boundary (byte + 1); the rest is what the peer sends. */
typedef struct {
    uint8_t flags;
    size_t ncuts; /* k */
    size_t next;  /* reads delivered so far */
    size_t off;   /* bytes of <p> delivered so far */
    size_t n;
    const uint8_t *cut;
    const uint8_t *p;
} fuzz_input_t;


/* 0 when <data> is too short to hold its own header. */
static int
fuzz_input_split(fuzz_input_t *in, const uint8_t *data, size_t size)
{
    memset(in, 0, sizeof(*in));
    in->flags = size > 0 ? data[0] : 0;
    in->ncuts = size > 1 ? data[1] & 7 : 0;
    if (size < 2 + in->ncuts)
        return 0;
    in->cut = data + 2;
    in->p = data + 2 + in->ncuts;
    in->n = size - 2 - in->ncuts;
    return 1;
}


/* Delivers the input's next read, up to its boundary. 0 when every byte
 * went or the codec stopped reading. */
static int
fuzz_input_read_next(fuzz_input_t *in)
{
    if (in->next > in->ncuts || in->off >= in->n || !fl.reading)
        return 0;
    size_t len = in->next < in->ncuts ? (size_t)in->cut[in->next] + 1 : in->n - in->off;
    if (len > in->n - in->off)
        len = in->n - in->off;
    in->off += fuzz_loop_read(in->p + in->off, len);
    in->next++;
    return 1;
}


/* The peer closed (<err> UV_EOF) or the read failed. */
static void
fuzz_loop_read_error(ssize_t err)
{
    if (!fl.reading)
        return;
    uv_buf_t b = {.base = NULL, .len = 0};
    fl.read_cb(fl.stream, err, &b);
}


/* Ends the run: every handle must have been closed and its callback run, no
 * generation reference may be left, and what the fake loop holds is freed. */
static void
fuzz_loop_end(void)
{
    fuzz_loop_turn();
    fuzz_check(fl.closed == fl.nclosing, "close callbacks pending");
    fuzz_check(fuzz_gen.refs == 1, "%d generation references left", fuzz_gen.refs - 1);
    if (getenv("FUZZ_DEBUG") != NULL) /* FUZZ_DEBUG=1 ./target input: what went out */
        fprintf(stderr, "--- %zu bytes written:\n%.*s\n---\n", fl.out.len, (int)fl.out.len,
                fl.out.data ? fl.out.data : "");
    mx_timeq_dispose(&fuzz_worker.conn_tq);
    mx_buf_dispose(&fl.out);
}

#endif
