/* Health checks: the rise/fall state machine as a pure function of results,
 * the HTTP status-line parser, expected_statuses from YAML, one probe against
 * real loopback sockets (pass, refused, timeout, bad status, garbage), and the
 * address-set helpers that decide whether a re-resolved name changed. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

#include "conf/conf.h"
#include "core/alloc.h"
#include "core/errors.h"
#include "upstream/group.h"
#include "upstream/health.h"


/* Feeds the results in <seq> ('+' pass, '-' fail) and returns the verdicts
 * after each as a string ('U' up, 'D' down) and the count of flips. */
static void
run_seq(mx_health_state_t *st, const char *seq, int rise, int fall, char *out, int *flips)
{
    *flips = 0;
    for (size_t i = 0; seq[i]; i++) {
        if (mx_health_feed(st, seq[i] == '+', rise, fall))
            (*flips)++;
        out[i] = st->up ? 'U' : 'D';
    }
    out[strlen(seq)] = '\0';
}


Test(health_state, fall_needs_an_unbroken_run_of_failures)
{
    mx_health_state_t st;
    char v[64];
    int flips;

    mx_health_state_init(&st, true);
    run_seq(&st, "--+--+---", 2, 3, v, &flips);
    cr_assert_str_eq(v, "UUUUUUUUD");
    cr_assert_eq(flips, 1);
    cr_assert_eq(st.fails, 3);
}


Test(health_state, rise_needs_an_unbroken_run_of_passes)
{
    mx_health_state_t st;
    char v[64];
    int flips;

    mx_health_state_init(&st, false);
    run_seq(&st, "+-+-++", 2, 1, v, &flips);
    cr_assert_str_eq(v, "DDDDDU");
    cr_assert_eq(flips, 1);
    cr_assert_eq(st.fails, 0);
}


Test(health_state, fall_one_rise_one_flips_on_every_change)
{
    mx_health_state_t st;
    char v[64];
    int flips;

    mx_health_state_init(&st, true);
    run_seq(&st, "+-+--++", 1, 1, v, &flips);
    cr_assert_str_eq(v, "UDUDDUU");
    cr_assert_eq(flips, 4);
}


Test(health_state, a_full_cycle_down_and_back)
{
    mx_health_state_t st;
    char v[64];
    int flips;

    /* rise 2, fall 2: the example of conf/README.md. */
    mx_health_state_init(&st, true);
    run_seq(&st, "++--+-++-++", 2, 2, v, &flips);
    cr_assert_str_eq(v, "UUUDDDDUUUU");
    cr_assert_eq(flips, 2);
}


Test(health_state, fails_counts_failures_in_a_row_whatever_the_verdict)
{
    mx_health_state_t st;
    char v[64];
    int flips;

    mx_health_state_init(&st, true);
    run_seq(&st, "-----", 2, 2, v, &flips);
    cr_assert_eq(st.fails, 5);
    cr_assert_eq(st.run, 0, "the run restarts after a flip");
    run_seq(&st, "+", 2, 2, v, &flips);
    cr_assert_eq(st.fails, 0);
    cr_assert_eq(st.run, 1);
}


Test(health_status_line, parses_and_refuses)
{
    int st = 0;
    const char *ok = "HTTP/1.1 204 No Content\r\n";
    cr_assert_eq(mx_health_parse_status(ok, strlen(ok), &st), MX_OK);
    cr_assert_eq(st, 204);
    cr_assert_eq(mx_health_parse_status("HTTP/1.0 503\r\n", 14, &st), MX_OK);
    cr_assert_eq(st, 503);

    /* Incomplete lines wait for more, byte by byte. */
    for (size_t n = 0; n < strlen(ok) - 1; n++)
        cr_assert_eq(mx_health_parse_status(ok, n, &st), MX_AGAIN, "at %zu bytes", n);

    static const char *bad[] = {"HTTP/2 200 OK\r\n",   "HTTP/1.1 20 OK\r\n",  "HTTP/1.1 2000\r\n",
                                "http/1.1 200 OK\r\n", "SSH-2.0-OpenSSH\r\n", "HTTP/1.1 099 X\r\n",
                                "HTTP/1.1  200 OK\r\n"};
    for (size_t i = 0; i < mx_countof(bad); i++)
        cr_assert_eq(mx_health_parse_status(bad[i], strlen(bad[i]), &st), MX_EBADRESP, "took %s",
                     bad[i]);

    /* A valid start whose line never ends is refused once the buffer is full. */
    char big[1024];
    memset(big, 'a', sizeof(big));
    memcpy(big, "HTTP/1.1 200 ", 13);
    cr_assert_eq(mx_health_parse_status(big, 1000, &st), MX_AGAIN);
    cr_assert_eq(mx_health_parse_status(big, sizeof(big), &st), MX_EBADRESP);
}


static char err[512];


static mx_conf_t *
load(const char *health)
{
    char yaml[1024];
    mx_conf_t *c = NULL;

    snprintf(yaml, sizeof(yaml),
             "version: 1\n"
             "upstreams:\n"
             "  u:\n"
             "    backends: [127.0.0.1:9001]\n"
             "    health_check: %s\n"
             "services:\n"
             "  - listeners: [127.0.0.1:8080]\n"
             "    upstream: u\n",
             health);
    int rc = mx_conf_load_string("t.yaml", yaml, strlen(yaml), &c, err, sizeof(err));
    if (rc != MX_OK)
        return NULL;
    return c;
}


