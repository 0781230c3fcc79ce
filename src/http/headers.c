#include "http/headers.h"

#include <string.h>

#include "core/errors.h"

#define HEADERS_MIN_CAP 16

/* Content-Length values above this are refused: a body length must fit an
 * off_t and an int64_t (Lua's integer cdata) everywhere it travels, and no
 * real body comes near 2^63 - 1 bytes. */
#define CONTENT_LENGTH_MAX ((uint64_t)INT64_MAX)

/* RFC 9110 §7.6.1 and RFC 9112 §9.6: fields that only mean something to the
 * connection they came on. Proxy-Connection is not standard but clients still
 * send it, and forwarding it confuses upstreams that honor it. */
static const mx_str_t hop_by_hop[] = {
    MX_STR("connection"), MX_STR("proxy-connection"),  MX_STR("keep-alive"),
    MX_STR("te"),         MX_STR("transfer-encoding"), MX_STR("upgrade"),
};

/* Fields a Connection option may not hide from the upstream (or the client):
 * dropping Content-Length while forwarding the body it delimits would let the
 * body be read as the next message (request smuggling), and an HTTP/1.1
 * request without Host is invalid. A sender has no legitimate reason to name
 * them as connection options (RFC 9110 §7.6.1: such fields are "intended for
 * all recipients"). */
static const mx_str_t never_connection_option[] = {
    MX_STR("content-length"),
    MX_STR("host"),
};


static inline bool
is_ows(char c)
{
    return c == ' ' || c == '\t';
}


static inline char
ascii_lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c + ('a' - 'A')) : c;
}


static mx_str_t
trim_ows(mx_str_t s)
{
    while (s.len > 0 && is_ows(s.data[0])) {
        s.data++;
        s.len--;
    }
    while (s.len > 0 && is_ows(s.data[s.len - 1]))
        s.len--;
    return s;
}


/* Takes the next element off the comma-separated list <*list> (RFC 9110
 * §5.6.1) and stores its token part in <*tok>: the text before any ';'
 * parameters, OWS trimmed. A comma inside a quoted-string parameter value
 * does not end the element. Empty elements are skipped. Returns false when
 * the list holds no more elements. */
static bool
next_list_token(mx_str_t *list, mx_str_t *tok)
{
    while (list->len > 0) {
        const char *p = list->data, *end = p + list->len;
        const char *semi = NULL;
        bool quoted = false;

        for (; p < end; p++) {
            if (quoted) {
                if (*p == '\\' && p + 1 < end)
                    p++;
                else if (*p == '"')
                    quoted = false;
            } else if (*p == ',') {
                break;
            } else if (*p == ';') {
                if (semi == NULL)
                    semi = p;
            } else if (*p == '"' && semi != NULL) {
                /* A token cannot hold DQUOTE: only a parameter value quotes. */
                quoted = true;
            }
        }

        mx_str_t elem = {list->data, (size_t)((semi ? semi : p) - list->data)};
        size_t used = (size_t)(p - list->data) + (p < end ? 1 : 0);
        list->data += used;
        list->len -= used;

        elem = trim_ows(elem);
        if (elem.len > 0) {
            *tok = elem;
            return true;
        }
    }
    return false;
}


static bool
str_in(mx_str_t s, const mx_str_t *set, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (mx_str_caseeq(s, set[i]))
            return true;
    }
    return false;
}


void
mx_headers_init(mx_headers_t *h)
{
    h->v = NULL;
    h->n = 0;
    h->cap = 0;
}


/* Appends (<name>, <value>) with no flags. The views are stored, not the
 * bytes. When the array is full a twice larger one (16 at first) is taken
 * from <a> and the entries copied over; the old array stays in the arena
 * until it is reset, so pointers to entries do not survive an add. */
void
mx_headers_add(mx_headers_t *h, mx_arena_t *a, mx_str_t name, mx_str_t value)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : HEADERS_MIN_CAP;
        mx_header_t *v = mx_arena_alloc(a, cap * sizeof(*v));
        if (h->n > 0)
            memcpy(v, h->v, h->n * sizeof(*v));
        h->v = v;
        h->cap = cap;
    }
    h->v[h->n++] = (mx_header_t){.name = name, .value = value, .flags = 0};
}


ssize_t
mx_headers_find(const mx_headers_t *h, mx_str_t name, size_t from)
{
    for (size_t i = from; i < h->n; i++) {
        if (mx_str_caseeq(h->v[i].name, name))
            return (ssize_t)i;
    }
    return -1;
}


/* Returns the first value of <name>. A present but empty value comes back
 * with a non-NULL data pointer, so that callers can tell it from an absent
 * field ({NULL, 0}) by testing data alone. */
