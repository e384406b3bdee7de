#!/usr/bin/env bash
# Soak test: `uvrpc serve` under checked traffic and faults for a bounded time.
# Usage: scripts/soak.sh [SECONDS]   (default 600 = 10 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
swift build -c release --product uvrpc
swift build -c release --product uvrpc-soak
exec .build/release/uvrpc-soak --seconds "$seconds" --report "$(( seconds >= 100 ? 30 : 5 ))"
