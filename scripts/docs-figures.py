#!/usr/bin/env python3
"""Writes measured figures into the docs from uvrpc-bench JSON files.

Usage:
  scripts/docs-figures.py [--command CMD] [JSON...]    fill the figures in
  scripts/docs-figures.py --check [JSON...]            only compare; exit 1 when stale

JSON defaults to the two recorded runs, Docs/benchmarks.json (`make
bench-docs`) and Docs/benchmarks-split.json (`make bench-docs-split`). A
file is named by its stem: `benchmarks`, `benchmarks-split`. (The old form
`docs-figures.py BENCH.json COMMAND` still works.) It reads and writes
Docs/*.md and README.md, so the figures in the docs are never typed by hand.

Blocks: `<!-- figures: NAME [FILE] -->` ... `<!-- /figures -->` is replaced
by the table NAME (`shared`: the shared scenario's table, with CMD, or the
bench's default command, under it; `typed`: the typed scenario's calls
and codec halves, likewise; `recorded-run`: the table the bench printed
with that JSON, the .txt file beside it). With FILE, only that JSON
fills it; without, the first given JSON that has the results. A block whose
results no given JSON has is left as it is (and not checked).

Figures in sentences and table cells: `<!-- fig: KEY -->TEXT<!-- /fig -->`.
TEXT is replaced by what KEY gives (the comments do not show when the
Markdown is rendered; KEY may wrap over lines; markers are found in code
too, so keep them out of it; and never begin a line with one: Markdown
reads such a line as raw HTML). KEY is an expression, then an optional format:

  REF      [FILE:]SCENARIO[PARAMS].IMPL.FIELD
             FILE      the JSON's stem, `benchmarks` when left out;
                       `benchmarks|benchmarks-split` takes both
             SCENARIO  the result's "scenario"
             PARAMS    the result's "params", exactly (in any order):
                       `size=64,concurrency=16`; a value may list
                       alternatives (`size=65536|262144`), and a last item
                       `...` lets the result have more params than listed
             IMPL      the result's "impl" (`swift`, `c`, `swift-tls`, ...),
                       or A/B for A's FIELD over B's in the result with the
                       same params (`swift/c`: the bench's Swift/C column)
             FIELD     a field of the result (`calls_per_s`, `mb_per_s`,
                       `p99_us`, `bytes_per_conn`, `mallocs_per_call`,
                       `cpu_s_per_million_calls`, `loop_connections`, ...);
                       `[I]` picks element I of a list field
  EXPR     REFs and numbers with + - * / and parentheses; min(...),
           max(...), sum(...) over everything listed; range(...) gives
           "MIN-MAX" (one figure when both read the same)
  FORMAT   last, starting with %: a Python format spec after the %; a comma
           groups thousands with spaces. Default %.2f.

A REF that matches several results stands for all of them (in file, then
JSON order); arithmetic goes element by element, and the whole KEY must give
one value (or a range). A KEY that matches no result, or a field that is
null, is an error. Examples:

  small[size=64,concurrency=16].swift/c.calls_per_s                  0.99
  benchmarks-split:small[size=64,concurrency=16].swift/c.calls_per_s 0.94
  cores[loops=1,...].swift.calls_per_s %,.0f                         1 274 842
  fanin[connections=10000,...].swift.bytes_per_conn / 1000 %.1f      3.8
  range(fanin[...].swift/c.calls_per_s)                              0.92-0.94
  max(cores[loops=2,spread=reuse-port,...].swift.loop_connections)
    / min(cores[loops=2,spread=reuse-port,...].swift.loop_connections)

--check exits 1 and names the file, line and KEY of every marker or block
whose text differs from what the JSON gives (for `shared`, its table), every
KEY that matches no result or does not parse, and every KEY or block whose
FILE was not given.
Fill mode writes what it can and exits 1 on the same errors (a KEY whose
FILE was not given is left alone there).
"""
import glob
import json
import os
import re
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DEFAULT_JSON = ["Docs/benchmarks.json", "Docs/benchmarks-split.json"]
DEFAULT_FILE = "benchmarks"


# ---------------------------------------------------------------- blocks

def shared(results, path):
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


def recorded_run(results, path):
    """The table the bench printed with this JSON: the .txt beside it (make bench-docs writes both)."""
    try:
        text = open(os.path.splitext(path)[0] + ".txt").read().rstrip()
    except OSError:
        return None
    return "```\n" + text + "\n```"