mx_str_t
mx_headers_get(const mx_headers_t *h, mx_str_t name)
{
    ssize_t i = mx_headers_find(h, name, 0);
    if (i < 0)
        return (mx_str_t){NULL, 0};
    mx_str_t v = h->v[i].value;
    if (v.data == NULL)
        v.data = "";
    return v;
}


/* Removes the headers named <name> from index <from> on, sliding the others
 * down in order. Returns how many were removed. */
static size_t
remove_from(mx_headers_t *h, mx_str_t name, size_t from)
{
    size_t w = from;
    for (size_t r = from; r < h->n; r++) {
        if (mx_str_caseeq(h->v[r].name, name))
            continue;
        if (w != r)
            h->v[w] = h->v[r];
        w++;
    }
    size_t removed = h->n - w;
    h->n = w;
    return removed;
}


size_t
mx_headers_remove(mx_headers_t *h, mx_str_t name)
{
    return remove_from(h, name, 0);
}


/* Replaces the first <name> by (<name>, <value>) with its flags cleared (a
 * value moxy sets is forwarded even if a Connection option named the field),
 * removes the later ones, or appends when there is none. */
void
mx_headers_set(mx_headers_t *h, mx_arena_t *a, mx_str_t name, mx_str_t value)
{
    ssize_t i = mx_headers_find(h, name, 0);
    if (i < 0) {
        mx_headers_add(h, a, name, value);
        return;
    }
    h->v[i] = (mx_header_t){.name = name, .value = value, .flags = 0};
    remove_from(h, name, (size_t)i + 1);
}


/* Flags every hop-by-hop field of <h> with MX_HDR_HOP: the fixed set above,
 * and each field named by a token of any Connection header (RFC 9110
 * §7.6.1), except Content-Length and Host, which a connection option may not
 * remove (see never_connection_option). Flags already set are kept. */
void
mx_headers_mark_hop_by_hop(mx_headers_t *h)
{
    for (size_t i = 0; i < h->n; i++) {
        mx_header_t *f = &h->v[i];
        if (str_in(f->name, hop_by_hop, mx_countof(hop_by_hop)))
            f->flags |= MX_HDR_HOP;
        if (!mx_str_caseeq(f->name, MX_STR("connection")))
            continue;

        mx_str_t list = f->value, tok;
        while (next_list_token(&list, &tok)) {
            if (str_in(tok, never_connection_option, mx_countof(never_connection_option)))
                continue;
            for (ssize_t j = mx_headers_find(h, tok, 0); j >= 0;
                 j = mx_headers_find(h, tok, (size_t)j + 1))
                h->v[j].flags |= MX_HDR_HOP;
        }
    }
}


bool
mx_str_caseeq_bytes(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (a[i] != b[i] && ascii_lower(a[i]) != ascii_lower(b[i]))
            return false;
    }
    return true;
}


/* True when an element of the list <value> has <token> as its token part
 * (before any ';' parameters), compared in any case with OWS trimmed:
 * "gzip, Chunked" and "chunked;x=1" both hold "chunked". Never matches an
 * empty <token>. */
bool
mx_header_has_token(mx_str_t value, mx_str_t token)
{
    mx_str_t tok;
    while (next_list_token(&value, &tok)) {
        if (mx_str_caseeq(tok, token))
            return true;
    }
    return false;
}


/* Accepts 1*DIGIT only (leading zeros allowed, as the grammar allows them):
 * no sign, no OWS, no list, no more than CONTENT_LENGTH_MAX (2^63 - 1).
 * Returns MX_OK and sets <*out>, or MX_EBADREQ leaving <*out> untouched. */
int
mx_http_parse_content_length(mx_str_t v, uint64_t *out)
{
    uint64_t n = 0;

    if (v.len == 0)
        return MX_EBADREQ;
    for (size_t i = 0; i < v.len; i++) {
        unsigned d = (unsigned char)v.data[i] - '0';
        if (d > 9)
            return MX_EBADREQ;
        if (n > (CONTENT_LENGTH_MAX - d) / 10)
            return MX_EBADREQ;
        n = n * 10 + d;
    }
    *out = n;
    return MX_OK;
}


void
mx_headers_serialize(const mx_headers_t *h, mx_buf_t *b)
{
    for (size_t i = 0; i < h->n; i++) {
        const mx_header_t *f = &h->v[i];
        if (f->flags & MX_HDR_HOP)
            continue;
        mx_buf_reserve(b, f->name.len + f->value.len + 4);
        char *p = b->data + b->len;
        memcpy(p, f->name.data, f->name.len);
        p += f->name.len;
        *p++ = ':';
        *p++ = ' ';
        if (f->value.len > 0)
            memcpy(p, f->value.data, f->value.len);
        p += f->value.len;
        *p++ = '\r';
        *p++ = '\n';
        b->len = (size_t)(p - b->data);
    }
}
