#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf/conf.h"
#include "core/errors.h"

static char err[512];
static char dir[64];


/* Makes a fresh directory with script.lua, cert.pem and key.pem in it;
 * tests that need files call it and rm_dir() at the end. */
static void
mk_dir(void)
{
    static const char *names[] = {"script.lua", "cert.pem", "key.pem"};
    char path[128];

    strcpy(dir, "/tmp/moxy-conf-test-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        FILE *f = fopen(path, "w");
        cr_assert_not_null(f);
        fputs("-- test\n", f);
        fclose(f);
    }
}


static void
rm_dir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}


static mx_conf_t *
load(const char *yaml)
{
    mx_conf_t *c = NULL;
    int rc = mx_conf_load_string("t.yaml", yaml, strlen(yaml), &c, err, sizeof(err));
    cr_assert_eq(rc, MX_OK, "%s", err);
    cr_assert_not_null(c);
    return c;
}


/* Asserts that <yaml> is refused with exactly the message <want>. */
static void
bad(const char *yaml, const char *want)
{
    mx_conf_t *c = (mx_conf_t *)1;
    err[0] = '\0';
    int rc = mx_conf_load_string("t.yaml", yaml, strlen(yaml), &c, err, sizeof(err));
    cr_assert_eq(rc, MX_ECONF, "accepted:\n%s", yaml);
    cr_assert_null(c);
    cr_assert_str_eq(err, want);
}


#define SVC "services:\n  - listeners: [127.0.0.1:8080]\n"
#define UPS "upstreams:\n  origin:\n    backends: [127.0.0.1:9001]\n"