Test(health_conf, expected_statuses_default_is_2xx_and_3xx)
{
    mx_conf_t *c = load("{type: http}");
    cr_assert_not_null(c, "%s", err);
    const mx_conf_health_t *h = &c->upstreams[0].health;
    cr_assert(h->enabled);
    cr_assert_str_eq(h->path, "/");
    cr_assert_eq(c->upstreams[0].resolve_interval, 30);
    for (int st = 100; st < 600; st++)
        cr_assert_eq(mx_health_status_expected(h, st), st >= 200 && st < 400, "status %d", st);
    cr_assert(!mx_health_status_expected(h, -1));
    cr_assert(!mx_health_status_expected(h, 1000));
    mx_conf_free(c);
}


Test(health_conf, expected_statuses_list_class_and_range)
{
    mx_conf_t *c = load("{type: http, port: 9100, expected_statuses: [204, 4xx, \"500-502\"]}");
    cr_assert_not_null(c, "%s", err);
    const mx_conf_health_t *h = &c->upstreams[0].health;
    cr_assert_eq(h->port, 9100);
    for (int st = 100; st < 600; st++) {
        bool want = st == 204 || (st >= 400 && st < 500) || (st >= 500 && st <= 502);
        cr_assert_eq(mx_health_status_expected(h, st), want, "status %d", st);
    }
    mx_conf_free(c);

    c = load("{type: http, headers: {X-A: \"1\", x-b: two words}}");
    cr_assert_not_null(c, "%s", err);
    cr_assert_str_eq(c->upstreams[0].health.headers, "X-A: 1\r\nx-b: two words\r\n");
    cr_assert_str_eq(c->upstreams[0].health.method, "GET");
    mx_conf_free(c);

    c = load("{type: http, expected_body: '\"ok\": true'}");
    cr_assert_not_null(c, "%s", err);
    cr_assert_str_eq(c->upstreams[0].health.expect_body, "\"ok\": true");
    mx_conf_free(c);

    c = load("{type: http, expected_statuses: 200}");
    cr_assert_not_null(c, "%s", err);
    cr_assert(mx_health_status_expected(&c->upstreams[0].health, 200));
    cr_assert(!mx_health_status_expected(&c->upstreams[0].health, 301));
    mx_conf_free(c);
}


Test(health_conf, bad_expected_statuses_are_refused_with_their_key)
{
    static const struct {
        const char *health, *want;
    } cases[] = {
        {"{expected_statuses: [200, 600]}",
         "upstreams.u.health_check.expected_statuses[1]: 600 is out of range (100..599)"},
        {"{expected_statuses: 6xx}", "upstreams.u.health_check.expected_statuses: expected a "
                                     "status (204), a class (\"2xx\") or a range (\"200-299\")"},
        {"{expected_statuses: \"299-200\"}",
         "upstreams.u.health_check.expected_statuses: empty status range \"299-200\""},
        {"{expected_statuses: []}",
         "upstreams.u.health_check.expected_statuses: at least one status is required"},
        {"{port: 0}", "upstreams.u.health_check.port: 0 is out of range (1..65535)"},
        {"{method: POST}", "upstreams.u.health_check.method: unknown value \"POST\" (expected "
                           "one of: GET, HEAD)"},
        {"{headers: {Host: x}}",
         "upstreams.u.health_check.headers.Host: set by the check itself (use health_check.host)"},
        {"{headers: {Connection: keep-alive}}",
         "upstreams.u.health_check.headers.Connection: set by the check itself"},
        {"{headers: {\"a b\": x}}",
         "upstreams.u.health_check.headers.a b: not a valid header name"},
        {"{headers: {X-A: \"1\\r\\nX-B: 2\"}}",
         "upstreams.u.health_check.headers.X-A: a header value must be one line"},
        {"{method: HEAD, expected_body: ok}",
         "upstreams.u.health_check: expected_body needs a body to look in: not with method HEAD"},
        {"{headers: [X-A]}",
         "upstreams.u.health_check.headers: expected a mapping of header names"},
    };
    for (size_t i = 0; i < mx_countof(cases); i++) {
        cr_assert_null(load(cases[i].health), "accepted %s", cases[i].health);
        cr_assert_not_null(strstr(err, cases[i].want), "%s\n got: %s", cases[i].health, err);
    }
}


/* ------------------------------------------------ probes on real sockets */

typedef struct {
    uv_loop_t loop;
    uv_tcp_t server;
    const char *reply; /* what the server sends to each connection (NULL: nothing) */
    char got[1024];    /* what the server received */
    size_t gotlen;
    int rc, status, calls;
} fixture_t;

static fixture_t fx;


static void
on_result(void *arg, int rc, int status)
{
    fixture_t *f = arg;
    f->rc = rc;
    f->status = status;
    f->calls++;
}


static void
on_srv_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)h, (void)hint;
    *buf = uv_buf_init(fx.got + fx.gotlen, (unsigned)(sizeof(fx.got) - fx.gotlen - 1));
}


static void
on_srv_close(uv_handle_t *h)
{
    mx_free(h);
}


static void
on_srv_write(uv_write_t *w, int status)
{
    (void)status;
    uv_close((uv_handle_t *)w->handle, on_srv_close);
    mx_free(w);
}


