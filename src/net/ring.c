/* io_uring reads for a worker: see ring.h. */
#include "net/ring.h"

#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "core/alloc.h"

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

#define SQ_ENTRIES 1024
/* Completions: one per readable socket per pass; an overflow is kept, not lost. */
#define CQ_ENTRIES 8192
#define NBUFS      128 /* provided receive buffers (a power of two): 2 MiB per worker */
#define BUF_SIZE   16384
#define BGID       0

/* user_data: an mx_rd_t * or mx_ring_send_t * (aligned; <kind> tells which),
 * or one of these. */
#define UD_LOOP   1ULL /* the poll on libuv's epoll descriptor */
#define UD_CANCEL 2ULL /* a cancel's own completion: nothing to do */

enum {
    K_RECV = 1,
    K_SEND
};

struct mx_rd_s {
    int kind;            /* K_RECV, first as in mx_ring_send_t */
    uv_stream_t *stream; /* NULL once closed */
    uv_alloc_cb alloc_cb;
    uv_read_cb read_cb;
    int fd;
    bool reading;        /* the owner wants bytes */
    bool armed;          /* a multishot receive is in flight */
    bool cancelling;     /* and a cancel for it is queued */
    bool closed;         /* freed by the receive's last completion */
    bool queued;         /* on the ring's list of readers with kept input */
    bool busy;           /* inside one of its callbacks: not freed under it */
    unsigned arm_gen;    /* the submission its receive goes out with */
    int kept_err;        /* EOF or an error received while stopped (0: none) */
    struct kept_s *kept; /* bytes received while stopped, in order */
    struct kept_s **kept_tail;
    mx_rd_t *next_queued;
};

struct mx_ring_s {
    struct io_uring ring;
    uv_loop_t *loop;
    struct io_uring_buf_ring *br;
    char *bufs;
    unsigned returned; /* buffers given back, not yet published to the kernel */
    size_t narmed;     /* receives in flight */
    bool poll_armed;   /* the poll on libuv's descriptor is in the ring */
    bool loop_ready;   /* it fired: libuv has events */
    bool valgrind;     /* running under valgrind: bounded waits */
    mx_rd_t *queued;   /* readers with kept input to deliver */
    unsigned nheld;    /* ring buffers stopped readers hold */
    unsigned gen;      /* submissions so far: an entry prepared at <gen> is not yet in */
};

/* Bytes a stopped reader received. A stop bounds them: what the current pass
 * had received, usually one completion. The reader holds the ring's buffer
 * itself (no copy) while few are held; past three quarters of the ring it
 * copies and gives the buffer back, so that readers which stay stopped cannot
 * starve the other sockets of buffers. */
#define MAX_HELD (NBUFS * 3 / 4)
typedef struct kept_s {
    struct kept_s *next;
    const char *p; /* into the ring's buffer <bid>, or into data[] */
    size_t len;
    int bid; /* -1: a copy */
    char data[];
} kept_t;


int
mx_ring_open(uv_loop_t *loop, mx_ring_t **out)
{
    *out = NULL;
    mx_ring_t *r = mx_calloc(1, sizeof(*r));
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    /* Completions are run only when this thread waits (DEFER_TASKRUN): no
     * interrupt of the worker per arriving segment. */
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE;
    p.cq_entries = CQ_ENTRIES;
    int rc = io_uring_queue_init_params(SQ_ENTRIES, &r->ring, &p);
    if (rc < 0) {
        mx_free(r);
        return rc;
    }
    size_t brsize = NBUFS * sizeof(struct io_uring_buf);
    void *br = mmap(NULL, brsize, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (br == MAP_FAILED) {
        rc = -errno;
        io_uring_queue_exit(&r->ring);
        mx_free(r);
        return rc;
    }
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (unsigned long)br;
    reg.ring_entries = NBUFS;
    reg.bgid = BGID;
    rc = io_uring_register_buf_ring(&r->ring, &reg, 0);
    if (rc < 0) {
        munmap(br, brsize);
        io_uring_queue_exit(&r->ring);
        mx_free(r);
        return rc;
    }
    r->br = br;
    r->loop = loop;
    r->valgrind = RUNNING_ON_VALGRIND != 0;
    r->bufs = mx_alloc((size_t)NBUFS * BUF_SIZE);
    io_uring_buf_ring_init(r->br);
    for (int i = 0; i < NBUFS; i++)
        io_uring_buf_ring_add(r->br, r->bufs + (size_t)i * BUF_SIZE, BUF_SIZE, (unsigned short)i,
                              io_uring_buf_ring_mask(NBUFS), i);
    io_uring_buf_ring_advance(r->br, NBUFS);
    *out = r;
    return 0;
}


void
mx_ring_close(mx_ring_t *r)
{
    if (r == NULL)
        return;
    io_uring_unregister_buf_ring(&r->ring, BGID);
    io_uring_queue_exit(&r->ring);
    munmap(r->br, NBUFS * sizeof(struct io_uring_buf));
    mx_free(r->bufs);
    mx_free(r);
}


static void
submit(mx_ring_t *r)
{
    io_uring_submit(&r->ring);
    r->gen++;
}


/* An SQE, submitting the queue first when it is full. */
static struct io_uring_sqe *
get_sqe(mx_ring_t *r)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    while (sqe == NULL) {
        submit(r);
        sqe = io_uring_get_sqe(&r->ring);
    }
    return sqe;
}


