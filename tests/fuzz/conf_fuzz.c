/* libFuzzer target: the YAML config loader (src/conf/conf.c, libyaml).
 *
 * The input is a config file, read through mx_conf_load_string() (what
 * mx_conf_load() calls once it has read the file), then, as a second case,
 * a health_check mapping through mx_conf_health_parse() (moxy.balancer.new).
 *
 * Invariants: no sanitizer report, no leak; a refused config gives MX_ECONF,
 * no config, and one NUL-terminated error line naming the file; an accepted
 * one holds what the loader promises (a service, each with a listener; every
 * upstream with a backend of weight >= 1; a service's upstream resolved;
 * values in their documented ranges). Host names in addresses are never
 * looked up: getaddrinfo() is replaced below (only "localhost" resolves). */
#include <netdb.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf/conf.h"
#include "core/alloc.h"
#include "core/errors.h"
#include "fuzz_check.h"

#define NAME "fuzz.yaml"

static struct {
    struct addrinfo ai;
    struct sockaddr_in sin;
} localhost;


/* Replaces libc's for this binary: no DNS query leaves the fuzzer. */
int
getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
            struct addrinfo **res)
{
    (void)service;
    (void)hints;
    if (node == NULL || strcmp(node, "localhost") != 0)
        return EAI_NONAME;
    localhost.sin =
        (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    localhost.ai = (struct addrinfo){.ai_family = AF_INET,
                                     .ai_socktype = SOCK_STREAM,
                                     .ai_addrlen = sizeof(localhost.sin),
                                     .ai_addr = (struct sockaddr *)&localhost.sin};
    *res = &localhost.ai;
    return 0;
}


void
freeaddrinfo(struct addrinfo *res)
{
    (void)res;
}


static void
check_error(int rc, const char *err, size_t errlen, const char *prefix)
{
    fuzz_check(rc == MX_ECONF, "rc %d", rc);
    fuzz_check(memchr(err, '\0', errlen) != NULL, "error not NUL-terminated");
    fuzz_check(strncmp(err, prefix, strlen(prefix)) == 0, "error \"%s\" does not name %s", err,
               prefix);
    fuzz_check(strchr(err, '\n') == NULL || strchr(err, '\n')[1] == '\0', "error of several lines");
}


static void
check_health(const mx_conf_health_t *h)
{
    if (!h->enabled)
        return;
    fuzz_check(strcmp(h->type, "tcp") == 0 || strcmp(h->type, "http") == 0, "type %s", h->type);
    fuzz_check(h->rise >= 1 && h->rise <= 100 && h->fall >= 1 && h->fall <= 100, "rise/fall");
    fuzz_check(h->interval >= 0.01 && h->timeout >= 0.001, "interval %g timeout %g", h->interval,
               h->timeout);
    fuzz_check(h->port >= 0 && h->port <= 65535, "port %d", h->port);
    fuzz_check(memchr(h->headers, '\0', sizeof(h->headers)) != NULL, "headers not terminated");
    fuzz_check(memchr(h->expect_body, '\0', sizeof(h->expect_body)) != NULL, "body not terminated");
}


static void
check_conf(const mx_conf_t *c)
{
    fuzz_check(c->nservices >= 1, "no service");
    fuzz_check(c->threads >= 0 && c->threads <= 256, "threads %d", c->threads);
    fuzz_check((unsigned)c->log_level <= MX_LOG_ERROR, "log level %d", c->log_level);
    for (size_t i = 0; i < c->nupstreams; i++) {
        const mx_conf_upstream_t *u = &c->upstreams[i];
        fuzz_check(u->name != NULL && u->nbackends >= 1, "upstream %zu", i);
        fuzz_check((unsigned)u->algorithm <= MX_LB_LEAST_CONN, "algorithm %d", u->algorithm);
        for (size_t j = 0; j < u->nbackends; j++) {
            const mx_conf_backend_t *b = &u->backends[j];
            fuzz_check(b->weight >= 1 && b->weight <= 1000, "weight %d", b->weight);
            fuzz_check(b->addr.kind == MX_ADDR_UNIX || (b->addr.port >= 1 && b->addr.port <= 65535),
                       "backend port %d", b->addr.port);
        }
        fuzz_check(u->connect_timeout > 0 && u->read_timeout > 0, "timeouts");
        check_health(&u->health);
    }
    for (size_t i = 0; i < c->nservices; i++) {
        const mx_conf_service_t *s = &c->services[i];
        fuzz_check(s->name != NULL && s->nlisteners >= 1, "service %zu", i);
        if (s->upstream != NULL) {
            fuzz_check(s->upstream_ref != NULL && strcmp(s->upstream_ref->name, s->upstream) == 0,
                       "service %zu: upstream %s not resolved", i, s->upstream);
            fuzz_check(s->upstream_ref >= c->upstreams &&
                           s->upstream_ref < c->upstreams + c->nupstreams,
                       "upstream_ref outside the config");
        }
        fuzz_check(s->max_header_bytes >= 1024 && s->max_headers >= 1 && s->max_request_line >= 256,
                   "limits");
        fuzz_check(s->max_body_bytes <= (uint64_t)INT64_MAX, "max_body_bytes %llu",
                   (unsigned long long)s->max_body_bytes);
        fuzz_check(s->client_header_timeout > 0 && s->keepalive_timeout > 0, "timeouts");
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    mx_conf_t *c = (mx_conf_t *)1;

    memset(err, 'x', sizeof(err));
    int rc = mx_conf_load_string(NAME, (const char *)data, size, &c, err, sizeof(err));
    if (getenv("FUZZ_DEBUG") != NULL) /* FUZZ_DEBUG=1 ./conf_fuzz file: the loader's verdict */
        fprintf(stderr, "--- %s\n", rc == MX_OK ? "ok" : err);
    if (rc == MX_OK) {
        fuzz_check(c != NULL, "no config");
        check_conf(c);
        mx_conf_free(c);
    } else {
        fuzz_check(c == NULL, "a config with an error");
        check_error(rc, err, sizeof(err), NAME ":");
    }

    /* A YAML syntax error leaves <h> as it was (lb_api.c does not look at it
     * then); any other error leaves no string in it. */
    static char untouched;
    mx_conf_health_t h;
    memset(err, 'x', sizeof(err));
    memset(&h, 0xa5, sizeof(h));
    h.path = h.host = &untouched;
    rc = mx_conf_health_parse((const char *)data, size, &h, err, sizeof(err));
    if (rc == MX_OK) {
        h.enabled = true;
        check_health(&h);
        mx_free(h.path);
        mx_free(h.host);
    } else {
        fuzz_check((h.path == NULL && h.host == NULL) ||
                       (h.path == &untouched && h.host == &untouched),
                   "strings kept after an error");
        check_error(rc, err, sizeof(err), "");
    }
    return 0;
}
