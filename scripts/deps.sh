#!/usr/bin/env bash
# Installs every Debian 12 package moxy's build, run, tests and benchmarks
# need. Idempotent: installs only what is missing, so it is cheap to re-run.
set -euo pipefail

pkgs=(
  build-essential pkg-config
  libuv1-dev liburing-dev node-llhttp libnghttp2-dev libssl-dev libyaml-dev
  luajit2 libluajit2-5.1-dev lua-cjson lua-busted lua-socket
  libcriterion-dev zlib1g-dev libbrotli-dev libzstd-dev
  curl python3 nghttp2-client
  # benchmarks (make bench): peers and load generator
  nginx libnginx-mod-http-lua haproxy wrk valgrind
  # ASan/UBSan with clang too, and libFuzzer
  clang libclang-rt-14-dev
)

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#pkgs[@]} packages present"
  exit 0
fi

echo "deps: installing ${missing[*]}"
SUDO=
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
