#!/usr/bin/env python3
"""A minimal efro.rpc (protocol 2) peer over Python's ssl module, written from
Docs/PROTOCOL.md: a foreign TLS stack for UVRPC's TLS tests.

  efro_tls_peer.py client HOST PORT CAFILE SERVERNAME [truncate]
      connects, exchanges handshakes, makes three calls (3 B, 70 000 B, 1 MiB)
      and checks that each answer is the payload reversed (the test server
      reverses); then ends with close_notify, or, with "truncate", drops the
      TCP connection without it. Prints "ok 3".
  efro_tls_peer.py server CERTFILE KEYFILE
      listens on 127.0.0.1 (first line: "listening on 127.0.0.1:PORT"),
      serves one connection: answers every message with its payload reversed,
      until the peer's close_notify; prints "served N".
"""
import json
import socket
import ssl
import struct
import sys

KEEPALIVE, MESSAGE, RESPONSE, MESSAGE_BIG, RESPONSE_BIG = 1, 2, 3, 4, 5


def read_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("the peer ended the stream")
        data += chunk
    return data


def handshake(sock):
    body = json.dumps({"p": 2, "k": 10.73}, separators=(",", ":")).encode()
    sock.sendall(struct.pack(">I", len(body)) + body)
    (length,) = struct.unpack(">I", read_exactly(sock, 4))
    peer = json.loads(read_exactly(sock, length))
    assert peer["p"] == 2, peer


def write_packet(sock, kind, message_id, payload):
    if len(payload) <= 65535:
        sock.sendall(struct.pack(">BHH", kind, message_id, len(payload)) + payload)
    else:
        sock.sendall(struct.pack(">BHI", kind + 2, message_id, len(payload)) + payload)


def read_packet(sock):
    """Returns (type, id, payload), skipping keepalives; (None, ...) at a clean end."""
    while True:
        try:
            first = sock.recv(1)
        except ssl.SSLZeroReturnError:
            return None, 0, b""
        if not first:
            return None, 0, b""
        kind = first[0]
        if kind == KEEPALIVE:
            continue
        if kind in (MESSAGE, RESPONSE):
            message_id, length = struct.unpack(">HH", read_exactly(sock, 4))
        elif kind in (MESSAGE_BIG, RESPONSE_BIG):
            message_id, length = struct.unpack(">HI", read_exactly(sock, 6))
            kind -= 2
        else:
            raise ValueError(f"unknown packet type {kind}")
        return kind, message_id, read_exactly(sock, length)


def client(host, port, cafile, server_name, truncate):
    context = ssl.create_default_context(cafile=cafile)
    raw = socket.create_connection((host, int(port)), timeout=20)
    sock = context.wrap_socket(raw, server_hostname=server_name)
    handshake(sock)
    payloads = [b"abc", bytes(range(256)) * 273 + b"x" * 112, bytes(i % 251 for i in range(1 << 20))]
    for message_id, payload in enumerate(payloads):
        write_packet(sock, MESSAGE, message_id, payload)
        kind, answered_id, answer = read_packet(sock)
        assert kind == RESPONSE and answered_id == message_id, (kind, answered_id)
        assert answer == payload[::-1], f"wrong answer to message {message_id}"
    print(f"ok {len(payloads)}", flush=True)
    if truncate:
        # The TCP stream ends (FIN) with no close_notify before it: SSLSocket.shutdown
        # drops the TLS layer without unwrapping. Then wait for the server to close.
        sock.shutdown(socket.SHUT_WR)
        try:
            while raw.recv(65536):
                pass
        except OSError:
            pass
        raw.close()
    else:
        # close_notify, then the TCP close. unwrap() also waits for the server's
        # close_notify and may meet a keepalive the server sent before it: fine.
        try:
            sock.unwrap()
        except (ssl.SSLError, OSError):
            pass
        raw.close()


def server(certfile, keyfile):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    print(f"listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
    raw, _ = listener.accept()
    raw.settimeout(20)
    sock = context.wrap_socket(raw, server_side=True)
    handshake(sock)
    served = 0
    while True:
        kind, message_id, payload = read_packet(sock)
        if kind is None:
            break
        if kind == MESSAGE:
            write_packet(sock, RESPONSE, message_id, payload[::-1])
            served += 1
    print(f"served {served}", flush=True)
    try:
        sock.unwrap()
    except (ssl.SSLError, OSError):
        pass
    sock.close()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "client":
        client(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], len(sys.argv) > 6 and sys.argv[6] == "truncate")
    elif mode == "server":
        server(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown mode {mode}")