static void
arm(mx_ring_t *r, mx_rd_t *rd)
{
    struct io_uring_sqe *sqe = get_sqe(r);
    io_uring_prep_recv_multishot(sqe, rd->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BGID;
    io_uring_sqe_set_data(sqe, rd);
    rd->arm_gen = r->gen;
    rd->armed = true;
    r->narmed++;
}


static void
cancel(mx_ring_t *r, mx_rd_t *rd)
{
    struct io_uring_sqe *sqe = get_sqe(r);
    io_uring_prep_cancel(sqe, rd, 0);
    io_uring_sqe_set_data64(sqe, UD_CANCEL);
    rd->cancelling = true;
}


static bool
has_kept(const mx_rd_t *rd)
{
    return rd->kept != NULL;
}


static void give_back(mx_ring_t *r, unsigned bid);


/* Keeps [p, p + n) of ring buffer <bid>: returns whether it holds the buffer
 * (the caller must not give it back). */
static bool
keep(mx_ring_t *r, mx_rd_t *rd, unsigned bid, const char *p, size_t n)
{
    bool hold = r->nheld < MAX_HELD;
    kept_t *k = mx_alloc(sizeof(*k) + (hold ? 0 : n));
    k->next = NULL;
    k->len = n;
    if (hold) {
        k->bid = (int)bid;
        k->p = p;
        r->nheld++;
    } else {
        k->bid = -1;
        memcpy(k->data, p, n);
        k->p = k->data;
    }
    if (rd->kept == NULL)
        rd->kept_tail = &rd->kept;
    *rd->kept_tail = k;
    rd->kept_tail = &k->next;
    return hold;
}


static void
free_kept(mx_ring_t *r, kept_t *k)
{
    if (k->bid >= 0) {
        give_back(r, (unsigned)k->bid);
        r->nheld--;
    }
    mx_free(k);
}


static void
drop_kept(mx_ring_t *r, mx_rd_t *rd)
{
    while (rd->kept != NULL) {
        kept_t *k = rd->kept;
        rd->kept = k->next;
        free_kept(r, k);
    }
}


static void
maybe_free(mx_ring_t *r, mx_rd_t *rd)
{
    if (rd->closed && !rd->armed && !rd->queued && !rd->busy) {
        drop_kept(r, rd);
        mx_free(rd);
    }
}


static void
queue(mx_ring_t *r, mx_rd_t *rd)
{
    if (rd->queued)
        return;
    rd->queued = true;
    rd->next_queued = r->queued;
    r->queued = rd;
}


/* Hands [p, p + n) to the owner as libuv would: its buffer, a copy, its
 * callback, as many times as its buffers take. Returns the bytes not taken
 * (the owner stopped reading or closed). */
static size_t
deliver(mx_rd_t *rd, const char *p, size_t n)
{
    while (n > 0 && rd->reading) {
        uv_buf_t b = uv_buf_init(NULL, 0);
        rd->alloc_cb((uv_handle_t *)rd->stream, 65536, &b);
        if (b.base == NULL || b.len == 0) {
            rd->read_cb(rd->stream, UV_ENOBUFS, &b);
            return 0; /* as libuv: the owner treats it as an error */
        }
        size_t k = n < b.len ? n : b.len;
        memcpy(b.base, p, k);
        p += k;
        n -= k;
        rd->read_cb(rd->stream, (ssize_t)k, &b);
    }
    return rd->closed ? 0 : n;
}


/* EOF or an error: reading stops, as libuv's does. */
static void
deliver_end(mx_rd_t *rd, int err)
{
    uv_buf_t b = uv_buf_init(NULL, 0);
    rd->alloc_cb((uv_handle_t *)rd->stream, 65536, &b);
    rd->reading = false;
    rd->read_cb(rd->stream, err, &b);
}


/* Bytes kept while stopped, then their EOF, then reading resumes. Nothing
 * is added behind them meanwhile (on_recv runs from the ring, not from these
 * callbacks), and a stop leaves the rest in place for the next start. */
static void
deliver_kept(mx_ring_t *r, mx_rd_t *rd)
{
    while (rd->kept != NULL && rd->reading) {
        kept_t *k = rd->kept;
        size_t left = deliver(rd, k->p, k->len);
        if (rd->closed)
            return; /* the close freed what was kept */
        k->p += k->len - left;
        k->len = left;
        if (left > 0)
            break;
        rd->kept = k->next;
        free_kept(r, k);
    }
    if (rd->closed || !rd->reading || has_kept(rd))
        return;
    if (rd->kept_err != 0) {
        int err = rd->kept_err;
        rd->kept_err = 0;
        deliver_end(rd, err);
        return;
    }
    if (!rd->armed)
        arm(r, rd);
}


static void
give_back(mx_ring_t *r, unsigned bid)
{
    io_uring_buf_ring_add(r->br, r->bufs + (size_t)bid * BUF_SIZE, BUF_SIZE, (unsigned short)bid,
                          io_uring_buf_ring_mask(NBUFS), (int)r->returned);
    r->returned++;
}


static void
on_recv(mx_ring_t *r, mx_rd_t *rd, const struct io_uring_cqe *cqe)
{
    int res = cqe->res;
    rd->busy = true;
    if (cqe->flags & IORING_CQE_F_BUFFER) {
        unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        const char *p = r->bufs + (size_t)bid * BUF_SIZE;
        size_t n = res > 0 && !rd->closed ? (size_t)res : 0;
        if (n > 0 && rd->reading && !has_kept(rd))
            n = deliver(rd, p, n);
        bool held = false;
        if (n > 0 && !rd->closed) {
            held = keep(r, rd, bid, p + (size_t)res - n, n);
            if (rd->reading)
                queue(r, rd);
        }
        if (!held)
            give_back(r, bid);
    } else if (res != -ENOBUFS && res != -ECANCELED && res <= 0 && !rd->closed) {
        int err = res == 0 ? UV_EOF : res; /* libuv's codes are -errno */
        if (rd->reading && !has_kept(rd))
            deliver_end(rd, err);
        else
            rd->kept_err = err;
    }
    if (!(cqe->flags & IORING_CQE_F_MORE)) {
        rd->armed = false;
        rd->cancelling = false;
        r->narmed--;
        /* Ended by the buffer ring running dry, or by a stop then a start
         * within one pass: receive again. */
        if (!rd->closed && rd->reading && !has_kept(rd) && rd->kept_err == 0)
            arm(r, rd);
    }
    rd->busy = false;
    maybe_free(r, rd);
}


static void
reap(mx_ring_t *r)
{
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&r->ring, head, cqe)
    {
        n++;
        uint64_t ud = cqe->user_data;
        if (ud == UD_LOOP) {
            r->poll_armed = false;
            r->loop_ready = true;
        } else if (ud != UD_CANCEL && *(const int *)(uintptr_t)ud == K_SEND) {
            mx_ring_send_t *op = (mx_ring_send_t *)(uintptr_t)ud;
            op->done(op, cqe->res);
        } else if (ud != UD_CANCEL) {
            on_recv(r, (mx_rd_t *)(uintptr_t)ud, cqe);
        }
    }
    io_uring_cq_advance(&r->ring, n);
}


