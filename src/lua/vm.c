/* The per-worker LuaJIT VM: script loading, the coroutine pool and phase
 * dispatch. The Lua half is lua/moxy/engine.lua: C resumes a pooled
 * coroutine running engine.body, the phase to run (and for a request's first
 * phase its service and connection id) written in the coroutine's io block
 * (mx_lua_io_t); the body marks the phase done there before it yields. A
 * handler that waits (moxy.sleep) yields through moxy.sched without marking
 * anything, and C resumes it from the loop. */
#include "lua/vm.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/errors.h"
#include "core/log.h"
#include "lua/task.h"
#include "proxy/session.h"

/* An idle request coroutine: its registry ref (which keeps it alive), its state and
 * its io block (see mx_lua_run). */
typedef struct {
    int ref;
    lua_State *co;
    mx_lua_io_t *io;
} vm_co_t;

struct mx_vm_s {
    lua_State *L;
    const mx_conf_t *conf;
    mx_worker_t *w;
    int body_ref;
    int conn_ctxs_ref; /* engine.conn_ctxs: connection id -> s.conn_ctx */
    int shutdown_ref;   /* engine.shutdown(): every script's shutdown() */
    int handover_ref;   /* engine.handover(): what the scripts carry to the next generation */
    mx_list_t timers;   /* vm_timer_t.node */
    uint32_t *masks; /* per service: bit <phase> set when it has a handler */
    size_t nsvc;
    vm_co_t *pool; /* idle coroutines */
    size_t npool;
    size_t cap;
};

__thread mx_vm_t *mx_current_vm;

typedef struct {
    uv_timer_t timer;
    mx_vm_t *vm;
    double id;
    bool every;
    mx_list_t node;
} vm_timer_t;

static const char *phase_names[MX_PH_MAX] = {
    "init",           "request_filter", "upstream_peer", "upstream_request_filter",
    "response_filter", "logging",       "fail_to_proxy", "response_body_filter",
    "fail_to_connect", "early_request_filter", "upstream_response_filter",
    "proxy_upstream_filter", "response_trailer_filter", "connected_to_upstream",
    "upstream_response_body_filter", "request_body_filter", "error_while_proxy", "release"};


const char *
mx_phase_name(int phase)
{
    return phase >= 0 && phase < MX_PH_MAX ? phase_names[phase] : "none";
}


/* Where lua/moxy lives: $MOXY_LUA_DIR, else <dir of the binary>/../lua (a
 * build tree), else the install prefix. */
static void
lua_dir(char *out, size_t len)
{
    const char *env = getenv("MOXY_LUA_DIR");
    if (env != NULL && *env) {
        snprintf(out, len, "%s", env);
        return;
    }
    char exe[PATH_MAX / 2];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash != NULL) {
            *slash = '\0';
            snprintf(out, len, "%s/../lua", exe);
            char probe[PATH_MAX + 32];
            snprintf(probe, sizeof(probe), "%s/moxy/engine.lua", out);
            if (access(probe, R_OK) == 0)
                return;
        }
    }
    snprintf(out, len, "/usr/local/share/moxy/lua");
}


/* Calls the function under <nargs> arguments with a traceback handler;
 * on error writes the message (first line) into <err>. */
static int
pcall(lua_State *L, int nargs, int nres, char *err, size_t errlen)
{
    int base = lua_gettop(L) - nargs;
    lua_getglobal(L, "debug");
    lua_getfield(L, -1, "traceback");
    lua_remove(L, -2);
    lua_insert(L, base);
    int rc = lua_pcall(L, nargs, nres, base);
    lua_remove(L, base);
    if (rc != 0) {
        const char *msg = lua_tostring(L, -1);
        snprintf(err, errlen, "%s", msg ? msg : "(error object is not a string)");
        char *nl = strchr(err, '\n');
        if (nl != NULL)
            *nl = '\0';
        if (msg != NULL)
            mx_log_debug("lua: %s", msg);
        lua_pop(L, 1);
        return MX_ECONF;
    }
    return MX_OK;
}


int
mx_vm_new(const mx_conf_t *conf, mx_worker_t *w, mx_vm_t **out, char *err, size_t errlen)
{
    return mx_vm_new_from(conf, w, NULL, out, err, errlen);
}


