#!/usr/bin/env bash
# User-space instructions per call of the Swift and C echo servers, counted by
# callgrind (repeatable, whatever else the machine does), under the C load
# generator: the cost of the hot path itself, apart from the scheduler.
# Usage: scripts/instructions-per-call.sh [LOOPS] [CONNECTIONS] [CONCURRENCY] [SECONDS]
#   defaults: 1 loop, 64 connections, 16 calls in flight each, 3 s.
# Needs a release build (make bench) and valgrind. Server startup and
# connection setup are included in the first line's counts; they are small
# against the calls made in a few seconds, and the same for every run of one
# server. The second line leaves them out: each server runs again for three
# times as long, and the difference of the two runs is divided by the
# difference of their calls.
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
# One run of a server under callgrind: "CALLS INSTRUCTIONS".
count() {
  local server=$1 duration=$2 vp port result calls total
  valgrind --tool=callgrind --callgrind-out-file="$profile" $server --port 0 --loops "$loops" > "$out" 2> "$log" & vp=$!
  for _ in $(seq 600); do grep -q listening "$out" && break; sleep 0.1; done
  port=$(sed -n 's/.*://p' "$out" | head -1)
  result=$(.build/release/uvrpc-c load --connect "127.0.0.1:$port" --connections "$connections" \
           --concurrency "$concurrency" --duration "$duration")
  kill -INT "$vp"; wait "$vp" 2>/dev/null || true
  calls=$(sed 's/.*"total_calls":\([0-9]*\).*/\1/' <<< "$result")
  total=$(sed -n 's/.*I *refs: *//p' "$log" | tr -d ,)
  echo "$calls $total"
}
for server in "$bin/uvrpc serve --backlog 4096" "$bin/uvrpc-c serve"; do
  name=$(basename "${server%% *}")
  read -r calls total < <(count "$server" "$seconds")
  echo "$name --loops $loops: $calls calls, $total instructions, $((total / calls)) per call"
  long=$(awk -v s="$seconds" 'BEGIN { print s * 3 }')
  read -r calls3 total3 < <(count "$server" "$long")
  if (( calls3 > calls )); then
    echo "$name --loops $loops: $(( (total3 - total) / (calls3 - calls) )) per call between the ${seconds} s and ${long} s runs (startup left out)"
  fi
done
