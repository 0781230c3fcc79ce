#include <criterion/criterion.h>

#include "core/timeq.h"
#include "core/types.h"

typedef struct {
    mx_timeq_entry_t tq;
    int id;
    int fired;
    uint64_t rearm_ms; /* re-arm from the callback when non-zero */
} item_t;

static int order[16];
static int norder;
static mx_timeq_t *cur_q;
static uint64_t cur_now;

static void
on_expire(mx_timeq_entry_t *e)
{
    item_t *it = mx_container_of(e, item_t, tq);
    it->fired++;
    if (norder < 16)
        order[norder++] = it->id;
    if (it->rearm_ms) {
        uint64_t ms = it->rearm_ms;
        it->rearm_ms = 0;
        mx_timeq_arm(cur_q, &it->tq, cur_now, ms, on_expire);
    }
}

static void
reset(mx_timeq_t *q)
{
    norder = 0;
    cur_q = q;
    mx_timeq_init(q);
}


Test(timeq, expires_what_is_due_across_durations)
{
    mx_timeq_t q;
    reset(&q);
    item_t a = {.id = 1}, b = {.id = 2}, c = {.id = 3}, d = {.id = 4};
    mx_timeq_entry_init(&a.tq);
    cr_assert_eq(mx_timeq_next(&q), MX_TIMEQ_NONE);
    mx_timeq_arm(&q, &a.tq, 0, 100, on_expire);
    cr_assert_eq(mx_timeq_next(&q), 100);
    mx_timeq_arm(&q, &b.tq, 10, 100, on_expire); /* same lane, later */
    cr_assert_eq(mx_timeq_next(&q), 100);
    mx_timeq_arm(&q, &c.tq, 20, 30, on_expire); /* new lane, due at 50: earliest */
    cr_assert_eq(c.tq.deadline, 50);
    mx_timeq_arm(&q, &d.tq, 30, 500, on_expire);
    cr_assert_eq(q.nlanes, 3);
    cr_assert_eq(mx_timeq_next(&q), 50);
    cr_assert_eq(mx_timeq_expire(&q, 49), 0);
    cr_assert_eq(mx_timeq_expire(&q, 105), 2); /* c at 50, a at 100 (lane by lane) */
    cr_assert_eq(norder, 2);
    cr_assert_eq(order[0] + order[1], 1 + 3);
    cr_assert_not(mx_timeq_armed(&a.tq));
    cr_assert(mx_timeq_armed(&b.tq));
    cr_assert_eq(mx_timeq_next(&q), 110);
    cr_assert_eq(mx_timeq_expire(&q, 1000), 2);
    cr_assert_eq(order[2], 2);
    cr_assert_eq(order[3], 4);
    cr_assert_eq(mx_timeq_next(&q), MX_TIMEQ_NONE);
    mx_timeq_dispose(&q);
}


Test(timeq, rearm_moves_to_the_tail_and_cancel_unlinks)
{
    mx_timeq_t q;
    reset(&q);
    item_t a = {.id = 1}, b = {.id = 2};
    mx_timeq_arm(&q, &a.tq, 0, 100, on_expire);
    mx_timeq_arm(&q, &b.tq, 0, 100, on_expire);
    mx_timeq_arm(&q, &a.tq, 50, 100, on_expire); /* a read: a now expires at 150, after b */
    cr_assert_eq(mx_timeq_next(&q), 100);
    mx_timeq_expire(&q, 120);
    cr_assert_eq(b.fired, 1);
    cr_assert_eq(a.fired, 0);
    mx_timeq_cancel(&a.tq);
    mx_timeq_cancel(&a.tq); /* twice is harmless */
    cr_assert_not(mx_timeq_armed(&a.tq));
    cr_assert_eq(mx_timeq_expire(&q, 10000), 0);
    cr_assert_eq(a.fired, 0);
    /* Re-armed into another duration: it leaves its old lane. */
    mx_timeq_arm(&q, &a.tq, 0, 10, on_expire);
    mx_timeq_arm(&q, &a.tq, 0, 20, on_expire);
    cr_assert_eq(mx_timeq_next(&q), 20);
    cr_assert_eq(mx_timeq_expire(&q, 100), 1);
    cr_assert_eq(a.fired, 1);
    mx_timeq_dispose(&q);
}


Test(timeq, callback_may_rearm_itself_into_a_new_duration)
{
    mx_timeq_t q;
    reset(&q);
    item_t a = {.id = 1, .rearm_ms = 777}, b = {.id = 2};
    mx_timeq_arm(&q, &a.tq, 0, 10, on_expire);
    mx_timeq_arm(&q, &b.tq, 0, 10, on_expire);
    cur_now = 10;
    /* a's callback adds a lane (the array moves) while b still waits in the old one. */
    cr_assert_eq(mx_timeq_expire(&q, 10), 2);
    cr_assert_eq(b.fired, 1);
    cr_assert(mx_timeq_armed(&a.tq));
    cr_assert_eq(mx_timeq_next(&q), 787);
    cr_assert_eq(mx_timeq_expire(&q, 786), 0);
    cr_assert_eq(mx_timeq_expire(&q, 787), 1);
    cr_assert_eq(a.fired, 2);
    mx_timeq_dispose(&q);
}


Test(timeq, zero_ms_is_one_ms_so_expire_ends)
{
    mx_timeq_t q;
    reset(&q);
    item_t a = {.id = 1, .rearm_ms = 0};
    mx_timeq_arm(&q, &a.tq, 5, 0, on_expire);
    cr_assert_eq(mx_timeq_next(&q), 6);
    cr_assert_eq(mx_timeq_expire(&q, 5), 0);
    cr_assert_eq(mx_timeq_expire(&q, 6), 1);
    mx_timeq_dispose(&q);
}


static int other_fired;

static void
on_other(mx_timeq_entry_t *e)
{
    (void)e;
    other_fired++;
}


Test(timeq, same_duration_different_callbacks_get_their_own_lanes)
{
    mx_timeq_t q;
    reset(&q);
    item_t a = {.id = 1}, b = {.id = 2};
    mx_timeq_arm(&q, &a.tq, 0, 100, on_expire);
    mx_timeq_arm(&q, &b.tq, 0, 100, on_other);
    cr_assert_eq(q.nlanes, 2);
    cr_assert_eq(mx_timeq_expire(&q, 100), 2);
    cr_assert_eq(a.fired, 1);
    cr_assert_eq(b.fired, 0);
    cr_assert_eq(other_fired, 1);
    mx_timeq_dispose(&q);
}
