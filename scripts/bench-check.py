#!/usr/bin/env python3
"""Fails when allocations per round trip rise above the recorded figures.

Usage: scripts/bench-check.py RESULTS.json   (from uvrpc-bench --scenario allocs --json)
"""
import json
import sys

# Recorded on 2026-12-07 (Docs/BENCHMARKS.md): the async server measured 0.00 (its payload
# arrays are the loop's spares, PayloadSpares), the async client 1.00 (the answer's array);
# limits leave room for a worker task now and then. Lower them when the code improves.
LIMITS = {
    "api=callback,side=server": 0.0,
    "api=callback,side=client": 0.0,
    "api=async,side=server": 0.2,
    "api=async,side=client": 1.2,
    # One loop per CPU on each side (present on machines with more than one CPU).
    "api=callback,loops=N,side=server": 0.0,
    "api=callback,loops=N,side=client": 0.0,
    # With a Prometheus backend bootstrapped: recording must stay allocation-free.
    "api=callback,metrics=on,side=server": 0.0,
    "api=callback,metrics=on,side=client": 0.0,
    "api=async,metrics=on,side=server": 0.2,
    "api=async,metrics=on,side=client": 1.2,
    # Over TLS, UVRPC's own allocations (OpenSSL's are reported apart, not limited here).
    "api=callback,tls=on,side=server": 0.0,
    "api=callback,tls=on,side=client": 0.0,
}

import re

# "loops=2" and the like are checked as "loops=N".
results = {re.sub(r"loops=\d+", "loops=N", r["params"]): r["mallocs_per_call"]
           for r in json.load(open(sys.argv[1]))["results"] if r["scenario"] == "allocs"}
failed = False
for params, limit in LIMITS.items():
    value = results.get(params)
    if value is None and "loops=N" in params:
        print(f"skip allocs {params}: a single CPU")
        continue
    ok = value is not None and value <= limit + 0.005
    failed |= not ok
    print(f"{'ok  ' if ok else 'FAIL'} allocs {params}: {value} mallocs/call (limit {limit})")
sys.exit(1 if failed else 0)