static void
on_srv_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    (void)buf;
    if (n < 0) {
        uv_close((uv_handle_t *)s, on_srv_close);
        return;
    }
    fx.gotlen += (size_t)n;
    fx.got[fx.gotlen] = '\0';
    if (strstr(fx.got, "\r\n\r\n") && fx.reply) {
        uv_read_stop(s);
        uv_write_t *w = mx_alloc(sizeof(*w));
        uv_buf_t b = uv_buf_init((char *)fx.reply, (unsigned)strlen(fx.reply));
        uv_write(w, s, &b, 1, on_srv_write);
    }
}


static void
on_srv_conn(uv_stream_t *srv, int status)
{
    cr_assert_eq(status, 0);
    uv_tcp_t *c = mx_alloc(sizeof(*c));
    uv_tcp_init(srv->loop, c);
    cr_assert_eq(uv_accept(srv, (uv_stream_t *)c), 0);
    uv_read_start((uv_stream_t *)c, on_srv_alloc, on_srv_read);
}


static mx_addr_t
serve(const char *reply)
{
    struct sockaddr_in sin;
    int len = sizeof(sin);
    char text[64], e[128];
    mx_addr_t a;

    fx.reply = reply;
    uv_tcp_init(&fx.loop, &fx.server);
    uv_ip4_addr("127.0.0.1", 0, &sin);
    cr_assert_eq(uv_tcp_bind(&fx.server, (struct sockaddr *)&sin, 0), 0);
    cr_assert_eq(uv_listen((uv_stream_t *)&fx.server, 16, on_srv_conn), 0);
    uv_tcp_getsockname(&fx.server, (struct sockaddr *)&sin, &len);
    snprintf(text, sizeof(text), "127.0.0.1:%d", ntohs(sin.sin_port));
    cr_assert_eq(mx_addr_parse(text, &a, e, sizeof(e)), 0, "%s", e);
    return a;
}


static void
setup(void)
{
    memset(&fx, 0, sizeof(fx));
    uv_loop_init(&fx.loop);
}


static void
close_all(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, h == (uv_handle_t *)&fx.server ? NULL : on_srv_close);
}


static void
teardown(void)
{
    uv_walk(&fx.loop, close_all, NULL);
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&fx.loop), 0, "a handle was left open");
}


static void
check(const mx_conf_health_t *h, const mx_addr_t *a)
{
    mx_health_probe_t *p;
    int rc = mx_health_probe_start(&fx.loop, h, a, "backend.test:80", on_result, &fx, &p);
    cr_assert_eq(rc, MX_OK, "%s", mx_strerror(rc));
    while (fx.calls == 0 && uv_run(&fx.loop, UV_RUN_ONCE) != 0)
        ;
    cr_assert_eq(fx.calls, 1);
}


static mx_conf_health_t
hconf(const char *type)
{
    mx_conf_health_t h = {.enabled = true, .interval = 1, .rise = 1, .fall = 1, .timeout = 2};
    snprintf(h.type, sizeof(h.type), "%s", type);
    for (int st = 200; st < 400; st++)
        h.expect[st / 64] |= 1ull << (st % 64);
    return h;
}


TestSuite(health_probe, .init = setup, .fini = teardown);


Test(health_probe, tcp_passes_on_connect)
{
    mx_conf_health_t h = hconf("tcp");
    mx_addr_t a = serve(NULL);
    check(&h, &a);
    cr_assert_eq(fx.rc, MX_OK);
}


Test(health_probe, refused_is_a_failure_with_its_cause)
{
    char e[128], why[64];
    mx_addr_t a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t len = sizeof(sin);
    bind(fd, (struct sockaddr *)&sin, sizeof(sin));
    getsockname(fd, (struct sockaddr *)&sin, &len);
    char text[64];
    snprintf(text, sizeof(text), "127.0.0.1:%d", ntohs(sin.sin_port));
    close(fd); /* bound, never listening, closed: nothing listens there */
    cr_assert_eq(mx_addr_parse(text, &a, e, sizeof(e)), 0);

    mx_conf_health_t h = hconf("http");
    h.path = "/health";
    check(&h, &a);
    cr_assert_eq(fx.rc, UV_ECONNREFUSED);
    cr_assert_str_eq(mx_health_cause(fx.rc, fx.status, why, sizeof(why)), "connection refused");
}


Test(health_probe, http_sends_path_and_host_and_passes_on_an_expected_status)
{
    mx_conf_health_t h = hconf("http");
    h.path = "/healthz?full=1";
    mx_addr_t a = serve("HTTP/1.1 204 No Content\r\n\r\n");
    check(&h, &a);
    cr_assert_eq(fx.rc, MX_OK);
    cr_assert_eq(fx.status, 204);
    cr_assert(strncmp(fx.got, "GET /healthz?full=1 HTTP/1.1\r\n", 30) == 0, "%s", fx.got);
    cr_assert_not_null(strstr(fx.got, "\r\nHost: backend.test:80\r\n"), "%s", fx.got);
    cr_assert_not_null(strstr(fx.got, "\r\nConnection: close\r\n"), "%s", fx.got);
}


