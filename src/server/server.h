/* The server: config, listening sockets, workers, and the lifecycle phases
 * of Pingora's ExecutionPhase, driven from the main thread's loop. */
#ifndef MX_SERVER_SERVER_H
#define MX_SERVER_SERVER_H

#include <uv.h>

#include "conf/conf.h"
#include "worker/worker.h"

#define MX_VERSION "0.1.0"

typedef enum {
    MX_PHASE_SETUP = 0,
    MX_PHASE_BOOTSTRAP,
    MX_PHASE_BOOTSTRAP_COMPLETE,
    MX_PHASE_RUNNING,
    MX_PHASE_GRACEFUL_UPGRADE_TRANSFERRING_FDS,
    MX_PHASE_GRACEFUL_TERMINATE,
    MX_PHASE_SHUTDOWN_STARTED,
    MX_PHASE_SHUTDOWN_GRACE_PERIOD,
    MX_PHASE_SHUTDOWN_RUNTIMES,
    MX_PHASE_TERMINATED,
} mx_phase_t;

const char *mx_phase_str(mx_phase_t p);

struct mx_server_s {
    mx_conf_t *conf; /* first member: workers read it through the server pointer */
    mx_phase_t phase;
    uv_loop_t loop;
    uv_signal_t signals[6];
    uv_timer_t timer;
    int *fds; /* listening sockets, in service/listener order */
    size_t nfds;
    char (*lnames)[128]; /* their addresses (mx_addr_t.text), the running listener set */
    mx_genconf_t *gc;      /* the newest generation's config (conf is gc->conf) */
    const char *conf_path; /* what SIGHUP reloads */
    uv_async_t notify;     /* a worker took (or failed) a reload */
    uint64_t reported;     /* the last generation logged as serving */
    bool handed_over;      /* an upgrade took the sockets: leave unix paths and pid file */
    mx_worker_t *workers;
    int nworkers;
    bool fast;
    uint64_t deadline_ms;
};

#endif
