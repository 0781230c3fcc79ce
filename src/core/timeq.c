#include "core/timeq.h"

#include "core/alloc.h"
#include "core/types.h"


void
mx_timeq_init(mx_timeq_t *q)
{
    q->lanes = NULL;
    q->nlanes = 0;
}


void
mx_timeq_dispose(mx_timeq_t *q)
{
    for (size_t i = 0; i < q->nlanes; i++)
        while (!mx_list_empty(&q->lanes[i].fifo))
            mx_list_remove(q->lanes[i].fifo.next);
    mx_free(q->lanes);
    q->lanes = NULL;
    q->nlanes = 0;
}


void
mx_timeq_entry_init(mx_timeq_entry_t *e)
{
    mx_list_init(&e->node);
    e->deadline = 0;
}


static mx_timeq_lane_t *
lane_for(mx_timeq_t *q, uint64_t ms, mx_timeq_cb cb)
{
    for (size_t i = 0; i < q->nlanes; i++)
        if (q->lanes[i].ms == ms && q->lanes[i].cb == cb)
            return &q->lanes[i];
    /* A new duration: the array moves, so every FIFO's head is re-linked. */
    mx_timeq_lane_t *old = q->lanes;
    mx_timeq_lane_t *l = mx_alloc((q->nlanes + 1) * sizeof(*l));
    for (size_t i = 0; i < q->nlanes; i++) {
        l[i].ms = old[i].ms;
        l[i].cb = old[i].cb;
        if (mx_list_empty(&old[i].fifo)) {
            mx_list_init(&l[i].fifo);
        } else {
            l[i].fifo = old[i].fifo;
            l[i].fifo.next->prev = &l[i].fifo;
            l[i].fifo.prev->next = &l[i].fifo;
        }
    }
    mx_free(old);
    q->lanes = l;
    l = &q->lanes[q->nlanes++];
    l->ms = ms;
    l->cb = cb;
    mx_list_init(&l->fifo);
    return l;
}


void
mx_timeq_arm(mx_timeq_t *q, mx_timeq_entry_t *e, uint64_t now, uint64_t ms, mx_timeq_cb cb)
{
    if (mx_list_linked(&e->node))
        mx_list_remove(&e->node);
    if (ms == 0)
        ms = 1; /* "due now" would expire again inside mx_timeq_expire() */
    mx_timeq_lane_t *l = lane_for(q, ms, cb);
    e->deadline = now + ms;
    mx_list_push(l->fifo.prev, &e->node); /* at the tail */
}


void
mx_timeq_cancel(mx_timeq_entry_t *e)
{
    if (mx_list_linked(&e->node))
        mx_list_remove(&e->node);
}


bool
mx_timeq_armed(const mx_timeq_entry_t *e)
{
    return mx_list_linked(&e->node);
}


uint64_t
mx_timeq_next(const mx_timeq_t *q)
{
    uint64_t next = MX_TIMEQ_NONE;
    for (size_t i = 0; i < q->nlanes; i++) {
        const mx_list_t *f = &q->lanes[i].fifo;
        if (mx_list_empty(f))
            continue;
        const mx_timeq_entry_t *e = mx_container_of(f->next, mx_timeq_entry_t, node);
        if (e->deadline < next)
            next = e->deadline;
    }
    return next;
}


size_t
mx_timeq_expire(mx_timeq_t *q, uint64_t now)
{
    size_t n = 0;
    /* By index: a callback arming a new duration reallocates the lanes. A
     * re-armed entry lands at now + ms > now, so each loop ends. */
    for (size_t i = 0; i < q->nlanes; i++) {
        while (!mx_list_empty(&q->lanes[i].fifo)) {
            mx_timeq_entry_t *e = mx_container_of(q->lanes[i].fifo.next, mx_timeq_entry_t, node);
            if (e->deadline > now)
                break;
            mx_timeq_cb cb = q->lanes[i].cb;
            mx_list_remove(&e->node);
            n++;
            cb(e);
        }
    }
    return n;
}
