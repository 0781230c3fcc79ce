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
#include "server/upgrade.h"
#include "upstream/health.h"

static mx_server_t server;

static void on_signal(uv_signal_t *h, int signum);
static void on_shutdown_tick(uv_timer_t *t);
static void on_grace_over(uv_timer_t *t);


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
            "signals: TERM graceful stop, INT fast stop, HUP reload config and scripts,\n"
            "         QUIT hand the listening sockets to a `moxy -u` and drain, USR1 reopen "
            "logs\n");
}


/* Refuses what the config names but this build cannot do yet, so that a
 * config never silently means less than it says. */
static int
check_conf(const mx_conf_t *c, char *err, size_t errlen)
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
    return MX_OK;
}


/* Scripts load in a scratch VM first: syntax and init() errors surface here. */
static int
check_scripts(const mx_conf_t *c, char *err, size_t errlen)
{
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


static int
check_supported(const mx_conf_t *c, char *err, size_t errlen)
{
    if (check_conf(c, err, errlen) != MX_OK)
        return MX_ECONF;
    /* Shared dicts exist before any VM: init() may already use them. */
    mx_shdict_create_all(c);
    return check_scripts(c, err, errlen);
}


/* Which service of <c> serves each running listener: the one that lists the
 * same address, else the service of the same name, else the first. Returns
 * an mx_alloc'ed array of server.nfds indexes. */
static size_t *
map_listeners(const mx_conf_t *c, const char *const *old_svc_names)
{
    size_t *map = mx_calloc(server.nfds ? server.nfds : 1, sizeof(size_t));
    for (size_t k = 0; k < server.nfds; k++) {
        bool found = false;
        for (size_t i = 0; i < c->nservices && !found; i++)
            for (size_t j = 0; j < c->services[i].nlisteners && !found; j++)
                if (strcmp(c->services[i].listeners[j].addr.text, server.lnames[k]) == 0) {
                    map[k] = i;
                    found = true;
                }
        for (size_t i = 0; i < c->nservices && !found && old_svc_names != NULL; i++)
            if (strcmp(c->services[i].name, old_svc_names[k]) == 0) {
                map[k] = i;
                found = true;
            }
    }
    return map;
}


/* Logs what a reload cannot change in place (it needs an upgrade) and keeps
 * the running value where the workers depend on it. */
static void
note_fixed(const mx_conf_t *old, mx_conf_t *c)
{
#define STR_CHANGED(a, b) (((a) == NULL) != ((b) == NULL) || ((a) != NULL && strcmp((a), (b)) != 0))
    static const char *tail = "takes effect at the next upgrade (moxy -u) or restart";
    if (c->threads != old->threads) {
        mx_log_warn("reload: threads changed (%d -> %d): %s", old->threads, c->threads, tail);
        c->threads = old->threads;
    }
    if (c->upstream_keepalive_pool_size != old->upstream_keepalive_pool_size)
        mx_log_warn("reload: upstream_keepalive_pool_size changed: %s", tail);
    if (c->io_uring != old->io_uring) {
        mx_log_warn("reload: io_uring changed: %s", tail);
        c->io_uring = old->io_uring;
    }
    if (STR_CHANGED(c->error_log, old->error_log) || STR_CHANGED(c->access_log, old->access_log))
        mx_log_warn("reload: error_log/access_log changed: %s", tail);
    if (STR_CHANGED(c->pid_file, old->pid_file) || STR_CHANGED(c->user, old->user) ||
        STR_CHANGED(c->group, old->group) || c->daemon != old->daemon)
        mx_log_warn("reload: pid_file/user/group/daemon changed: %s", tail);
    for (size_t i = 0; i < c->nservices; i++)
        for (size_t j = 0; j < c->services[i].nlisteners; j++) {
            bool running = false;
            for (size_t k = 0; k < server.nfds && !running; k++)
                running = strcmp(server.lnames[k], c->services[i].listeners[j].addr.text) == 0;
            if (!running)
                mx_log_warn("reload: listener %s (service \"%s\") is new: not opened; the "
                            "listener set changes with an upgrade (moxy -u)",
                            c->services[i].listeners[j].addr.text, c->services[i].name);
        }
    for (size_t k = 0; k < server.nfds; k++) {
        bool listed = false;
        for (size_t i = 0; i < c->nservices && !listed; i++)
            for (size_t j = 0; j < c->services[i].nlisteners && !listed; j++)
                listed = strcmp(server.lnames[k], c->services[i].listeners[j].addr.text) == 0;
        if (!listed)
            mx_log_warn("reload: listener %s is not in the new config: it keeps serving until "
                        "an upgrade (moxy -u) closes it",
                        server.lnames[k]);
    }
#undef STR_CHANGED
}


/* SIGHUP: loads the config file again and checks it and its scripts in a
 * scratch VM; if they pass, every worker starts a new generation. On any
 * failure the running generation keeps serving and one line says why. */
static void
reload(void)
{
    char err[1024];
    mx_conf_t *c = NULL;
    uint64_t cur = server.gc->seq;
    mx_log_info("SIGHUP: reloading %s", server.conf_path);
    if (mx_conf_load(server.conf_path, &c, err, sizeof(err)) != MX_OK ||
        check_conf(c, err, sizeof(err)) != MX_OK)
        goto fail;
    char note[512];
    int kept = mx_shdict_sync(c, note, sizeof(note));
    if (kept < 0) {
        snprintf(err, sizeof(err), "%s: more than %d shared dicts", c->file, MX_SHDICT_MAX);
        goto fail;
    }
    /* The new config's own groups (scripts may call moxy.upstream(name) as
     * they load); backends that stay keep their health. */
    c->groups = mx_groups_build(c);
    if (check_scripts(c, err, sizeof(err)) != MX_OK)
        goto fail;
    if (kept > 0)
        mx_log_warn("reload: %s%s", note, kept > 1 ? " (and others)" : "");
    note_fixed(server.conf, c);
    /* The old generation's listener -> service names, for services renamed apart. */
    const char **old_names = mx_calloc(server.nfds ? server.nfds : 1, sizeof(char *));
    for (size_t k = 0; k < server.nfds; k++)
        old_names[k] = server.conf->services[server.gc->listener_svc[k]].name;
    size_t *map = map_listeners(c, old_names);
    mx_free(old_names);
    mx_genconf_t *gc = mx_genconf_new(c, cur + 1, map, server.nfds);
    mx_log_level = c->log_level;
    for (int i = 0; i < server.nworkers; i++)
        mx_worker_reload(&server.workers[i], gc);
    mx_genconf_t *old = server.gc;
    server.gc = gc;
    server.conf = c;
    /* Health checks and discovery move to the new groups. */
    mx_health_stop();
    mx_groups_set_current(c->groups);
    int hrc = mx_health_start(c);
    if (hrc < 0)
        mx_log_error("reload: cannot restart health checks (%s)", uv_err_name(hrc));
    mx_genconf_unref(old);
    mx_log_info("SIGHUP: %s checked: workers start generation %llu", c->file,
                (unsigned long long)gc->seq);
    return;

fail:
    mx_log_error("SIGHUP: reload rejected, still serving generation %llu: %s",
                 (unsigned long long)cur, err);
    if (c != NULL) {
        mx_groups_unref(c->groups);
        mx_conf_free(c);
    }
}


/* A worker took (or could not build) a generation: once every worker has
 * answered for the newest one, say so (tests and `t.server:reload` wait
 * for this line). */
static void
on_notify(uv_async_t *a)
{
    (void)a;
    uint64_t seq = server.gc->seq;
    int serving = 0, failed = 0;
    for (int i = 0; i < server.nworkers; i++) {
        mx_worker_t *w = &server.workers[i];
        if (atomic_load(&w->gen_seq) == seq)
            serving++;
        else if (atomic_load(&w->gen_failed) == seq)
            failed++;
    }
    if (serving + failed < server.nworkers || server.reported >= seq)
        return;
    server.reported = seq;
    if (failed == 0)
        mx_log_info("reload: generation %llu serving on all %d workers", (unsigned long long)seq,
                    server.nworkers);
    else
        mx_log_error("reload: generation %llu serving on %d of %d workers (the others keep "
                     "their previous generation; see above)",
                     (unsigned long long)seq, serving, server.nworkers);
}


/* SIGQUIT: hands the listening sockets to the `moxy -u` waiting on
 * upgrade_sock; once it serves, drains like SIGTERM. If it is not there or
 * does not start, keeps serving. */
static void
upgrade_handoff(void)
{
    char err[1024];
    set_phase(MX_PHASE_GRACEFUL_UPGRADE_TRANSFERRING_FDS);
    mx_log_info("SIGQUIT: handing %zu listening socket(s) to the new process on %s",
                server.nfds, server.conf->upgrade_sock);
    if (mx_upgrade_send(server.conf->upgrade_sock, server.fds, server.lnames, server.nfds,
                        MX_UPGRADE_WAIT_MS, 60000, err, sizeof(err)) != MX_OK) {
        mx_log_error("SIGQUIT: graceful upgrade failed, still serving: %s", err);
        set_phase(MX_PHASE_RUNNING);
        return;
    }
    server.handed_over = true;
    for (int i = 0; i < server.nworkers; i++)
        server.workers[i].linger_idle_ms = 1000;
    mx_log_info("SIGQUIT: the new process serves; draining (accepting for %.3gs more)",
                server.conf->grace_period_seconds);
    set_phase(MX_PHASE_GRACEFUL_TERMINATE);
    uv_timer_start(&server.timer, on_grace_over,
                   (uint64_t)(server.conf->grace_period_seconds * 1000.0), 0);
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


/* Removes the pid file only while it names this process: after an upgrade
 * it names the new one. */
static void
unlink_pid_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    int pid = 0;
    int n = fscanf(f, "%d", &pid);
    fclose(f);
    if (n == 1 && pid == (int)getpid())
        unlink(path);
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
    uv_close((uv_handle_t *)&server.notify, NULL);
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
        if (server.phase != MX_PHASE_RUNNING) {
            mx_log_warn("SIGHUP: not running (%s): nothing reloaded", mx_phase_str(server.phase));
            return;
        }
        reload();
        break;
    case SIGQUIT:
        if (server.phase != MX_PHASE_RUNNING) {
            mx_log_warn("SIGQUIT: not running (%s): no upgrade", mx_phase_str(server.phase));
            return;
        }
        upgrade_handoff();
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
    server.conf_path = path;
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
    if (mx_log_open(conf, err, sizeof(err)) != MX_OK) {
        fprintf(stderr, "moxy: %s\n", err);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    set_phase(MX_PHASE_BOOTSTRAP);

    /* With -u the running moxy's sockets come over upgrade_sock (the config
     * and scripts were checked above, so a bad one never takes them). */
    static mx_upgrade_fds_t inherited = {.conn = -1};
    if (upgrade &&
        mx_upgrade_receive(conf->upgrade_sock, MX_UPGRADE_WAIT_MS, &inherited, err,
                           sizeof(err)) != MX_OK) {
        mx_log_error("%s", err);
        fprintf(stderr, "moxy: %s\n", err);
        return 1;
    }

    /* Listening sockets belong to the main thread (and, later, to upgrade). */
    for (size_t i = 0; i < conf->nservices; i++)
        server.nfds += conf->services[i].nlisteners;
    server.fds = mx_calloc(server.nfds ? server.nfds : 1, sizeof(int));
    server.lnames = mx_calloc(server.nfds ? server.nfds : 1, sizeof(*server.lnames));
    size_t k = 0;
    for (size_t i = 0; i < conf->nservices; i++) {
        for (size_t j = 0; j < conf->services[i].nlisteners; j++) {
            const mx_conf_listener_t *lc = &conf->services[i].listeners[j];
            int fd = -1;
            for (size_t m = 0; m < inherited.n; m++)
                if (inherited.fds[m] >= 0 && strcmp(inherited.names[m], lc->addr.text) == 0) {
                    fd = inherited.fds[m];
                    inherited.fds[m] = -1;
                    mx_log_info("upgrade: took over %s", lc->addr.text);
                }
            if (fd < 0)
                fd = mx_listener_bind(lc, err, sizeof(err));
            if (fd < 0) {
                mx_log_error("%s", err);
                fprintf(stderr, "moxy: %s\n", err);
                return 1;
            }
            snprintf(server.lnames[k], sizeof(server.lnames[k]), "%s", lc->addr.text);
            server.fds[k++] = fd;
        }
    }
    k = 0;
    for (size_t i = 0; i < conf->nservices; i++)
        for (size_t j = 0; j < conf->services[i].nlisteners; j++, k++)
            if (mx_listener_listen(server.fds[k], &conf->services[i].listeners[j], err,
                                   sizeof(err)) < 0) {
                mx_log_error("%s", err);
                fprintf(stderr, "moxy: %s\n", err);
                return 1;
            }
    for (size_t m = 0; m < inherited.n; m++)
        if (inherited.fds[m] >= 0) {
            mx_log_warn("upgrade: %s is not in the new config: closed", inherited.names[m]);
            close(inherited.fds[m]);
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
    uv_async_init(&server.loop, &server.notify, on_notify);
    size_t *map = mx_calloc(server.nfds ? server.nfds : 1, sizeof(size_t));
    for (size_t i = 0, m = 0; i < conf->nservices; i++)
        for (size_t j = 0; j < conf->services[i].nlisteners; j++)
            map[m++] = i;
    conf->groups = mx_groups_ref(mx_groups_current()); /* the generation's reference */
    server.gc = mx_genconf_new(conf, 1, map, server.nfds);
    server.reported = 1;
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
        int rc = mx_worker_start(&server.workers[i], &server, i + 1, server.fds, server.gc,
                                 &server.notify);
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
    if (upgrade) {
        mx_upgrade_ack(&inherited, true); /* the old process stops accepting now */
        mx_log_info("upgrade: serving; the old process drains");
    }
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
    /* After an upgrade the unix sockets serve on in the new process. */
    for (size_t i = 0; i < server.nfds && !server.handed_over; i++)
        if (strncmp(server.lnames[i], "unix:", 5) == 0)
            unlink(server.lnames[i] + 5);
    if (server.conf->pid_file != NULL)
        unlink_pid_file(server.conf->pid_file);
    set_phase(MX_PHASE_TERMINATED);
    uv_loop_close(&server.loop);
    mx_free(server.workers);
    mx_free(server.fds);
    mx_free(server.lnames);
    mx_log_close();
    mx_shdict_free_all();
    mx_groups_free();
    mx_genconf_unref(server.gc);
    return 0;
}
