/* Listening sockets, opened by the main thread so they can be handed to a
 * new process on upgrade; every worker accepts on a dup of each. */
#ifndef MX_NET_LISTENER_H
#define MX_NET_LISTENER_H

#include "conf/conf.h"

/* Opens, binds and listens on <lc>'s address (non-blocking, CLOEXEC,
 * SO_REUSEADDR; a stale unix socket file is removed). Returns the fd, or a
 * negative code with the reason in <err>. */
int mx_listener_open(const mx_conf_listener_t *lc, char *err, size_t errlen);

#endif