Test(conf, reads_every_key)
{
    char yaml[4096];
    mk_dir();
    snprintf(yaml, sizeof(yaml),
             "version: 1\n"
             "threads: 3\n"
             "daemon: yes\n"
             "pid_file: /tmp/m.pid\n"
             "error_log: /tmp/e.log\n"
             "log_level: warn\n"
             "access_log: /tmp/a.log\n"
             "upgrade_sock: /tmp/u.sock\n"
             "user: nobody\n"
             "group: nogroup\n"
             "grace_period_seconds: 0.5\n"
             "graceful_shutdown_timeout_seconds: 12\n"
             "upstream_keepalive_pool_size: 64\n"
             "lua_path: \"lua/?.lua;examples/?.lua\"\n"
             "services:   # before upstreams: names resolve whatever the order\n"
             "  - name: web\n"
             "    listeners:\n"
             "      - 127.0.0.1:8080\n"
             "      - \"[::1]:8080\"\n"
             "      - unix:/tmp/moxy-test.sock\n"
             "      - address: 0.0.0.0:8443\n"
             "        tls: { cert: %s/cert.pem, key: %s/key.pem }\n"
             "        backlog: 1024\n"
             "    script: %s/script.lua\n"
             "    upstream: origin\n"
             "    limits: { max_header_bytes: 4096, max_headers: 20, max_request_line: 1024,\n"
             "              max_body_bytes: 65536 }\n"
             "    timeouts: { client_header: 5, client_body: 0.25, keepalive: 75 }\n"
             "    x_forwarded_for: false\n"
             "    via: no\n"
             "    allow_connect: true\n"
             "  - name: admin\n"
             "    listeners: [\"127.0.0.1:9090\"]\n"
             "    upstream: other\n"
             "upstreams:\n"
             "  origin:\n"
             "    backends:\n"
             "      - 127.0.0.1:9001\n"
             "      - address: 127.0.0.1:9002\n"
             "        weight: 2\n"
             "      - unix:/run/app.sock\n"
             "      - \"[::1]:9003 weight=5\"\n"
             "    algorithm: least_conn\n"
             "    health_check: { type: http, path: /health, host: example.com, interval: 2.5,\n"
             "                    rise: 4, fall: 5, timeout: 0.2 }\n"
             "    max_retries: 3\n"
             "    connect_timeout: 0.5\n"
             "    read_timeout: 31\n"
             "    write_timeout: 32\n"
             "    idle_timeout: 61\n"
             "  other:\n"
             "    backends: [localhost:9004]\n"
             "    algorithm: ketama\n"
             "    health_check: { type: http }\n",
             dir, dir, dir);
    mx_conf_t *c = load(yaml);

    cr_assert_str_eq(c->file, "t.yaml");
    cr_assert_eq(c->version, 1);
    cr_assert_eq(c->threads, 3);
    cr_assert(c->daemon);
    cr_assert_str_eq(c->pid_file, "/tmp/m.pid");
    cr_assert_str_eq(c->error_log, "/tmp/e.log");
    cr_assert_eq(c->log_level, MX_LOG_WARN);
    cr_assert_str_eq(c->access_log, "/tmp/a.log");
    cr_assert_str_eq(c->upgrade_sock, "/tmp/u.sock");
    cr_assert_str_eq(c->user, "nobody");
    cr_assert_str_eq(c->group, "nogroup");
    cr_assert_float_eq(c->grace_period_seconds, 0.5, 1e-9);
    cr_assert_float_eq(c->graceful_shutdown_timeout_seconds, 12, 1e-9);
    cr_assert_eq(c->upstream_keepalive_pool_size, 64);
    cr_assert_str_eq(c->lua_path, "lua/?.lua;examples/?.lua");

    cr_assert_eq(c->nupstreams, 2);
    const mx_conf_upstream_t *u = &c->upstreams[0];
    cr_assert_str_eq(u->name, "origin");
    cr_assert_eq(u->nbackends, 4);
    cr_assert_str_eq(u->backends[0].addr.text, "127.0.0.1:9001");
    cr_assert_eq(u->backends[0].weight, 1);
    cr_assert_str_eq(u->backends[1].addr.text, "127.0.0.1:9002");
    cr_assert_eq(u->backends[1].weight, 2);
    cr_assert_eq(u->backends[2].addr.kind, MX_ADDR_UNIX);
    cr_assert_str_eq(u->backends[2].addr.text, "unix:/run/app.sock");
    cr_assert_str_eq(u->backends[3].addr.text, "[::1]:9003");
    cr_assert_eq(u->backends[3].weight, 5);
    cr_assert_eq(u->algorithm, MX_LB_LEAST_CONN);
    cr_assert(u->health.enabled);
    cr_assert_str_eq(u->health.type, "http");
    cr_assert_str_eq(u->health.path, "/health");
    cr_assert_str_eq(u->health.host, "example.com");
    cr_assert_float_eq(u->health.interval, 2.5, 1e-9);
    cr_assert_eq(u->health.rise, 4);
    cr_assert_eq(u->health.fall, 5);
    cr_assert_float_eq(u->health.timeout, 0.2, 1e-9);
    cr_assert_eq(u->max_retries, 3);
    cr_assert_float_eq(u->connect_timeout, 0.5, 1e-9);
    cr_assert_float_eq(u->read_timeout, 31, 1e-9);
    cr_assert_float_eq(u->write_timeout, 32, 1e-9);
    cr_assert_float_eq(u->idle_timeout, 61, 1e-9);
    const mx_conf_upstream_t *o = &c->upstreams[1];
    cr_assert_str_eq(o->name, "other");
    cr_assert_eq(o->backends[0].addr.port, 9004);
    cr_assert_eq(o->algorithm, MX_LB_KETAMA);
    cr_assert_str_eq(o->health.path, "/", "an http check defaults to /");
    cr_assert_null(o->health.host);

    cr_assert_eq(c->nservices, 2);
    const mx_conf_service_t *s = &c->services[0];
    cr_assert_str_eq(s->name, "web");
    cr_assert_eq(s->nlisteners, 4);
    cr_assert_str_eq(s->listeners[0].addr.text, "127.0.0.1:8080");
    cr_assert_str_eq(s->listeners[1].addr.text, "[::1]:8080");
    cr_assert_eq(s->listeners[2].addr.kind, MX_ADDR_UNIX);
    cr_assert_str_eq(s->listeners[2].addr.host, "/tmp/moxy-test.sock");
    cr_assert_not(s->listeners[0].tls);
    cr_assert_eq(s->listeners[0].backlog, 511);
    cr_assert_str_eq(s->listeners[3].addr.text, "0.0.0.0:8443");
    cr_assert(s->listeners[3].tls);
    cr_assert_not_null(strstr(s->listeners[3].tls_cert, "/cert.pem"));
    cr_assert_not_null(strstr(s->listeners[3].tls_key, "/key.pem"));
    cr_assert_eq(s->listeners[3].backlog, 1024);
    cr_assert_not_null(strstr(s->script, "/script.lua"));
    cr_assert_str_eq(s->upstream, "origin");
    cr_assert_eq(s->upstream_ref, u);
    cr_assert_eq(s->max_header_bytes, 4096);
    cr_assert_eq(s->max_headers, 20);
    cr_assert_eq(s->max_request_line, 1024);
    cr_assert_eq(s->max_body_bytes, 65536);
    cr_assert_float_eq(s->client_header_timeout, 5, 1e-9);
    cr_assert_float_eq(s->client_body_timeout, 0.25, 1e-9);
    cr_assert_float_eq(s->keepalive_timeout, 75, 1e-9);
    cr_assert_not(s->x_forwarded_for);
    cr_assert_not(s->via);
    cr_assert(s->allow_connect);
    cr_assert_str_eq(c->services[1].name, "admin");
    cr_assert_eq(c->services[1].upstream_ref, o);
    mx_conf_free(c);
    rm_dir();
}