int
mx_vm_new_from(const mx_conf_t *conf, mx_worker_t *w, const char *previous, mx_vm_t **out,
               char *err, size_t errlen)
{
    mx_vm_t *vm = mx_calloc(1, sizeof(*vm));
    vm->w = w;
    vm->conf = conf;
    mx_list_init(&vm->timers);
    mx_vm_t *prev_vm = mx_current_vm;
    mx_current_vm = vm; /* init() may arm timers */
    vm->nsvc = conf->nservices;
    vm->masks = mx_calloc(vm->nsvc ? vm->nsvc : 1, sizeof(uint32_t));
    lua_State *L = vm->L = luaL_newstate();
    if (L == NULL) {
        snprintf(err, errlen, "cannot create a Lua state");
        mx_free(vm->masks);
        mx_free(vm);
        return MX_ECONF;
    }
    luaL_openlibs(L);

    char dir[PATH_MAX];
    lua_dir(dir, sizeof(dir));
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s%s%s/?.lua;%s/?/init.lua;%s", conf->lua_path ? conf->lua_path : "",
                    conf->lua_path ? ";" : "", dir, dir, lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);

    lua_getglobal(L, "require");
    lua_pushliteral(L, "moxy.engine");
    if (pcall(L, 1, 1, err, errlen) != MX_OK)
        goto fail;
    /* engine.start(worker_id, worker_count) */
    lua_getfield(L, -1, "start");
    lua_pushinteger(L, w ? w->id : 0);
    lua_pushinteger(L, conf->threads);
    if (pcall(L, 2, 0, err, errlen) != MX_OK)
        goto fail;
    for (size_t i = 0; i < conf->nservices; i++) {
        if (conf->services[i].script == NULL)
            continue;
        lua_getfield(L, -1, "load");
        lua_pushinteger(L, (lua_Integer)i);
        lua_pushstring(L, conf->services[i].script);
        if (conf->services[i].script_config != NULL)
            lua_pushstring(L, conf->services[i].script_config);
        else
            lua_pushnil(L);
        lua_pushstring(L, conf->services[i].name);
        if (previous != NULL)
            lua_pushstring(L, previous);
        else
            lua_pushnil(L);
        if (pcall(L, 5, 1, err, errlen) != MX_OK)
            goto fail;
        vm->masks[i] = (uint32_t)lua_tointeger(L, -1);
        lua_pop(L, 1);
    }
    lua_getfield(L, -1, "conn_ctxs");
    vm->conn_ctxs_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "shutdown");
    vm->shutdown_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "handover");
    vm->handover_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "body");
    vm->body_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);
    mx_current_vm = prev_vm;
    *out = vm;
    return MX_OK;

fail:
    mx_current_vm = prev_vm;
    mx_vm_timers_retire(vm);
    lua_close(L);
    mx_free(vm->masks);
    mx_free(vm);
    return MX_ECONF;
}


void
mx_vm_free(mx_vm_t *vm)
{
    if (vm == NULL)
        return;
    lua_close(vm->L);
    mx_free(vm->masks);
    mx_free(vm->pool);
    mx_free(vm);
}


lua_State *
mx_vm_lua(mx_vm_t *vm)
{
    return vm->L;
}


const mx_conf_t *
mx_vm_conf(const mx_vm_t *vm)
{
    return vm->conf;
}


uint32_t
mx_vm_mask(const mx_vm_t *vm, size_t svc)
{
    return vm != NULL && svc < vm->nsvc ? vm->masks[svc] : 0;
}


/* Makes <vm> the thread's current VM (moxy.timer finds it there: a worker
 * may run several generations' VMs) and returns the previous one. */
static mx_vm_t *
enter(mx_vm_t *vm)
{
    mx_vm_t *prev = mx_current_vm;
    mx_current_vm = vm;
    return prev;
}


/* Logs phase <phase>'s error <msg> (its first line; the traceback at debug) and keeps
 * the line as the request's error. */
static void
phase_error(mx_session_t *s, int phase, const char *msg)
{
    char line[1024];
    snprintf(line, sizeof(line), "%s", msg ? msg : "(error object is not a string)");
    char *nl = strchr(line, '\n');
    if (nl != NULL)
        *nl = '\0';
    s->lua_error = (mx_str_t){mx_arena_strndup(&s->arena, line, strlen(line)), strlen(line)};
    mx_log_error("#%llu lua %s %s (request %llu, %.*s %.*s)", (unsigned long long)s->id,
                 mx_phase_name(phase), line, (unsigned long long)s->id, (int)s->method.len,
                 s->method.data, (int)s->target_raw.len, s->target_raw.data);
    if (msg != NULL && mx_log_level <= MX_LOG_DEBUG)
        mx_log_debug("#%llu lua traceback: %s", (unsigned long long)s->id, msg);
}


