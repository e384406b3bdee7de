#!/usr/bin/env bash
# Runs every test under a sanitizer (thread or address) in its own build folder,
# with each report written to a file, and prints every report again once the
# tests are done. CI shows only the end of its log, and a race report scrolled
# away among 300 test lines is a red run nobody can act on.
#
# usage: scripts/test-sanitized.sh thread|address
set -uo pipefail
cd "$(dirname "$0")/.."
sanitizer=${1:?usage: scripts/test-sanitized.sh thread|address}
scratch=.build-${sanitizer/thread/tsan}
scratch=${scratch/address/asan}
swift=${SWIFT:-swift}
reports=$(mktemp -d /tmp/uvrpc-${sanitizer}-reports.XXXXXX)

$swift build --build-tests --sanitize="$sanitizer" --scratch-path "$scratch" || exit 1

case $sanitizer in
thread)
    # The one suppression Tests/tsan-suppressions.txt explains.
    export TSAN_OPTIONS="suppressions=$PWD/Tests/tsan-suppressions.txt:log_path=$reports/report"
    ;;
address)
    # LeakSanitizer is off for the test process: XCTest's own async machinery
    # leaks, and every allocation of a test hangs below XCTest frames, so no
    # suppression can tell them apart. Leaks of loops and handles are checked by
    # tests with weak references instead.
    export ASAN_OPTIONS="detect_leaks=0:log_path=$reports/report"
    ;;
*) echo "unknown sanitizer $sanitizer" >&2; exit 2 ;;
esac
export UVRPC_SANITIZER=$sanitizer

$swift test --skip-build --disable-swift-testing --sanitize="$sanitizer" --scratch-path "$scratch"
status=$?

shopt -s nullglob
files=("$reports"/report*)
if (( ${#files[@]} > 0 )); then
    echo
    echo "=== ${#files[@]} process(es) wrote $sanitizer sanitizer reports (in $reports) ==="
    for f in "${files[@]}"; do
        echo "--- $f"
        cat "$f"
    done
    # CI shows only the end of the log: a digest of each report last, each
    # access with its two top frames, then the summary lines.
    echo "=== digest ==="
    for f in "${files[@]}"; do
        awk '/^  [A-Z].* (of size|at 0x|by thread|by main)/ {print; n=2; next}
             n > 0 && /^    #/ {sub(/ \(.*$/, ""); print; n--}' "$f"
    done
    grep -h '^SUMMARY' "${files[@]}"
    (( status == 0 )) && status=1
fi
exit $status
