/* Listening sockets, opened by the main thread so they can be handed to a
 * new process on upgrade; every worker accepts on a dup of each. */
#ifndef MX_NET_LISTENER_H
#define MX_NET_LISTENER_H

#include "conf/conf.h"

/* Opens and binds <lc>'s address (non-blocking, CLOEXEC, SO_REUSEADDR; a
 * stale unix socket file is removed), without listening yet. Returns the fd,
 * or a negative code with the reason in <err>. */
int mx_listener_bind(const mx_conf_listener_t *lc, char *err, size_t errlen);

/* listen() on <fd> with <lc>'s backlog. The main thread calls it only once
 * every listener is bound, so when one address accepts, all of them do (and
 * a config whose second address cannot be bound never accepted a client on
 * its first). Returns 0, or a negative code with the reason in <err>. */
int mx_listener_listen(int fd, const mx_conf_listener_t *lc, char *err, size_t errlen);

#endif
