/* A worker's io_uring: client and upstream sockets are read through it.
 *
 * Each reading socket has one multishot receive in the ring; the kernel picks
 * a buffer from a ring of provided buffers and posts a completion, with no
 * epoll_wait, epoll re-poll (tcp_poll) or read() per request. The worker waits
 * in io_uring_enter(), and libuv's own epoll descriptor (listeners, writes
 * that wait for room, cross-thread wake-ups) is polled through the ring: libuv
 * runs a non-blocking pass when it has something to do, and its timers bound
 * the wait. Writes stay with libuv (uv_try_write, then uv_write).
 *
 * The calls take the same callbacks as uv_read_start(), and a NULL ring means
 * libuv reads (the kernel refused io_uring, or the config turned it off): the
 * callers need not know which. Everything runs on the worker's thread. */
#ifndef MX_NET_RING_H
#define MX_NET_RING_H

#include <uv.h>

typedef struct mx_ring_s mx_ring_t;
typedef struct mx_rd_s mx_rd_t; /* a stream's reader in the ring */

/* 0 and *out, or a negative errno (no io_uring here): *out stays NULL. */
int mx_ring_open(uv_loop_t *loop, mx_ring_t **out);
/* uv_run(loop, UV_RUN_DEFAULT), with the ring's reads: returns once libuv has
 * nothing active and no receive is in flight (a reading stream keeps the loop
 * alive, as with libuv). */
void mx_ring_run(mx_ring_t *r);
void mx_ring_close(mx_ring_t *r);

/* As uv_read_start() / uv_read_stop(). *rd is the stream's reader, made by the
 * first start (NULL before). Bytes that arrive between a stop and the
 * cancelled receive's end are kept and delivered after the next start, so a
 * stop loses nothing and bounds what is read past it. */
int mx_ring_read_start(mx_ring_t *r, mx_rd_t **rd, uv_stream_t *s, uv_alloc_cb alloc_cb,
                       uv_read_cb read_cb);
void mx_ring_read_stop(mx_ring_t *r, mx_rd_t **rd, uv_stream_t *s);
/* Before uv_close(): the reader lets go. A receive in flight holds the socket
 * open until it ends, so it is cancelled here; the socket closes at the ring's
 * next wait, within the same loop pass. */
void mx_ring_read_close(mx_ring_t *r, mx_rd_t **rd);

#endif
