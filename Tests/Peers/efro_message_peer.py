#!/usr/bin/env python3
"""A self-contained efro.rpc (protocol 2) peer speaking efro.message's typed JSON
for the `scores` demo protocol, written from shared/PROTOCOL.md and
shared/MESSAGES.md: a foreign implementation for UVRPC's message-layer tests.
Standard library only; plain TCP.

  efro_message_peer.py server [PORT]
      listens on 127.0.0.1:PORT (default 0: any free port; first stdout line:
      "listening on 127.0.0.1:PORT"), serves any number of connections at once
      (threads), answering `scores` messages as MESSAGES.md says; a message
      that does not decode is answered with a REMOTE error (kind 0). Sends
      keepalives every 10.73 s, drops a peer silent for 30 s. Runs until
      killed, or until its stdin reaches EOF (then exits 0).
  efro_message_peer.py client HOST:PORT
      makes nine calls in order (SubmitScore x3, TopScores(2), TopScores(),
      Ping, Fail clean, Fail not clean, Echo of 100 000 random bytes), printing
      one line per answer; exits 0. On any surprise: "error: ..." on stderr, exit 1.
  efro_message_peer.py probe HOST:PORT
      sends six bad or odd messages at once (pipelined) and checks the answers:
      REMOTE errors for the undecodable ones, normal answers for the others;
      prints one line per probe, then "probe ok"; or "error: ..." and exit 1.
"""
import base64
import json
import os
import queue
import socket
import struct
import sys
import threading
import time
from datetime import datetime, timezone

KEEPALIVE, MESSAGE, RESPONSE, MESSAGE_BIG, RESPONSE_BIG = 1, 2, 3, 4, 5
KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, CALL_TIMEOUT = 10.73, 30.0, 20.0
INTERNAL_ERROR = "An internal error has occurred."

# ---- efro.message: the `scores` protocol ---------------------------------------
# A type is (name, fields); a field is (storage name, attribute, kind, default,
# stored when equal to its default). A value is a dict {attribute: value}.
REQUIRED = object()  # the default of a field that has none


def field(key, attr, kind, default=REQUIRED, store_default=True):
    return (key, attr, kind, default, store_default)


MESSAGES = {
    0: ("SubmitScore", [field("p", "player", "str"), field("s", "score", "int"),
                        field("m", "mode", "mode"), field("t", "at", "date"),
                        field("r", "replay", "bytes?", None, store_default=False)]),
    1: ("TopScores", [field("n", "count", "int", 10, store_default=False)]),
    2: ("Ping", []),
    3: ("Fail", [field("r", "reason", "str"), field("c", "clean", "bool", False)]),
    4: ("Echo", [field("d", "data", "bytes"), field("n", "note", "str?", None)]),
}
RESPONSES = {
    -2: ("EmptySysResponse", []),
    -1: ("ErrorSysResponse", [field("m", "text", "str"), field("e", "kind", "errkind", 0)]),
    0: ("SubmitResult", [field("r", "rank", "int"), field("b", "best", "int")]),
    1: ("TopScoresResult", [field("e", "entries", "entries")]),
    2: ("EchoResult", [field("d", "data", "bytes"), field("n", "note", "str?", None)]),
}
SCORE_ENTRY = [field("p", "player", "str"), field("s", "score", "int")]
MODES = ("classic", "blitz")
# What the JSON of each kind must be (strict: a bool is no int, a float no int).
CHECKS = {"str": lambda v: type(v) is str, "int": lambda v: type(v) is int,
          "bool": lambda v: type(v) is bool, "mode": lambda v: type(v) is str and v in MODES,
          "errkind": lambda v: type(v) is int and 0 <= v <= 4,
          "date": lambda v: type(v) is list and len(v) == 7 and all(type(x) is int for x in v),
          "bytes": lambda v: type(v) is str, "entries": lambda v: type(v) is list}


def to_json(kind, value):
    if kind.endswith("?"):
        return None if value is None else to_json(kind[:-1], value)
    if kind == "date":
        v = value.astimezone(timezone.utc)
        return [v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond]
    if kind == "bytes":
        return base64.b64encode(value).decode("ascii")
    if kind == "entries":
        return [encode_fields(SCORE_ENTRY, entry) for entry in value]
    return value  # str, int, bool, mode (its raw value), errkind


