/* fuzz_check(): an invariant of the code under test does not hold, so the
 * input is a crash for libFuzzer (and its message says which and why). */
#ifndef MX_FUZZ_CHECK_H
#define MX_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define fuzz_check(cond, ...)                                                                   \
    do {                                                                                        \
        if (!(cond)) {                                                                          \
            fprintf(stderr, "fuzz invariant failed at %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                                       \
            fputc('\n', stderr);                                                                \
            abort();                                                                            \
        }                                                                                       \
    } while (0)

#endif
