/* moxy's entry point: command line, config, daemon and pid file, listening
 * sockets, worker threads, signals and the lifecycle phases. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/errors.h"
#include "upstream/group.h"
#include "core/log.h"
#include "core/stats.h"
#include "lua/shdict.h"
#include "lua/vm.h"
#include "net/listener.h"
#include "server/server.h"
#include "upstream/health.h"

static mx_server_t server;

static void on_signal(uv_signal_t *h, int signum);
static void on_shutdown_tick(uv_timer_t *t);


const char *
mx_phase_str(mx_phase_t p)
{
    static const char *names[] = {"Setup",
                                  "Bootstrap",
                                  "BootstrapComplete",
                                  "Running",
                                  "GracefulUpgradeTransferringFds",
                                  "GracefulTerminate",
                                  "ShutdownStarted",
                                  "ShutdownGracePeriod",
                                  "ShutdownRuntimes",
                                  "Terminated"};
    return p <= MX_PHASE_TERMINATED ? names[p] : "?";
}


static void
set_phase(mx_phase_t p)
{
    server.phase = p;
    mx_log_info("lifecycle phase: %s", mx_phase_str(p));
}


static void
usage(FILE *out)
{
    fprintf(out,
            "usage: moxy [-c FILE] [-d] [-t] [-u] [-h] [-V]\n"
            "  -c, --conf FILE   configuration file (default conf/moxy.yaml)\n"
            "  -d, --daemon      run in the background (overrides `daemon:`)\n"
            "  -t, --test        check the configuration and exit (0 ok, 1 bad)\n"
            "  -u, --upgrade     take over the listening sockets of a running moxy\n"
            "  -h, --help        this text\n"
            "  -V, --version     print the version\n"
            "signals: TERM graceful stop, INT fast stop, USR1 reopen logs\n");
}


/* Refuses what the config names but this build cannot do yet, so that a
 * config never silently means less than it says. */
static int
check_supported(const mx_conf_t *c, char *err, size_t errlen)
{
    for (size_t i = 0; i < c->nservices; i++) {
        const mx_conf_service_t *svc = &c->services[i];
        for (size_t j = 0; j < svc->nlisteners; j++) {
            if (svc->listeners[j].tls) {
                snprintf(err, errlen,
                         "%s: services[%zu].listeners[%zu].tls: TLS listeners are not supported "
                         "by this build yet",
                         c->file, i, j);
                return MX_ECONF;
            }
        }
        if (svc->upstream_ref == NULL && svc->script == NULL) {
            snprintf(err, errlen,
                     "%s: services[%zu].upstream: required (a service without a script needs an "
                     "upstream group)",
                     c->file, i);
            return MX_ECONF;
        }
    }
    /* Shared dicts exist before any VM: init() may already use them. */
    mx_shdict_create_all(c);
    /* Scripts load in a scratch VM first: syntax and init() errors surface here. */
    for (size_t i = 0; i < c->nservices; i++) {
        if (c->services[i].script != NULL) {
            mx_vm_t *vm;
            if (mx_vm_new(c, NULL, &vm, err, errlen) != MX_OK)
                return MX_ECONF;
            mx_vm_free(vm);
            break;
        }
    }
    return MX_OK;
}


static void
raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}


/* Forks into the background. The parent waits until the child has written
 * its pid file (or failed) so that `moxy -d` returning means it runs. */
static int
daemonize(int *ready_fd)
{
    int p[2];
    if (pipe(p) < 0)
        return -errno;
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid > 0) {
        close(p[1]);
        char ok = 0;
        ssize_t n = read(p[0], &ok, 1);
        _exit(n == 1 && ok == 1 ? 0 : 1);
    }
    close(p[0]);
    setsid();
    int fd = open("/dev/null", O_RDWR);
    if (fd >= 0) {
        dup2(fd, 0);
        dup2(fd, 1);
        if (server.conf->error_log != NULL)
            dup2(fd, 2);
        if (fd > 2)
            close(fd);
    }
    *ready_fd = p[1];
    return MX_OK;
}


static int
write_pid_file(const char *path)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        mx_log_error("cannot write pid file \"%s\": %s", path, strerror(errno));
        return -errno;
    }
    fprintf(f, "%d\n", (int)getpid());
    fclose(f);
    return MX_OK;
}


