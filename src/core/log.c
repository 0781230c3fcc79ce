#include "core/log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/errors.h"

mx_log_level_t mx_log_level = MX_LOG_INFO;
__thread int mx_log_worker;

static int error_fd = 2;
static int access_fd = -1;
static char *error_path;
static char *access_path;
static pthread_mutex_t reopen_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *level_names[] = {"debug", "info", "warn", "error"};


static int
open_append(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0 && err != NULL)
        snprintf(err, errlen, "cannot open log file \"%s\": %s", path, strerror(errno));
    return fd;
}


int
mx_log_open(const mx_conf_t *conf, char *err, size_t errlen)
{
    if (conf == NULL)
        return MX_OK;
    mx_log_level = conf->log_level;
    mx_free(error_path);
    mx_free(access_path);
    error_path = conf->error_log ? mx_strdup(conf->error_log) : NULL;
    access_path = conf->access_log ? mx_strdup(conf->access_log) : NULL;
    int efd = 2, afd = -1;
    if (error_path != NULL && (efd = open_append(error_path, err, errlen)) < 0)
        return MX_ECONF;
    if (access_path != NULL && (afd = open_append(access_path, err, errlen)) < 0) {
        if (efd != 2)
            close(efd);
        return MX_ECONF;
    }
    pthread_mutex_lock(&reopen_lock);
    int old_e = error_fd, old_a = access_fd;
    error_fd = efd;
    access_fd = afd;
    pthread_mutex_unlock(&reopen_lock);
    if (old_e > 2)
        close(old_e);
    if (old_a >= 0)
        close(old_a);
    return MX_OK;
}


/* Reopens both files at the same paths (log rotation, SIGUSR1). The new fd
 * replaces the old one with dup2 so a thread writing concurrently never sees
 * a closed descriptor. */
int
mx_log_reopen(void)
{
    pthread_mutex_lock(&reopen_lock);
    if (error_path != NULL) {
        int fd = open_append(error_path, NULL, 0);
        if (fd >= 0) {
            dup2(fd, error_fd);
            close(fd);
        }
    }
    if (access_path != NULL && access_fd >= 0) {
        int fd = open_append(access_path, NULL, 0);
        if (fd >= 0) {
            dup2(fd, access_fd);
            close(fd);
        }
    }
    pthread_mutex_unlock(&reopen_lock);
    return MX_OK;
}


void
mx_log_close(void)
{
    if (error_fd > 2)
        close(error_fd);
    if (access_fd >= 0)
        close(access_fd);
    error_fd = 2;
    access_fd = -1;
    mx_free(error_path);
    mx_free(access_path);
    error_path = access_path = NULL;
}


void
mx_log_write(mx_log_level_t level, const char *fmt, ...)
{
    char line[4096];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    localtime_r(&ts.tv_sec, &tm);
    int n = (int)strftime(line, sizeof(line), "%Y/%m/%d %H:%M:%S", &tm);
    if (mx_log_worker > 0)
        n += snprintf(line + n, sizeof(line) - n, " [%s] w%d ", level_names[level], mx_log_worker);
    else
        n += snprintf(line + n, sizeof(line) - n, " [%s] main ", level_names[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    n += m;
    if (n > (int)sizeof(line) - 2)
        n = sizeof(line) - 2;
    line[n++] = '\n';
    ssize_t rc = write(error_fd, line, n);
    (void)rc;
}


void
mx_access_log_write(const char *line, size_t len)
{
    if (access_fd < 0)
        return;
    ssize_t rc = write(access_fd, line, len);
    (void)rc;
}


bool
mx_access_log_enabled(void)
{
    return access_fd >= 0;
}