/* What after_resume() leaves: a failed phase, a wait, or an error. */
static __attribute__((noinline)) int
after_resume_slow(mx_session_t *s, lua_State *co, int st)
{
    mx_vm_t *vm = s->gen->vm;
    int phase = s->lua_phase;
    mx_lua_io_t *io = s->lua_io;
    if (st == LUA_YIELD && io != NULL && io->done != 0) {
        /* The body ended the phase with yield(err) after done = 2. */
        io->done = 0;
        s->lua_phase = -1;
        phase_error(s, phase, lua_tostring(co, -1));
        lua_settop(co, 0);
        if (vm->conf->lua_error_policy == MX_LUA_FAIL_OPEN)
            return MX_OK; /* logged above; the phase counts as skipped */
        return MX_ELUA;
    }
    if (st == LUA_YIELD) {
        lua_settop(co, 0);
        if (mx_lua_task_waiting(s) || s->body_waiting)
            return MX_AGAIN;
        mx_log_error("#%llu lua %s yielded without waiting on anything", (unsigned long long)s->id,
                     mx_phase_name(phase));
    } else {
        const char *msg = lua_tostring(co, -1);
        mx_log_error("#%llu lua %s coroutine died: %s", (unsigned long long)s->id,
                     mx_phase_name(phase), msg ? msg : "?");
    }
    /* The coroutine is not reusable: drop it. */
    if (io != NULL)
        io->s = NULL; /* its session objects raise from now on */
    s->lua_io = NULL;
    luaL_unref(vm->L, LUA_REGISTRYINDEX, s->lua_co_ref);
    s->lua_co_ref = 0;
    s->lua_co = NULL;
    s->lua_phase = -1;
    return MX_ELUA;
}


/* Handles what lua_resume() left: a finished phase (the body did yield() after
 * done = 1: inline, it is every phase's end), else after_resume_slow(). */
static inline int
after_resume(mx_session_t *s, lua_State *co, int st)
{
    mx_lua_io_t *io = s->lua_io;
    if (__builtin_expect(st == LUA_YIELD && io != NULL && io->done == 1, 1)) {
        io->done = 0;
        s->lua_phase = -1;
        return MX_OK;
    }
    return after_resume_slow(s, co, st);
}


/* lua_resume() with <s> as the session whose waits FFI calls arm (task.c). */
static int
resume(mx_session_t *s, lua_State *co, int nargs)
{
    mx_session_t *prev = mx_lua_cur_session;
    mx_lua_cur_session = s;
    mx_vm_t *prev_vm = enter(s->gen->vm);
    int st = lua_resume(co, nargs);
    mx_current_vm = prev_vm;
    mx_lua_cur_session = prev;
    return st;
}


/* A request starts on a coroutine: its io block says which session, service and
 * connection; from now on the connection drops its Lua table (s.conn_ctx) when it
 * closes. */
static void
start_request(mx_session_t *s)
{
    mx_lua_io_t *io = s->lua_io;
    io->s = s;
    io->start = 1;
    io->svc = (int32_t)s->svc_index;
    io->cid = 0;
    if (s->c != NULL) {
        s->c->lua_conn_ctx = 1;
        io->cid = (double)s->c->id;
    }
    io->phase = s->lua_phase;
}


void
mx_lua_attach(mx_session_t *s, mx_lua_io_t *io)
{
    s->lua_io = io;
    start_request(s);
}


int
mx_lua_run(mx_session_t *s, int phase)
{
    lua_State *co = s->lua_co;
    s->lua_phase = phase;
    if (co == NULL) {
        mx_vm_t *vm = s->gen->vm;
        lua_State *L = vm->L;
        if (vm->npool > 0) {
            vm_co_t *pc = &vm->pool[--vm->npool];
            s->lua_co_ref = pc->ref;
            s->lua_io = pc->io;
            co = pc->co;
            start_request(s);
        } else {
            /* A new coroutine: its body registers its io block (mx_lua_attach). */
            co = lua_newthread(L);
            s->lua_co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
            s->lua_io = NULL;
            lua_rawgeti(co, LUA_REGISTRYINDEX, vm->body_ref);
        }
        s->lua_co = co;
    } else {
        s->lua_io->phase = phase;
    }
    return after_resume(s, co, resume(s, co, 0));
}


void
mx_lua_resume(mx_session_t *s)
{
    lua_State *co = s->lua_co;
    int rc = after_resume(s, co, resume(s, co, 0));
    if (rc != MX_AGAIN)
        mx_session_on_phase_done(s, rc);
}


void
mx_lua_resume_id(mx_session_t *s, double id)
{
    lua_State *co = s->lua_co;
    lua_pushnumber(co, id);
    int rc = after_resume(s, co, resume(s, co, 1));
    if (rc != MX_AGAIN)
        mx_session_on_phase_done(s, rc);
}


void
mx_vm_conn_closed(mx_vm_t *vm, uint64_t id)
{
    if (vm == NULL)
        return;
    lua_State *L = vm->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->conn_ctxs_ref);
    lua_pushnumber(L, (lua_Number)id);
    lua_pushnil(L);
    lua_rawset(L, -3);
    lua_pop(L, 1);
}


/* --- moxy.timer --- */

static void
on_timer_close(uv_handle_t *h)
{
    mx_free(mx_container_of((uv_timer_t *)h, vm_timer_t, timer));
}


