/* libFuzzer target: header-list operations (src/http/headers.c).
 *
 * The input is a program: each op is one byte (op % 8) followed by its
 * strings. A string is one byte b: with the high bit set, a name from a
 * small pool (so that fields collide), in the case that b's bits 4-6 flip;
 * else the b & 63 next input bytes, as a view. Ops: add, set, remove, get,
 * find, mark_hop_by_hop, serialize, and the value helpers
 * (mx_header_has_token, mx_http_parse_content_length) on a string pair.
 *
 * A plain array next to the list is the model: after every op the list must
 * hold exactly the model's fields (the same views, in order, with the same
 * flags); get and find must agree with it; serialize must write the model's
 * non-hop-by-hop fields; mark_hop_by_hop must flag the fixed hop-by-hop
 * names, never Content-Length or Host, and otherwise just the fields a
 * Connection token names. The arena starts small, so the array moves. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "core/buf.h"
#include "core/errors.h"
#include "http/headers.h"
#include "fuzz_check.h"

#define MAX_FIELDS 64 /* past it adds are skipped: checks stay cheap */

static const char *pool[] = {
    "connection", "keep-alive",        "content-length",   "host", "te", "upgrade", "x-a",
    "x-b",        "transfer-encoding", "proxy-connection", "via",  "",
};

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
    char names[256][24]; /* pool names in the case asked for */
    int nnames;
} input_t;

static mx_header_t model[MAX_FIELDS];
static size_t nmodel;


static int
byte(input_t *in)
{
    return in->p < in->end ? *in->p++ : -1;
}


/* The next string of the program (see above); false at the end of input. */
static bool
next_str(input_t *in, mx_str_t *out)
{
    int b = byte(in);
    if (b < 0)
        return false;
    if (b & 0x80) {
        const char *name = pool[(b & 0x0f) % (sizeof(pool) / sizeof(pool[0]))];
        if (in->nnames == 256)
            in->nnames = 0;
        char *s = in->names[in->nnames++];
        size_t n = strlen(name);
        for (size_t i = 0; i < n; i++) {
            bool up = (b >> (4 + i % 3)) & 1;
            s[i] = up && name[i] >= 'a' && name[i] <= 'z' ? (char)(name[i] - 32) : name[i];
        }
        *out = (mx_str_t){s, n};
        return true;
    }
    size_t n = (size_t)(b & 63);
    if (n > (size_t)(in->end - in->p))
        n = (size_t)(in->end - in->p);
    *out = (mx_str_t){(const char *)in->p, n};
    in->p += n;
    return true;
}


static bool
caseeq(mx_str_t a, mx_str_t b)
{
    if (a.len != b.len)
        return false;
    for (size_t i = 0; i < a.len; i++) {
        char x = a.data[i], y = b.data[i];
        if (x >= 'A' && x <= 'Z')
            x = (char)(x + 32);
        if (y >= 'A' && y <= 'Z')
            y = (char)(y + 32);
        if (x != y)
            return false;
    }
    return true;
}


static bool
same_view(mx_str_t a, mx_str_t b)
{
    return a.len == b.len && (a.len == 0 || a.data == b.data);
}


static void
check_list(const mx_headers_t *h)
{
    fuzz_check(h->n == nmodel, "%zu fields, model %zu", h->n, nmodel);
    fuzz_check(h->n <= h->cap, "n %zu over cap %zu", h->n, h->cap);
    for (size_t i = 0; i < nmodel; i++) {
        fuzz_check(same_view(h->v[i].name, model[i].name) &&
                       same_view(h->v[i].value, model[i].value),
                   "field %zu differs from the model", i);
        fuzz_check(h->v[i].flags == model[i].flags, "field %zu flags %u, model %u", i,
                   h->v[i].flags, model[i].flags);
    }
}


static void
model_remove_from(mx_str_t name, size_t from)
{
    size_t w = from;
    for (size_t r = from; r < nmodel; r++)
        if (!caseeq(model[r].name, name))
            model[w++] = model[r];
    nmodel = w;
}


static bool
is_hop(mx_str_t name)
{
    static const char *fixed[] = {"connection", "proxy-connection",  "keep-alive",
                                  "te",         "transfer-encoding", "upgrade"};
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        if (caseeq(name, (mx_str_t){fixed[i], strlen(fixed[i])}))
            return true;
    return false;
}


static void
check_mark(mx_headers_t *h)
{
    uint32_t before[MAX_FIELDS];
    for (size_t i = 0; i < nmodel; i++)
        before[i] = model[i].flags;
    mx_headers_mark_hop_by_hop(h);
    for (size_t i = 0; i < nmodel; i++) {
        mx_str_t name = model[i].name;
        bool named = false;
        for (size_t j = 0; j < nmodel && !named; j++)
            named = caseeq(model[j].name, MX_STR("connection")) &&
                    mx_header_has_token(model[j].value, name);
        bool protect = caseeq(name, MX_STR("content-length")) || caseeq(name, MX_STR("host"));
        bool want = (before[i] & MX_HDR_HOP) || is_hop(name) || (named && !protect);
        fuzz_check(((h->v[i].flags & MX_HDR_HOP) != 0) == want, "field %zu (%.*s) hop %u, want %d",
                   i, (int)name.len, name.data, h->v[i].flags, want);
        model[i].flags = h->v[i].flags;
    }
}


