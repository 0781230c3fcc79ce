/* Active health checks and DNS discovery of upstream backends: a background
 * service with its own thread and uv loop (DESIGN.md "background services").
 *
 * For each upstream group with a `health_check:` every backend is probed
 * every `interval` seconds (TCP connect, or an HTTP GET whose status line must
 * be one of `expected_statuses`); a rise/fall state machine per backend turns
 * the results into a verdict, stored in the backend's atomic `healthy` that
 * every worker's selection reads. Backends written as DNS names are
 * re-resolved every `resolve_interval` seconds and a changed address set is
 * handed to mx_group_replace().
 *
 * The state machine, the status-line parser and the address-set helpers are
 * pure functions, unit-tested on their own (tests/unit/upstream/health_test.c). */
#ifndef MX_UPSTREAM_HEALTH_H
#define MX_UPSTREAM_HEALTH_H

#include <netdb.h>
#include <uv.h>

#include "conf/conf.h"
#include "net/addr.h"

/* ---- the rise/fall state machine (pure) ---- */

/* The verdict on one backend and the run of results that argue against it. */
typedef struct {
    bool up;   /* the verdict: starts up (as nginx and Pingora do) */
    int run;   /* consecutive results against the verdict: fails while up, passes while down */
    int fails; /* consecutive failed checks, whatever the verdict (for the log) */
} mx_health_state_t;

void mx_health_state_init(mx_health_state_t *st, bool up);

/* Feeds one check result (<passed>) with thresholds <rise> and <fall> (>= 1).
 * Returns true when the verdict flipped with this result. A result that agrees
 * with the verdict resets the run, so only an unbroken run of <fall> failures
 * takes an up backend down and of <rise> passes brings a down one back. */
bool mx_health_feed(mx_health_state_t *st, bool passed, int rise, int fall);

/* ---- HTTP check helpers (pure) ---- */

/* Reads the status code of an HTTP/1.x status line at the start of <buf>
 * (<len> bytes so far). Returns MX_OK and sets <*status>, MX_AGAIN when the
 * line is not complete yet, or MX_EBADRESP when it is not "HTTP/1.d ddd". */
int mx_health_parse_status(const char *buf, size_t len, int *status);

/* True when <status> is in the check's expected set (conf's bitmap). */
bool mx_health_status_expected(const mx_conf_health_t *h, int status);

/* ---- one check (a probe) on a uv loop ---- */

typedef struct mx_health_probe_s mx_health_probe_t;

/* A probe result that is not an error code: the status was expected but the
 * body did not contain expected_body (within MX_HEALTH_BODY_MAX bytes). */
#define MX_HEALTH_BODY_MISMATCH 12
#define MX_HEALTH_BODY_MAX      16384 /* response bytes searched for expected_body */

/* Called once per probe, never after mx_health_probe_cancel(). <rc> is MX_OK
 * (passed), MX_DECLINED (an HTTP status not expected; <status> says which),
 * MX_HEALTH_BODY_MISMATCH, or a negative cause: UV_ECONNREFUSED...,
 * UV_ETIMEDOUT, MX_EBADRESP, MX_EUPCLOSED. */
typedef void (*mx_health_probe_cb)(void *arg, int rc, int status);

/* Starts one check of <h>'s type against <addr> (its port replaced by
 * h->port when set) on <loop>. <host> is the Host header of an HTTP check
 * when h->host is not set. On success returns MX_OK and sets <*out> (the
 * probe frees itself after <cb>); on failure returns a negative code and
 * never calls <cb>. */
int mx_health_probe_start(uv_loop_t *loop, const mx_conf_health_t *h, const mx_addr_t *addr,
                          const char *host, mx_health_probe_cb cb, void *arg,
                          mx_health_probe_t **out);

/* Stops a probe in flight without calling its callback; it frees itself once
 * its handles are closed (run the loop). */
void mx_health_probe_cancel(mx_health_probe_t *p);

/* A short text for a probe result: "connection refused", "status 503",
 * "timed out", "malformed status line", ... (static storage or <buf>). */
const char *mx_health_cause(int rc, int status, char *buf, size_t len);

/* ---- discovery helpers (pure) ---- */

/* True when <host> (as written in an address, without brackets) is a DNS
 * name rather than a numeric IPv4/IPv6 address. */
bool mx_health_is_name(const char *host);

/* Turns the TCP addresses of <ai> into a sorted list without duplicates,
 * each with port <port>, in <*out> (mx_alloc'd, free with mx_free; NULL when
 * none). Returns the count. */
size_t mx_health_addrs_from_ai(const struct addrinfo *ai, int port, mx_addr_t **out);

/* True when the sorted lists <a> (<na>) and <b> (<nb>) hold the same addresses. */
bool mx_health_addrs_same(const mx_addr_t *a, size_t na, const mx_addr_t *b, size_t nb);

/* ---- the service ---- */

/* Starts the health and discovery thread for <conf>'s upstream groups (which
 * must exist: call after they are built, before workers select). Names are
 * expanded to every address they resolve to before it returns. Does nothing
 * (and returns MX_OK) when no group has a health check or a DNS name.
 * Returns MX_OK or a negative uv code. Pair with mx_health_stop(); a reload
 * may stop and start again with a new config. */
int mx_health_start(const mx_conf_t *conf);

/* Stops the thread and frees its state: probes in flight are closed; a DNS
 * lookup in flight is let go (its own thread frees it whenever getaddrinfo()
 * returns, so a resolver that never answers does not hold the stop). Safe
 * to call when not started. */
void mx_health_stop(void);

/* Groups outside the config (moxy.balancer.new{} with a health_check, lb_api.c): checks
 * <g> with its conf's health_check until mx_health_remove(g). Any thread; the service
 * thread applies it (queued while the service is stopped; it keeps a reference to <g>).
 * The thread runs from mx_health_start() even when no YAML group is checked. A remove
 * cancels the group's checks in flight. Pair each add with one remove. */
typedef struct mx_group_s mx_group_t;
void mx_health_add(mx_group_t *g);
void mx_health_remove(mx_group_t *g);

#endif