def from_json(kind, raw):
    """The value stored as `raw`, or ValueError when it does not fit `kind`."""
    if kind.endswith("?"):
        return None if raw is None else from_json(kind[:-1], raw)
    if not CHECKS[kind](raw):
        raise ValueError(f"{raw!r} is not a {kind}")
    if kind == "date":
        return datetime(*raw, tzinfo=timezone.utc)
    if kind == "bytes":
        return base64.b64decode(raw, validate=True)  # binascii.Error is a ValueError
    if kind == "entries":
        return [decode_fields(SCORE_ENTRY, entry) for entry in raw]
    return raw


def encode_fields(fields, values):
    out = {}
    for key, attr, kind, default, store_default in fields:
        value = values.get(attr, default)
        if value is REQUIRED:
            raise ValueError(f"no value for {attr}")
        if store_default or value != default:
            out[key] = to_json(kind, value)
    return out


def decode_fields(fields, raw):
    if type(raw) is not dict:
        raise ValueError(f"{raw!r} is not an object")
    values = {}  # keys no field declares are ignored
    for key, attr, kind, default, _ in fields:
        if key in raw:
            values[attr] = from_json(kind, raw[key])
        elif default is REQUIRED:
            raise ValueError(f"missing field {key!r}")
        else:
            values[attr] = default
    return values


def encode(table, type_id, values=None):
    """Compact JSON bytes, as the reference writes them (ensure_ascii on)."""
    body = encode_fields(table[type_id][1], values or {})
    return json.dumps({"t": type_id, "m": body}, separators=(",", ":")).encode()


def decode(table, data):
    """(type id, values) from JSON bytes; ValueError when they do not decode."""
    try:
        envelope = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON
        raise ValueError(f"not JSON: {exc}") from None
    if type(envelope) is not dict or type(envelope.get("t")) is not int:
        raise ValueError(f"not a message envelope: {envelope!r}")
    if envelope["t"] not in table:
        raise ValueError(f"unknown type id {envelope['t']}")
    return envelope["t"], decode_fields(table[envelope["t"]][1], envelope.get("m", {}))


# ---- efro.rpc: one endpoint per connection -------------------------------------
def read_exactly(sock, n):
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(min(n - len(data), 1 << 20))
        if not chunk:
            raise EOFError("the peer ended the stream")
        data += chunk
    return bytes(data)


