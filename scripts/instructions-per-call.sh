#!/usr/bin/env bash
# User-space instructions per call of the Swift and C echo servers, counted by
# callgrind (repeatable, whatever else the machine does), under the C load
# generator: the cost of the hot path itself, apart from the scheduler.
# Usage: scripts/instructions-per-call.sh [LOOPS] [CONNECTIONS] [CONCURRENCY] [SECONDS]
#   defaults: 1 loop, 64 connections, 16 calls in flight each, 3 s.
# Needs a release build (make bench) and valgrind. Server startup and
# connection setup are included in the counts; they are small against the
# calls made in a few seconds, and the same for every run of one server.
set -euo pipefail
cd "$(dirname "$0")/.."
loops="${1:-1}" connections="${2:-64}" concurrency="${3:-16}" seconds="${4:-3}"
out=$(mktemp) log=$(mktemp) profile=$(mktemp)
trap 'rm -f "$out" "$log" "$profile"' EXIT
# Stripped copies: valgrind 3.19 gives up on the debug info of these binaries
# ("possibly corrupted debuginfo file"); instructions are counted the same.
bin=$(mktemp -d)
trap 'rm -rf "$out" "$log" "$profile" "$bin"' EXIT
strip -o "$bin/uvrpc" .build/release/uvrpc
strip -o "$bin/uvrpc-c" .build/release/uvrpc-c
for server in "$bin/uvrpc serve --backlog 4096" "$bin/uvrpc-c serve"; do
  valgrind --tool=callgrind --callgrind-out-file="$profile" $server --port 0 --loops "$loops" > "$out" 2> "$log" & vp=$!
  for _ in $(seq 600); do grep -q listening "$out" && break; sleep 0.1; done
  port=$(sed -n 's/.*://p' "$out" | head -1)
  result=$(.build/release/uvrpc-c load --connect "127.0.0.1:$port" --connections "$connections" \
           --concurrency "$concurrency" --duration "$seconds")
  kill -INT "$vp"; wait "$vp" 2>/dev/null || true
  calls=$(sed 's/.*"total_calls":\([0-9]*\).*/\1/' <<< "$result")
  total=$(sed -n 's/.*I *refs: *//p' "$log" | tr -d ,)
  echo "$(basename "${server%% *}") --loops $loops: $calls calls, $total instructions, $((total / calls)) per call"
done
