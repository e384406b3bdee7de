#!/usr/bin/env bash
# make docs: the figures in the docs checked against the bench's JSON, then
# the DocC archives of UVLoop and UVRPC in .build/docs/, with
# Docs/GETTING_STARTED.md, COMMON_TASKS.md and ARCHITECTURE.md as UVRPC's
# articles (copied into the catalog at build time: Docs/ stays the one source).
set -euo pipefail
cd "$(dirname "$0")/.."
# Every figure the docs quote from a recorded bench run must still be what its
# JSON says (scripts/docs-figures.py fills them; this only compares).
python3 scripts/docs-figures.py --check Docs/benchmarks.json Docs/benchmarks-split.json
catalog=Sources/UVRPC/UVRPC.docc
cp Docs/GETTING_STARTED.md "$catalog/GettingStarted.md"
cp Docs/COMMON_TASKS.md "$catalog/CommonTasks.md"
cp Docs/ARCHITECTURE.md "$catalog/Architecture.md"
trap 'rm -f "$catalog/GettingStarted.md" "$catalog/CommonTasks.md" "$catalog/Architecture.md"' EXIT
mkdir -p .build/docs
for target in UVLoop UVRPC UVRPCMessages; do
    swift package --allow-writing-to-directory .build/docs \
        generate-documentation --target "$target" --output-path ".build/docs/$target.doccarchive" \
        --warnings-as-errors
done
echo "docs: .build/docs/UVLoop.doccarchive, UVRPC.doccarchive and UVRPCMessages.doccarchive"
