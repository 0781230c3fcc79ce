/* The listening-socket hand-over of a graceful upgrade (src/server/upgrade.c),
 * both ends in one process: the receiver runs in a thread as `moxy -u` would,
 * the sender plays the old process on SIGQUIT. The sockets must arrive as the
 * same open files under their names, and the sender must learn whether the
 * new process started. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/errors.h"
#include "server/upgrade.h"

typedef struct {
    char path[108];
    bool ack;
    int rc;
    mx_upgrade_fds_t in;
    char err[256];
} receiver_t;


static void *
receive(void *arg)
{
    receiver_t *r = arg;
    r->rc = mx_upgrade_receive(r->path, 5000, &r->in, r->err, sizeof(r->err));
    if (r->rc == MX_OK)
        mx_upgrade_ack(&r->in, r->ack);
    return NULL;
}


static void
sock_path(char *out, size_t len, const char *tag)
{
    snprintf(out, len, "/tmp/moxy-upgrade-test-%d-%s.sock", (int)getpid(), tag);
}


static bool
same_file(int a, int b)
{
    struct stat sa, sb;
    return fstat(a, &sa) == 0 && fstat(b, &sb) == 0 && sa.st_ino == sb.st_ino &&
           sa.st_dev == sb.st_dev;
}


Test(upgrade, hands_over_every_socket_by_name_and_learns_the_new_process_serves)
{
    receiver_t r = {.ack = true};
    sock_path(r.path, sizeof(r.path), "ok");
    pthread_t t;
    pthread_create(&t, NULL, receive, &r);

    int sp[2], pp[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
    cr_assert_eq(pipe(pp), 0);
    int fds[2] = {sp[0], pp[0]};
    char names[2][128] = {"127.0.0.1:8080", "unix:/run/moxy.sock"};
    char err[256] = "";
    int rc = mx_upgrade_send(r.path, fds, names, 2, 5000, 5000, err, sizeof(err));
    pthread_join(t, NULL);

    cr_assert_eq(rc, MX_OK, "send: %s", err);
    cr_assert_eq(r.rc, MX_OK, "receive: %s", r.err);
    cr_assert_eq(r.in.n, 2);
    cr_assert_str_eq(r.in.names[0], "127.0.0.1:8080");
    cr_assert_str_eq(r.in.names[1], "unix:/run/moxy.sock");
    cr_assert(same_file(r.in.fds[0], sp[0]), "the first socket is not the same open file");
    cr_assert(same_file(r.in.fds[1], pp[0]), "the second socket is not the same open file");
    cr_assert_neq(access(r.path, F_OK), 0, "the upgrade socket file was left behind");
    for (int i = 0; i < 2; i++)
        close(r.in.fds[i]);
    close(sp[0]);
    close(sp[1]);
    close(pp[0]);
    close(pp[1]);
}


Test(upgrade, a_new_process_that_gives_up_is_a_failure_for_the_old_one)
{
    receiver_t r = {.ack = false};
    sock_path(r.path, sizeof(r.path), "nak");
    pthread_t t;
    pthread_create(&t, NULL, receive, &r);
    int pp[2];
    cr_assert_eq(pipe(pp), 0);
    char names[1][128] = {"127.0.0.1:8080"};
    char err[256] = "";
    int rc = mx_upgrade_send(r.path, pp, names, 1, 5000, 5000, err, sizeof(err));
    pthread_join(t, NULL);
    cr_assert_eq(r.rc, MX_OK, "receive: %s", r.err);
    cr_assert_neq(rc, MX_OK);
    cr_assert(strstr(err, "did not start") != NULL, "err: %s", err);
    close(r.in.fds[0]);
    close(pp[0]);
    close(pp[1]);
}


Test(upgrade, nobody_waiting_is_a_failure_after_the_connect_window)
{
    char path[108];
    sock_path(path, sizeof(path), "none");
    unlink(path);
    int pp[2];
    cr_assert_eq(pipe(pp), 0);
    char names[1][128] = {"127.0.0.1:8080"};
    char err[256] = "";
    int rc = mx_upgrade_send(path, pp, names, 1, 300, 1000, err, sizeof(err));
    cr_assert_lt(rc, 0);
    cr_assert(strstr(err, "no new process is waiting") != NULL, "err: %s", err);
    close(pp[0]);
    close(pp[1]);
}