static void
check_serialize(const mx_headers_t *h)
{
    mx_buf_t b, want;
    mx_buf_init(&b);
    mx_buf_init(&want);
    mx_headers_serialize(h, &b);
    for (size_t i = 0; i < nmodel; i++) {
        if (model[i].flags & MX_HDR_HOP)
            continue;
        mx_buf_append_str(&want, model[i].name);
        mx_buf_append_str(&want, MX_STR(": "));
        mx_buf_append_str(&want, model[i].value);
        mx_buf_append_str(&want, MX_STR("\r\n"));
    }
    fuzz_check(b.len == want.len && (b.len == 0 || memcmp(b.data, want.data, b.len) == 0),
               "serialized %zu bytes, want %zu", b.len, want.len);
    mx_buf_dispose(&b);
    mx_buf_dispose(&want);
}


static void
check_value_helpers(mx_str_t v, mx_str_t tok)
{
    /* has_token: a match is the token itself, somewhere in the value. */
    if (mx_header_has_token(v, tok)) {
        fuzz_check(tok.len > 0 && tok.len <= v.len, "empty or longer token matched");
        bool found = false;
        for (size_t i = 0; i + tok.len <= v.len && !found; i++)
            found = caseeq((mx_str_t){v.data + i, tok.len}, tok);
        fuzz_check(found, "token not in the value");
        fuzz_check(memchr(tok.data, ',', tok.len) == NULL && tok.data[0] != ' ' &&
                       tok.data[0] != '\t' && tok.data[tok.len - 1] != ' ' &&
                       tok.data[tok.len - 1] != '\t',
                   "a list or untrimmed token matched");
    }

    /* parse_content_length: 1*DIGIT up to 2^63 - 1, exactly. */
    uint64_t n = 12345, want = 0;
    bool ok = v.len > 0;
    for (size_t i = 0; i < v.len && ok; i++) {
        if (v.data[i] < '0' || v.data[i] > '9' || __builtin_mul_overflow(want, 10, &want) ||
            __builtin_add_overflow(want, (uint64_t)(v.data[i] - '0'), &want))
            ok = false;
    }
    ok = ok && want <= (uint64_t)INT64_MAX;
    int rc = mx_http_parse_content_length(v, &n);
    fuzz_check(rc == (ok ? MX_OK : MX_EBADREQ), "Content-Length \"%.*s\": rc %d", (int)v.len,
               v.data, rc);
    fuzz_check(ok ? n == want : n == 12345, "Content-Length \"%.*s\" read as %llu", (int)v.len,
               v.data, (unsigned long long)n);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char first[256];
    mx_arena_t a;
    mx_headers_t h;
    input_t in = {.p = data, .end = data + size};
    mx_str_t name, value;

    mx_arena_init(&a, first, sizeof(first));
    mx_headers_init(&h);
    nmodel = 0;
    for (int op; (op = byte(&in)) >= 0;) {
        switch (op % 8) {
        case 0: /* add */
            if (!next_str(&in, &name) || !next_str(&in, &value) || nmodel == MAX_FIELDS)
                break;
            mx_headers_add(&h, &a, name, value);
            model[nmodel++] = (mx_header_t){name, value, 0};
            break;
        case 1: { /* set */
            if (!next_str(&in, &name) || !next_str(&in, &value) || nmodel == MAX_FIELDS)
                break;
            mx_headers_set(&h, &a, name, value);
            size_t i = 0;
            while (i < nmodel && !caseeq(model[i].name, name))
                i++;
            if (i == nmodel) {
                model[nmodel++] = (mx_header_t){name, value, 0};
            } else {
                model[i] = (mx_header_t){name, value, 0};
                model_remove_from(name, i + 1);
            }
            break;
        }
        case 2: { /* remove */
            if (!next_str(&in, &name))
                break;
            size_t before = nmodel;
            size_t n = mx_headers_remove(&h, name);
            model_remove_from(name, 0);
            fuzz_check(n == before - nmodel, "removed %zu, model %zu", n, before - nmodel);
            break;
        }
        case 3: { /* get */
            if (!next_str(&in, &name))
                break;
            mx_str_t v = mx_headers_get(&h, name);
            size_t i = 0;
            while (i < nmodel && !caseeq(model[i].name, name))
                i++;
            if (i == nmodel)
                fuzz_check(v.data == NULL && v.len == 0, "absent field found");
            else
                fuzz_check(v.data != NULL && same_view(v, model[i].value), "get disagrees");
            break;
        }
        case 4: { /* find, from a position */
            int from = byte(&in);
            if (from < 0 || !next_str(&in, &name))
                break;
            ssize_t got = mx_headers_find(&h, name, (size_t)from);
            ssize_t want = -1;
            for (size_t i = (size_t)from; i < nmodel && want < 0; i++)
                if (caseeq(model[i].name, name))
                    want = (ssize_t)i;
            fuzz_check(got == want, "find %zd, model %zd", got, want);
            break;
        }
        case 5:
            check_mark(&h);
            break;
        case 6:
            check_serialize(&h);
            break;
        case 7:
            if (next_str(&in, &value) && next_str(&in, &name))
                check_value_helpers(value, name);
            break;
        }
        check_list(&h);
    }
    check_serialize(&h);
    mx_arena_dispose(&a);
    return 0;
}
