#include "net/wstream.h"

#include <errno.h>
#include <string.h>

#include "core/alloc.h"
#include "core/errors.h"
#include "net/ring.h"

/* Written bytes the kernel has not taken yet: a ring send, a block behind
 * it, or a uv_write. */
typedef struct wblock_s {
    union {
        uv_write_t req;
        mx_ring_send_t op;
    } u;
    mx_wstream_t *ws; /* NULL once the stream closed under a ring send */
    struct wblock_s *next;
    size_t off; /* bytes already sent */
    size_t len;
    size_t cap;
    char data[];
} wblock_t;

/* A ring block's room: a response's head and a small body written in two
 * calls share one send. */
#define MIN_CAP 2048
/* A write this large goes out at once, uncopied, when nothing is queued
 * (uv_try_write): copying it for the ring would cost about what the writev
 * saves, and a streamed body would churn a block per chunk. */
#define DIRECT_MIN 8192

static void on_write(uv_write_t *req, int status);
static void on_send(mx_ring_send_t *op, int res);


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


static wblock_t *
new_block(mx_wstream_t *ws, size_t cap)
{
    wblock_t *b = mx_alloc(sizeof(*b) + cap);
    b->ws = ws;
    b->next = NULL;
    b->off = 0;
    b->len = 0;
    b->cap = cap;
    return b;
}


/* Appends <bufs> from byte <skip> on. */
static void
fill(wblock_t *b, const uv_buf_t *bufs, unsigned n, size_t skip)
{
    char *p = b->data + b->len;
    for (unsigned i = 0; i < n; i++) {
        size_t len = bufs[i].len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        memcpy(p, bufs[i].base + skip, len - skip);
        p += len - skip;
        skip = 0;
    }
    b->len = (size_t)(p - b->data);
}


/* Hands <b>'s unsent bytes to libuv, behind whatever it already has. */
static int
queue_uv(mx_wstream_t *ws, wblock_t *b)
{
    uv_buf_t ub = uv_buf_init(b->data + b->off, (unsigned)(b->len - b->off));
    int rc = uv_write(&b->u.req, ws->stream, &ub, 1, on_write);
    if (rc < 0) {
        mx_free(b);
        return rc;
    }
    ws->pending++;
    return MX_OK;
}


static void
send_head(mx_wstream_t *ws)
{
    wblock_t *b = ws->head;
    b->u.op.done = on_send;
    mx_ring_send(ws->ring, &b->u.op, ws->fd, b->data + b->off, b->len - b->off);
}


static int
ring_write(mx_wstream_t *ws, const uv_buf_t *bufs, unsigned n, size_t total)
{
    wblock_t *t = ws->tail;
    if (t != NULL && t->len + total <= t->cap &&
        (t != ws->head || mx_ring_send_extend(ws->ring, &t->u.op, t->len + total))) {
        fill(t, bufs, n, 0);
    } else {
        wblock_t *b = new_block(ws, total > MIN_CAP ? total : MIN_CAP);
        fill(b, bufs, n, 0);
        if (t == NULL) {
            ws->head = ws->tail = b;
            send_head(ws);
        } else {
            t->next = b;
            ws->tail = b;
        }
    }
    ws->queued += total;
    return MX_OK;
}


/* Writes <bufs> now (uv_try_write) and queues what the kernel does not take
 * with uv_write: the path without a ring, and for large writes. */
static int
write_now(mx_wstream_t *ws, const uv_buf_t *bufs, unsigned n, size_t total)
{
    size_t done = 0;
    if (ws->queued == 0) {
        int rc = uv_try_write(ws->stream, bufs, n);
        if (rc >= 0) {
            done = (size_t)rc;
        } else if (rc != UV_EAGAIN && rc != UV_ENOSYS) {
            ws->error = rc;
            return rc;
        }
        if (done == total)
            return MX_OK;
    }

    wblock_t *b = new_block(ws, total - done);
    fill(b, bufs, n, done);
    int rc = queue_uv(ws, b);
    if (rc < 0) {
        ws->error = rc;
        return rc;
    }
    ws->queued += total - done;
    return MX_OK;
}


/* A large write behind ring blocks not yet submitted: they are withdrawn and
 * go out with it in one writev, rather than copying it behind them. False if
 * the head is already in the kernel (then it queues behind). */
