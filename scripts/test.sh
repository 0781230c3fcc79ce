#!/usr/bin/env bash
# `make test`: every suite on the normal build (the integration suite twice:
# workers reading through io_uring, then through epoll), then every suite
# again on an AddressSanitizer + UBSan build. Prints each suite's result and,
# last, one line "N passed, N failed" summed over all of them. Exit 1 if any
# failed.
#   --asan-only   only the sanitizer pass (make test-asan)
set -u
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
passed=0
failed=0
logdir=build/test-logs
mkdir -p "$logdir"

# Adds a suite's counts. $1 name, $2 passed, $3 failed.
count() {
  printf '== %-28s %5d passed, %d failed\n' "$1" "$2" "$3"
  passed=$((passed + $2))
  failed=$((failed + $3))
}

# C unit tests (Criterion): reads its "Synthesis" line.
run_unit() { # $1 build dir, $2 label, $3 make args
  local log="$logdir/unit-$2.log"
  if ! make -s -j"$JOBS" "BUILD=$1" $3 "$1/unit_tests" >"$log" 2>&1; then
    echo "unit tests ($2) did not build:"; tail -30 "$log"; count "unit ($2) build" 0 1; return
  fi
  "$1/unit_tests" --jobs "$JOBS" >>"$log" 2>&1
  local syn
  syn=$(grep -a 'Synthesis' "$log" | tail -1)
  if [ -z "$syn" ]; then
    echo "unit tests ($2) crashed:"; tail -30 "$log"; count "unit ($2)" 0 1; return
  fi
  local p f c
  p=$(sed -E 's/.*Passing: ([0-9]+).*/\1/' <<<"$syn")
  f=$(sed -E 's/.*Failing: ([0-9]+).*/\1/' <<<"$syn")
  c=$(sed -E 's/.*Crashing: ([0-9]+).*/\1/' <<<"$syn")
  if [ "$((f + c))" -gt 0 ]; then grep -aE 'FAIL|CRASH|Assertion|crash' "$log" | head -40; fi
  count "unit ($2)" "$p" "$((f + c))"
}

# Integration tests (real binary, real clients): reads "N passed, N failed".
run_integration() { # $1 build dir, $2 label, $3 make args, $4 extra env
  local log="$logdir/integration-$2.log"
  if ! make -s -j"$JOBS" "BUILD=$1" $3 "$1/moxy" >"$log" 2>&1; then
    echo "moxy ($2) did not build:"; tail -30 "$log"; count "integration ($2) build" 0 1; return
  fi
  env MOXY_BIN="$1/moxy" $4 timeout 900 python3 tests/integration/run.py >>"$log" 2>&1
  local last
  last=$(grep -aE '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -1)
  if [ -z "$last" ]; then
    echo "integration ($2) did not finish:"; tail -40 "$log"; count "integration ($2)" 0 1; return
  fi
  local p f
  p=${last%% passed*}
  f=$(sed -E 's/.*passed, ([0-9]+) failed/\1/' <<<"$last")
  if [ "$f" -gt 0 ]; then grep -aE '^(FAIL|ERROR)' "$log" | head -40; fi
  count "integration ($2)" "$p" "$f"
}

# Lua specs (busted, TAP): the session API, moxy.test and the examples.
run_busted() {
  local log="$logdir/busted.log"
  # The live specs (t.server, t.each_engine) need the binary; without it they pend.
  if ! make -s -j"$JOBS" build/moxy >"$log" 2>&1; then
    echo "moxy did not build:"; tail -30 "$log"; count "lua specs (busted) build" 0 1; return
  fi
  busted -o TAP >>"$log" 2>&1
  local rc=$? p f
  p=$(grep '^ok ' "$log" | grep -vc '# SKIP')
  f=$(grep -c '^not ok ' "$log")
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; tail -20 "$log"; fi
  if [ "$f" -gt 0 ]; then grep -A8 '^not ok ' "$log" | head -60; fi
  count "lua specs (busted)" "$p" "$f"
}

# libFuzzer targets (clang, ASan + UBSan) over their committed corpora, each
# input once: deterministic; one test per target ("fuzz NAME: N inputs ok").
# Exploring for new inputs is `make fuzz`, not part of the suite.
run_fuzz_regress() {
  local log="$logdir/fuzz-regress.log"
  make -s -j"$JOBS" fuzz-regress >"$log" 2>&1
  local p f
  p=$(grep -c '^fuzz .*: [0-9]* inputs ok$' "$log")
  f=$(grep -c '^fuzz .*: FAILED' "$log")
  if [ "$p" -eq 0 ] && [ "$f" -eq 0 ]; then
    echo "fuzz targets did not build:"; tail -30 "$log"; f=1
  fi
  if [ "$f" -gt 0 ]; then grep -A20 '^fuzz .*: FAILED' "$log" | head -60; fi
  count "fuzz corpora (regress)" "$p" "$f"
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:print_summary=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

if [ "${1:-}" != "--asan-only" ]; then
  run_busted
  run_unit build plain ""
  run_integration build plain "" ""
  # Once more with every worker reading through epoll (io_uring: false), the
  # path moxy takes where the kernel or a seccomp policy refuses io_uring.
  run_integration build epoll "" "MOXY_IO_URING=0"
fi
run_unit build-asan asan "SAN=1"
run_fuzz_regress
run_integration build-asan asan "SAN=1" "MOXY_ASAN=1"

echo "(logs in $logdir)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
