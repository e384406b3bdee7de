#!/usr/bin/env bash
# Fuzzes an endpoint's whole receive path (read buffers, parser, dispatch,
# call table, handlers and their answers) with libFuzzer + ASan, through an
# in-memory transport (Fuzz/EndpointHarness).
#   scripts/fuzz.sh [SECONDS]   (default 600)
# New interesting inputs are kept in Fuzz/corpus (commit them: `make test`
# replays every file there); crashes are written to .build-fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
mkdir -p .build-fuzz Fuzz/corpus
# The libraries with coverage and ASan (their own build folder), then the
# libFuzzer entry point linked against their objects.
swift build -c release --target EndpointFuzzHarness --scratch-path .build-fuzz -Xswiftc -sanitize=fuzzer,address
# Every object of the harness's dependency closure (UVLoop, UVRPC and the packages they use).
# The objects of the sources each module has now (its output-file-map.json; a
# folder can still hold objects of files since deleted), plus C targets' objects.
mapfile -d '' objects < <(python3 - <<'PY'
import glob, json, os, sys
found = []
for folder in glob.glob(".build-fuzz/release/*.build"):
    name = os.path.basename(folder)
    if name in ("uvrpc.build",) or "PackageTests" in name or name.startswith(("example-", "uvrpc-")):
        continue
    mapping = os.path.join(folder, "output-file-map.json")
    if os.path.exists(mapping):
        for source, outputs in json.load(open(mapping)).items():
            if source and os.path.exists(outputs.get("object", "")):
                found.append(outputs["object"])
    else:
        found += glob.glob(os.path.join(folder, "**", "*.o"), recursive=True)
sys.stdout.write("".join(path + "\0" for path in found))
PY
)
rm -f .build-fuzz/endpoint-fuzzer
swiftc -parse-as-library -O -sanitize=fuzzer,address Fuzz/EndpointFuzzer.swift \
    -I .build-fuzz/release/Modules -I Sources/CLibUV -I Sources/COpenSSL \
    "${objects[@]}" -luv -lssl -lcrypto \
    -o .build-fuzz/endpoint-fuzzer 2>&1 | grep -v "Cannot export local symbol" || true
[ -x .build-fuzz/endpoint-fuzzer ] || { echo "fuzz.sh: linking the fuzzer failed (see above)" >&2; exit 1; }
# Seeds: the byte vectors of PROTOCOL.md.
python3 - <<'PY'
import os, struct
def handshake(json):
    return struct.pack(">I", len(json)) + json
seeds = {
 "handshake": handshake(b'{"p":2,"k":10.73}'),
 "vectors": handshake(b'{"p":2,"k":10.73}') + bytes([1, 2,0,7,0,2,0x68,0x69, 3,0,7,0,2,0x6f,0x6b, 2,0xff,0xff,0,0]),
 "message_big": handshake(b'{"p":2,"k":1}') + bytes([4,0,1,0,1,0x11,0x70]) + bytes(70000),
 "liberal": handshake(b' { "x" : [1, {"y": null}], "k" : 5 , "p" : 2 }'),
 "protocol1": handshake(b'{"k":5.0,"p":1}') + bytes([5,0,2,0,0,0,1,0x21]),
}
# The extensions (Docs/PROTOCOL.md): announced, then each packet type.
ext = handshake(b'{"p":2,"k":10.73,"x":["error","cancel","chunk","goaway","meta"]}')
def chunks(kind, id, payload, size=30000):
    out = b""
    for i in range(0, len(payload), size):
        part = payload[i:i + size]
        out += bytes([kind]) + struct.pack(">HH", id, len(part)) + part
    return out
big = bytes([4]) + bytes(range(256)) * 273
seeds["ext-error-cancel"] = ext + bytes([2,0,1,0,1,1, 2,0,2,0,1,0]) + bytes([7,0,2]) + bytes([6,0xff,0xfa,0,4]) + b"nope"
seeds["ext-chunks"] = (ext + bytes([9,0,5]) + struct.pack(">I", len(big)) + chunks(11, 5, big)
    + bytes([10,0xff,0xfb]) + struct.pack(">I", 70000) + chunks(12, 0xfffb, bytes(70000), 20000)
    + bytes([14]) + struct.pack(">I", 0) + bytes([13]) + bytes([2,0,9,0,1,4]))
seeds["ext-cancel-transfer"] = (ext + bytes([9,0,5]) + struct.pack(">I", 90000) + chunks(11, 5, bytes(1000))
    + bytes([7,0,5]) + bytes([9,0,5]) + struct.pack(">I", 10) + chunks(11, 5, bytes([4]) * 10))
seeds["ext-bad-ack"] = ext + bytes([8,0xff,0xfa])
seeds["ext-chunk-not-started"] = ext + bytes([12,0,3,0,2,1,2])
def metadata(id, entries):
    body = b"".join(bytes([len(k)]) + k + struct.pack(">H", len(v)) + v for k, v in entries)
    return bytes([15]) + struct.pack(">HH", id, len(body)) + body
seeds["ext-metadata"] = (ext + metadata(1, [(b"tenant", b"7"), (b"deadline", b"1500000")]) + bytes([2,0,1,0,1,1])
    + metadata(5, [(b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")])
    + bytes([9,0,5]) + struct.pack(">I", 70000) + chunks(11, 5, bytes(70000), 20000)
    + metadata(6, [(b"deadline", b"x")]))
for name, data in seeds.items():
    with open(os.path.join("Fuzz/corpus", "seed-" + name), "wb") as f:
        f.write(data)
PY
rm -rf .build-fuzz/work && mkdir -p .build-fuzz/work
cd .build-fuzz
./endpoint-fuzzer -max_total_time="$seconds" -max_len=100000 -print_final_stats=1 work ../Fuzz/corpus 2>&1 | tail -8
# Keep only inputs that add coverage.
./endpoint-fuzzer -merge=1 ../Fuzz/corpus work 2>&1 | tail -2