static void
timer_close(vm_timer_t *t)
{
    mx_list_remove(&t->node);
    uv_timer_stop(&t->timer);
    uv_close((uv_handle_t *)&t->timer, on_timer_close);
}


static void
on_timer(uv_timer_t *h)
{
    vm_timer_t *t = mx_container_of(h, vm_timer_t, timer);
    mx_vm_t *vm = t->vm;
    double id = t->id;
    if (!t->every)
        timer_close(t);
    mx_lua_task_timer(vm, id, false); /* in a coroutine of its own: it may wait */
}


int
mx_vm_timer_start(double id, double seconds, bool every)
{
    mx_vm_t *vm = mx_current_vm;
    if (vm == NULL)
        return MX_EBADARG;
    if (vm->w == NULL)
        return MX_OK; /* the scratch VM of moxy -t: never fires */
    vm_timer_t *t = mx_calloc(1, sizeof(*t));
    t->vm = vm;
    t->id = id;
    t->every = every;
    uv_timer_init(&vm->w->loop, &t->timer);
    uint64_t ms = (uint64_t)(seconds * 1000.0 + 0.5);
    uv_timer_start(&t->timer, on_timer, ms, every ? (ms ? ms : 1) : 0);
    mx_list_push(&vm->timers, &t->node);
    return MX_OK;
}


int
mx_vm_timer_cancel(double id)
{
    mx_vm_t *vm = mx_current_vm;
    if (vm == NULL)
        return MX_DECLINED;
    for (mx_list_t *n = vm->timers.next; n != &vm->timers; n = n->next) {
        vm_timer_t *t = mx_container_of(n, vm_timer_t, node);
        if (t->id == id) {
            timer_close(t);
            return MX_OK;
        }
    }
    return MX_DECLINED;
}


/* The worker stops: each script's shutdown() runs (errors are logged). */
static void
run_shutdown(mx_vm_t *vm)
{
    if (vm->shutdown_ref == 0 || vm->w == NULL)
        return;
    char err[512];
    lua_rawgeti(vm->L, LUA_REGISTRYINDEX, vm->shutdown_ref);
    mx_vm_t *prev = enter(vm);
    if (pcall(vm->L, 0, 0, err, sizeof(err)) != MX_OK)
        mx_log_error("lua shutdown %s", err);
    mx_current_vm = prev;
}


void
mx_vm_timers_retire(mx_vm_t *vm)
{
    if (vm == NULL)
        return;
    while (!mx_list_empty(&vm->timers)) {
        vm_timer_t *t = mx_container_of(vm->timers.next, vm_timer_t, node);
        double id = t->id;
        timer_close(t);
        if (vm->body_ref != 0) /* the VM loaded: engine.timer_body exists */
            mx_lua_task_timer(vm, id, true);
    }
    run_shutdown(vm);
    vm->shutdown_ref = 0; /* once */
}


void
mx_lua_release(mx_session_t *s)
{
    mx_lua_task_end_session(s); /* closes its sockets, stops its sleeps: nothing wakes it */
    if (s->lua_co == NULL)
        return;
    mx_vm_t *vm = s->gen->vm;
    /* The session objects of the coroutine raise from now on (their io block holds no
     * session), so it goes back to the pool without a resume: a coroutine between
     * phases sits at the yield that also takes its next request. One that waits is
     * dropped. */
    mx_lua_io_t *io = s->lua_io;
    if (io != NULL)
        io->s = NULL;
    if (s->lua_phase < 0 && io != NULL) {
        if (vm->npool == vm->cap) {
            vm->cap = vm->cap ? vm->cap * 2 : 64;
            vm->pool = mx_realloc(vm->pool, vm->cap * sizeof(*vm->pool));
        }
        vm->pool[vm->npool++] = (vm_co_t){s->lua_co_ref, s->lua_co, io};
    } else {
        luaL_unref(vm->L, LUA_REGISTRYINDEX, s->lua_co_ref);
    }
    s->lua_co = NULL;
    s->lua_co_ref = 0;
    s->lua_io = NULL;
    s->lua_phase = -1;
}


char *
mx_vm_handover(mx_vm_t *vm)
{
    if (vm == NULL || vm->handover_ref == 0 || vm->w == NULL)
        return NULL;
    lua_State *L = vm->L;
    char err[512];
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->handover_ref);
    mx_vm_t *prev = enter(vm);
    int rc = pcall(L, 0, 1, err, sizeof(err));
    mx_current_vm = prev;
    if (rc != MX_OK) {
        mx_log_error("lua handover %s", err);
        return NULL;
    }
    char *out = NULL;
    size_t len;
    const char *p = lua_tolstring(L, -1, &len);
    if (p != NULL) {
        out = mx_alloc(len + 1);
        memcpy(out, p, len);
        out[len] = '\0';
    }
    lua_pop(L, 1);
    return out;
}