Test(conf, applies_defaults_to_a_minimal_config)
{
    mx_conf_t *c = load(SVC);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

    cr_assert_eq(c->version, 1);
    cr_assert_eq(c->threads, ncpu < 1 ? 1 : ncpu > 256 ? 256 : ncpu);
    cr_assert_not(c->daemon);
    cr_assert_null(c->pid_file);
    cr_assert_null(c->error_log);
    cr_assert_eq(c->log_level, MX_LOG_INFO);
    cr_assert_null(c->access_log);
    cr_assert_str_eq(c->upgrade_sock, "/tmp/moxy_upgrade.sock");
    cr_assert_null(c->user);
    cr_assert_null(c->group);
    cr_assert_float_eq(c->grace_period_seconds, 1, 1e-9);
    cr_assert_float_eq(c->graceful_shutdown_timeout_seconds, 30, 1e-9);
    cr_assert_eq(c->upstream_keepalive_pool_size, 128);
    cr_assert_null(c->lua_path);
    cr_assert_eq(c->nupstreams, 0);
    cr_assert_eq(c->nservices, 1);

    const mx_conf_service_t *s = &c->services[0];
    cr_assert_str_eq(s->name, "service0");
    cr_assert_eq(s->listeners[0].backlog, 511);
    cr_assert_not(s->listeners[0].tls);
    cr_assert_null(s->script);
    cr_assert_null(s->upstream);
    cr_assert_null(s->upstream_ref);
    cr_assert_eq(s->max_header_bytes, 16384);
    cr_assert_eq(s->max_headers, 100);
    cr_assert_eq(s->max_request_line, 8192);
    cr_assert_eq(s->max_body_bytes, 0);
    cr_assert_float_eq(s->client_header_timeout, 10, 1e-9);
    cr_assert_float_eq(s->client_body_timeout, 60, 1e-9);
    cr_assert_float_eq(s->keepalive_timeout, 60, 1e-9);
    cr_assert(s->x_forwarded_for);
    cr_assert(s->via);
    cr_assert_not(s->allow_connect);
    mx_conf_free(c);
}


Test(conf, applies_upstream_and_health_defaults)
{
    mx_conf_t *c = load(UPS "  tcp:\n    backends: [127.0.0.1:9002]\n    health_check: {}\n" SVC);
    const mx_conf_upstream_t *u = &c->upstreams[0];

    cr_assert_eq(u->backends[0].weight, 1);
    cr_assert_eq(u->algorithm, MX_LB_ROUND_ROBIN);
    cr_assert_not(u->health.enabled);
    cr_assert_str_eq(u->health.type, "tcp");
    cr_assert_eq(u->max_retries, 1);
    cr_assert_float_eq(u->connect_timeout, 2, 1e-9);
    cr_assert_float_eq(u->read_timeout, 30, 1e-9);
    cr_assert_float_eq(u->write_timeout, 30, 1e-9);
    cr_assert_float_eq(u->idle_timeout, 60, 1e-9);
    const mx_conf_health_t *h = &c->upstreams[1].health;
    cr_assert(h->enabled);
    cr_assert_str_eq(h->type, "tcp");
    cr_assert_null(h->path);
    cr_assert_float_eq(h->interval, 2, 1e-9);
    cr_assert_eq(h->rise, 2);
    cr_assert_eq(h->fall, 3);
    cr_assert_float_eq(h->timeout, 1, 1e-9);
    mx_conf_free(c);
}


Test(conf, maps_off_and_null_values)
{
    mx_conf_t *c = load("access_log: off\nerror_log: ~\npid_file:\nthreads: null\n" SVC);
    cr_assert_null(c->access_log);
    cr_assert_null(c->error_log);
    cr_assert_null(c->pid_file);
    cr_assert_geq(c->threads, 1);
    mx_conf_free(c);
    c = load("access_log: \"/tmp/x.log\"\nlog_level: debug\ndaemon: False\n" SVC);
    cr_assert_str_eq(c->access_log, "/tmp/x.log");
    cr_assert_eq(c->log_level, MX_LOG_DEBUG);
    mx_conf_free(c);
}


