#!/usr/bin/env bash
# Syscalls per call of an echo server under the C load generator (strace -c).
# Usage: scripts/syscalls-per-call.sh [SERVER...]   (default: .build/release/uvrpc)
#   e.g. scripts/syscalls-per-call.sh .build/release/uvrpc-c
# Needs a release build (make bench) and strace. Prints, per concurrency, the
# calls made in 1.5 s, the server's syscalls, and calls per syscall.
set -euo pipefail
cd "$(dirname "$0")/.."
server=("${@:-.build/release/uvrpc}")
out=$(mktemp) trace=$(mktemp)
trap 'rm -f "$out" "$trace"' EXIT
for c in 1 16 256 4096; do
  "${server[@]}" serve --port 0 > "$out" 2>/dev/null & sp=$!
  for _ in $(seq 50); do grep -q listening "$out" && break; sleep 0.1; done
  port=$(sed -n 's/.*://p' "$out" | head -1)
  strace -c -f -o "$trace" -p "$sp" 2>/dev/null & st=$!
  sleep 0.5
  result=$(.build/release/uvrpc-c load --connect "127.0.0.1:$port" --concurrency "$c" --duration 1.5)
  kill -INT "$st"; wait "$st" 2>/dev/null || true
  kill "$sp"; wait "$sp" 2>/dev/null || true
  calls=$(sed 's/.*"calls":\([0-9]*\).*/\1/' <<< "$result")
  total=$(awk '/total/{print $(NF-2)}' "$trace")
  echo "in flight $c: $calls calls, $total server syscalls, $(python3 -c "print(round($calls/$total, 2))") calls per syscall"
done