static int
drop_privileges(const mx_conf_t *c)
{
    if (c->user == NULL && c->group == NULL)
        return MX_OK;
    if (geteuid() != 0) {
        mx_log_warn("user/group given but not running as root: keeping the current user");
        return MX_OK;
    }
    gid_t gid = (gid_t)-1;
    if (c->group != NULL) {
        struct group *g = getgrnam(c->group);
        if (g == NULL) {
            mx_log_error("unknown group \"%s\"", c->group);
            return MX_ECONF;
        }
        gid = g->gr_gid;
    }
    if (c->user != NULL) {
        struct passwd *pw = getpwnam(c->user);
        if (pw == NULL) {
            mx_log_error("unknown user \"%s\"", c->user);
            return MX_ECONF;
        }
        if (gid == (gid_t)-1)
            gid = pw->pw_gid;
        if (setgid(gid) < 0 || initgroups(pw->pw_name, gid) < 0 || setuid(pw->pw_uid) < 0) {
            mx_log_error("cannot switch to user \"%s\": %s", c->user, strerror(errno));
            return MX_ECONF;
        }
    } else if (setgid(gid) < 0 || setgroups(0, NULL) < 0) {
        mx_log_error("cannot switch to group \"%s\": %s", c->group, strerror(errno));
        return MX_ECONF;
    }
    return MX_OK;
}


static void
begin_shutdown(bool fast)
{
    if (server.phase >= MX_PHASE_SHUTDOWN_STARTED && !fast)
        return;
    server.fast = server.fast || fast;
    set_phase(MX_PHASE_SHUTDOWN_STARTED);
    for (int i = 0; i < server.nworkers; i++)
        mx_worker_stop(&server.workers[i], fast);
    set_phase(MX_PHASE_SHUTDOWN_GRACE_PERIOD);
    double t = fast ? 0 : server.conf->graceful_shutdown_timeout_seconds;
    server.deadline_ms = uv_now(&server.loop) + (uint64_t)(t * 1000.0);
    uv_timer_start(&server.timer, on_shutdown_tick, 20, 20);
}


static void
on_grace_over(uv_timer_t *t)
{
    (void)t;
    begin_shutdown(false);
}


/* Polls the workers while they drain; past the deadline they are forced. */
static void
on_shutdown_tick(uv_timer_t *t)
{
    int running = 0;
    for (int i = 0; i < server.nworkers; i++) {
        mx_worker_t *w = &server.workers[i];
        if (!w->async_closed)
            running++;
    }
    if (running > 0 && uv_now(&server.loop) >= server.deadline_ms && !server.fast) {
        mx_log_warn("graceful shutdown timeout: closing %d worker(s) with open connections",
                    running);
        server.fast = true;
        for (int i = 0; i < server.nworkers; i++)
            mx_worker_stop(&server.workers[i], true);
    }
    if (running > 0)
        return;
    uv_timer_stop(t);
    for (size_t i = 0; i < mx_countof(server.signals); i++)
        uv_close((uv_handle_t *)&server.signals[i], NULL);
    uv_close((uv_handle_t *)t, NULL);
}


static void
on_signal(uv_signal_t *h, int signum)
{
    (void)h;
    switch (signum) {
    case SIGTERM:
        if (server.phase != MX_PHASE_RUNNING)
            return;
        mx_log_info("SIGTERM: graceful shutdown (accepting for %.3gs more)",
                    server.conf->grace_period_seconds);
        set_phase(MX_PHASE_GRACEFUL_TERMINATE);
        uv_timer_start(&server.timer, on_grace_over,
                       (uint64_t)(server.conf->grace_period_seconds * 1000.0), 0);
        break;
    case SIGINT:
        mx_log_info("SIGINT: fast shutdown");
        begin_shutdown(true);
        break;
    case SIGUSR1:
        mx_log_info("SIGUSR1: reopening log files");
        mx_log_reopen();
        break;
    case SIGHUP:
        mx_log_warn("SIGHUP: reloading is not supported by this build yet; nothing changed");
        break;
    case SIGQUIT:
        mx_log_warn("SIGQUIT: graceful upgrade is not supported by this build yet; still "
                    "serving");
        break;
    }
}