Test(conf, names_enums)
{
    cr_assert_str_eq(mx_log_level_str(MX_LOG_ERROR), "error");
    cr_assert_str_eq(mx_log_level_str((mx_log_level_t)42), "unknown");
    cr_assert_str_eq(mx_lb_algorithm_str(MX_LB_ROUND_ROBIN), "round_robin");
    cr_assert_str_eq(mx_lb_algorithm_str(MX_LB_LEAST_CONN), "least_conn");
}


Test(conf_error, unknown_key)
{
    bad("version: 1\n"
        "services:\n"
        "  - name: web\n"
        "    listner: [127.0.0.1:8080]\n",
        "t.yaml:4:5: services[0].listner: unknown key");
    bad("threds: 2\n" SVC, "t.yaml:1:1: threds: unknown key");
    bad(SVC "    limits: { max_header: 1 }\n",
        "t.yaml:3:15: services[0].limits.max_header: unknown key");
    bad("threads: 1\nthreads: 2\n" SVC, "t.yaml:2:1: threads: duplicate key");
}


Test(conf_error, wrong_type)
{
    bad("threads: two\n" SVC, "t.yaml:1:10: threads: expected an integer, got \"two\"");
    bad("threads: 1.5\n" SVC, "t.yaml:1:10: threads: expected an integer, got \"1.5\"");
    bad("threads: [1]\n" SVC, "t.yaml:1:10: threads: expected an integer, got a sequence");
    bad("daemon: maybe\n" SVC, "t.yaml:1:9: daemon: expected true or false, got \"maybe\"");
    bad("pid_file: {a: 1}\n" SVC, "t.yaml:1:11: pid_file: expected a string, got a mapping");
    bad("services: web\n", "t.yaml:1:11: services: expected a sequence, got \"web\"");
    bad("upstreams: [a]\n" SVC, "t.yaml:1:12: upstreams: expected a mapping of upstream names to "
                                "upstreams, got a sequence");
    bad(SVC "    limits: 5\n", "t.yaml:3:13: services[0].limits: expected a mapping, got \"5\"");
    bad(UPS "    connect_timeout: 2s\n" SVC, "t.yaml:4:22: upstreams.origin.connect_timeout: "
                                             "expected a duration in seconds, got \"2s\"");
    bad(UPS "    connect_timeout: nan\n" SVC, "t.yaml:4:22: upstreams.origin.connect_timeout: "
                                              "expected a duration in seconds, got \"nan\"");
    bad("log_level: verbose\n" SVC,
        "t.yaml:1:12: log_level: unknown value \"verbose\" (expected one of: debug, info, warn, "
        "error)");
}


Test(conf_error, out_of_range)
{
    bad("threads: 0\n" SVC, "t.yaml:1:10: threads: 0 is out of range (1..256)");
    bad("threads: 257\n" SVC, "t.yaml:1:10: threads: 257 is out of range (1..256)");
    bad("threads: 99999999999999999999\n" SVC,
        "t.yaml:1:10: threads: 99999999999999999999 is out of range (1..256)");
    bad(UPS "    connect_timeout: -1\n" SVC,
        "t.yaml:4:22: upstreams.origin.connect_timeout: -1 is out of range (0.001..3600 seconds)");
    bad(SVC "    limits: { max_body_bytes: -1 }\n",
        "t.yaml:3:31: services[0].limits.max_body_bytes: -1 is out of range "
        "(0..9223372036854775808)");
    bad("upstreams:\n  o:\n    backends: [{address: 127.0.0.1:1, weight: 0}]\n" SVC,
        "t.yaml:3:47: upstreams.o.backends[0].weight: 0 is out of range (1..1000)");
    bad("upstreams:\n  o:\n    backends: [\"127.0.0.1:1 weight=1001\"]\n" SVC,
        "t.yaml:3:16: upstreams.o.backends[0]: 1001 is out of range (1..1000)");
    bad("upstreams:\n  o:\n    backends: [\"127.0.0.1:1 wieght=2\"]\n" SVC,
        "t.yaml:3:16: upstreams.o.backends[0]: unknown backend option \"wieght=2\" (expected "
        "weight=N)");
}