class Endpoint:
    """Two threads: a reader (the peer's handshake, then packets: answers each
    MESSAGE in turn through `handler`, hands each RESPONSE to its waiter) and a
    ticker sending keepalives and dropping a peer silent for KEEPALIVE_TIMEOUT
    (any packet counts as liveness). Writes are whole packets under a lock."""

    def __init__(self, sock, handler=None):
        self.sock, self.handler = sock, handler
        self.lock, self.write_lock, self.pending = threading.Lock(), threading.Lock(), {}
        self.closed, self.peer_ready = threading.Event(), threading.Event()
        self.peer_protocol, self.next_id, self.last_heard = 2, 65530, time.monotonic()
        self.why = None  # why the connection closed
        hello = json.dumps({"p": 2, "k": KEEPALIVE_INTERVAL}, separators=(",", ":")).encode()
        self.write(struct.pack(">I", len(hello)) + hello)
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._tick, daemon=True).start()

    def close(self, why="closed here"):
        """Fails the calls in flight and shuts the socket down (the reader closes it);
        a server logs `why` on stderr, a client's failing call reports it."""
        with self.lock:
            if self.closed.is_set():
                return
            self.closed.set()
            self.why = why
            if self.handler is not None and why != "the peer ended the stream":
                log(f"closing a connection: {why}")
            for waiter in self.pending.values():
                waiter.put(None)
        self.peer_ready.set()  # wakes a send() still waiting for the handshake
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def write(self, data):
        try:
            with self.write_lock:
                self.sock.sendall(data)
        except OSError as exc:
            self.close(f"cannot write: {exc}")

    def _tick(self):
        while not self.closed.wait(KEEPALIVE_INTERVAL):
            if time.monotonic() - self.last_heard > KEEPALIVE_TIMEOUT:
                self.close(f"the peer was silent for over {KEEPALIVE_TIMEOUT:.0f} s")
            else:
                self.write(bytes([KEEPALIVE]))

    def send_packet(self, kind, message_id, payload):
        """kind is MESSAGE or RESPONSE; its *_BIG form goes above 65535 bytes."""
        if len(payload) <= 65535:
            self.write(struct.pack(">BHH", kind, message_id, len(payload)) + payload)
        elif self.peer_protocol < 2:
            raise ValueError("a payload over 65535 bytes cannot go to a protocol-1 peer")
        else:
            self.write(struct.pack(">BHI", kind + 2, message_id, len(payload)) + payload)

    def _read(self):
        try:
            (length,) = struct.unpack(">I", read_exactly(self.sock, 4))
            peer = json.loads(read_exactly(self.sock, length).decode("utf-8"))
            if (type(peer) is not dict or type(peer.get("p")) is not int
                    or type(peer.get("k")) not in (int, float)):
                raise ValueError(f"bad handshake {peer!r}")
            self.peer_protocol, self.last_heard = min(peer["p"], 2), time.monotonic()
            self.peer_ready.set()
            while True:
                kind = read_exactly(self.sock, 1)[0]
                self.last_heard = time.monotonic()
                if kind in (MESSAGE, RESPONSE):
                    message_id, length = struct.unpack(">HH", read_exactly(self.sock, 4))
                elif kind in (MESSAGE_BIG, RESPONSE_BIG):
                    message_id, length = struct.unpack(">HI", read_exactly(self.sock, 6))
                    kind -= 2
                elif kind == KEEPALIVE:
                    continue
                else:  # a second handshake (0) included
                    raise ValueError(f"packet type {kind} is a protocol error")
                payload = read_exactly(self.sock, length)
                if kind == RESPONSE:
                    with self.lock:  # a response to an unknown id is late: ignored
                        waiter = self.pending.pop(message_id, None)
                    if waiter is not None:
                        waiter.put(payload)
                elif self.handler is not None:
                    try:
                        self.send_packet(RESPONSE, message_id, self.handler(payload))
                    except ValueError as exc:  # as in the reference: no answer
                        log(f"no answer to message {message_id}: {exc}")
        except Exception as exc:  # the end of the stream, socket or protocol errors
            self.close(str(exc))
        self.sock.close()

    def send(self, payload):
        """Sends a MESSAGE once the peer's handshake is in; returns (id, waiter)."""
        if not self.peer_ready.wait(CALL_TIMEOUT):
            raise TimeoutError("no handshake from the peer")
        waiter = queue.Queue()
        with self.lock:
            if self.closed.is_set():
                raise ConnectionError(f"the connection is closed ({self.why})")
            message_id, self.next_id = self.next_id, (self.next_id + 1) % 65536
            self.pending[message_id] = waiter
        self.send_packet(MESSAGE, message_id, payload)
        return message_id, waiter

    def wait(self, message_id, waiter, timeout=CALL_TIMEOUT):
        """The RESPONSE payload to a sent message; raises on close or timeout."""
        try:
            answer = waiter.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no answer to message {message_id} in {timeout:.0f} s") from None
        finally:
            with self.lock:
                self.pending.pop(message_id, None)
        if answer is None:
            raise ConnectionError(f"the connection closed ({self.why})")
        return answer


def log(text):
    print(text, file=sys.stderr, flush=True)


# ---- server --------------------------------------------------------------------
class Scores:
    """The `scores` handlers; one board shared by every connection."""

    def __init__(self):
        self.best, self.lock = {}, threading.Lock()

    def ranking(self):  # by best score, highest first, ties by player name
        return sorted(self.best.items(), key=lambda item: (-item[1], item[0]))

    def handle(self, payload):
        """The response payload to a message payload; anything that fails (a
        message that does not decode included) is a REMOTE error."""
        try:
            return self.answer(*decode(MESSAGES, payload))
        except Exception:
            return encode(RESPONSES, -1, {"text": INTERNAL_ERROR, "kind": 0})

    def answer(self, type_id, m):
        if type_id == 0:
            with self.lock:
                player = m["player"]
                self.best[player] = max(self.best.get(player, m["score"]), m["score"])
                rank = [name for name, _ in self.ranking()].index(player) + 1
                return encode(RESPONSES, 0, {"rank": rank, "best": self.best[player]})
        if type_id == 1:
            with self.lock:
                top = self.ranking()[:max(m["count"], 0)]
            return encode(RESPONSES, 1, {"entries": [{"player": p, "score": s} for p, s in top]})
        if type_id == 2:
            return encode(RESPONSES, -2)
        if type_id == 3 and m["clean"]:
            return encode(RESPONSES, -1, {"text": m["reason"], "kind": 1})
        if type_id == 3:
            return encode(RESPONSES, -1, {"text": INTERNAL_ERROR, "kind": 0})
        return encode(RESPONSES, 2, {"data": m["data"], "note": m["note"]})