def typed(results, path):
    """The typed scenario: calls per second against the raw async path, and each codec half."""
    rows = [r for r in results if r["scenario"] == "typed"]
    if not rows:
        return None
    def params(r):
        return dict(p.split("=", 1) for p in r["params"].split(","))
    calls = {params(r)["call"]: r for r in rows if "call" in params(r)}
    codec = {params(r)["codec"]: r for r in rows if "codec" in params(r)}
    if "raw" not in calls:
        return None
    raw = calls["raw"]["calls_per_s"]
    what = {"raw": "raw async (async echo server, async callers on the loop)",
            "echo": "typed Echo, 64 B of data", "submit": "typed SubmitScore"}
    lines = ["| 64 B, 64 in flight | calls/s | / raw async | caller mallocs per call |", "|---|---|---|---|"]
    for key in ["raw", "echo", "submit"]:
        if key in calls:
            r = calls[key]
            calls = f"{r['calls_per_s']:,.0f}".replace(",", " ")
            lines.append(f"| {what[key]} | {calls} | {r['calls_per_s'] / raw:.2f} | {r['mallocs_per_call']:.0f} |")
    halves = {"encode-message": "encode the Echo message (caller)", "decode-message": "decode it (server)",
              "encode-response": "encode the EchoResult (server)", "decode-response": "decode it (caller)"}
    lines += ["", "| the codec alone, 64 B Echo | ns | mallocs |", "|---|---|---|"]
    for key, label in halves.items():
        if key in codec:
            lines.append(f"| {label} | {codec[key]['ns_per_op']:.0f} | {codec[key]['mallocs_per_call']:.0f} |")
    return "\n".join(lines)


TABLES = {"shared": shared, "recorded-run": recorded_run, "typed": typed}


# ---------------------------------------------------------------- keys

class KeyError_(Exception):
    pass


class NotGiven(Exception):
    """The KEY names a JSON file that was not given."""


TOKEN = re.compile(r"""
    \s*(?:
      (?P<ref>(?:[\w|-]+:)?[\w-]+\[[^\]]*\]\.[\w-]+(?:/[\w-]+)?\.\w+(?:\[\d+\])?)
    | (?P<func>min|max|sum|range)\(
    | (?P<num>\d+(?:\.\d+)?)
    | (?P<op>[-+*/(),])
    )""", re.X)
REF = re.compile(r"(?:(?P<files>[\w|-]+):)?(?P<scenario>[\w-]+)\[(?P<params>[^\]]*)\]"
                 r"\.(?P<impl>[\w-]+)(?:/(?P<over>[\w-]+))?\.(?P<field>\w+)(?:\[(?P<index>\d+)\])?$")


def tokenize(expr):
    tokens, pos = [], 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise KeyError_(f"cannot read {expr[pos:].strip()!r}")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


def param_items(params):
    items = {}
    for item in params.split(","):
        key, _, value = item.partition("=")
        items[key] = value if "=" in item else None
    return items


def parse_filter(text):
    wanted, loose = {}, False
    for item in [i.strip() for i in text.split(",") if i.strip()]:
        if item == "...":
            loose = True
            continue
        key, _, value = item.partition("=")
        wanted[key] = set(value.split("|")) if "=" in item else None
    return wanted, loose


def matches(params, wanted, loose):
    have = param_items(params)
    for key, values in wanted.items():
        if key not in have:
            return False
        if values is None:
            if have[key] is not None:
                return False
        elif have[key] not in values:
            return False
    return loose or set(have) == set(wanted)


def field_values(result, field, index, where):
    if field not in result:
        raise KeyError_(f"{where}: the results have no field {field}")
    value = result[field]
    if value is None:
        raise KeyError_(f"{where}: {field} is null in {result['impl']} {result['params']!r}")
    if isinstance(value, list):
        if index is not None:
            if index >= len(value):
                raise KeyError_(f"{where}: {field} has no element {index}")
            return [float(value[index])]
        return [float(v) for v in value]
    if index is not None:
        raise KeyError_(f"{where}: {field} is not a list")
    return [float(value)]


