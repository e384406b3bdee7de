#!/usr/bin/env bash
# Compile-fail checks: every Tests/CompileFail/*.swift snippet must fail to
# compile with the error its first line names (or compile, for `expect: compiles`),
# against the modules of a finished build (default: .build/debug).
set -uo pipefail
cd "$(dirname "$0")/.."
modules="${1:-.build/debug}/Modules"
[ -d "$modules" ] || { echo "compile-fail: no $modules; run swift build first" >&2; exit 2; }
failed=0
for snippet in Tests/CompileFail/*.swift; do
    first=$(head -n 1 "$snippet")
    output=$(${SWIFTC:-swiftc} -swift-version 6 -emit-sil -o /dev/null -I "$modules" \
        -Xcc -fmodule-map-file=Sources/CLibUV/module.modulemap \
        -Xcc -fmodule-map-file=Sources/COpenSSL/module.modulemap "$snippet" 2>&1)
    status=$?
    case "$first" in
        "// expect: compiles")
            if [ $status -ne 0 ]; then
                echo "compile-fail: $snippet should compile, but:"; echo "$output" | grep error | head -5; failed=1
            else echo "compile-fail: $snippet compiles, as expected"; fi ;;
        "// expect-error: "*)
            want="${first#// expect-error: }"
            if [ $status -eq 0 ]; then
                echo "compile-fail: $snippet compiled, but must fail with: $want"; failed=1
            elif ! echo "$output" | grep "error:" | grep -qF -- "$want"; then
                echo "compile-fail: $snippet failed, but not with: $want"; echo "$output" | grep error | head -5; failed=1
            else echo "compile-fail: $snippet is refused: $(echo "$output" | grep "error:" | grep -m1 -oF -- "$want")"; fi ;;
        *) echo "compile-fail: $snippet has no expectation on its first line"; failed=1 ;;
    esac
done
exit $failed
