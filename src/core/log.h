/* The error log (levels, timestamps, worker id) and the access log. Lines
 * are written with one write(2) each on O_APPEND files, so threads never
 * interleave inside a line. A disabled level costs one branch. */
#ifndef MX_CORE_LOG_H
#define MX_CORE_LOG_H

#include "conf/conf.h"

extern mx_log_level_t mx_log_level;
extern __thread int mx_log_worker; /* 0 = main thread, 1.. = workers */

/* Opens (or reopens, for SIGUSR1) the files <conf> names. Returns MX_OK or a
 * negative errno-style code with the reason in <err>. With <conf> NULL the
 * log goes to stderr at info level. */
int mx_log_open(const mx_conf_t *conf, char *err, size_t errlen);
int mx_log_reopen(void);
void mx_log_close(void);

void mx_log_write(mx_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Appends one preformatted line (with its '\n') to the access log, if on. */
void mx_access_log_write(const char *line, size_t len);
bool mx_access_log_enabled(void);

/* clang-format off */
#define mx_log(level, ...) \
    do { if ((level) >= mx_log_level) mx_log_write((level), __VA_ARGS__); } while (0)
/* clang-format on */
#define mx_log_debug(...) mx_log(MX_LOG_DEBUG, __VA_ARGS__)
#define mx_log_info(...)  mx_log(MX_LOG_INFO, __VA_ARGS__)
#define mx_log_warn(...)  mx_log(MX_LOG_WARN, __VA_ARGS__)
#define mx_log_error(...) mx_log(MX_LOG_ERROR, __VA_ARGS__)

#endif
