"""An efro.rpc peer that sends its handshake and then reads nothing.

Listens on 127.0.0.1 (a free port), prints `listening on 127.0.0.1:PORT`,
and for every connection writes the handshake {"p":2,"k":10.73} (no
extensions) and then never reads: the client's send buffer fills. Ends at
the end of its stdin (the test holds it open) or on SIGTERM.
"""
import json
import socket
import struct
import sys
import threading

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(16)
print(f"listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
handshake = json.dumps({"p": 2, "k": 10.73}, separators=(",", ":")).encode()
held = []


def serve():
    while True:
        connection, _ = listener.accept()
        connection.sendall(struct.pack(">I", len(handshake)) + handshake)
        held.append(connection)  # kept open, never read


threading.Thread(target=serve, daemon=True).start()
sys.stdin.read()
