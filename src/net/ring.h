/* A worker's io_uring: client and upstream sockets are read through it.
 *
 * Each reading socket has one multishot receive in the ring; the kernel picks
 * a buffer from a ring of provided buffers and posts a completion, with no
 * epoll_wait, epoll re-poll (tcp_poll) or read() per request. The worker waits
 * in io_uring_enter(), and libuv's own epoll descriptor (listeners, writes
 * that wait for room, cross-thread wake-ups) is polled through the ring: libuv
 * runs a non-blocking pass when it has something to do, and its timers bound
 * the wait. Writes go through it too, as non-blocking sends submitted with the
 * pass's other work at that wait (net/wstream.c): one io_uring_enter() per
 * pass instead of a write() per response. What a send leaves goes to libuv.
 *
 * The calls take the same callbacks as uv_read_start(), and a NULL ring means
 * libuv reads (the kernel refused io_uring, or the config turned it off): the
 * callers need not know which. Everything runs on the worker's thread. */
#ifndef MX_NET_RING_H
#define MX_NET_RING_H

#include <stdbool.h>
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

/* A send: the caller's, alive until <done> runs (always, from the ring's
 * loop, never from inside a call below). <res> is what send(2) would return
 * with MSG_DONTWAIT: the bytes taken (maybe fewer than asked) or -errno, so
 * -EAGAIN when the socket's buffer is full. */
typedef struct mx_ring_send_s mx_ring_send_t;
struct mx_ring_send_s {
    int kind; /* the ring's */
    void (*done)(mx_ring_send_t *op, int res);
    void *sqe;    /* the ring's: its entry while not yet submitted */
    unsigned gen; /* the ring's: the submission it goes out with */
};
void mx_ring_send(mx_ring_t *r, mx_ring_send_t *op, int fd, const void *p, size_t n);
/* Whether <op> is not yet submitted; then it now sends <n> bytes from the
 * same start (the caller appended to its buffer). */
bool mx_ring_send_extend(mx_ring_t *r, mx_ring_send_t *op, size_t n);
/* Whether <op> was not yet submitted; then it never will be, and its <done>
 * is not called: the caller writes its bytes another way. */
bool mx_ring_send_withdraw(mx_ring_t *r, mx_ring_send_t *op);
/* Submits <op> now if it is still waiting for the pass's end: before the
 * caller closes its descriptor, whose number a new socket may take. */
void mx_ring_send_flush(mx_ring_t *r, mx_ring_send_t *op);

#endif
