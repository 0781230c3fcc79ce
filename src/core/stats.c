#include "core/stats.h"

mx_stats_t mx_stats;

#include "core/log.h"


void
mx_stats_log(const char *when)
{
    uint64_t up = mx_stats_get(upstream_requests), re = mx_stats_get(upstream_reused);
    mx_log_info("stats (%s): %llu requests, %llu connections accepted, %llu upstream requests, "
                "%llu over a reused connection (%.2f%%)",
                when, (unsigned long long)mx_stats_get(requests),
                (unsigned long long)mx_stats_get(connections_accepted), (unsigned long long)up,
                (unsigned long long)re, up ? 100.0 * (double)re / (double)up : 0.0);
}
