/* Request-target parsing (RFC 9112 §3.2): origin-form "/p?q", absolute-form
 * "http://host:port/p?q", authority-form "host:port" (CONNECT only) and
 * asterisk-form "*" (OPTIONS only). */
#ifndef MX_HTTP_URI_H
#define MX_HTTP_URI_H

#include "core/types.h"

typedef enum {
    MX_TARGET_ORIGIN = 0,
    MX_TARGET_ABSOLUTE,
    MX_TARGET_AUTHORITY,
    MX_TARGET_ASTERISK,
} mx_target_form_t;

typedef struct {
    mx_target_form_t form;
    mx_str_t scheme;    /* absolute-form: "http" / "https"; else empty */
    mx_str_t authority; /* absolute- and authority-form: "host:port" as written */
    mx_str_t host;      /* host without port or brackets; empty for origin-form */
    int port;           /* explicit port, or 0 */
    mx_str_t path;      /* starts with '/' ("/" when absolute-form has none); "*" for asterisk */
    mx_str_t query;     /* after '?', without it; {NULL,0} when no '?' */
    mx_str_t path_and_query; /* origin-form to send upstream: path plus "?query"
                              * (a view into the input except when absolute-form
                              * had an empty path: then MX_STR("/") with no query) */
} mx_target_t;

/* Parses <raw> (the request-target as received) for a request with method
 * <method>. Views in <out> point into <raw>. Returns MX_OK or MX_EBADREQ
 * (empty target, bad characters, a scheme other than http/https, an
 * authority-form target for a method other than CONNECT, '*' for a method
 * other than OPTIONS, a fragment, a port out of range). */
int mx_target_parse(mx_str_t raw, mx_str_t method, mx_target_t *out);

#endif
