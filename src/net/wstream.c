#include "net/wstream.h"

#include <string.h>

#include "core/alloc.h"
#include "core/errors.h"

typedef struct {
    uv_write_t req;
    mx_wstream_t *ws;
    size_t len;
    char data[];
} wreq_t;

static void on_write(uv_write_t *req, int status);


void
mx_wstream_init(mx_wstream_t *ws, uv_stream_t *stream, mx_wstream_cb on_drain)
{
    memset(ws, 0, sizeof(*ws));
    ws->stream = stream;
    ws->on_drain = on_drain;
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

    wreq_t *w = mx_alloc(sizeof(*w) + (total - done));
    w->ws = ws;
    w->len = total - done;
    char *p = w->data;
    size_t skip = done;
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
    uv_buf_t b = uv_buf_init(w->data, (unsigned)w->len);
    int rc = uv_write(&w->req, ws->stream, &b, 1, on_write);
    if (rc < 0) {
        mx_free(w);
        ws->error = rc;
        return rc;
    }
    ws->queued += w->len;
    ws->pending++;
    return MX_OK;
}


static void
on_write(uv_write_t *req, int status)
{
    wreq_t *w = mx_container_of(req, wreq_t, req);
    mx_wstream_t *ws = w->ws;
    ws->queued -= w->len;
    ws->pending--;
    mx_free(w);
    if (status < 0 && ws->error == 0) {
        ws->error = status;
        if (ws->on_drain)
            ws->on_drain(ws, status);
        return;
    }
    if (status == UV_ECANCELED)
        return;
    if (ws->queued == 0 && ws->on_drain)
        ws->on_drain(ws, 0);
}
