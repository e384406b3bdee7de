#!/usr/bin/env python3
"""Writes measured figures into the docs from a uvrpc-bench JSON file.

Usage: scripts/docs-figures.py BENCH.json [COMMAND]

Each block between `<!-- figures: NAME -->` and `<!-- /figures -->` in
Docs/*.md is replaced by the table for NAME, made from the JSON, with the
command that produced it (COMMAND, or the bench's default) under it. So the
figures in the docs are never typed by hand.
"""
import glob
import json
import re
import sys


def shared(results):
    rows = [r for r in results if r["scenario"] == "shared"]
    if not rows:
        return None
    order = {"mutex": 0, "shards": 1, "actor": 2}
    what = {
        "mutex": "a `Mutex` every loop takes",
        "shards": "one shard per loop (a plain value on each loop; a reader sums them)",
        "actor": "an actor every loop awaits",
    }
    lines = ["| way | ns per update, every loop updating at once |", "|---|---|"]
    for r in sorted(rows, key=lambda r: order.get(dict(p.split("=") for p in r["params"].split(","))["way"], 9)):
        params = dict(p.split("=") for p in r["params"].split(","))
        lines.append(f"| {what[params['way']]} ({params['loops']} loops) | {r['ns_per_op']:.1f} |")
    return "\n".join(lines)


def recorded_run(results):
    """The table the bench printed with this JSON (make bench-docs writes both)."""
    try:
        text = open("Docs/benchmarks.txt").read().rstrip()
    except OSError:
        return None
    return "```\n" + text + "\n```"


TABLES = {"shared": shared, "recorded-run": recorded_run}


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    results = json.load(open(sys.argv[1]))["results"]
    command = sys.argv[2] if len(sys.argv) > 2 else ".build/release/uvrpc-bench --json FILE"
    changed = 0
    for path in sorted(glob.glob("Docs/*.md")):
        text = open(path).read()

        def fill(match):
            nonlocal changed
            name = match.group(1)
            table = TABLES[name](results)
            if table is None:
                return match.group(0)  # not in this run: keep what is there
            changed += 1
            note = "" if name == "recorded-run" else f"\n\n(`{command}`; filled in by `scripts/docs-figures.py`.)"
            return f"<!-- figures: {name} -->\n{table}{note}\n<!-- /figures -->"

        new = re.sub(r"<!-- figures: ([\w-]+) -->.*?<!-- /figures -->", fill, text, flags=re.S)
        if new != text:
            open(path, "w").write(new)
    print(f"docs-figures: {changed} block(s) filled")


main()
