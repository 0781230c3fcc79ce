/* The kernel's cost of one proxied request, epoll against io_uring: the
 * measurement behind src/net/ring.c (docs/performance.md, stop 17). Not part
 * of moxy or of its build.
 *
 * A minimal HTTP/1 keepalive relay for bodiless GETs: each client connection
 * gets its own upstream connection at accept; a request head goes upstream
 * verbatim and the answer (Content-Length framed) comes back whole. Modes:
 *   epoll   level-triggered epoll, read() and write() (what libuv does)
 *   uring   multishot receives into provided buffers, sends through the ring,
 *           one io_uring_enter() per pass (SINGLE_ISSUER | DEFER_TASKRUN)
 *   uringw  the same receives, write() for sends (what moxy built)
 *   hybrid  the ring's descriptor in an epoll set (no DEFER_TASKRUN)
 *
 *   cc -O2 -Wall -Wextra -o relay relay.c -luring
 *   ./relay MODE LISTEN_PORT UPSTREAM_PORT &
 *   wrk -t1 -c50 -d3s http://127.0.0.1:LISTEN_PORT/   (CPU from /proc/PID/stat)
 *
 * A probe: errors end the connection or are ignored, closed connections leak. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <signal.h>

typedef struct conn {
    int cfd, ufd;
    char req[4096]; int rlen;
    char resp[16384]; int plen; int need;
} conn_t;

static int uport;
static int mode; /* 0 epoll, 1 uring, 2 uring recv + write(), 3 epoll waits, ring fd in it */

static int up_connect(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(uport) };
    a.sin_addr.s_addr = htonl(0x7f000001);
    if (connect(fd, (void *)&a, sizeof a) < 0) { perror("connect"); exit(1); }
    int one = 1; setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* returns 1 when the response in c->resp is complete */
static int resp_done(conn_t *c) {
    if (c->need < 0) {
        char *e = memmem(c->resp, c->plen, "\r\n\r\n", 4);
        if (!e) return 0;
        char *cl = memmem(c->resp, e - c->resp, "Content-Length:", 15);
        if (!cl) cl = memmem(c->resp, e - c->resp, "content-length:", 15);
        c->need = (int)(e + 4 - c->resp) + (cl ? atoi(cl + 15) : 0);
    }
    return c->plen >= c->need;
}

static conn_t *conn_new(int cfd) {
    conn_t *c = calloc(1, sizeof *c);
    c->cfd = cfd; c->ufd = up_connect(); c->need = -1;
    int one = 1; setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return c;
}

static int lfd;

/* ---------------- epoll, level-triggered, read()/write() like libuv ---- */
static void run_epoll(void) {
    int ep = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event evs[1024];
    for (;;) {
        int n = epoll_wait(ep, evs, 1024, -1);
        for (int i = 0; i < n; i++) {
            uintptr_t p = (uintptr_t)evs[i].data.ptr;
            if (!p) {
                int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                if (cfd < 0) continue;
                conn_t *c = conn_new(cfd);
                struct epoll_event e1 = { .events = EPOLLIN, .data.ptr = c };
                struct epoll_event e2 = { .events = EPOLLIN, .data.ptr = (void *)((uintptr_t)c | 1) };
                epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &e1);
                epoll_ctl(ep, EPOLL_CTL_ADD, c->ufd, &e2);
                continue;
            }
            conn_t *c = (conn_t *)(p & ~(uintptr_t)1);
            if (p & 1) {
                ssize_t r = read(c->ufd, c->resp + c->plen, sizeof c->resp - c->plen);
                if (r <= 0) continue;
                c->plen += r;
                if (resp_done(c)) {
                    if (write(c->cfd, c->resp, c->plen) != c->plen) { /* probe: ignore */ }
                    c->plen = 0; c->need = -1;
                }
            } else {
                ssize_t r = read(c->cfd, c->req + c->rlen, sizeof c->req - c->rlen);
                if (r <= 0) {
                    if (r < 0 && errno == EAGAIN) continue;
                    close(c->cfd); close(c->ufd); c->cfd = c->ufd = -1; continue;
                }
                c->rlen += r;
                if (memmem(c->req, c->rlen, "\r\n\r\n", 4)) {
                    struct iovec iov[2] = { { c->req, c->rlen }, { "", 0 } };
                    if (writev(c->ufd, iov, 1) != c->rlen) { }
                    c->rlen = 0;
                }
            }
        }
    }
}

/* ---------------- io_uring: multishot recv into a buffer ring ---------- */
#define NBUF 256
#define BUFSZ 16384
static struct io_uring ring;
static struct io_uring_buf_ring *br;
static char *bufs;

enum { T_ACCEPT, T_CRECV, T_URECV, T_SEND };
#define UD(c, t) ((uint64_t)(uintptr_t)(c) | (t))

