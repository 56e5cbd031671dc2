"""A slowloris client for tests, run as its own process (its file descriptors are its own):

    python slowloris.py PORT COUNT SECONDS

opens COUNT connections to 127.0.0.1:PORT (loopback only), starts a request on each and sends
its headers one byte every TRICKLE_S, never finishing them. Prints one JSON line once every
connection is open ({"opened": n}), then one when every connection has been closed by the
server or SECONDS have passed: how long each connection lived and whether it got a 408.
Closes whatever is still open and exits.
"""

from __future__ import annotations

import json
import resource
import selectors
import socket
import sys
import time

HOST = "127.0.0.1"
TRICKLE_S = 0.5
REQUEST_START = b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def main(port: int, count: int, seconds: float) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 64)), hard))
    start = time.monotonic()
    selector = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}
    for _ in range(count):
        sock = socket.create_connection((HOST, port), timeout=5)
        sock.setblocking(False)
        opened[sock] = time.monotonic()
        try:
            sock.send(REQUEST_START)
        except OSError:
            pass  # already closed by the server: the selector sees it below
        selector.register(sock, selectors.EVENT_READ)
    print(json.dumps({"opened": len(opened), "open_s": round(time.monotonic() - start, 3)}), flush=True)

    lived: list[float] = []  # seconds from connect to the server's close
    got_408 = 0
    next_trickle = time.monotonic() + TRICKLE_S
    while opened and time.monotonic() - start < seconds:
        for key, _ in selector.select(timeout=max(0.0, next_trickle - time.monotonic())):
            sock = key.fileobj
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if data.startswith(b"HTTP/1.1 408"):
                got_408 += 1
            if not data or data.startswith(b"HTTP/1.1 408"):
                lived.append(time.monotonic() - opened.pop(sock))
                selector.unregister(sock)
                sock.close()
        if time.monotonic() >= next_trickle:
            for sock in opened:
                try:
                    sock.send(b"a")
                except OSError:
                    pass  # closed by the server: the selector reports it
            next_trickle += TRICKLE_S
    for sock in opened:
        sock.close()
    print(json.dumps({"closed": len(lived), "still_open": len(opened), "got_408": got_408,
                      "lived_s": sorted(round(s, 3) for s in lived)}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