def server(port):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    print(f"listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
    scores = Scores()

    def accept_forever():
        while True:
            sock, _ = listener.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            Endpoint(sock, scores.handle)

    threading.Thread(target=accept_forever, daemon=True).start()
    while sys.stdin and sys.stdin.buffer.read1(65536):  # EOF on stdin ends the server
        pass
    os._exit(0)


# ---- client and probe ----------------------------------------------------------
def connect(address):
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host.strip("[]"), int(port)), timeout=CALL_TIMEOUT)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return Endpoint(sock)


def call(endpoint, message_type, values, answer_type):
    answer = endpoint.wait(*endpoint.send(encode(MESSAGES, message_type, values)))
    type_id, m = decode(RESPONSES, answer)
    if type_id != answer_type:
        detail = f" ({m['text']!r}, kind {m['kind']})" if type_id == -1 else ""
        raise ValueError(f"{MESSAGES[message_type][0]} was answered with "
                         f"{RESPONSES[type_id][0]}{detail}, not {RESPONSES[answer_type][0]}")
    return m


def client(address):
    endpoint = connect(address)
    for player, score, mode, replay in [("alice", 10, "classic", None),
                                        ("bob", 30, "blitz", b"\x01\x02\x03"),
                                        ("alice", 20, "classic", None)]:
        m = call(endpoint, 0, {"player": player, "score": score, "mode": mode,
                               "at": datetime.now(timezone.utc), "replay": replay}, 0)
        print(f"submit rank={m['rank']} best={m['best']}", flush=True)
    for values in ({"count": 2}, {}):
        m = call(endpoint, 1, values, 1)
        print(" ".join(["top"] + [f"{e['player']}:{e['score']}" for e in m["entries"]]), flush=True)
    call(endpoint, 2, {}, -2)
    print("ping ok", flush=True)
    for reason, clean, kind in (("nope", True, 1), ("boom", False, 0)):
        m = call(endpoint, 3, {"reason": reason, "clean": clean}, -1)
        if m["kind"] != kind:
            raise ValueError(f"Fail(clean={clean}) was answered with error kind {m['kind']}")
        print(f"fail clean: {m['text']}" if clean else "fail remote", flush=True)
    data = os.urandom(100000)
    m = call(endpoint, 4, {"data": data, "note": None}, 2)
    if m["data"] != data or m["note"] is not None:
        raise ValueError(f"Echo came back with other bytes or note {m['note']!r}")
    print(f"echo ok {len(m['data'])}", flush=True)
    endpoint.close()


PROBES = [  # (name, payload, the answer's type id)
    ("a", b"this is not JSON {", -1),
    ("b", b'{"t":99,"m":{}}', -1),
    ("c", b'{"t":0,"m":{"p":"x"}}', -1),
    ("d", b'{"t":4,"m":{"d":5,"n":null}}', -1),
    ("e", b'{"t":0,"m":{"p":"carol","s":7,"m":"classic","t":[2026,1,2,3,4,5,6],"zz":1}}', 0),
    ("f", b' { "m" : { } , "t" : 2 } ', -2),
]


def probe(address):
    endpoint = connect(address)
    sent = [endpoint.send(payload) for _, payload, _ in PROBES]  # all in flight at once
    deadline = time.monotonic() + CALL_TIMEOUT
    for (name, _, wanted), (message_id, waiter) in zip(PROBES, sent):
        answer = endpoint.wait(message_id, waiter, max(0.0, deadline - time.monotonic()))
        try:
            type_id, m = decode(RESPONSES, answer)
        except ValueError as exc:
            raise ValueError(f"probe {name}: the answer does not decode: {exc}") from None
        if type_id != wanted:
            raise ValueError(f"probe {name}: answered with type {type_id} {m}, not {wanted}")
        if type_id == -1:
            print(f"probe {name}: error kind={m['kind']} text={m['text']}", flush=True)
        else:
            print(f"probe {name}: ok " + ("empty" if type_id == -2 else f"type={type_id}"), flush=True)
    print("probe ok", flush=True)
    endpoint.close()


def main(argv):
    mode = argv[1] if len(argv) > 1 else ""
    if mode == "server" and len(argv) <= 3:
        server(int(argv[2]) if len(argv) == 3 else 0)
    elif mode in ("client", "probe") and len(argv) == 3:
        try:
            (client if mode == "client" else probe)(argv[2])
        except Exception as exc:
            log(f"error: {type(exc).__name__}: {exc}")
            sys.exit(1)
    else:
        sys.exit("usage: efro_message_peer.py server [PORT] | client HOST:PORT | probe HOST:PORT")


if __name__ == "__main__":
    main(sys.argv)
