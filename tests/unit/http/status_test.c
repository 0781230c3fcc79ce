/* src/http/status.c: reason phrases. */
#include <criterion/criterion.h>
#include <string.h>

#include "http/status.h"


Test(status, reason_of_common_codes)
{
    static const struct {
        int status;
        const char *reason;
    } cases[] = {
        {100, "Continue"},
        {101, "Switching Protocols"},
        {103, "Early Hints"},
        {200, "OK"},
        {204, "No Content"},
        {206, "Partial Content"},
        {301, "Moved Permanently"},
        {304, "Not Modified"},
        {307, "Temporary Redirect"},
        {308, "Permanent Redirect"},
        {400, "Bad Request"},
        {404, "Not Found"},
        {405, "Method Not Allowed"},
        {408, "Request Timeout"},
        {413, "Content Too Large"},
        {414, "URI Too Long"},
        {417, "Expectation Failed"},
        {429, "Too Many Requests"},
        {431, "Request Header Fields Too Large"},
        {451, "Unavailable For Legal Reasons"},
        {500, "Internal Server Error"},
        {501, "Not Implemented"},
        {502, "Bad Gateway"},
        {503, "Service Unavailable"},
        {504, "Gateway Timeout"},
        {505, "HTTP Version Not Supported"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        cr_expect_str_eq(mx_http_reason(cases[i].status), cases[i].reason, "%d", cases[i].status);
}


Test(status, every_listed_code_has_a_phrase)
{
    static const int ranges[][2] = {
        {100, 101}, {103, 103}, {200, 206}, {300, 308}, {400, 418},
        {421, 426}, {428, 429}, {431, 431}, {451, 451}, {500, 505},
    };

    for (size_t i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++) {
        for (int s = ranges[i][0]; s <= ranges[i][1]; s++) {
            const char *r = mx_http_reason(s);
            cr_assert_not_null(r);
            cr_expect_str_neq(r, "Unknown", "%d has no phrase", s);
            /* reason-phrase = 1*( HTAB / SP / VCHAR / obs-text ), no CR/LF. */
            cr_expect(strlen(r) > 0 && strpbrk(r, "\r\n") == NULL, "%d: \"%s\"", s, r);
        }
    }
}


Test(status, unknown_codes)
{
    static const int unknown[] = {0,   -1,  1,   99,  102, 104, 199, 207, 226, 299, 309, 419,   420,
                                  427, 430, 432, 450, 452, 499, 506, 511, 599, 600, 999, 100000};

    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++)
        cr_expect_str_eq(mx_http_reason(unknown[i]), "Unknown", "%d", unknown[i]);
}
