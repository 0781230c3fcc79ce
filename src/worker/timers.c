/* The worker's timeouts for downstream and upstream connections: one
 * mx_timeq_t and one uv timer, which fires at the earliest deadline (or
 * earlier, for one since cancelled or pushed back: it then re-arms). A
 * connection re-arming on every read is a list move, not a heap update. */
#include "core/timeq.h"
#include "worker/worker.h"

static void on_timer(uv_timer_t *t);


void
mx_worker_timeout(mx_worker_t *w, mx_timeq_entry_t *e, uint64_t ms, mx_timeq_cb cb)
{
    if (!w->conn_timer_ready) {
        mx_timeq_init(&w->conn_tq);
        uv_timer_init(&w->loop, &w->conn_timer);
        uv_unref((uv_handle_t *)&w->conn_timer); /* the connections keep the loop alive */
        w->conn_timer.data = w;
        w->conn_timer_due = MX_TIMEQ_NONE;
        w->conn_timer_ready = true;
    }
    uint64_t now = uv_now(&w->loop);
    mx_timeq_arm(&w->conn_tq, e, now, ms, cb);
    if (e->deadline < w->conn_timer_due) {
        w->conn_timer_due = e->deadline;
        uv_timer_start(&w->conn_timer, on_timer, e->deadline - now, 0);
    }
}


static void
on_timer(uv_timer_t *t)
{
    mx_worker_t *w = t->data;
    uint64_t now = uv_now(&w->loop);
    w->conn_timer_due = MX_TIMEQ_NONE;
    mx_timeq_expire(&w->conn_tq, now);
    uint64_t next = mx_timeq_next(&w->conn_tq);
    if (next != MX_TIMEQ_NONE && next < w->conn_timer_due) {
        w->conn_timer_due = next;
        uv_timer_start(&w->conn_timer, on_timer, next > now ? next - now : 0, 0);
    }
}


void
mx_worker_timers_close(mx_worker_t *w)
{
    if (!w->conn_timer_ready)
        return;
    w->conn_timer_ready = false;
    mx_timeq_dispose(&w->conn_tq); /* unlinks what is left: a later cancel is a no-op */
    uv_close((uv_handle_t *)&w->conn_timer, NULL);
}
