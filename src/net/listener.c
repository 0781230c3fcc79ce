#include "net/listener.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


int
mx_listener_bind(const mx_conf_listener_t *lc, char *err, size_t errlen)
{
    const mx_addr_t *a = &lc->addr;
    int fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto fail;
    if (a->kind == MX_ADDR_TCP) {
        int on = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
        if (a->sa.ss_family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on));
    } else {
        struct stat st;
        if (stat(a->host, &st) == 0 && S_ISSOCK(st.st_mode))
            unlink(a->host);
    }
    if (bind(fd, (const struct sockaddr *)&a->sa, a->salen) < 0)
        goto fail;
    return fd;

fail:;
    int e = errno;
    snprintf(err, errlen, "cannot listen on %s: %s", a->text, strerror(e));
    if (fd >= 0)
        close(fd);
    return -e;
}


int
mx_listener_listen(int fd, const mx_conf_listener_t *lc, char *err, size_t errlen)
{
    /* On a socket already listening (one taken over on upgrade) this only
     * sets the new config's backlog. */
    if (listen(fd, lc->backlog > 0 ? lc->backlog : 511) == 0)
        return 0;
    int e = errno;
    snprintf(err, errlen, "cannot listen on %s: %s", lc->addr.text, strerror(e));
    return -e;
}
