/* Ordered writes on a uv stream without copying in the common case: each
 * write first tries uv_try_write (writev); only the bytes the kernel did not
 * take are copied into one owned block and queued with uv_write. <queued>
 * counts the bytes waiting, which callers use for backpressure. */
#ifndef MX_NET_WSTREAM_H
#define MX_NET_WSTREAM_H

#include <uv.h>

#include "core/types.h"

typedef struct mx_wstream_s mx_wstream_t;

/* Called when queued bytes drop to zero after a uv_write completes, or with
 * a negative <status> when a write failed (then nothing more is written). */
typedef void (*mx_wstream_cb)(mx_wstream_t *ws, int status);

struct mx_wstream_s {
    uv_stream_t *stream;
    size_t queued;   /* bytes handed to uv_write and not yet written */
    int pending;     /* uv_write requests in flight (the owner must not free before 0) */
    int error;       /* first write error, 0 if none */
    mx_wstream_cb on_drain;
};

void mx_wstream_init(mx_wstream_t *ws, uv_stream_t *stream, mx_wstream_cb on_drain);
/* Writes <n> buffers in order. Returns MX_OK (written or queued) or the
 * stored error. The buffers may be reused as soon as this returns. */
int mx_wstream_write(mx_wstream_t *ws, const uv_buf_t *bufs, unsigned n);

#endif
