/* Network addresses as written in config: "127.0.0.1:8080", "[::1]:8080",
 * "0.0.0.0:8080", "localhost:9001" (resolved at load time), "unix:/run/x.sock". */
#ifndef MX_NET_ADDR_H
#define MX_NET_ADDR_H

#include <sys/socket.h>
#include <sys/un.h>

#include "core/types.h"

typedef enum {
    MX_ADDR_TCP = 0,
    MX_ADDR_UNIX,
} mx_addr_kind_t;

struct mx_addr_s {
    mx_addr_kind_t kind;
    struct sockaddr_storage sa; /* sockaddr_in/in6, or sockaddr_un for MX_ADDR_UNIX */
    socklen_t salen;
    char text[128]; /* canonical text form: "127.0.0.1:9001", "[::1]:80", "unix:/p" */
    char host[108]; /* host as written (no brackets), or the unix path */
    int port;       /* 0 for unix */
};

/* Parses <s> into <out>. A host name is resolved with getaddrinfo (first
 * result). Returns MX_OK, or MX_ECONF and writes a reason such as
 * "port 99999 out of range" into <err> (size <errlen>). */
int mx_addr_parse(const char *s, mx_addr_t *out, char *err, size_t errlen);

/* Writes the text form of <sa> ("1.2.3.4:80", "[::1]:80") into <buf>. */
void mx_addr_format(const struct sockaddr *sa, char *buf, size_t len);

#endif
