#!/usr/bin/env bash
# Benchmarks moxy against nginx and haproxy (and the Lua-scripted variants) on
# 127.0.0.1, every server with one worker in front of the same nginx origin.
#
#   bash scripts/bench.sh [build/moxy]        (what `make bench` runs)
#
# Environment (defaults in brackets):
#   BENCH_SECONDS [10]      wrk seconds per path and proxy, split into rounds
#   BENCH_ROUNDS [5]        rounds per path: the proxies take turns, order rotated
#   BENCH_WARMUP [2]        wrk warm-up seconds per path and proxy before the rounds
#   BENCH_CONNS [50]        wrk connections (-c); wrk runs one thread (-t1)
#   BENCH_IDLE_CONNS [10000] idle keepalive clients for the RSS-per-connection figure
#   BENCH_PATHS ["/ /1k"]   paths to load: / is a 12-byte body, /1k a 1 KiB one
#   BENCH_ONLY              comma list of rows to run, e.g. "nginx,moxy"
#   MOXY_SCRIPT             Lua script for the "moxy+lua" row (else examples/bench.lua
#                           if it exists, else scripts/bench/moxy_bench.lua, the workload)
#   BENCH_CALLGRIND [1]     count instructions per request under callgrind (0: skip)
#   BENCH_CALLGRIND_REQUESTS [20000], BENCH_CALLGRIND_WARMUP [200]
#
# Output: a markdown table on stdout and in build/bench/results.md (raw numbers
# in build/bench/results.json). With the defaults a run takes about 4 minutes
# (1 of them under callgrind; BENCH_CALLGRIND=0 skips it).
#
# Numbers on this 2-core shared machine swing 10-50% from run to run (wrk, the
# proxy and the origin share the cores; nothing is pinned on purpose), so only
# ratios between rows of the same run count.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MOXY=${1:-$ROOT/build/moxy}
case $MOXY in /*) ;; *) MOXY=$PWD/$MOXY ;; esac

for tool in nginx haproxy wrk python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool not found (bash scripts/deps.sh)" >&2; exit 1; }
done

# 10,000 idle clients + the proxies' own sockets: raise the descriptor limit
# (children inherit it; nginx and haproxy raise theirs from there).
# haproxy budgets two descriptors per maxconn (BENCH_IDLE_CONNS + 2048): raise the hard
# limit too where allowed (root).
want=$(( 2 * (${BENCH_IDLE_CONNS:-10000} + 2048) + 1024 ))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then ulimit -Hn "$want" 2>/dev/null || true; fi
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ] || [ "$hard" -ge "$want" ]; then ulimit -n "$want"; else ulimit -n "$hard"; fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/moxy-bench.XXXXXX")
chmod 755 "$TMP"   # nginx workers may run as nobody

PY=
cleanup() {
  local rc=$?
  # bench.py stops what it starts (on exit or SIGTERM); give it a moment...
  if [ -n "$PY" ] && kill -0 "$PY" 2>/dev/null; then
    kill -TERM "$PY" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$PY" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$PY" 2>/dev/null || true
  fi
  # ...and this is the backstop: every PID it recorded and did not reap.
  if [ -s "$TMP/pids" ]; then
    local pid
    while read -r pid; do
      if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; fi
    done < "$TMP/pids"
    sleep 0.5
    while read -r pid; do
      if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
    done < "$TMP/pids"
  fi
  if [ -n "${BENCH_KEEP_TMP:-}" ]; then echo "bench: kept $TMP" >&2; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# In the background so that a signal to this shell runs the trap at once.
python3 "$ROOT/scripts/bench/bench.py" --moxy "$MOXY" --root "$ROOT" --tmp "$TMP" \
  --out "$ROOT/build/bench" &
PY=$!
wait "$PY"

# Load balancing: select() cost per algorithm, a C microbenchmark (make bench-lb alone).
if [ -x "$ROOT/build/lb_bench" ]; then
  "$ROOT/build/lb_bench" | tee -a "$ROOT/build/bench/results.md"
fi