def resolve(ref, files):
    m = REF.match(ref)
    if not m:
        raise KeyError_(f"not a reference: {ref!r}")
    names = (m["files"] or DEFAULT_FILE).split("|")
    wanted, loose = parse_filter(m["params"])
    index = int(m["index"]) if m["index"] is not None else None
    values = []
    for name in names:
        if name not in files:
            raise NotGiven(name)
        results = files[name][1]
        rows = [r for r in results if r["scenario"] == m["scenario"] and r["impl"] == m["impl"]
                and matches(r["params"], wanted, loose)]
        for row in rows:
            a = field_values(row, m["field"], index, ref)
            if m["over"] is None:
                values += a
                continue
            same = [r for r in results if r["scenario"] == m["scenario"] and r["impl"] == m["over"]
                    and param_items(r["params"]) == param_items(row["params"])]
            if len(same) != 1:
                raise KeyError_(f"{ref}: {len(same)} {m['over']} results with params {row['params']!r}")
            b = field_values(same[0], m["field"], index, ref)
            if len(a) != len(b) or 0.0 in b:
                raise KeyError_(f"{ref}: cannot divide {a} by {b}")
            values += [x / y for x, y in zip(a, b)]
    if not values:
        raise KeyError_(f"matches no result: {ref}")
    return values


class Range:
    def __init__(self, lo, hi):
        self.lo, self.hi = lo, hi


def apply(op, a, b):
    if isinstance(a, Range) or isinstance(b, Range):
        raise KeyError_("range(...) must be the whole expression")
    if len(a) == 1:
        a = a * len(b)
    if len(b) == 1:
        b = b * len(a)
    if len(a) != len(b):
        raise KeyError_(f"{len(a)} values {op} {len(b)} values")
    if op == "/" and 0.0 in b:
        raise KeyError_("division by zero")
    f = {"+": lambda x, y: x + y, "-": lambda x, y: x - y,
         "*": lambda x, y: x * y, "/": lambda x, y: x / y}[op]
    return [f(x, y) for x, y in zip(a, b)]


def evaluate(expr, files):
    tokens = tokenize(expr)
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else (None, None)

    def take(kind=None, text=None):
        nonlocal pos
        tok = peek()
        if tok[0] is None or (kind and tok[0] != kind) or (text and tok[1] != text):
            raise KeyError_(f"expected {text or kind} in {expr!r}")
        pos += 1
        return tok

    def sum_expr():
        value = product()
        while peek() in (("op", "+"), ("op", "-")):
            op = take()[1]
            value = apply(op, value, product())
        return value

    def product():
        value = unary()
        while peek() in (("op", "*"), ("op", "/")):
            op = take()[1]
            value = apply(op, value, unary())
        return value

    def unary():
        if peek() == ("op", "-"):
            take()
            return apply("*", [-1.0], unary())
        return atom()

    def atom():
        kind, text = peek()
        if kind == "num":
            take()
            return [float(text)]
        if kind == "ref":
            take()
            return resolve(text, files)
        if kind == "func":
            take()
            args = [sum_expr()]
            while peek() == ("op", ","):
                take()
                args.append(sum_expr())
            take("op", ")")
            flat = [v for a in args for v in (a if isinstance(a, list) else [a.lo, a.hi])]
            if text == "range":
                return Range(min(flat), max(flat))
            return [{"min": min, "max": max, "sum": sum}[text](flat)]
        if (kind, text) == ("op", "("):
            take()
            value = sum_expr()
            take("op", ")")
            return value
        raise KeyError_(f"unexpected {text!r} in {expr!r}")

    value = sum_expr()
    if pos != len(tokens):
        raise KeyError_(f"unexpected {tokens[pos][1]!r} in {expr!r}")
    return value


def format_number(value, spec):
    text = format(value, spec).replace(",", " ")
    if re.fullmatch(r"-0(\.0*)?", text):
        text = text[1:]  # no "-0.00"
    return text


def figure(key, files):
    """The text for KEY (see the docstring)."""
    key = " ".join(key.split())
    m = re.match(r"^(.*?)(?:\s+%(\S*))?$", key)
    expr, spec = m.group(1), m.group(2)
    spec = spec if spec else ".2f"
    try:
        format(1.0, spec)
    except ValueError:
        raise KeyError_(f"bad format %{spec}")
    value = evaluate(expr, files)
    if isinstance(value, Range):
        lo, hi = format_number(value.lo, spec), format_number(value.hi, spec)
        return lo if lo == hi else f"{lo}-{hi}"
    if len(value) != 1:
        raise KeyError_(f"gives {len(value)} values (use min, max, sum or range): {expr}")
    return format_number(value[0], spec)


# ---------------------------------------------------------------- files

BLOCK = re.compile(r"<!-- figures: ([\w-]+)(?: ([\w-]+))? -->\n?(.*?)<!-- /figures -->", re.S)
INLINE = re.compile(r"<!--\s*fig:\s*(.*?)\s*-->(.*?)<!--\s*/fig\s*-->", re.S)