Test(health_probe, http_method_and_extra_headers)
{
    mx_conf_health_t h = hconf("http");
    h.path = "/h";
    strcpy(h.method, "HEAD");
    strcpy(h.headers, "X-Token: abc\r\nUser-Agent: probe/1\r\n");
    mx_addr_t a = serve("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
    check(&h, &a);
    cr_assert_eq(fx.rc, MX_OK);
    cr_assert(strncmp(fx.got, "HEAD /h HTTP/1.1\r\n", 18) == 0, "%s", fx.got);
    cr_assert_not_null(strstr(fx.got, "\r\nX-Token: abc\r\n"), "%s", fx.got);
    cr_assert_not_null(strstr(fx.got, "\r\nUser-Agent: probe/1\r\n"), "%s", fx.got);
    cr_assert_null(strstr(fx.got, "moxy-health-check"), "two User-Agents: %s", fx.got);
}


Test(health_probe, http_expected_body_is_searched_in_the_body)
{
    char why[64];
    mx_conf_health_t h = hconf("http");
    h.path = "/";
    strcpy(h.expect_body, "\"status\":\"ok\"");
    mx_addr_t a = serve("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
                        "{\"db\":\"up\",\"status\":\"ok\"}");
    check(&h, &a);
    cr_assert_eq(fx.rc, MX_OK);

    /* In a header is not in the body. */
    fx.calls = 0, fx.gotlen = 0;
    fx.reply = "HTTP/1.1 200 OK\r\nX-Note: \"status\":\"ok\"\r\n\r\n{\"status\":\"degraded\"}";
    check(&h, &a);
    cr_assert_eq(fx.rc, MX_HEALTH_BODY_MISMATCH);
    cr_assert_str_eq(mx_health_cause(fx.rc, fx.status, why, sizeof(why)),
                     "status 200 without the expected body");

    /* The status is checked first. */
    fx.calls = 0, fx.gotlen = 0;
    fx.reply = "HTTP/1.1 503 No\r\n\r\n{\"status\":\"ok\"}";
    check(&h, &a);
    cr_assert_eq(fx.rc, MX_DECLINED);
    cr_assert_eq(fx.status, 503);
}


Test(health_probe, http_expected_body_is_looked_for_in_the_first_16k_only)
{
    static char reply[40000];
    mx_conf_health_t h = hconf("http");
    h.path = "/";
    strcpy(h.expect_body, "NEEDLE");
    int n = snprintf(reply, sizeof(reply), "HTTP/1.1 200 OK\r\n\r\n");
    memset(reply + n, 'x', 20000);
    memcpy(reply + n + 20000, "NEEDLE", 7);
    mx_addr_t a = serve(reply);
    check(&h, &a);
    cr_assert_eq(fx.rc, MX_HEALTH_BODY_MISMATCH);

    memcpy(reply + n + 100, "NEEDLE", 6); /* early enough now */
    fx.calls = 0, fx.gotlen = 0;
    check(&h, &a);
    cr_assert_eq(fx.rc, MX_OK);
}


Test(health_probe, http_host_option_wins)
{
    mx_conf_health_t h = hconf("http");
    h.path = "/";
    h.host = "health.example";
    mx_addr_t a = serve("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
    check(&h, &a);
    cr_assert_eq(fx.rc, MX_OK);
    cr_assert_not_null(strstr(fx.got, "\r\nHost: health.example\r\n"), "%s", fx.got);
}


Test(health_probe, http_unexpected_status_fails)
{
    char why[64];
    mx_conf_health_t h = hconf("http");
    h.path = "/";
    mx_addr_t a = serve("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
    check(&h, &a);
    cr_assert_eq(fx.rc, MX_DECLINED);
    cr_assert_eq(fx.status, 503);
    cr_assert_str_eq(mx_health_cause(fx.rc, fx.status, why, sizeof(why)), "status 503");
}


Test(health_probe, http_garbage_and_early_close_fail)
{
    mx_conf_health_t h = hconf("http");
    h.path = "/";
    mx_addr_t a = serve("SSH-2.0-OpenSSH_9.2\r\n");
    check(&h, &a);
    cr_assert_eq(fx.rc, MX_EBADRESP);

    fx.calls = 0;
    fx.gotlen = 0;
    fx.reply = "HTTP/1.1 2"; /* then the server closes */
    check(&h, &a);
    cr_assert_eq(fx.rc, MX_EUPCLOSED);
}


Test(health_probe, a_silent_server_times_out)
{
    mx_conf_health_t h = hconf("http");
    h.path = "/";
    h.timeout = 0.2;
    mx_addr_t a = serve(NULL); /* accepts and reads, never answers */
    uint64_t t0 = uv_hrtime();
    check(&h, &a);
    double ms = (double)(uv_hrtime() - t0) / 1e6;
    cr_assert_eq(fx.rc, UV_ETIMEDOUT);
    cr_assert(ms >= 150 && ms < 5000, "took %.0f ms", ms);
}


Test(health_probe, port_option_checks_another_port)
{
    char e[128];
    mx_conf_health_t h = hconf("tcp");
    mx_addr_t a = serve(NULL);
    h.port = a.port;
    mx_addr_t other;
    cr_assert_eq(mx_addr_parse("127.0.0.1:1", &other, e, sizeof(e)), 0);
    check(&h, &other);
    cr_assert_eq(fx.rc, MX_OK, "%s", mx_strerror(fx.rc));
}


Test(health_probe, cancel_never_calls_back)
{
    mx_conf_health_t h = hconf("http");
    h.path = "/";
    mx_addr_t a = serve(NULL);
    mx_health_probe_t *p;
    cr_assert_eq(mx_health_probe_start(&fx.loop, &h, &a, "x", on_result, &fx, &p), MX_OK);
    uv_run(&fx.loop, UV_RUN_NOWAIT);
    mx_health_probe_cancel(p);
    uv_run(&fx.loop, UV_RUN_NOWAIT);
    cr_assert_eq(fx.calls, 0);
}


/* ------------------------------------------------------ discovery helpers */

Test(health_discovery, names_and_numbers)
{
    cr_assert(mx_health_is_name("localhost"));
    cr_assert(mx_health_is_name("app.internal"));
    cr_assert(!mx_health_is_name("127.0.0.1"));
    cr_assert(!mx_health_is_name("::1"));
    cr_assert(!mx_health_is_name("2001:db8::5"));
}


static struct addrinfo *
ai_list(const char *const *ips, size_t n)
{
    struct addrinfo *head = NULL, **tail = &head;
    for (size_t i = 0; i < n; i++) {
        struct addrinfo *ai = mx_calloc(1, sizeof(*ai) + sizeof(struct sockaddr_in6));
        ai->ai_addr = (struct sockaddr *)(ai + 1);
        if (strchr(ips[i], ':')) {
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ai->ai_addr;
            s6->sin6_family = AF_INET6;
            inet_pton(AF_INET6, ips[i], &s6->sin6_addr);
            ai->ai_addrlen = sizeof(*s6);
        } else {
            struct sockaddr_in *s4 = (struct sockaddr_in *)ai->ai_addr;
            s4->sin_family = AF_INET;
            inet_pton(AF_INET, ips[i], &s4->sin_addr);
            ai->ai_addrlen = sizeof(*s4);
        }
        ai->ai_family = ai->ai_addr->sa_family;
        *tail = ai;
        tail = &ai->ai_next;
    }
    return head;
}


static void
ai_free(struct addrinfo *ai)
{
    while (ai) {
        struct addrinfo *next = ai->ai_next;
        mx_free(ai);
        ai = next;
    }
}


Test(health_discovery, address_sets_are_sorted_deduplicated_and_compared)
{
    static const char *r1[] = {"10.0.0.2", "10.0.0.1", "10.0.0.2", "::1", "10.0.0.1"};
    static const char *r2[] = {"::1", "10.0.0.1", "10.0.0.2"};
    static const char *r3[] = {"10.0.0.1", "10.0.0.3"};
    mx_addr_t *a, *b, *c;
    struct addrinfo *x = ai_list(r1, 5), *y = ai_list(r2, 3), *z = ai_list(r3, 2);

    size_t na = mx_health_addrs_from_ai(x, 8080, &a);
    size_t nb = mx_health_addrs_from_ai(y, 8080, &b);
    size_t nc = mx_health_addrs_from_ai(z, 8080, &c);
    cr_assert_eq(na, 3, "duplicates removed");
    cr_assert(mx_health_addrs_same(a, na, b, nb), "the order of answers does not matter");
    cr_assert(!mx_health_addrs_same(a, na, c, nc));
    cr_assert(!mx_health_addrs_same(a, na, b, nb - 1));
    for (size_t i = 0; i < na; i++) {
        cr_assert_eq(a[i].port, 8080);
        cr_assert_eq(a[i].kind, MX_ADDR_TCP);
    }
    cr_assert_str_eq(c[0].text, "10.0.0.1:8080");
    cr_assert_str_eq(c[1].text, "10.0.0.3:8080");
    bool v6 = false;
    for (size_t i = 0; i < na; i++)
        v6 = v6 || strcmp(a[i].text, "[::1]:8080") == 0;
    cr_assert(v6, "the IPv6 answer is kept");

    /* The same port on another answer set is another set. */
    mx_addr_t *d;
    size_t nd = mx_health_addrs_from_ai(y, 8081, &d);
    cr_assert(!mx_health_addrs_same(b, nb, d, nd));

    mx_free(a), mx_free(b), mx_free(c), mx_free(d);
    ai_free(x), ai_free(y), ai_free(z);
}


/* ------------------------------------------- the service on real groups */

typedef struct {
    char name[64];
    int healthy;
} seen_t;


static void
on_backend(mx_backend_t *b, void *arg)
{
    seen_t *s = arg;
    if (strcmp(b->name, s->name) == 0)
        s->healthy = atomic_load(&b->healthy);
}


/* The `healthy` of backend <name> in group "u" (-1: not in it). */
static int
healthy_of(const char *name)
{
    seen_t s = {.healthy = -1};
    snprintf(s.name, sizeof(s.name), "%s", name);
    mx_group_foreach(mx_group_by_name("u", 1), on_backend, &s);
    return s.healthy;
}


/* Polls until backend <name>'s `healthy` is <want>, for up to 10 s. */
static bool
wait_healthy(const char *name, int want)
{
    for (int i = 0; i < 1000; i++) {
        if (healthy_of(name) == want)
            return true;
        usleep(10000);
    }
    return false;
}


static int
listen_on(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_addr.s_addr = htonl(0x7f000001),
                              .sin_port = htons((uint16_t)port)};
    cr_assert_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0, "bind %d", port);
    cr_assert_eq(listen(fd, 64), 0);
    socklen_t len = sizeof(sin);
    getsockname(fd, (struct sockaddr *)&sin, &len);
    return fd;
}


static int
port_of(int fd)
{
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);
    getsockname(fd, (struct sockaddr *)&sin, &len);
    return ntohs(sin.sin_port);
}