Test(conf_error, bad_address)
{
    bad("services:\n"
        "  - name: web\n"
        "    listeners:\n"
        "      - 127.0.0.1:8080\n"
        "      - 0.0.0.0:99999\n",
        "t.yaml:5:9: services[0].listeners[1]: \"0.0.0.0:99999\" is not a valid address (port "
        "99999 out of range)");
    bad("services:\n  - listeners:\n      - address: 127.0.0.1\n",
        "t.yaml:3:18: services[0].listeners[0].address: \"127.0.0.1\" is not a valid address "
        "(missing port)");
    bad("upstreams:\n  o:\n    backends: [\"::1:80\"]\n" SVC,
        "t.yaml:3:16: upstreams.o.backends[0]: \"::1:80\" is not a valid address (an IPv6 "
        "address must be in brackets, as in [::1]:80)");
}


Test(conf_error, missing_required_keys)
{
    bad("services:\n  - name: web\n",
        "t.yaml:2:5: services[0]: missing required key \"listeners\"");
    bad("services:\n  - name: web\n    listeners: []\n",
        "t.yaml:3:16: services[0].listeners: at least one listener is required");
    bad("version: 1\n", "t.yaml:1:1: missing required key \"services\"");
    bad("services: []\n", "t.yaml:1:11: services: at least one service is required");
    bad("", "t.yaml:1:1: empty configuration (services: is required)");
    bad("# nothing\n", "t.yaml:1:1: empty configuration (services: is required)");
    bad("services:\n  - listeners: [{backlog: 5}]\n",
        "t.yaml:2:17: services[0].listeners[0]: missing required key \"address\"");
    bad("upstreams:\n  o: {algorithm: random}\n" SVC,
        "t.yaml:2:6: upstreams.o: missing required key \"backends\"");
}


Test(conf_error, empty_backends_and_unknown_algorithm)
{
    bad("upstreams:\n  origin:\n    backends: []\n" SVC,
        "t.yaml:3:15: upstreams.origin.backends: at least one backend is required");
    bad(UPS "    algorithm: fastest\n" SVC,
        "t.yaml:4:16: upstreams.origin.algorithm: unknown value \"fastest\" (expected one of: "
        "round_robin, weighted, random, fnv, ketama, least_conn)");
    bad(UPS "    health_check: { type: udp }\n" SVC,
        "t.yaml:4:27: upstreams.origin.health_check.type: unknown value \"udp\" (expected one "
        "of: tcp, http)");
}


Test(conf_error, unknown_upstream)
{
    bad(UPS "services:\n"
            "  - listeners: [127.0.0.1:8080]\n"
            "    upstream: nosuch\n",
        "t.yaml:6:15: services[0].upstream: unknown upstream \"nosuch\" (not in upstreams:)");
    bad("upstreams:\n  a: {backends: [127.0.0.1:1]}\n  a: {backends: [127.0.0.1:2]}\n" SVC,
        "t.yaml:3:3: upstreams.a: duplicate upstream name");
}


Test(conf_error, missing_files)
{
    bad(SVC "    script: /nonexistent/app.lua\n",
        "t.yaml:3:13: services[0].script: cannot open \"/nonexistent/app.lua\" (No such file or "
        "directory)");
    bad(SVC "    script: /tmp\n",
        "t.yaml:3:13: services[0].script: \"/tmp\" is not a regular file");

    char yaml[512], want[512];
    mk_dir();
    snprintf(yaml, sizeof(yaml),
             "services:\n  - listeners:\n      - address: 127.0.0.1:8443\n"
             "        tls: {cert: /nonexistent/c.pem, key: %s/key.pem}\n",
             dir);
    bad(yaml, "t.yaml:4:21: services[0].listeners[0].tls.cert: cannot open \"/nonexistent/c.pem\" "
              "(No such file or directory)");
    snprintf(yaml, sizeof(yaml),
             "services:\n  - listeners:\n      - address: 127.0.0.1:8443\n"
             "        tls: {cert: %s/cert.pem, key: %s/nokey.pem}\n",
             dir, dir);
    snprintf(want, sizeof(want),
             "t.yaml:4:%zu: services[0].listeners[0].tls.key: cannot open \"%s/nokey.pem\" (No "
             "such file or directory)",
             strlen("        tls: {cert: /cert.pem, key: ") + strlen(dir) + 1, dir);
    bad(yaml, want);
    snprintf(yaml, sizeof(yaml),
             "services:\n  - listeners:\n      - address: 127.0.0.1:8443\n"
             "        tls: {cert: %s/cert.pem}\n",
             dir);
    bad(yaml, "t.yaml:4:14: services[0].listeners[0].tls: missing required key \"key\"");
    rm_dir();
}