def line_of(text, offset):
    return text.count("\n", 0, offset) + 1


def main():
    args = sys.argv[1:]
    check = "--check" in args
    args = [a for a in args if a != "--check"]
    command = None
    if "--command" in args:
        i = args.index("--command")
        if i + 1 >= len(args):
            sys.exit(__doc__)
        command = args[i + 1]
        del args[i:i + 2]
    if any(a.startswith("-") for a in args):
        sys.exit(__doc__)
    if len(args) == 2 and not args[1].endswith(".json"):
        command = args.pop()  # the old form: BENCH.json COMMAND
    paths = [os.path.abspath(p) for p in (args or [os.path.join(ROOT, p) for p in DEFAULT_JSON])]
    command = command or ".build/release/uvrpc-bench --json FILE"

    files = {}
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        if name in files:
            sys.exit(f"docs-figures: two JSON files named {name}")
        try:
            files[name] = (path, json.load(open(path))["results"])
        except (OSError, ValueError, KeyError) as e:
            sys.exit(f"docs-figures: {path}: {e!r}")

    os.chdir(ROOT)
    problems, filled, skipped, stale = [], 0, 0, 0
    for path in sorted(glob.glob("Docs/*.md")) + ["README.md"]:
        text = open(path).read()

        def block(match):
            nonlocal filled, stale
            name, only, old = match.group(1), match.group(2), match.group(3)
            where = f"{path}:{line_of(match.string, match.start())}: block {name}{' ' + only if only else ''}"
            if name not in TABLES:
                problems.append(f"{where}: no such table (known: {', '.join(TABLES)})")
                return match.group(0)
            if only and only not in files:
                if check:
                    problems.append(f"{where}: {only}.json not given")
                return match.group(0)
            table = None
            for fname, (fpath, results) in files.items():
                if only in (None, fname):
                    table = TABLES[name](results, fpath)
                    if table is not None:
                        break
            if table is None:
                return match.group(0)  # not in this run: keep what is there
            note = "" if name == "recorded-run" else f"\n\n(`{command}`; filled in by `scripts/docs-figures.py`.)"
            head = f"<!-- figures: {name}{' ' + only if only else ''} -->\n"
            new = f"{head}{table}{note}\n<!-- /figures -->"
            if check:
                # The note names the command of the run, which --check does not know: compare the table.
                if name == "recorded-run" and old.rstrip("\n") != table:
                    stale += 1
                    problems.append(f"{where}: differs from {fpath}")
                elif name != "recorded-run" and not old.startswith(table + "\n"):
                    stale += 1
                    problems.append(f"{where}: differs from {fpath}")
                return match.group(0)
            filled += 1
            return new

        def inline(match):
            nonlocal filled, skipped, stale
            key, old = match.group(1), match.group(2)
            where = f"{path}:{line_of(match.string, match.start())}: fig `{' '.join(key.split())}`"
            if "<!--" in old:
                problems.append(f"{where}: no <!-- /fig --> before the next marker")
                return match.group(0)
            line_start = match.string.rfind("\n", 0, match.start()) + 1
            if not match.string[line_start:match.start()].strip():
                # A comment that begins a line starts an HTML block, even inside a paragraph.
                problems.append(f"{where}: begins a line (Markdown then reads the line as raw HTML); "
                                "put a word before it")
            try:
                new = figure(key, files)
            except NotGiven as e:
                if check:
                    problems.append(f"{where}: {e.args[0]}.json not given")
                else:
                    skipped += 1
                return match.group(0)
            except KeyError_ as e:
                problems.append(f"{where}: {e}")
                return match.group(0)
            if check:
                if old != new:
                    stale += 1
                    problems.append(f"{where}: says {old!r}, the JSON gives {new!r}")
                return match.group(0)
            filled += 1
            return match.group(0)[:match.start(2) - match.start()] + new + match.group(0)[match.end(2) - match.start():]

        new = BLOCK.sub(block, text)
        new = INLINE.sub(inline, new)
        if new != text and not check:
            open(path, "w").write(new)

    for p in problems:
        print(p, file=sys.stderr)
    if check:
        print(f"docs-figures --check: {len(problems)} problem(s) ({stale} stale), "
              f"against {', '.join(os.path.relpath(p) for p, _ in files.values())}")
    else:
        print(f"docs-figures: {filled} figure(s) and block(s) filled"
              + (f", {skipped} from JSON files not given left alone" if skipped else "")
              + (f", {len(problems)} problem(s)" if problems else ""))
    sys.exit(1 if problems else 0)


main()
