/* Graceful upgrade: handing the listening sockets to a new process over a
 * unix socket (SCM_RIGHTS), as Pingora does (pingora-core's
 * server/transfer_fd), plus one acknowledgement byte so that the old
 * process stops accepting only once the new one serves. The sequence is in
 * docs/design-notes.md ("Graceful upgrade"). */
#define _GNU_SOURCE /* accept4 */
#include "server/upgrade.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/errors.h"
#include "core/log.h"

#define MAGIC     "moxy-listeners 1\n"
#define MAX_BYTES 8192

static uint64_t
mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}


static int
sock_addr(const char *path, struct sockaddr_un *sun, char *err, size_t errlen)
{
    memset(sun, 0, sizeof(*sun));
    sun->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sun->sun_path)) {
        snprintf(err, errlen, "upgrade_sock \"%s\" is too long for a unix socket path", path);
        return MX_ECONF;
    }
    memcpy(sun->sun_path, path, strlen(path));
    return MX_OK;
}


/* Waits up to <ms> for <fd> to be readable (POLLIN) or writable. */
static int
wait_fd(int fd, short events, int ms)
{
    struct pollfd p = {.fd = fd, .events = events};
    for (;;) {
        int n = poll(&p, 1, ms);
        if (n < 0 && errno == EINTR)
            continue;
        return n;
    }
}


int
mx_upgrade_receive(const char *path, int wait_ms, mx_upgrade_fds_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    out->conn = -1;
    struct sockaddr_un sun;
    if (sock_addr(path, &sun, err, errlen) != MX_OK)
        return MX_ECONF;
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0) {
        snprintf(err, errlen, "upgrade: socket: %s", strerror(errno));
        return -errno;
    }
    struct stat st;
    if (stat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path); /* a stale one, as Pingora does */
    if (bind(lfd, (struct sockaddr *)&sun, sizeof(sun)) < 0 || listen(lfd, 8) < 0) {
        int e = errno;
        snprintf(err, errlen, "upgrade: cannot listen on upgrade_sock \"%s\": %s", path,
                 strerror(e));
        close(lfd);
        return -e;
    }
    mx_log_info("upgrade: waiting up to %ds on %s for the running moxy's listening sockets "
                "(send it SIGQUIT)",
                wait_ms / 1000, path);
    int rc = MX_OK;
    int conn = -1;
    if (wait_fd(lfd, POLLIN, wait_ms) <= 0 || (conn = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)) < 0) {
        snprintf(err, errlen,
                 "upgrade: no running moxy handed over its sockets on %s within %ds (was it "
                 "sent SIGQUIT? is upgrade_sock the same in both configs?)",
                 path, wait_ms / 1000);
        rc = MX_ECONF;
        goto done;
    }
    char buf[MAX_BYTES + 1];
    char cbuf[CMSG_SPACE(sizeof(int) * MX_UPGRADE_MAX_FDS)];
    struct iovec iov = {.iov_base = buf, .iov_len = MAX_BYTES};
    struct msghdr msg = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
    if (wait_fd(conn, POLLIN, 10000) <= 0) {
        snprintf(err, errlen, "upgrade: the running moxy connected but sent nothing");
        rc = MX_ECONF;
        goto done;
    }
    ssize_t n = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
    if (n <= 0) {
        snprintf(err, errlen, "upgrade: reading the sockets failed: %s",
                 n < 0 ? strerror(errno) : "connection closed");
        rc = MX_ECONF;
        goto done;
    }
    buf[n] = '\0';
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k && out->n < MX_UPGRADE_MAX_FDS; i++)
            memcpy(&out->fds[out->n++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
    }
    /* The payload names the sockets in order, one address per line. */
    size_t names = 0;
    if (strncmp(buf, MAGIC, strlen(MAGIC)) == 0) {
        char *p = buf + strlen(MAGIC);
        while (*p && names < out->n) {
            char *nl = strchr(p, '\n');
            if (nl == NULL)
                break;
            *nl = '\0';
            size_t l =
                strlen(p) < sizeof(out->names[0]) - 1 ? strlen(p) : sizeof(out->names[0]) - 1;
            memcpy(out->names[names], p, l);
            out->names[names++][l] = '\0';
            p = nl + 1;
        }
    }
    if ((msg.msg_flags & MSG_CTRUNC) || names != out->n) {
        snprintf(err, errlen, "upgrade: malformed hand-over (%zu sockets, %zu names)", out->n,
                 names);
        for (size_t i = 0; i < out->n; i++)
            close(out->fds[i]);
        out->n = 0;
        rc = MX_ECONF;
        goto done;
    }
    out->conn = conn;
    conn = -1;

done:
    if (conn >= 0)
        close(conn);
    close(lfd);
    unlink(path);
    return rc;
}


void
mx_upgrade_ack(mx_upgrade_fds_t *in, bool ok)
{
    if (in->conn < 0)
        return;
    if (ok) {
        char b = '1';
        ssize_t n = write(in->conn, &b, 1);
        (void)n;
    }
    close(in->conn);
    in->conn = -1;
}


int
mx_upgrade_send(const char *path, const int *fds, char names[][128], size_t n, int connect_ms,
                int ack_ms, char *err, size_t errlen)
{
    struct sockaddr_un sun;
    if (sock_addr(path, &sun, err, errlen) != MX_OK)
        return MX_ECONF;
    if (n > MX_UPGRADE_MAX_FDS) {
        snprintf(err, errlen, "upgrade: %zu listening sockets, at most %d can be handed over", n,
                 MX_UPGRADE_MAX_FDS);
        return MX_ECONF;
    }
    /* The new process may still be starting: retry as Pingora does. */
    int fd = -1;
    uint64_t deadline = mono_ms() + (uint64_t)connect_ms;
    for (;;) {
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            snprintf(err, errlen, "upgrade: socket: %s", strerror(errno));
            return -errno;
        }
        if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0)
            break;
        int e = errno;
        close(fd);
        if ((e != ENOENT && e != ECONNREFUSED && e != EACCES) || mono_ms() >= deadline) {
            snprintf(err, errlen,
                     "no new process is waiting on upgrade_sock %s (%s): start `moxy -u` "
                     "first (it waits there)",
                     path, strerror(e));
            return -e;
        }
        usleep(100 * 1000);
    }
    char buf[MAX_BYTES];
    size_t len = (size_t)snprintf(buf, sizeof(buf), "%s", MAGIC);
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(buf + len, sizeof(buf) - len, "%s\n", names[i]);
    char cbuf[CMSG_SPACE(sizeof(int) * MX_UPGRADE_MAX_FDS)];
    memset(cbuf, 0, sizeof(cbuf));
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    struct msghdr msg = {.msg_iov = &iov,
                         .msg_iovlen = 1,
                         .msg_control = cbuf,
                         .msg_controllen = CMSG_SPACE(sizeof(int) * n)};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * n);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
    if (sendmsg(fd, &msg, MSG_NOSIGNAL) != (ssize_t)len) {
        snprintf(err, errlen, "upgrade: sending the sockets failed: %s", strerror(errno));
        close(fd);
        return MX_ECONF;
    }
    /* The new process answers '1' once its workers serve, or closes. */
    char b = 0;
    ssize_t r = 0;
    if (wait_fd(fd, POLLIN, ack_ms) > 0)
        r = read(fd, &b, 1);
    close(fd);
    if (r != 1 || b != '1') {
        snprintf(err, errlen,
                 "the new process took the sockets but did not start (it exited or hung "
                 "before serving; see its log)");
        return MX_ECONF;
    }
    return MX_OK;
}