static void
run_queued(mx_ring_t *r)
{
    while (r->queued != NULL) {
        mx_rd_t *rd = r->queued;
        r->queued = rd->next_queued;
        rd->queued = false;
        rd->busy = true;
        if (!rd->closed)
            deliver_kept(r, rd);
        rd->busy = false;
        maybe_free(r, rd);
    }
}


/* Submits what is queued and waits up to <ms> (-1: no limit) for a completion. */
static void
wait_ring(mx_ring_t *r, int ms)
{
    /* Valgrind runs one thread at a time and does not let go while this one
     * blocks in io_uring_enter(): a short wait lets the others (the main
     * thread's signals, a reload) run under callgrind. */
    if (r->valgrind && (ms < 0 || ms > 10))
        ms = 10;
    if (r->returned > 0) {
        io_uring_buf_ring_advance(r->br, r->returned);
        r->returned = 0;
    }
    r->gen++;
    if (ms == 0) {
        io_uring_submit_and_get_events(&r->ring);
    } else if (ms < 0) {
        io_uring_submit_and_wait(&r->ring, 1);
    } else {
        struct __kernel_timespec ts = {.tv_sec = ms / 1000,
                                       .tv_nsec = (long long)(ms % 1000) * 1000000};
        struct io_uring_cqe *cqe;
        io_uring_submit_and_wait_timeout(&r->ring, &cqe, 1, &ts, NULL);
    }
}


