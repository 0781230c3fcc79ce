/* Addresses as written in config: "host:port", "[v6]:port", "unix:/path". */
#include "net/addr.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"


__attribute__((format(printf, 3, 4))) static int
fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return MX_ECONF;
}


/* Parses the decimal port <p> into <*port>: digits only, 1..65535. */
static int
parse_port(const char *p, int *port, char *err, size_t errlen)
{
    if (*p == '\0')
        return fail(err, errlen, "missing port");
    if (strspn(p, "0123456789") != strlen(p))
        return fail(err, errlen, "invalid port \"%s\"", p);
    /* Long digit strings would overflow strtol: they are out of range anyway. */
    long n = strlen(p) > 6 ? 999999 : strtol(p, NULL, 10);
    if (n < 1 || n > 65535)
        return fail(err, errlen, "port %s out of range", p);
    *port = (int)n;
    return MX_OK;
}


/* Only what a DNS name may hold, so that garbage never reaches the resolver;
 * digits and dots alone that inet_pton() refused are a mistyped IPv4 address,
 * which getaddrinfo() would otherwise read the inet_aton() way ("1.2.3"). */
static bool
host_name_ok(const char *h)
{
    return h[0] != '-' && h[0] != '.' && strspn(h, "0123456789.") != strlen(h) &&
           strspn(h, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._") ==
               strlen(h);
}


static int
parse_unix(const char *path, mx_addr_t *out, char *err, size_t errlen)
{
    struct sockaddr_un *sun = (struct sockaddr_un *)&out->sa;
    size_t n = strlen(path);

    if (n == 0)
        return fail(err, errlen, "empty unix socket path");
    if (n >= sizeof(sun->sun_path) || n >= sizeof(out->host))
        return fail(err, errlen, "unix socket path longer than %zu bytes",
                    sizeof(sun->sun_path) - 1);
    out->kind = MX_ADDR_UNIX;
    sun->sun_family = AF_UNIX;
    memcpy(sun->sun_path, path, n + 1);
    out->salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    memcpy(out->host, path, n + 1);
    out->port = 0;
    snprintf(out->text, sizeof(out->text), "unix:%s", path);
    return MX_OK;
}


/* Parses "host:port", "[v6]:port" or "unix:/path" into <out>. A host that is
 * not a numeric address is resolved with getaddrinfo() (AF_UNSPEC, first
 * result). <out->text> gets the canonical numeric form. */
int
mx_addr_parse(const char *s, mx_addr_t *out, char *err, size_t errlen)
{
    char host[sizeof(out->host)];
    const char *port;
    size_t hlen;
    bool bracketed = s[0] == '[';

    memset(out, 0, sizeof(*out));
    if (strncmp(s, "unix:", 5) == 0)
        return parse_unix(s + 5, out, err, errlen);

    if (bracketed) {
        const char *end = strchr(s, ']');
        if (end == NULL)
            return fail(err, errlen, "missing ']'");
        if (end[1] != ':')
            return fail(err, errlen, "missing port");
        hlen = (size_t)(end - s - 1);
        s++;
        port = end + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (colon == NULL)
            return fail(err, errlen, "missing port");
        if (memchr(s, ':', (size_t)(colon - s)) != NULL)
            return fail(err, errlen, "an IPv6 address must be in brackets, as in [::1]:80");
        hlen = (size_t)(colon - s);
        port = colon + 1;
    }
    if (hlen == 0)
        return fail(err, errlen, "missing host");
    if (hlen >= sizeof(host))
        return fail(err, errlen, "host name too long");
    memcpy(host, s, hlen);
    host[hlen] = '\0';
    if (parse_port(port, &out->port, err, errlen) != MX_OK)
        return MX_ECONF;

    struct sockaddr_in *sin = (struct sockaddr_in *)&out->sa;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->sa;
    if (!bracketed && inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        out->salen = sizeof(*sin);
    } else if (bracketed && inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        out->salen = sizeof(*sin6);
    } else if (bracketed) {
        return fail(err, errlen, "\"%s\" is not an IPv6 address", host);
    } else if (!host_name_ok(host)) {
        return fail(err, errlen, "invalid host \"%s\"", host);
    } else {
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        struct addrinfo *res;
        int rc = getaddrinfo(host, NULL, &hints, &res);
        if (rc != 0)
            return fail(err, errlen, "cannot resolve \"%s\" (%s)", host, gai_strerror(rc));
        memcpy(&out->sa, res->ai_addr, res->ai_addrlen);
        out->salen = res->ai_addrlen;
        freeaddrinfo(res);
    }
    if (out->sa.ss_family == AF_INET)
        sin->sin_port = htons((uint16_t)out->port);
    else
        sin6->sin6_port = htons((uint16_t)out->port);
    out->kind = MX_ADDR_TCP;
    memcpy(out->host, host, hlen + 1);
    mx_addr_format((struct sockaddr *)&out->sa, out->text, sizeof(out->text));
    return MX_OK;
}


/* Writes "1.2.3.4:80", "[::1]:80" or "unix:/path" for <sa> into <buf>. */
void
mx_addr_format(const struct sockaddr *sa, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN];

    if (len == 0)
        return;
    switch (sa->sa_family) {
    case AF_INET: {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
        snprintf(buf, len, "%s:%u", ip, ntohs(sin->sin_port));
        break;
    }
    case AF_INET6: {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
        snprintf(buf, len, "[%s]:%u", ip, ntohs(sin6->sin6_port));
        break;
    }
    case AF_UNIX: {
        const struct sockaddr_un *sun = (const struct sockaddr_un *)sa;
        snprintf(buf, len, "unix:%.*s", (int)sizeof(sun->sun_path), sun->sun_path);
        break;
    }
    default:
        snprintf(buf, len, "(unknown address family %d)", sa->sa_family);
    }
}