Test(health_service, marks_a_dead_backend_down_and_a_revived_one_up)
{
    int live = listen_on(0);
    int dead = listen_on(0);
    int dead_port = port_of(dead);
    close(dead); /* nothing listens there now */
    char yaml[1024], a[64], b[64];
    snprintf(a, sizeof(a), "127.0.0.1:%d", port_of(live));
    snprintf(b, sizeof(b), "127.0.0.1:%d", dead_port);
    snprintf(yaml, sizeof(yaml),
             "version: 1\n"
             "upstreams:\n"
             "  u:\n"
             "    backends: [\"%s\", \"%s\"]\n"
             "    health_check: {type: tcp, interval: 0.05, rise: 2, fall: 1, timeout: 1}\n"
             "services:\n"
             "  - listeners: [127.0.0.1:8080]\n"
             "    upstream: u\n",
             a, b);
    mx_conf_t *c = NULL;
    cr_assert_eq(mx_conf_load_string("t.yaml", yaml, strlen(yaml), &c, err, sizeof(err)), MX_OK,
                 "%s", err);
    mx_groups_init(c);
    cr_assert_eq(healthy_of(b), 1, "up until a check says otherwise");
    cr_assert_eq(mx_health_start(c), MX_OK);

    cr_assert(wait_healthy(b, 0), "the dead backend was not marked down");
    cr_assert_eq(healthy_of(a), 1);
    dead = listen_on(dead_port);
    cr_assert(wait_healthy(b, 1), "the revived backend was not marked up");
    cr_assert_eq(healthy_of(a), 1);

    uint64_t t0 = uv_hrtime();
    mx_health_stop();
    cr_assert_lt((uv_hrtime() - t0) / 1000000, 1000, "stop took over a second");
    mx_health_stop(); /* twice is harmless */
    close(live);
    close(dead);
    mx_groups_free();
    mx_conf_free(c);
}


