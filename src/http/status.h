/* Status codes' reason phrases (RFC 9110 §15), for the status line and the
 * bodies moxy writes itself. */
#ifndef MX_HTTP_STATUS_H
#define MX_HTTP_STATUS_H

/* Returns the static reason phrase of <status> ("Not Found"), or "Unknown"
 * for a code moxy has no phrase for. Never NULL; never to be freed. */
const char *mx_http_reason(int status);

#endif
