#!/usr/bin/env python3
"""Fails when allocations per round trip rise above the recorded figures.

Usage: scripts/bench-check.py RESULTS.json   (from uvrpc-bench --scenario allocs --json)
"""
import json
import sys

# Recorded on 2026-11-27 (Docs/BENCHMARKS.md). Lower them when the code improves.
LIMITS = {
    "api=callback,side=server": 0.0,
    "api=callback,side=client": 0.0,
    "api=async,side=server": 7.0,
    "api=async,side=client": 2.0,
}

results = {r["params"]: r["mallocs_per_call"] for r in json.load(open(sys.argv[1]))["results"]
           if r["scenario"] == "allocs"}
failed = False
for params, limit in LIMITS.items():
    value = results.get(params)
    ok = value is not None and value <= limit + 0.005
    failed |= not ok
    print(f"{'ok  ' if ok else 'FAIL'} allocs {params}: {value} mallocs/call (limit {limit})")
sys.exit(1 if failed else 0)
