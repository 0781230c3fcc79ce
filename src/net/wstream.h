/* Ordered writes on a uv stream without a syscall of their own in the common
 * case.
 *
 * With a ring (net/ring.h), a small write is copied into a block that becomes
 * a non-blocking send, submitted with the pass's other work when the worker
 * waits; more writes in the same pass join the same send. A large one, or any
 * without a ring, first tries uv_try_write (writev). Either way, only the
 * bytes the kernel did not take are queued with uv_write, where libuv polls
 * for room.
 * <queued> counts the bytes not yet handed to the kernel, which callers use
 * for backpressure and to wait for before a graceful close. */
#ifndef MX_NET_WSTREAM_H
#define MX_NET_WSTREAM_H

#include <uv.h>

#include "core/types.h"

typedef struct mx_wstream_s mx_wstream_t;
struct mx_ring_s;
struct wblock_s;

/* Called when queued bytes drop to zero after a send or uv_write completes,
 * or with a negative <status> when a write failed (then nothing more is
 * written). Never from inside mx_wstream_write(). */
typedef void (*mx_wstream_cb)(mx_wstream_t *ws, int status);

struct mx_wstream_s {
    uv_stream_t *stream;
    struct mx_ring_s *ring; /* sends through it first; NULL: uv_try_write */
    int fd;                 /* the stream's descriptor once it has one (-1 before) */
    struct wblock_s *head;  /* the ring send in flight, then the blocks behind it */
    struct wblock_s *tail;
    size_t queued; /* bytes written and not yet taken by the kernel */
    int pending;   /* uv_write requests in flight */
    int error;     /* first write error, 0 if none */
    mx_wstream_cb on_drain;
};

void mx_wstream_init(mx_wstream_t *ws, uv_stream_t *stream, struct mx_ring_s *ring,
                     mx_wstream_cb on_drain);
/* Writes <n> buffers in order. Returns MX_OK (written or queued) or the
 * stored error. The buffers may be reused as soon as this returns. */
int mx_wstream_write(mx_wstream_t *ws, const uv_buf_t *bufs, unsigned n);
/* Before uv_close() of the stream (which cancels libuv's queued writes): a
 * send not yet submitted goes now (as uv_try_write would have written it),
 * blocks behind it are dropped, and nothing calls back any more. */
void mx_wstream_close(mx_wstream_t *ws);

#endif
