#!/usr/bin/env bash
# `make run`: starts the demo origin on 127.0.0.1:9001 and moxy in the
# foreground with conf/moxy.yaml. Ctrl-C stops both.
set -u
bin=${1:-build/moxy}
conf=${2:-conf/moxy.yaml}
cd "$(dirname "$0")/.."
python3 scripts/demo_origin.py 127.0.0.1 9001 &
origin=$!
trap 'kill "$origin" 2>/dev/null; wait "$origin" 2>/dev/null' EXIT
cat <<TXT

moxy demo: moxy on http://127.0.0.1:8080 proxies to a small origin on 127.0.0.1:9001.
Try, in another terminal:
  curl -i http://127.0.0.1:8080/hello                        # answered by examples/hello.lua
  curl -i http://127.0.0.1:8080/
  curl -s http://127.0.0.1:8080/echo -H 'X-Hello: world'     # what the origin received
  curl -s -X POST --data-binary @README.md http://127.0.0.1:8080/echo
  curl -i http://127.0.0.1:8080/stream                       # chunked, streamed through
Ctrl-C stops moxy and the origin.

TXT
"$bin" -c "$conf"
