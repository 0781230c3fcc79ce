#!/usr/bin/env bash
# Runs the libFuzzer targets built in build-fuzz/ (make fuzz, make fuzz-regress).
#   run.sh regress NAME...  each target once over tests/fuzz/corpus/NAME
#   run.sh fuzz NAME...     each target for FUZZ_SECONDS (default 30), one at a time
# One line per target; exits 1 if any target failed (crash, sanitizer report,
# leak, broken invariant, timeout), with the log's tail and the input's path.
set -uo pipefail

mode=$1
shift
out=build-fuzz
seconds=${FUZZ_SECONDS:-30}
mkdir -p "$out/logs" "$out/artifacts"

# The longest input worth trying per target: a request or response head with
# a few fields and a little body; a target string; a config file.
max_len() {
  case $1 in
    uri) echo 512 ;;
    headers) echo 1024 ;;
    *) echo 4096 ;;
  esac
}

failed=0
for name in "$@"; do
  bin=$out/${name}_fuzz
  seeds=tests/fuzz/corpus/$name
  log=$out/logs/$name-$mode.log
  dict=()
  [ -f "tests/fuzz/$name.dict" ] && dict=(-dict="tests/fuzz/$name.dict")
  if [ "$mode" = regress ]; then
    n=$(find "$seeds" -type f | wc -l)
    if "$bin" -runs=0 -timeout=10 "$seeds" >"$log" 2>&1; then
      echo "fuzz $name: $n inputs ok"
    else
      echo "fuzz $name: FAILED over $seeds (log: $log)"
      grep -E 'ERROR|SUMMARY|fuzz invariant|Running|Test unit written' "$log" | head -20
      failed=1
    fi
  else
    work=$out/corpus/$name
    mkdir -p "$work"
    if "$bin" -max_total_time="$seconds" -max_len="$(max_len "$name")" -timeout=10 \
        -print_final_stats=1 -artifact_prefix="$out/artifacts/$name-" "${dict[@]}" \
        "$work" "$seeds" >"$log" 2>&1; then
      done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1)
      execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
      rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
      cov=$(sed -nE 's/.* cov: ([0-9]+) ft: ([0-9]+) corp: ([0-9]+).*/cov \1 ft \2 corpus \3/p' \
        <<<"$done_line")
      echo "fuzz $name: ok, $execs execs in ${seconds}s ($rate/s), $cov"
    else
      echo "fuzz $name: FAILED (log: $log)"
      grep -E 'ERROR|SUMMARY|fuzz invariant|Test unit written|Base64' "$log" | head -20
      failed=1
    fi
  fi
done
exit $failed