void
mx_ring_run(mx_ring_t *r)
{
    uv_loop_t *loop = r->loop;
    r->loop_ready = true;
    for (;;) {
        if (r->loop_ready || (uv_loop_alive(loop) && uv_backend_timeout(loop) == 0)) {
            r->loop_ready = false;
            uv_run(loop, UV_RUN_NOWAIT);
        }
        run_queued(r);
        bool alive = uv_loop_alive(loop);
        if (!alive && r->narmed == 0 && r->queued == NULL)
            return;
        if (!r->poll_armed) {
            /* One-shot: armed after each libuv pass, it completes at once if
             * libuv's descriptor is still ready (level-triggered sockets). */
            struct io_uring_sqe *sqe = get_sqe(r);
            io_uring_prep_poll_add(sqe, uv_backend_fd(loop), POLLIN);
            io_uring_sqe_set_data64(sqe, UD_LOOP);
            r->poll_armed = true;
        }
        wait_ring(r, r->queued != NULL ? 0 : alive ? uv_backend_timeout(loop) : -1);
        uv_update_time(loop);
        reap(r);
    }
}


int
mx_ring_read_start(mx_ring_t *r, mx_rd_t **rdp, uv_stream_t *s, uv_alloc_cb alloc_cb,
                   uv_read_cb read_cb)
{
    if (r == NULL)
        return uv_read_start(s, alloc_cb, read_cb);
    mx_rd_t *rd = *rdp;
    if (rd == NULL) {
        uv_os_fd_t fd;
        int rc = uv_fileno((const uv_handle_t *)s, &fd);
        if (rc < 0)
            return rc;
        rd = mx_calloc(1, sizeof(*rd));
        rd->kind = K_RECV;
        rd->stream = s;
        rd->fd = fd;
        *rdp = rd;
    }
    rd->alloc_cb = alloc_cb;
    rd->read_cb = read_cb;
    if (rd->reading)
        return 0;
    rd->reading = true;
    if (has_kept(rd) || rd->kept_err != 0)
        queue(r, rd); /* delivered from the loop, never from inside this call */
    else if (!rd->armed)
        arm(r, rd);
    return 0;
}


void
mx_ring_read_stop(mx_ring_t *r, mx_rd_t **rdp, uv_stream_t *s)
{
    if (r == NULL) {
        uv_read_stop(s);
        return;
    }
    mx_rd_t *rd = *rdp;
    if (rd == NULL || !rd->reading)
        return;
    rd->reading = false;
    if (rd->armed && !rd->cancelling)
        cancel(r, rd);
}


void
mx_ring_read_close(mx_ring_t *r, mx_rd_t **rdp)
{
    mx_rd_t *rd = *rdp;
    if (r == NULL || rd == NULL)
        return;
    *rdp = NULL;
    rd->closed = true;
    rd->reading = false;
    rd->stream = NULL;
    drop_kept(r, rd);
    if (rd->armed && !rd->cancelling) {
        /* A receive not yet submitted names the descriptor by number: it
         * goes in now, before the close frees that number for a new socket
         * (the cancel behind it ends it). */
        if (rd->arm_gen == r->gen)
            submit(r);
        cancel(r, rd);
    }
    maybe_free(r, rd);
}


void
mx_ring_send(mx_ring_t *r, mx_ring_send_t *op, int fd, const void *p, size_t n)
{
    struct io_uring_sqe *sqe = get_sqe(r);
    /* Never waits: a full socket buffer answers -EAGAIN at once, and the
     * caller queues the rest where libuv polls for room. */
    io_uring_prep_send(sqe, fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    io_uring_sqe_set_data(sqe, op);
    op->kind = K_SEND;
    op->sqe = sqe;
    op->gen = r->gen;
}


bool
mx_ring_send_extend(mx_ring_t *r, mx_ring_send_t *op, size_t n)
{
    if (op->gen != r->gen)
        return false;
    ((struct io_uring_sqe *)op->sqe)->len = (unsigned)n;
    return true;
}


bool
mx_ring_send_withdraw(mx_ring_t *r, mx_ring_send_t *op)
{
    if (op->gen != r->gen)
        return false;
    struct io_uring_sqe *sqe = op->sqe;
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, UD_CANCEL);
    return true;
}


void
mx_ring_send_flush(mx_ring_t *r, mx_ring_send_t *op)
{
    if (op->gen == r->gen)
        submit(r);
}