Test(health_service, does_nothing_without_checks_or_names)
{
    const char *yaml = "version: 1\n"
                       "upstreams: {u: {backends: [127.0.0.1:9]}}\n"
                       "services: [{listeners: [127.0.0.1:8080], upstream: u}]\n";
    mx_conf_t *c = NULL;
    cr_assert_eq(mx_conf_load_string("t.yaml", yaml, strlen(yaml), &c, err, sizeof(err)), MX_OK,
                 "%s", err);
    mx_groups_init(c);
    cr_assert_eq(mx_health_start(c), MX_OK);
    usleep(100000);
    cr_assert_eq(healthy_of("127.0.0.1:9"), 1);
    mx_health_stop();
    mx_groups_free();
    mx_conf_free(c);
}


Test(health_service, restarts_with_a_new_config)
{
    int live = listen_on(0), dead = listen_on(0);
    char yaml[1024], a[64], b[64], backends[160];
    snprintf(a, sizeof(a), "127.0.0.1:%d", port_of(live));
    snprintf(b, sizeof(b), "127.0.0.1:%d", port_of(dead));
    close(dead);
    /* Round 0: a live and a dead backend; round 1, as a reload would: a new
     * config without the dead one. stop() then start() again. */
    for (int round = 0; round < 2; round++) {
        if (round == 0)
            snprintf(backends, sizeof(backends), "[\"%s\", \"%s\"]", a, b);
        else
            snprintf(backends, sizeof(backends), "[\"%s\"]", a);
        snprintf(yaml, sizeof(yaml),
                 "version: 1\n"
                 "upstreams:\n"
                 "  u:\n"
                 "    backends: %s\n"
                 "    health_check: {type: tcp, interval: 0.05, fall: 1}\n"
                 "services: [{listeners: [127.0.0.1:8080], upstream: u}]\n",
                 backends);
        mx_conf_t *c = NULL;
        cr_assert_eq(mx_conf_load_string("t.yaml", yaml, strlen(yaml), &c, err, sizeof(err)), MX_OK,
                     "%s", err);
        mx_groups_init(c);
        cr_assert_eq(mx_health_start(c), MX_OK);
        if (round == 0)
            cr_assert(wait_healthy(b, 0), "the dead backend was not marked down");
        else
            usleep(200000);
        cr_assert_eq(healthy_of(a), 1, "round %d", round);
        cr_assert_eq(healthy_of(b), round == 0 ? 0 : -1, "round %d", round);
        mx_health_stop();
        mx_groups_free();
        mx_conf_free(c);
    }
    close(live);
}


static void
on_srv_conn_pipe(uv_stream_t *srv, int status)
{
    cr_assert_eq(status, 0);
    uv_pipe_t *c = mx_alloc(sizeof(*c));
    uv_pipe_init(srv->loop, c, 0);
    cr_assert_eq(uv_accept(srv, (uv_stream_t *)c), 0);
    uv_read_start((uv_stream_t *)c, on_srv_alloc, on_srv_read);
}


