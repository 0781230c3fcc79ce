/* Waiting, for any coroutine C resumes from the loop (a "task"): a request's
 * coroutine (its phases) or a timer function's. Lua starts an I/O operation
 * through FFI with a wait id; C arms an mx_lua_wait_t under the current task
 * and returns MX_AGAIN; the Lua wrapper yields (lua/moxy/sched.lua) and C
 * later resumes the task with that id (mx_lua_wake()). Lua threads
 * (moxy.thread) run inside their task: the Lua scheduler passes each wake to
 * the coroutine that waits on it.
 *
 * Everything a task holds (sockets, sleep timers) registers a cleanup; when
 * the task ends (the request ends, the client went away, the timer function
 * returned) every cleanup runs, which stops its I/O and disarms its wait, so
 * nothing is ever resumed into a freed session. */
#ifndef MX_LUA_TASK_H
#define MX_LUA_TASK_H

#include "core/types.h"
#include "core/list.h"

typedef struct mx_lua_task_s mx_lua_task_t;
typedef struct mx_vm_s mx_vm_t;

/* Something a task holds: <fn> releases it when the task ends. It must not
 * wake anything (the task is going away). */
typedef struct mx_lua_cleanup_s {
    mx_list_t node; /* in the task's cleanups; unlinked when not registered */
    void (*fn)(struct mx_lua_cleanup_s *c);
} mx_lua_cleanup_t;

/* One pending wait: embedded in the I/O object that completes it. */
typedef struct {
    mx_lua_task_t *task; /* who to wake, NULL when not armed */
    double id;           /* the Lua side's wait id */
} mx_lua_wait_t;

/* The task running Lua on this thread right now (created on first use for
 * a request), or NULL outside any (init, shutdown, moxy -t). When NULL or
 * when the request's phase cannot wait, fills the FFI error text and returns
 * NULL with <*rc> = MX_EBADPHASE. */
mx_lua_task_t *mx_lua_task_current(int *rc);
/* Arms <w> under <t>: returns MX_AGAIN (the caller returns it to Lua). */
int mx_lua_wait_arm(mx_lua_task_t *t, mx_lua_wait_t *w, double id);
/* Disarms <w> without waking (cancel). */
void mx_lua_wait_disarm(mx_lua_wait_t *w);
/* Completes <w>: resumes its task with the wait id. Touch nothing reachable
 * from Lua after this call (the resumed code may free it). */
void mx_lua_wake(mx_lua_wait_t *w);

void mx_lua_cleanup_add(mx_lua_task_t *t, mx_lua_cleanup_t *c);
void mx_lua_cleanup_remove(mx_lua_cleanup_t *c);

/* The session whose coroutine is being resumed (set by lua/vm.c). */
extern __thread mx_session_t *mx_lua_cur_session;

/* --- used by lua/vm.c --- */
/* True while <s>'s task has an armed wait. */
bool mx_lua_task_waiting(const mx_session_t *s);
/* The request ends: run its task's cleanups and free the task. */
void mx_lua_task_end_session(mx_session_t *s);
/* A moxy.timer fired: runs engine.timer_body(id, premature) in a new task. */
void mx_lua_task_timer(mx_vm_t *vm, double id, bool premature);
/* The worker stops now: every running timer task of <vm> is ended. */
void mx_lua_tasks_cancel(mx_vm_t *vm);
/* True while a timer task of <vm> runs (waits); the worker then stays up. */
bool mx_lua_tasks_running(mx_vm_t *vm);

/* --- shared by the ffi/ files (ffi/api.c) --- */
/* Sets the text moxy_last_error() returns; returns <rc>. */
int mx_lua_ffi_fail(int rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* MX_OK when <s>'s current phase may wait, else MX_EBADPHASE with the text. */
int mx_lua_ffi_check_wait(const mx_session_t *s);

/* --- moxy.sleep (task.c), moxy.tcp's pool (ffi/tcp.c) --- */
/* The worker starts draining: close idle pooled Lua sockets, pool no more
 * (per thread, not per VM generation: a reload keeps the pool). */
void mx_lua_tcp_pool_close(void);

#endif
