"""A peer that never sends its handshake.

Listens on 127.0.0.1 (a free port) and prints `listening on 127.0.0.1:PORT`.
Every connection is held open in silence, except that with
`--drop-first SECONDS` the first one is closed that long after it was
accepted. Ends at the end of its stdin (the test holds it open) or on SIGTERM.
"""
import socket
import sys
import threading
import time

drop_first = float(sys.argv[sys.argv.index("--drop-first") + 1]) if "--drop-first" in sys.argv else None
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(16)
print(f"listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
held = []


def drop_later(connection, seconds):
    time.sleep(seconds)
    connection.close()


def serve():
    first = True
    while True:
        connection, _ = listener.accept()
        if first and drop_first is not None:
            threading.Thread(target=drop_later, args=(connection, drop_first), daemon=True).start()
        else:
            held.append(connection)
        first = False


threading.Thread(target=serve, daemon=True).start()
sys.stdin.read()