static struct io_uring_sqe *sqe_get(void) {
    struct io_uring_sqe *s = io_uring_get_sqe(&ring);
    if (!s) { io_uring_submit(&ring); s = io_uring_get_sqe(&ring); }
    return s;
}
static void arm_recv(conn_t *c, int up) {
    struct io_uring_sqe *s = sqe_get();
    io_uring_prep_recv_multishot(s, up ? c->ufd : c->cfd, NULL, 0, 0);
    s->flags |= IOSQE_BUFFER_SELECT; s->buf_group = 0;
    io_uring_sqe_set_data64(s, UD(c, up ? T_URECV : T_CRECV));
}
static void do_send(conn_t *c, int fd, const char *b, int n) {
    if (mode >= 2) { if (write(fd, b, n) != n) { } return; }
    struct io_uring_sqe *s = sqe_get();
    io_uring_prep_send(s, fd, b, n, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(s, UD(c, T_SEND));
}

/* Every completion of one pass: accepts, receives (copied out, the buffer
 * given back at once), sends (nothing to do). */
static void handle_cqes(void) {
    struct io_uring_sqe *s;
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
        seen++;
        uint64_t ud = cqe->user_data; int t = ud & 7; conn_t *c = (conn_t *)(uintptr_t)(ud & ~(uint64_t)7);
        int res = cqe->res;
        if (t == T_ACCEPT) {
            if (res >= 0) { c = conn_new(res); arm_recv(c, 0); arm_recv(c, 1); }
            if (!(cqe->flags & IORING_CQE_F_MORE)) { s = sqe_get(); io_uring_prep_multishot_accept(s, lfd, NULL, NULL, 0); io_uring_sqe_set_data64(s, T_ACCEPT); }
            continue;
        }
        if (t == T_SEND) { continue; }
        int up = t == T_URECV;
        if (res <= 0) {
            if (res == -ENOBUFS) { arm_recv(c, up); continue; }
            if (!up) { close(c->cfd); close(c->ufd); /* leaks c: probe */ }
            continue;
        }
        int bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        char *b = bufs + (size_t)bid * BUFSZ;
        if (up) {
            memcpy(c->resp + c->plen, b, res); c->plen += res;
            if (resp_done(c)) { do_send(c, c->cfd, c->resp, c->plen); c->plen = 0; c->need = -1; }
        } else {
            memcpy(c->req + c->rlen, b, res); c->rlen += res;
            if (memmem(c->req, c->rlen, "\r\n\r\n", 4)) { do_send(c, c->ufd, c->req, c->rlen); c->rlen = 0; }
        }
        io_uring_buf_ring_add(br, b, BUFSZ, bid, io_uring_buf_ring_mask(NBUF), 0);
        io_uring_buf_ring_advance(br, 1);
        if (!(cqe->flags & IORING_CQE_F_MORE)) arm_recv(c, up);
    }
    io_uring_cq_advance(&ring, seen);
}

/* The ring with <flags> and its provided buffers. */
static void setup_ring(unsigned flags) {
    struct io_uring_params pr = { .flags = flags };
    if (io_uring_queue_init_params(1024, &ring, &pr) < 0) { perror("uring"); exit(1); }
    br = mmap(NULL, NBUF * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    struct io_uring_buf_reg reg = { .ring_addr = (uintptr_t)br, .ring_entries = NBUF, .bgid = 0 };
    if (io_uring_register_buf_ring(&ring, &reg, 0) < 0) { perror("bufring"); exit(1); }
    io_uring_buf_ring_init(br);
    bufs = malloc((size_t)NBUF * BUFSZ);
    for (int i = 0; i < NBUF; i++)
        io_uring_buf_ring_add(br, bufs + (size_t)i * BUFSZ, BUFSZ, i, io_uring_buf_ring_mask(NBUF), i);
    io_uring_buf_ring_advance(br, NBUF);
}

static void run_uring(void) {
    setup_ring(IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN);
    struct io_uring_sqe *s = sqe_get();
    io_uring_prep_multishot_accept(s, lfd, NULL, NULL, 0);
    io_uring_sqe_set_data64(s, T_ACCEPT);
    for (;;) {
        io_uring_submit_and_wait(&ring, 1);
        handle_cqes();
    }
}

static void run_hybrid(void) {
    setup_ring(IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG);
    int ep = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0 };
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    ev.data.u64 = 1;
    epoll_ctl(ep, EPOLL_CTL_ADD, ring.ring_fd, &ev);
    struct epoll_event evs[64];
    for (;;) {
        if (io_uring_sq_ready(&ring) || (IO_URING_READ_ONCE(*ring.sq.kflags) & IORING_SQ_TASKRUN)) io_uring_submit_and_get_events(&ring);
        int n = epoll_wait(ep, evs, 64, io_uring_cq_ready(&ring) ? 0 : -1);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u64 == 0) {
                int cfd = accept4(lfd, NULL, NULL, 0);
                if (cfd < 0) continue;
                conn_t *c = conn_new(cfd); arm_recv(c, 0); arm_recv(c, 1);
            }
        }
        handle_cqes();
    }
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: p epoll|uring|uringw PORT UPSTREAM_PORT\n"); return 2; }
    mode = !strcmp(argv[1], "epoll") ? 0 : !strcmp(argv[1], "uring") ? 1 : !strcmp(argv[1], "uringw") ? 2 : 3;
    uport = atoi(argv[3]); signal(SIGPIPE, SIG_IGN);
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1; setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
    a.sin_addr.s_addr = htonl(0x7f000001);
    if (bind(lfd, (void *)&a, sizeof a) < 0 || listen(lfd, 4096) < 0) { perror("listen"); return 1; }
    if (mode == 0) run_epoll(); else if (mode == 3) run_hybrid(); else run_uring();
}