Test(conf_error, duplicate_listener)
{
    bad("services:\n"
        "  - name: a\n"
        "    listeners: [127.0.0.1:8080, \"[::1]:8080\"]\n"
        "  - name: b\n"
        "    listeners:\n"
        "      - 0.0.0.0:8080\n"
        "      - address: \"[0::1]:8080\"\n",
        "t.yaml:7:9: services[1].listeners[1]: duplicate listener \"[::1]:8080\" (also "
        "services[0].listeners[1])");
    bad("services:\n  - listeners: [unix:/tmp/a.sock, unix:/tmp/a.sock]\n",
        "t.yaml:2:35: services[0].listeners[1]: duplicate listener \"unix:/tmp/a.sock\" (also "
        "services[0].listeners[0])");
    bad("services:\n"
        "  - name: a\n"
        "    listeners: [127.0.0.1:8080]\n"
        "  - name: a\n"
        "    listeners: [127.0.0.1:8081]\n",
        "t.yaml:4:11: services[1].name: duplicate service name \"a\" (also services[0])");
}


Test(conf_error, unsupported_version)
{
    bad("version: 2\n" SVC,
        "t.yaml:1:10: version: unsupported version 2 (this moxy reads version 1)");
    bad("version: one\n" SVC, "t.yaml:1:10: version: expected an integer, got \"one\"");
}


Test(conf_error, yaml_syntax)
{
    bad("version: 1\nthreads: [1\nservices: []\n",
        "t.yaml:3:9: YAML syntax error: did not find expected ',' or ']' (while parsing a flow "
        "sequence at 2:10)");
    bad("services:\n  - listeners: [127.0.0.1:8080]\n bad: 1\n",
        "t.yaml:3:2: YAML syntax error: did not find expected key (while parsing a block mapping "
        "at 1:1)");
    bad(SVC "---\n" SVC, "t.yaml:4:1: a second YAML document (one is allowed)");
}


Test(conf_file, loads_a_file_and_checks_the_script_from_it)
{
    char path[128], yaml[512];
    mx_conf_t *c;

    mk_dir();
    snprintf(path, sizeof(path), "%s/moxy.yaml", dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fprintf(f, SVC "    script: %s/script.lua\n", dir);
    fclose(f);
    cr_assert_eq(mx_conf_load(path, &c, err, sizeof(err)), MX_OK, "%s", err);
    cr_assert_str_eq(c->file, path);
    cr_assert_not_null(strstr(c->services[0].script, "/script.lua"));
    mx_conf_free(c);

    f = fopen(path, "w");
    fprintf(f, "threads: 2\n" SVC "    script: %s/missing.lua\n", dir);
    fclose(f);
    c = (mx_conf_t *)1;
    cr_assert_eq(mx_conf_load(path, &c, err, sizeof(err)), MX_ECONF);
    cr_assert_null(c);
    snprintf(yaml, sizeof(yaml),
             "%s:4:13: services[0].script: cannot open \"%s/missing.lua\" (No such file or "
             "directory)",
             path, dir);
    cr_assert_str_eq(err, yaml);
    rm_dir();
}


Test(conf_file, names_a_missing_file)
{
    mx_conf_t *c = (mx_conf_t *)1;
    cr_assert_eq(mx_conf_load("/nonexistent/moxy.yaml", &c, err, sizeof(err)), MX_ECONF);
    cr_assert_null(c);
    cr_assert_str_eq(err, "/nonexistent/moxy.yaml: cannot open (No such file or directory)");
}


/* Found by the conf fuzz target: a scalar with a newline in it ("-1\n- i",
 * a multi-line plain scalar) was quoted as is, and the error promised as one
 * line ("file:line:col: key: message", what moxy -t and a failed reload log
 * print) came out as two. Control bytes in quoted values and keys become '?'. */
Test(conf, error_stays_on_one_line)
{
    bad(SVC "threads: \"1\\n2\\t3\"\n", "t.yaml:3:10: threads: expected an integer, got \"1?2?3\"");
    bad("upstreams:\n  \"a\\rb\": {backends: [127.0.0.1:1:2]}\n" SVC,
        "t.yaml:2:23: upstreams.a?b.backends[0]: \"127.0.0.1:1:2\" is not a valid address "
        "(an IPv6 address must be in brackets, as in [::1]:80)");
}
