#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "core/arena.h"
#include "core/buf.h"


Test(arena, allocates_aligned_from_the_first_block_then_grows)
{
    char first[256];
    mx_arena_t a;
    mx_arena_init(&a, first, sizeof(first));
    char *p = mx_arena_alloc(&a, 3);
    char *q = mx_arena_alloc(&a, 5);
    cr_assert(p >= first && p < first + sizeof(first));
    cr_assert_eq(((uintptr_t)q) % 8, 0);
    char *big = mx_arena_alloc(&a, 10000); /* larger than the first block */
    memset(big, 'x', 10000);
    cr_assert_not_null(a.blocks);
    char *s = mx_arena_strndup(&a, "hello", 5);
    cr_assert_str_eq(s, "hello");
    mx_arena_reset(&a);
    cr_assert_null(a.blocks);
    cr_assert_eq(mx_arena_alloc(&a, 8), (void *)first);
    mx_arena_dispose(&a);
}


Test(buf, appends_formats_and_consumes)
{
    mx_buf_t b;
    mx_buf_init(&b);
    mx_buf_append(&b, "abc", 3);
    mx_buf_printf(&b, "-%d-%s", 42, "x");
    cr_assert_eq(b.len, 8);
    cr_assert(memcmp(b.data, "abc-42-x", 8) == 0);
    mx_buf_consume(&b, 4);
    cr_assert(memcmp(b.data, "42-x", 4) == 0);
    for (int i = 0; i < 1000; i++)
        mx_buf_append(&b, "0123456789", 10);
    cr_assert_eq(b.len, 10004);
    mx_buf_dispose(&b);
    cr_assert_null(b.data);
}


Test(buf, formats_chunk_sizes_and_status_lines_without_printf)
{
    static const struct {
        size_t n;
        const char *want;
    } cases[] = {{0, "0\r\n"}, {9, "9\r\n"}, {10, "a\r\n"}, {255, "ff\r\n"}, {4096, "1000\r\n"},
                 {0xdeadbeef, "deadbeef\r\n"}, {SIZE_MAX, "ffffffffffffffff\r\n"}};
    char out[24];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t len = mx_fmt_chunk_size(out, cases[i].n);
        cr_assert_eq(len, strlen(cases[i].want));
        cr_assert(memcmp(out, cases[i].want, len) == 0, "%zu -> \"%.*s\"", cases[i].n, (int)len,
                  out);
    }
    mx_buf_t b;
    mx_buf_init(&b);
    mx_buf_status_line(&b, 204, MX_STR("No Content"));
    mx_buf_status_line(&b, 502, MX_STR(""));
    cr_assert_eq(b.len, strlen("HTTP/1.1 204 No Content\r\nHTTP/1.1 502 \r\n"));
    cr_assert(memcmp(b.data, "HTTP/1.1 204 No Content\r\nHTTP/1.1 502 \r\n", b.len) == 0);
    mx_buf_dispose(&b);
}