Test(health_probe, unix_socket_backends_are_checked)
{
    char dir[] = "/tmp/moxy-hc-XXXXXX", path[64], text[80], e[128];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/s", dir);
    uv_pipe_t srv;
    uv_pipe_init(&fx.loop, &srv, 0);
    cr_assert_eq(uv_pipe_bind(&srv, path), 0);
    cr_assert_eq(uv_listen((uv_stream_t *)&srv, 8, on_srv_conn_pipe), 0);
    fx.reply = "HTTP/1.1 200 OK\r\n\r\n";
    snprintf(text, sizeof(text), "unix:%s", path);
    mx_addr_t a;
    cr_assert_eq(mx_addr_parse(text, &a, e, sizeof(e)), 0, "%s", e);

    mx_conf_health_t h = hconf("http");
    h.path = "/ping";
    check(&h, &a);
    cr_assert_eq(fx.rc, MX_OK, "%s", mx_strerror(fx.rc));
    cr_assert(strncmp(fx.got, "GET /ping HTTP/1.1\r\n", 20) == 0, "%s", fx.got);

    fx.calls = 0;
    h = hconf("tcp");
    check(&h, &a);
    cr_assert_eq(fx.rc, MX_OK);
    uv_close((uv_handle_t *)&srv, NULL);
    uv_run(&fx.loop, UV_RUN_NOWAIT);
    unlink(path);
    rmdir(dir);
}


/* Whether a connection waits in <fd>'s accept queue (taken off it if so). */
static bool
accepted(int fd)
{
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    if (poll(&pfd, 1, 0) != 1)
        return false;
    int c = accept(fd, NULL, NULL);
    if (c >= 0)
        close(c);
    return c >= 0;
}


Test(health_service, a_round_of_checks_is_spread_over_the_interval)
{
    int fds[4];
    char yaml[1024], list[256] = "";
    for (int i = 0; i < 4; i++) {
        fds[i] = listen_on(0);
        size_t n = strlen(list);
        snprintf(list + n, sizeof(list) - n, "%s\"127.0.0.1:%d\"", i ? ", " : "", port_of(fds[i]));
    }
    /* 4 backends, interval 4 s: one check a second (margin for a loaded machine). */
    snprintf(yaml, sizeof(yaml),
             "version: 1\n"
             "upstreams:\n"
             "  u:\n"
             "    backends: [%s]\n"
             "    health_check: {type: tcp, interval: 4}\n"
             "services: [{listeners: [127.0.0.1:8080], upstream: u}]\n",
             list);
    mx_conf_t *c = NULL;
    cr_assert_eq(mx_conf_load_string("t.yaml", yaml, strlen(yaml), &c, err, sizeof(err)), MX_OK,
                 "%s", err);
    mx_groups_init(c);
    cr_assert_eq(mx_health_start(c), MX_OK);

    bool seen[4] = {false};
    int first = -1, nseen = 0;
    for (int ms = 0; ms < 10000 && first < 0; ms += 5, usleep(5000))
        for (int i = 0; i < 4; i++)
            if (accepted(fds[i]))
                seen[i] = true, first = i, nseen++;
    cr_assert_geq(first, 0, "no check arrived");
    usleep(100000); /* well before the next one is due */
    for (int i = 0; i < 4; i++)
        if (!seen[i] && accepted(fds[i]))
            seen[i] = true, nseen++;
    cr_assert_eq(nseen, 1, "%d backends checked within 100 ms: the round is not spread", nseen);
    uint64_t t0 = uv_hrtime();
    for (int ms = 0; ms < 10000 && nseen < 4; ms += 10, usleep(10000))
        for (int i = 0; i < 4; i++)
            if (!seen[i] && accepted(fds[i]))
                seen[i] = true, nseen++;
    cr_assert_eq(nseen, 4, "a backend was never checked");
    double took = (double)(uv_hrtime() - t0) / 1e9;
    cr_assert(took > 1.5 && took < 8, "the other three took %.2f s (expected about 3)", took);

    mx_health_stop();
    mx_groups_free();
    mx_conf_free(c);
    for (int i = 0; i < 4; i++)
        close(fds[i]);
}


Test(health_probe, ipv6_backends_and_port_override)
{
    char text[64], e[128];
    struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int len = sizeof(sin6);

    uv_tcp_init(&fx.loop, &fx.server);
    if (uv_tcp_bind(&fx.server, (struct sockaddr *)&sin6, 0) != 0)
        cr_skip_test("no IPv6 loopback here");
    cr_assert_eq(uv_listen((uv_stream_t *)&fx.server, 16, on_srv_conn), 0);
    uv_tcp_getsockname(&fx.server, (struct sockaddr *)&sin6, &len);
    fx.reply = "HTTP/1.1 200 OK\r\n\r\n";
    mx_addr_t a;
    snprintf(text, sizeof(text), "[::1]:%d", ntohs(sin6.sin6_port));
    cr_assert_eq(mx_addr_parse(text, &a, e, sizeof(e)), 0, "%s", e);
    mx_conf_health_t h = hconf("http");
    h.path = "/";
    check(&h, &a);
    cr_assert_eq(fx.rc, MX_OK, "%s", mx_strerror(fx.rc));

    /* The configured port of a backend elsewhere, the check's port here. */
    cr_assert_eq(mx_addr_parse("[::1]:1", &a, e, sizeof(e)), 0, "%s", e);
    h.port = ntohs(sin6.sin6_port);
    fx.calls = 0, fx.gotlen = 0;
    check(&h, &a);
    cr_assert_eq(fx.rc, MX_OK, "%s", mx_strerror(fx.rc));
}


