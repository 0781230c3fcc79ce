/* One LuaJIT VM per worker: it loads each service's script (a module
 * returning a table of phase handlers) and runs phases in coroutines taken
 * from a per-VM pool, so a handler may yield (moxy.sleep) and be resumed
 * from the loop. A phase without a handler costs one bit test. */
#ifndef MX_LUA_VM_H
#define MX_LUA_VM_H

#include "core/types.h"

/* Phase ids, shared with lua/moxy/engine.lua (PHASES, in this order). */
typedef enum {
    MX_PH_INIT = 0,
    MX_PH_REQUEST_FILTER,
    MX_PH_UPSTREAM_PEER,
    MX_PH_UPSTREAM_REQUEST_FILTER,
    MX_PH_RESPONSE_FILTER,
    MX_PH_LOGGING,
    MX_PH_FAIL_TO_PROXY,
    MX_PH_RESPONSE_BODY_FILTER,
    MX_PH_FAIL_TO_CONNECT,
    MX_PH_EARLY_REQUEST_FILTER,
    MX_PH_UPSTREAM_RESPONSE_FILTER,
    MX_PH_PROXY_UPSTREAM_FILTER,
    MX_PH_RESPONSE_TRAILER_FILTER,
    MX_PH_CONNECTED_TO_UPSTREAM,
    MX_PH_UPSTREAM_RESPONSE_BODY_FILTER,
    MX_PH_REQUEST_BODY_FILTER,
    MX_PH_ERROR_WHILE_PROXY,
    MX_PH_RELEASE, /* not a handler: the request ended, recycle the coroutine */
    MX_PH_MAX
} mx_phase_id_t;

const char *mx_phase_name(int phase);

typedef struct mx_vm_s mx_vm_t;

/* What C and a request coroutine's body (lua/moxy/engine.lua) pass each other, in
 * an FFI struct the coroutine owns (declared again in lua/moxy/live.lua): C writes
 * the phase to run, and for a request's first phase its service and connection id,
 * then resumes with no arguments; the body sets <done> before the yield that ends
 * the phase. No Lua C API call per phase but the resume itself. The coroutine's
 * session objects hold it too and reach their session through <s>, which C sets
 * when a request starts and empties when it ends: one kept past its request raises
 * instead of reaching freed memory. */
typedef struct mx_lua_io_s {
    mx_session_t *s; /* C: the request the coroutine runs, NULL between requests */
    double cid;     /* C: the connection id of a new request (0 without one) */
    int32_t phase;  /* C: the phase to run */
    int32_t svc;    /* C: the service index of a new request */
    int32_t start;  /* C: 1 when <phase> is a new request's first; the body clears it */
    int32_t done;   /* body: 1 the phase returned, 2 it failed (the message is yielded) */
} mx_lua_io_t;

/* The request coroutine's body registers its io block (moxy_lua_io): <s>, the session
 * it runs, learns it and fills it for its first phase. */
void mx_lua_attach(mx_session_t *s, mx_lua_io_t *io);

/* Creates a VM and loads the scripts of <conf>'s services (running init()).
 * Returns MX_OK, or MX_ECONF with "file:line: message" in <err>. */
int mx_vm_new(const mx_conf_t *conf, mx_worker_t *w, mx_vm_t **out, char *err, size_t errlen);
/* The same for a reload: each script's init(config, previous) receives, as
 * <previous>, its part of what the old generation's handover() returned
 * (<previous>: JSON text from mx_vm_handover(), or NULL). */
int mx_vm_new_from(const mx_conf_t *conf, mx_worker_t *w, const char *previous, mx_vm_t **out,
                   char *err, size_t errlen);
/* A reload replaces <vm>: runs each script's handover() and returns what
 * they returned as JSON text (mx_alloc'ed, the caller frees), or NULL. */
char *mx_vm_handover(mx_vm_t *vm);
void mx_vm_free(mx_vm_t *vm);
/* True when service <svc> has a handler for <phase>. */
/* The phases service <svc>'s script handles, one bit per phase (0 without a VM). */
uint32_t mx_vm_mask(const mx_vm_t *vm, size_t svc);

/* Runs <phase> of session <s>. Returns MX_OK (done), MX_AGAIN (the handler
 * yielded: mx_lua_on_phase_done() follows later), or MX_ELUA (the error is
 * logged; the caller answers per the phase's rules). */
int mx_lua_run(mx_session_t *s, int phase);
/* Resumes a yielded handler (its wait is over). */
void mx_lua_resume(mx_session_t *s);
/* Resumes a handler waiting on I/O with the wait id it waits for (task.c). */
void mx_lua_resume_id(mx_session_t *s, double id);
/* Downstream connection <id> closed: drop its s.conn_ctx. Call only when no
 * Lua code is running (a uv callback). */
void mx_vm_conn_closed(mx_vm_t *vm, uint64_t id);
/* moxy.timer: arms timer <id> of the current worker's VM (<every>: repeat).
 * The scratch VM of moxy -t never fires. */
int mx_vm_timer_start(double id, double seconds, bool every);
int mx_vm_timer_cancel(double id);
/* The worker is stopping: every pending timer runs once with premature =
 * true, then all are closed; then each script's shutdown() runs, once. */
void mx_vm_timers_retire(mx_vm_t *vm);
const mx_conf_t *mx_vm_conf(const mx_vm_t *vm);
/* The VM's main Lua state (task.c makes timer coroutines on it). */
struct lua_State *mx_vm_lua(mx_vm_t *vm);
/* The VM whose scripts run on this thread (set while loading and by the worker). */
extern __thread mx_vm_t *mx_current_vm;
/* The session ends: cancel waits, recycle its coroutine. */
void mx_lua_release(mx_session_t *s);

#endif
