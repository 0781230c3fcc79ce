#include "core/errors.h"

#include <uv.h>


const char *
mx_strerror(int rc)
{
    switch (rc) {
    case MX_OK:
        return "ok";
    case MX_AGAIN:
        return "again";
    case MX_DECLINED:
        return "declined";
    case MX_DONE:
        return "done";
    case MX_EBADREQ:
        return "bad request";
    case MX_EBADRESP:
        return "invalid upstream response";
    case MX_ECONF:
        return "invalid configuration";
    case MX_ETOOLARGE:
        return "request body too large";
    case MX_EHDRTOOLARGE:
        return "request header fields too large";
    case MX_EURITOOLONG:
        return "request line too long";
    case MX_EMETHOD:
        return "method not allowed";
    case MX_EUPCLOSED:
        return "upstream prematurely closed connection";
    case MX_ENOUPSTREAM:
        return "no upstream";
    case MX_ECLIENT:
        return "client closed connection";
    case MX_ETIMEOUT_HDR:
        return "client timed out";
    case MX_ENOTIMPL:
        return "not implemented";
    case MX_EVERSION:
        return "HTTP version not supported";
    case MX_ELUA:
        return "lua error";
    case MX_EBADPHASE:
        return "not allowed in this phase";
    case MX_EBADARG:
        return "invalid argument";
    case MX_ENOPROXY:
        return "proxy_upstream_filter returned false";
    }
    if (rc < 0 && rc > -5000)
        return uv_err_name(rc);
    return "unknown error";
}
