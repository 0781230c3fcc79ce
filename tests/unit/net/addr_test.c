#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "core/errors.h"
#include "net/addr.h"


Test(addr, parses_numeric_ipv4_and_ipv6)
{
    static const struct {
        const char *in, *text, *host;
        int family, port;
    } ok[] = {
        {"127.0.0.1:80", "127.0.0.1:80", "127.0.0.1", AF_INET, 80},
        {"0.0.0.0:8080", "0.0.0.0:8080", "0.0.0.0", AF_INET, 8080},
        {"[::1]:8080", "[::1]:8080", "::1", AF_INET6, 8080},
        {"[::]:8080", "[::]:8080", "::", AF_INET6, 8080},
        {"[0:0:0:0:0:0:0:1]:65535", "[::1]:65535", "0:0:0:0:0:0:0:1", AF_INET6, 65535},
        {"10.0.0.1:1", "10.0.0.1:1", "10.0.0.1", AF_INET, 1},
    };
    mx_addr_t a;
    char err[128];

    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        cr_assert_eq(mx_addr_parse(ok[i].in, &a, err, sizeof(err)), MX_OK, "%s: %s", ok[i].in, err);
        cr_assert_eq(a.kind, MX_ADDR_TCP);
        cr_assert_eq(a.sa.ss_family, ok[i].family, "%s", ok[i].in);
        cr_assert_str_eq(a.text, ok[i].text);
        cr_assert_str_eq(a.host, ok[i].host);
        cr_assert_eq(a.port, ok[i].port);
        if (ok[i].family == AF_INET) {
            cr_assert_eq(a.salen, sizeof(struct sockaddr_in));
            cr_assert_eq(ntohs(((struct sockaddr_in *)&a.sa)->sin_port), ok[i].port);
        } else {
            cr_assert_eq(a.salen, sizeof(struct sockaddr_in6));
            cr_assert_eq(ntohs(((struct sockaddr_in6 *)&a.sa)->sin6_port), ok[i].port);
        }
    }
}


Test(addr, resolves_localhost_to_loopback)
{
    mx_addr_t a;
    char err[128];

    cr_assert_eq(mx_addr_parse("localhost:9001", &a, err, sizeof(err)), MX_OK, "%s", err);
    cr_assert_eq(a.kind, MX_ADDR_TCP);
    cr_assert_str_eq(a.host, "localhost");
    cr_assert_eq(a.port, 9001);
    cr_assert(strcmp(a.text, "127.0.0.1:9001") == 0 || strcmp(a.text, "[::1]:9001") == 0, "%s",
              a.text);
}


Test(addr, parses_unix_paths)
{
    struct sockaddr_un *sun;
    mx_addr_t a;
    char err[128], path[200];

    cr_assert_eq(mx_addr_parse("unix:/run/x.sock", &a, err, sizeof(err)), MX_OK, "%s", err);
    sun = (struct sockaddr_un *)&a.sa;
    cr_assert_eq(a.kind, MX_ADDR_UNIX);
    cr_assert_eq(sun->sun_family, AF_UNIX);
    cr_assert_str_eq(sun->sun_path, "/run/x.sock");
    cr_assert_str_eq(a.text, "unix:/run/x.sock");
    cr_assert_str_eq(a.host, "/run/x.sock");
    cr_assert_eq(a.port, 0);

    /* sun_path holds 107 bytes and the NUL. */
    memset(path, 'a', sizeof(path));
    memcpy(path, "unix:/", 6);
    path[5 + 107] = '\0';
    cr_assert_eq(mx_addr_parse(path, &a, err, sizeof(err)), MX_OK, "%s", err);
    path[5 + 107] = 'a';
    path[5 + 108] = '\0';
    cr_assert_eq(mx_addr_parse(path, &a, err, sizeof(err)), MX_ECONF);
    cr_assert_str_eq(err, "unix socket path longer than 107 bytes");
    cr_assert_eq(mx_addr_parse("unix:", &a, err, sizeof(err)), MX_ECONF);
    cr_assert_str_eq(err, "empty unix socket path");
}


Test(addr, refuses_bad_ports_with_a_reason)
{
    static const struct {
        const char *in, *why;
    } bad[] = {
        {"127.0.0.1", "missing port"},
        {"127.0.0.1:", "missing port"},
        {"[::1]", "missing port"},
        {"[::1]:", "missing port"},
        {"0.0.0.0:0", "port 0 out of range"},
        {"0.0.0.0:65536", "port 65536 out of range"},
        {"0.0.0.0:99999", "port 99999 out of range"},
        {"0.0.0.0:99999999999999999999", "port 99999999999999999999 out of range"},
        {"0.0.0.0:-1", "invalid port \"-1\""},
        {"0.0.0.0:80x", "invalid port \"80x\""},
        {"0.0.0.0:http", "invalid port \"http\""},
        {"0.0.0.0: 80", "invalid port \" 80\""},
    };
    mx_addr_t a;
    char err[128];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_assert_eq(mx_addr_parse(bad[i].in, &a, err, sizeof(err)), MX_ECONF, "accepted %s",
                     bad[i].in);
        cr_assert_str_eq(err, bad[i].why, "%s", bad[i].in);
    }
}


Test(addr, refuses_garbage_without_asking_the_resolver)
{
    static const char *bad[] = {
        "",         ":80",      "::1:80",    "[::1:80",   "[127.0.0.1]:80",
        "[zz]:80",  "a b:80",   "!!:80",     "1.2.3:80",  "999.1.1.1:80",
        "-host:80", ".host:80", "host/x:80", "[::1]x:80", "unix",
    };
    mx_addr_t a;
    char err[128];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        cr_assert_eq(mx_addr_parse(bad[i], &a, err, sizeof(err)), MX_ECONF, "accepted \"%s\"",
                     bad[i]);
        cr_assert_neq(err[0], '\0', "no reason for \"%s\"", bad[i]);
        cr_assert_null(strstr(err, "resolve"), "\"%s\" reached the resolver: %s", bad[i], err);
    }
}


Test(addr, formats_every_family)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(80)};
    struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_port = htons(443)};
    struct sockaddr_un sun = {.sun_family = AF_UNIX, .sun_path = "/tmp/p.sock"};
    char buf[128];

    inet_pton(AF_INET, "1.2.3.4", &sin.sin_addr);
    inet_pton(AF_INET6, "2001:db8::1", &sin6.sin6_addr);
    mx_addr_format((struct sockaddr *)&sin, buf, sizeof(buf));
    cr_assert_str_eq(buf, "1.2.3.4:80");
    mx_addr_format((struct sockaddr *)&sin6, buf, sizeof(buf));
    cr_assert_str_eq(buf, "[2001:db8::1]:443");
    mx_addr_format((struct sockaddr *)&sun, buf, sizeof(buf));
    cr_assert_str_eq(buf, "unix:/tmp/p.sock");
    mx_addr_format((struct sockaddr *)&sin, buf, 4); /* truncates, stays terminated */
    cr_assert_str_eq(buf, "1.2");
}
