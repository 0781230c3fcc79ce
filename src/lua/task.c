/* Tasks: the coroutines C resumes from the loop, their waits and cleanups
 * (see task.h), and moxy.sleep, the simplest wait. A request's task is made
 * on its first wait and ends in mx_lua_release(); a timer's task is made
 * when the timer fires and ends when its function (and its threads) return. */
#include "lua/task.h"

#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/errors.h"
#include "core/log.h"
#include "lua/vm.h"
#include "proxy/session.h"

struct mx_lua_task_s {
    mx_vm_t *vm;
    mx_session_t *s;     /* the request, or NULL for a timer's task */
    lua_State *co;       /* a timer task's coroutine (a request's is s->lua_co) */
    int co_ref;          /* its registry ref */
    int nwaits;          /* armed waits */
    mx_list_t cleanups;  /* mx_lua_cleanup_t.node */
    mx_list_t node;      /* a timer task: in timer_tasks */
};

__thread mx_session_t *mx_lua_cur_session;
static __thread mx_lua_task_t *cur_timer_task;
static __thread mx_list_t timer_tasks; /* running timer tasks of this thread's VMs */

static void task_end(mx_lua_task_t *t);


static mx_lua_task_t *
task_new(mx_vm_t *vm, mx_session_t *s)
{
    mx_lua_task_t *t = mx_calloc(1, sizeof(*t));
    t->vm = vm;
    t->s = s;
    mx_list_init(&t->cleanups);
    mx_list_init(&t->node);
    return t;
}


mx_lua_task_t *
mx_lua_task_current(int *rc)
{
    mx_session_t *s = mx_lua_cur_session;
    if (s != NULL) {
        if ((*rc = mx_lua_ffi_check_wait(s)) != MX_OK)
            return NULL;
        if (s->lua_wait == NULL)
            s->lua_wait = task_new(s->gen->vm, s);
        return s->lua_wait;
    }
    if (cur_timer_task != NULL)
        return cur_timer_task;
    *rc = mx_lua_ffi_fail(MX_EBADPHASE,
                          "outside a request handler or a timer function (init, shutdown and "
                          "load time cannot wait)");
    return NULL;
}


int
mx_lua_wait_arm(mx_lua_task_t *t, mx_lua_wait_t *w, double id)
{
    w->task = t;
    w->id = id;
    t->nwaits++;
    return MX_AGAIN;
}


void
mx_lua_wait_disarm(mx_lua_wait_t *w)
{
    if (w->task == NULL)
        return;
    w->task->nwaits--;
    w->task = NULL;
}


void
mx_lua_cleanup_add(mx_lua_task_t *t, mx_lua_cleanup_t *c)
{
    mx_list_push(&t->cleanups, &c->node);
}


void
mx_lua_cleanup_remove(mx_lua_cleanup_t *c)
{
    if (c->node.next != NULL)
        mx_list_remove(&c->node);
}


/* Resumes a timer task's coroutine with <nargs> values on its stack and
 * ends the task unless it now waits. */
static void
timer_task_resume(mx_lua_task_t *t, int nargs)
{
    mx_session_t *prev_s = mx_lua_cur_session;
    mx_lua_task_t *prev_t = cur_timer_task;
    mx_vm_t *prev_vm = mx_current_vm;
    mx_lua_cur_session = NULL;
    cur_timer_task = t;
    mx_current_vm = t->vm; /* a worker runs one VM per generation: moxy.timer finds it here */
    int st = lua_resume(t->co, nargs);
    mx_current_vm = prev_vm;
    mx_lua_cur_session = prev_s;
    cur_timer_task = prev_t;
    if (st == LUA_YIELD) {
        lua_settop(t->co, 0);
        if (t->nwaits > 0)
            return;
        mx_log_error("lua timer yielded without waiting on anything (a coroutine.yield() "
                     "outside moxy's waiting calls?)");
    } else if (st != 0) {
        const char *msg = lua_tostring(t->co, -1);
        mx_log_error("lua timer %s", msg ? msg : "(error object is not a string)");
    }
    task_end(t);
}


void
mx_lua_wake(mx_lua_wait_t *w)
{
    mx_lua_task_t *t = w->task;
    if (t == NULL)
        return;
    double id = w->id;
    mx_lua_wait_disarm(w);
    if (t->s != NULL) {
        mx_session_t *s = t->s;
        /* Only a coroutine suspended inside a phase takes a wake: one between
         * phases would read the id as its next phase. */
        if (s->lua_co == NULL || s->lua_phase < 0) {
            mx_log_debug("#%llu lua wake %.0f ignored: no phase waits",
                         (unsigned long long)s->id, id);
            return;
        }
        mx_lua_resume_id(s, id);
        return;
    }
    lua_pushnumber(t->co, id);
    timer_task_resume(t, 1);
}


/* Runs every cleanup (each unlinks itself or is unlinked here). */
static void
run_cleanups(mx_lua_task_t *t)
{
    while (!mx_list_empty(&t->cleanups)) {
        mx_lua_cleanup_t *c = mx_container_of(t->cleanups.next, mx_lua_cleanup_t, node);
        mx_list_remove(&c->node);
        c->fn(c);
    }
}


static void
task_end(mx_lua_task_t *t)
{
    run_cleanups(t);
    if (t->nwaits != 0)
        mx_log_error("lua task ended with %d armed wait(s)", t->nwaits);
    if (t->co_ref != 0)
        luaL_unref(mx_vm_lua(t->vm), LUA_REGISTRYINDEX, t->co_ref);
    bool timer = t->s == NULL;
    mx_list_remove(&t->node);
    mx_free(t);
    /* A draining worker waited for its last timer function to end. */
    if (timer && mx_current_worker != NULL && mx_current_worker->draining)
        mx_worker_conn_closed(mx_current_worker);
}


