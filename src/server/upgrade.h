/* Graceful upgrade (SIGQUIT + moxy -u): the listening sockets go from the
 * running process to a new one over `upgrade_sock`, with SCM_RIGHTS. The
 * new process listens there (it starts first, as in Pingora); the old one,
 * on SIGQUIT, connects, sends one message (the addresses, one per line, and
 * the fds in the same order) and waits for one byte, '1', that the new
 * process writes once its workers serve. */
#ifndef MX_SERVER_UPGRADE_H
#define MX_SERVER_UPGRADE_H

#include <stdbool.h>
#include <stddef.h>

#define MX_UPGRADE_MAX_FDS 64
#define MX_UPGRADE_WAIT_MS 10000 /* the new process waits this long for the old one */

typedef struct {
    int fds[MX_UPGRADE_MAX_FDS];
    char names[MX_UPGRADE_MAX_FDS][128]; /* mx_addr_t.text of each */
    size_t n;
    int conn; /* to the old process, for mx_upgrade_ack(); -1 when none */
} mx_upgrade_fds_t;

/* New process: listens on <path> (a stale socket file is removed) for up to
 * <wait_ms>, receives the sockets into <out>. Returns MX_OK, or an error
 * with the reason in <err>. The socket file is removed either way. */
int mx_upgrade_receive(const char *path, int wait_ms, mx_upgrade_fds_t *out, char *err,
                       size_t errlen);
/* New process: tells the old one it serves (<ok>) or gave up, and closes. */
void mx_upgrade_ack(mx_upgrade_fds_t *in, bool ok);
/* Old process: connects to <path> (retrying up to <connect_ms> while the new
 * process is not there yet), sends <n> sockets <fds> named <names>, waits up
 * to <ack_ms> for the new process to serve. Returns MX_OK once it does; on
 * failure the reason is in <err> and the caller keeps serving. */
int mx_upgrade_send(const char *path, const int *fds, char names[][128], size_t n, int connect_ms,
                    int ack_ms, char *err, size_t errlen);

#endif
