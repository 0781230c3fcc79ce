/* Return codes. 0 ok, > 0 a non-error outcome, < 0 an error keeping its
 * cause: libuv's negative codes (UV_E*) pass through unchanged, MX_E* below
 * -5000 name moxy's own protocol and config errors. */
#ifndef MX_CORE_ERRORS_H
#define MX_CORE_ERRORS_H

#define MX_OK       0
#define MX_AGAIN    1 /* not an error: call again when more input/output is possible */
#define MX_DECLINED 2 /* not an error: this handler does not apply, try the next */
#define MX_DONE     3 /* not an error: the work is finished, nothing more follows */

#define MX_EBADREQ      (-5001) /* malformed downstream request: 400 */
#define MX_EBADRESP     (-5002) /* malformed upstream response: 502 */
#define MX_ECONF        (-5003) /* invalid configuration */
#define MX_ETOOLARGE    (-5004) /* request body over the limit: 413 */
#define MX_EHDRTOOLARGE (-5005) /* header section too large or too many fields: 431 */
#define MX_EURITOOLONG  (-5006) /* request line too long: 414 */
#define MX_EMETHOD      (-5007) /* method not allowed (CONNECT): 405 */
#define MX_EUPCLOSED    (-5008) /* upstream closed before the response was complete */
#define MX_ENOUPSTREAM  (-5009) /* no upstream to send the request to: 502 */
#define MX_ECLIENT      (-5010) /* the downstream client went away */
#define MX_ETIMEOUT_HDR (-5011) /* client did not send its head in time: 408 */
#define MX_ENOTIMPL     (-5012) /* unsupported transfer coding or feature: 501 */
#define MX_EVERSION     (-5013) /* HTTP version not supported: 505 */
#define MX_ELUA         (-5014) /* a Lua handler raised an error or returned a wrong type */
#define MX_EBADPHASE    (-5015) /* a Lua API call not allowed in the current phase */
#define MX_EBADARG      (-5016) /* a Lua API call with an invalid argument */
#define MX_ENOPROXY     (-5017) /* proxy_upstream_filter returned false: 502 */

/* Returns a static description of <rc>: libuv's name for UV_E* codes
 * ("ECONNREFUSED"), moxy's for MX_E* ones. Never NULL. */
const char *mx_strerror(int rc);

#endif