static bool
write_with_unsent(mx_wstream_t *ws, const uv_buf_t *bufs, unsigned n, size_t total, int *rc)
{
    uv_buf_t all[16];
    unsigned k = 0;
    for (wblock_t *b = ws->head; b != NULL; b = b->next)
        if (k++ + n >= 16)
            return false;
    if (!mx_ring_send_withdraw(ws->ring, &ws->head->u.op))
        return false;
    k = 0;
    size_t held = 0;
    for (wblock_t *b = ws->head; b != NULL; b = b->next) {
        all[k++] = uv_buf_init(b->data, (unsigned)b->len);
        held += b->len;
    }
    for (unsigned i = 0; i < n; i++)
        all[k++] = bufs[i];
    ws->queued -= held;
    *rc = write_now(ws, all, k, held + total);
    while (ws->head != NULL) {
        wblock_t *b = ws->head;
        ws->head = b->next;
        mx_free(b);
    }
    ws->tail = NULL;
    return true;
}


int
mx_wstream_write(mx_wstream_t *ws, const uv_buf_t *bufs, unsigned n)
{
    if (ws->error)
        return ws->error;
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    if (total == 0)
        return MX_OK;
    /* An upstream stream has no descriptor until its connect starts. */
    if (ws->ring != NULL && ws->fd < 0)
        uv_fileno((const uv_handle_t *)ws->stream, &ws->fd);
    if (ws->ring == NULL || ws->pending > 0 || ws->fd < 0)
        return write_now(ws, bufs, n, total);
    if (total < DIRECT_MIN)
        return ring_write(ws, bufs, n, total);
    if (ws->head == NULL)
        return write_now(ws, bufs, n, total);
    int rc;
    if (write_with_unsent(ws, bufs, n, total, &rc))
        return rc;
    return ring_write(ws, bufs, n, total);
}


static void
fail(mx_wstream_t *ws, int status)
{
    if (ws->error == 0)
        ws->error = status;
    if (ws->on_drain)
        ws->on_drain(ws, status);
}


static void
on_send(mx_ring_send_t *op, int res)
{
    wblock_t *b = mx_container_of(op, wblock_t, u.op);
    mx_wstream_t *ws = b->ws;
    if (ws == NULL) {
        mx_free(b); /* the stream closed: what followed was dropped then */
        return;
    }
    if (res > 0) {
        b->off += (size_t)res;
        ws->queued -= (size_t)res;
    }
    if (b->off == b->len) {
        ws->head = b->next;
        if (ws->head == NULL)
            ws->tail = NULL;
        mx_free(b);
        if (ws->head != NULL)
            send_head(ws);
        else if (ws->queued == 0 && ws->on_drain)
            ws->on_drain(ws, 0);
        return;
    }
    if (res >= 0 || res == -EAGAIN) {
        /* The socket's buffer is full: libuv waits for room, and writes
         * queue behind it there until it drains. */
        int rc = MX_OK;
        while (ws->head != NULL) {
            wblock_t *h = ws->head;
            ws->head = h->next;
            if (rc == MX_OK)
                rc = queue_uv(ws, h);
            else
                mx_free(h);
        }
        ws->tail = NULL;
        if (rc < 0)
            fail(ws, rc);
        return;
    }
    while (ws->head != NULL) {
        wblock_t *h = ws->head;
        ws->head = h->next;
        ws->queued -= h->len - h->off;
        mx_free(h);
    }
    ws->tail = NULL;
    fail(ws, res); /* libuv's codes are -errno */
}


void
mx_wstream_close(mx_wstream_t *ws)
{
    wblock_t *b = ws->head;
    if (b == NULL)
        return;
    mx_ring_send_flush(ws->ring, &b->u.op);
    b->ws = NULL; /* freed by its completion */
    for (wblock_t *h = b->next; h != NULL;) {
        wblock_t *next = h->next;
        mx_free(h);
        h = next;
    }
    ws->head = ws->tail = NULL;
    ws->on_drain = NULL;
}


static void
on_write(uv_write_t *req, int status)
{
    wblock_t *b = mx_container_of(req, wblock_t, u.req);
    mx_wstream_t *ws = b->ws;
    ws->queued -= b->len - b->off;
    ws->pending--;
    mx_free(b);
    if (status < 0 && ws->error == 0) {
        fail(ws, status);
        return;
    }
    if (status == UV_ECANCELED)
        return;
    if (ws->queued == 0 && ws->on_drain)
        ws->on_drain(ws, 0);
}