bool
mx_lua_tasks_running(mx_vm_t *vm)
{
    if (vm == NULL || timer_tasks.next == NULL)
        return false;
    for (mx_list_t *n = timer_tasks.next; n != &timer_tasks; n = n->next)
        if (mx_container_of(n, mx_lua_task_t, node)->vm == vm)
            return true;
    return false;
}


bool
mx_lua_task_waiting(const mx_session_t *s)
{
    const mx_lua_task_t *t = s->lua_wait;
    return t != NULL && t->nwaits > 0;
}


void
mx_lua_task_end_session(mx_session_t *s)
{
    mx_lua_task_t *t = s->lua_wait;
    if (t == NULL)
        return;
    s->lua_wait = NULL;
    task_end(t);
}


void
mx_lua_task_timer(mx_vm_t *vm, double id, bool premature)
{
    lua_State *L = mx_vm_lua(vm);
    if (timer_tasks.next == NULL)
        mx_list_init(&timer_tasks);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaded");
    lua_getfield(L, -1, "moxy.engine");
    if (!lua_istable(L, -1)) {
        lua_pop(L, 3);
        return;
    }
    lua_getfield(L, -1, "timer_body");
    mx_lua_task_t *t = task_new(vm, NULL);
    t->co = lua_newthread(L);
    t->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_xmove(L, t->co, 1); /* timer_body onto the coroutine */
    lua_pop(L, 3);
    mx_list_push(&timer_tasks, &t->node);
    lua_pushnumber(t->co, id);
    lua_pushboolean(t->co, premature);
    timer_task_resume(t, 2);
}


void
mx_lua_tasks_cancel(mx_vm_t *vm)
{
    if (timer_tasks.next == NULL)
        return;
    mx_list_t *n = timer_tasks.next;
    while (n != &timer_tasks) {
        mx_lua_task_t *t = mx_container_of(n, mx_lua_task_t, node);
        n = n->next;
        if (t->vm == vm) {
            mx_log_warn("lua timer function still waiting at shutdown: cancelled");
            task_end(t);
        }
    }
}


/* --- moxy.sleep --- */

typedef struct {
    uv_timer_t timer;
    mx_lua_wait_t wait;
    mx_lua_cleanup_t cleanup;
} sleep_t;


int moxy_wait_sleep(double id, double seconds);
int moxy_wait_cancel(double id);
int moxy_wait_check(void);


static void
on_sleep_close(uv_handle_t *h)
{
    mx_free(mx_container_of((uv_timer_t *)h, sleep_t, timer));
}


static void
sleep_free(sleep_t *sl)
{
    mx_lua_wait_disarm(&sl->wait);
    mx_lua_cleanup_remove(&sl->cleanup);
    uv_timer_stop(&sl->timer);
    uv_close((uv_handle_t *)&sl->timer, on_sleep_close);
}


static void
on_sleep_cleanup(mx_lua_cleanup_t *c)
{
    sleep_free(mx_container_of(c, sleep_t, cleanup));
}


static void
on_sleep(uv_timer_t *h)
{
    sleep_t *sl = mx_container_of(h, sleep_t, timer);
    mx_lua_wait_t w = sl->wait;
    sl->wait.task = NULL; /* woken through the copy: sleep_free must not disarm it */
    mx_lua_cleanup_remove(&sl->cleanup);
    uv_close((uv_handle_t *)h, on_sleep_close);
    mx_lua_wake(&w);
}


/* moxy.sleep(seconds) in a request or timer: arms a timer that resumes
 * wait <id>. Returns MX_AGAIN, or MX_EBADPHASE / MX_EBADARG. */
int
moxy_wait_sleep(double id, double seconds)
{
    int rc;
    if (!(seconds >= 0) || seconds > 86400.0)
        return mx_lua_ffi_fail(MX_EBADARG, "seconds must be 0..86400");
    if (mx_current_worker == NULL)
        return mx_lua_ffi_fail(MX_EBADPHASE, "outside a worker (moxy -t)");
    mx_lua_task_t *t = mx_lua_task_current(&rc);
    if (t == NULL)
        return rc;
    sleep_t *sl = mx_calloc(1, sizeof(*sl));
    sl->cleanup.fn = on_sleep_cleanup;
    mx_lua_cleanup_add(t, &sl->cleanup);
    uv_timer_init(&mx_current_worker->loop, &sl->timer);
    uv_timer_start(&sl->timer, on_sleep, (uint64_t)(seconds * 1000.0 + 0.5), 0);
    return mx_lua_wait_arm(t, &sl->wait, id);
}


/* moxy.thread.kill() of a thread sleeping on wait <id>: stops its timer. */
int
moxy_wait_cancel(double id)
{
    int rc;
    mx_lua_task_t *t = mx_lua_task_current(&rc);
    if (t == NULL)
        return rc;
    for (mx_list_t *n = t->cleanups.next; n != &t->cleanups; n = n->next) {
        mx_lua_cleanup_t *c = mx_container_of(n, mx_lua_cleanup_t, node);
        if (c->fn == on_sleep_cleanup) {
            sleep_t *sl = mx_container_of(c, sleep_t, cleanup);
            if (sl->wait.task != NULL && sl->wait.id == id) {
                sleep_free(sl);
                return MX_OK;
            }
        }
    }
    return MX_DECLINED;
}


/* MX_OK when the running Lua may wait here, else why not (moxy.http checks
 * before it starts). */
int
moxy_wait_check(void)
{
    int rc = MX_OK;
    if (mx_current_worker == NULL)
        return mx_lua_ffi_fail(MX_EBADPHASE, "outside a worker (moxy -t)");
    return mx_lua_task_current(&rc) != NULL ? MX_OK : rc;
}