int
main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"conf", required_argument, NULL, 'c'}, {"daemon", no_argument, NULL, 'd'},
        {"test", no_argument, NULL, 't'},       {"upgrade", no_argument, NULL, 'u'},
        {"help", no_argument, NULL, 'h'},       {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0}};
    const char *path = "conf/moxy.yaml";
    bool test = false, daemon_flag = false, upgrade = false;
    int ch;
    while ((ch = getopt_long(argc, argv, "c:dtuhV", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            path = optarg;
            break;
        case 'd':
            daemon_flag = true;
            break;
        case 't':
            test = true;
            break;
        case 'u':
            upgrade = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("moxy %s\n", MX_VERSION);
            return 0;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "moxy: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 1;
    }

    char err[1024];
    server.phase = MX_PHASE_SETUP;
    int load_rc = mx_conf_load(path, &server.conf, err, sizeof(err));
    if (load_rc == MX_OK) {
        /* Upstream groups before the scripts load: they may call moxy.upstream(name). */
        mx_groups_init(server.conf);
        load_rc = check_supported(server.conf, err, sizeof(err));
    }
    if (load_rc != MX_OK) {
        fprintf(stderr, "moxy: %s\n", err);
        if (test)
            fprintf(stderr, "moxy: configuration file %s test failed\n", path);
        return 1;
    }
    mx_conf_t *conf = server.conf;
    if (test) {
        printf("moxy: configuration file %s test is successful\n", path);
        mx_groups_free();
        mx_shdict_free_all();
        mx_conf_free(conf);
        return 0;
    }
    if (upgrade) {
        fprintf(stderr, "moxy: --upgrade: graceful upgrade is not supported by this build yet\n");
        mx_conf_free(conf);
        return 1;
    }
    if (mx_log_open(conf, err, sizeof(err)) != MX_OK) {
        fprintf(stderr, "moxy: %s\n", err);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    set_phase(MX_PHASE_BOOTSTRAP);

    /* Listening sockets belong to the main thread (and, later, to upgrade). */
    for (size_t i = 0; i < conf->nservices; i++)
        server.nfds += conf->services[i].nlisteners;
    server.fds = mx_calloc(server.nfds, sizeof(int));
    size_t k = 0;
    for (size_t i = 0; i < conf->nservices; i++) {
        for (size_t j = 0; j < conf->services[i].nlisteners; j++) {
            int fd = mx_listener_open(&conf->services[i].listeners[j], err, sizeof(err));
            if (fd < 0) {
                mx_log_error("%s", err);
                fprintf(stderr, "moxy: %s\n", err);
                return 1;
            }
            server.fds[k++] = fd;
        }
    }
    if (drop_privileges(conf) != MX_OK)
        return 1;

    int ready_fd = -1;
    if (daemon_flag || conf->daemon) {
        if (daemonize(&ready_fd) != MX_OK) {
            fprintf(stderr, "moxy: cannot daemonize: %s\n", strerror(errno));
            return 1;
        }
    }
    if (conf->pid_file != NULL && write_pid_file(conf->pid_file) != MX_OK)
        return 1;

    uv_loop_init(&server.loop);
    uv_timer_init(&server.loop, &server.timer);
    static const int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < mx_countof(sigs); i++) {
        uv_signal_init(&server.loop, &server.signals[i]);
        if (sigs[i] != SIGUSR2)
            uv_signal_start(&server.signals[i], on_signal, sigs[i]);
    }

    /* Health checks and DNS discovery: after the groups exist, before workers select. */
    int hrc = mx_health_start(conf);
    if (hrc < 0) {
        mx_log_error("cannot start health checks (%s)", uv_err_name(hrc));
        return 1;
    }
    server.nworkers = conf->threads;
    server.workers = mx_calloc((size_t)server.nworkers, sizeof(mx_worker_t));
    for (int i = 0; i < server.nworkers; i++) {
        int rc = mx_worker_start(&server.workers[i], &server, i + 1, server.fds);
        if (rc < 0) {
            mx_log_error("cannot start worker %d (%s)", i + 1, uv_err_name(rc));
            return 1;
        }
    }
    set_phase(MX_PHASE_BOOTSTRAP_COMPLETE);
    for (size_t i = 0; i < conf->nservices; i++)
        for (size_t j = 0; j < conf->services[i].nlisteners; j++)
            mx_log_info("service \"%s\" listening on %s", conf->services[i].name,
                        conf->services[i].listeners[j].addr.text);
    set_phase(MX_PHASE_RUNNING);
    if (ready_fd >= 0) {
        char ok = 1;
        ssize_t n = write(ready_fd, &ok, 1);
        (void)n;
        close(ready_fd);
    }

    uv_run(&server.loop, UV_RUN_DEFAULT);

    set_phase(MX_PHASE_SHUTDOWN_RUNTIMES);
    for (int i = 0; i < server.nworkers; i++)
        mx_worker_join(&server.workers[i]);
    mx_health_stop();
    mx_stats_log("at exit");
    for (size_t i = 0; i < server.nfds; i++)
        close(server.fds[i]);
    for (size_t i = 0; i < conf->nservices; i++)
        for (size_t j = 0; j < conf->services[i].nlisteners; j++)
            if (conf->services[i].listeners[j].addr.kind == MX_ADDR_UNIX)
                unlink(conf->services[i].listeners[j].addr.host);
    if (conf->pid_file != NULL)
        unlink(conf->pid_file);
    set_phase(MX_PHASE_TERMINATED);
    uv_loop_close(&server.loop);
    mx_free(server.workers);
    mx_free(server.fds);
    mx_log_close();
    mx_shdict_free_all();
    mx_groups_free();
    mx_conf_free(conf);
    return 0;
}