/* ---- groups outside the config (moxy.balancer.new{}): mx_health_add/remove ---- */

static int
dyn_healthy(mx_group_t *g, const char *name)
{
    seen_t s = {.healthy = -1};
    snprintf(s.name, sizeof(s.name), "%s", name);
    mx_group_foreach(g, on_backend, &s);
    return s.healthy;
}


static mx_group_t *
dyn_group(const char *check, const char *const *names, size_t n)
{
    mx_conf_upstream_t u = {.name = "(balancer)", .max_retries = 1, .max_fails = 1,
                            .fail_timeout = 10};
    mx_addr_t addrs[4];
    int weights[4] = {1, 1, 1, 1};
    char why[160];
    cr_assert_eq(mx_conf_health_parse(check, strlen(check), &u.health, err, sizeof(err)), MX_OK,
                 "%s", err);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(mx_addr_parse(names[i], &addrs[i], why, sizeof(why)), MX_OK);
    mx_group_t *g = mx_group_new(&u, MX_LB_ROUND_ROBIN, names, addrs, weights, n);
    mx_free(u.health.path);
    mx_free(u.health.host);
    return g;
}


Test(health_dynamic, parse_uses_the_yaml_rules_and_names_the_key)
{
    mx_conf_health_t h;
    const char *ok = "{type: http, interval: 0.3, rise: 2, fall: 1, expected_statuses: [204]}";
    cr_assert_eq(mx_conf_health_parse(ok, strlen(ok), &h, err, sizeof(err)), MX_OK, "%s", err);
    cr_assert(h.enabled);
    cr_assert_str_eq(h.path, "/");
    cr_assert_eq(h.rise, 2);
    cr_assert_eq(h.timeout, 1);
    cr_assert(mx_health_status_expected(&h, 204));
    cr_assert(!mx_health_status_expected(&h, 200));
    mx_free(h.path);
    const char *bad[][2] = {
        {"{rise: 0}", "health_check.rise: 0 is out of range (1..100)"},
        {"{type: udp}", "health_check.type: unknown value \"udp\""},
        {"{every: 1}", "health_check.every"},
        {"[1]", "health_check: expected a table"},
        {"{method: HEAD, expected_body: ok}", "health_check: expected_body needs a body"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_assert_neq(mx_conf_health_parse(bad[i][0], strlen(bad[i][0]), &h, err, sizeof(err)),
                      MX_OK, "%s", bad[i][0]);
        cr_assert(strstr(err, bad[i][1]) != NULL, "%s: %s", bad[i][0], err);
    }
}


Test(health_dynamic, added_before_start_survives_a_restart_and_is_removed_mid_check)
{
    int live = listen_on(0), dead = listen_on(0), hole = listen_on(0);
    int dead_port = port_of(dead);
    close(dead);
    char a[64], b[64], h[64];
    snprintf(a, sizeof(a), "127.0.0.1:%d", port_of(live));
    snprintf(b, sizeof(b), "127.0.0.1:%d", dead_port);
    snprintf(h, sizeof(h), "127.0.0.1:%d", port_of(hole));
    const char *names[] = {a, b};
    mx_group_t *g = dyn_group("{type: tcp, interval: 0.05, rise: 1, fall: 1}", names, 2);
    /* an http check on a socket that never accepts: always in flight (timeout 5 s) */
    const char *hnames[] = {h};
    mx_group_t *hg = dyn_group("{type: http, interval: 0.02, timeout: 5}", hnames, 1);
    mx_health_add(g); /* queued: the service is not running */

    const char *yaml = "version: 1\n"
                       "upstreams: {u: {backends: [127.0.0.1:9]}}\n"
                       "services: [{listeners: [127.0.0.1:8080], upstream: u}]\n";
    mx_conf_t *c = NULL;
    cr_assert_eq(mx_conf_load_string("t.yaml", yaml, strlen(yaml), &c, err, sizeof(err)), MX_OK,
                 "%s", err);
    mx_groups_init(c);
    for (int round = 0; round < 2; round++) { /* round 1: as a reload restarts the service */
        cr_assert_eq(mx_health_start(c), MX_OK, "the thread runs without YAML checks");
        if (round == 0) {
            for (int i = 0; i < 1000 && dyn_healthy(g, b) != 0; i++)
                usleep(10000);
            cr_assert_eq(dyn_healthy(g, b), 0, "the dead backend was not marked down");
            dead = listen_on(dead_port);
        } else {
            for (int i = 0; i < 1000 && dyn_healthy(g, b) != 1; i++)
                usleep(10000);
            cr_assert_eq(dyn_healthy(g, b), 1, "still checked after the restart");
        }
        cr_assert_eq(dyn_healthy(g, a), 1);
        mx_health_add(hg);
        usleep(100000); /* its checks are in flight */
        mx_health_remove(hg);
        mx_health_add(hg);
        usleep(50000);
        mx_health_remove(hg); /* a remove with a check hanging: cancelled, no callback */
        uint64_t t0 = uv_hrtime();
        mx_health_stop();
        cr_assert_lt((uv_hrtime() - t0) / 1000000, 1000, "stop took over a second");
    }
    mx_health_remove(g); /* stopped: cancels the add the stop queued again */
    mx_group_unref(g);
    mx_group_unref(hg);
    close(live);
    close(dead);
    close(hole);
    mx_groups_free();
    mx_conf_free(c);
}
