"""The server's ports, claimed before the model loads: a taken port fails in a second, by name.

The HTTP and metrics ports are bound here and the sockets handed to their servers. The gRPC
port is bound by gRPC itself, without SO_REUSEPORT (gRPC's default would let a second server
share the port and silently take half the connections); it is tried here first so that a
taken gRPC port also fails before the model loads.

The HTTP API's connections get a fixed kernel send buffer (SEND_BUFFER_BYTES). Left to Linux's
autotuning it grows to megabytes, tens of seconds of audio that a client which stopped reading
never takes but the server has already given away; fixed, a stalled client's socket fills
within a few seconds of audio, the response stops being read from its engine stream, and the
engine pauses the request as it pauses a gRPC stream held back by HTTP/2 flow control.

Every connection is a file descriptor, and the ports share the process's limit: csm-serve
raises its soft limit on open files to the hard limit at start (raise_open_file_limit), since
the usual soft default of 1024 is used up by one port's --http-max-connections alone.
"""

from __future__ import annotations

import errno
import resource
import socket
from dataclasses import dataclass
from pathlib import Path

SEND_BUFFER_BYTES = 64 * 1024  # per HTTP connection (Linux doubles it); still MB/s at a 100 ms round trip
# Flag (and environment variable) of each port, for messages that say what to change.
FLAGS = {"port": "--port (CSM_PORT)", "http_port": "--http-port (CSM_HTTP_PORT)",
         "metrics_port": "--metrics-port (CSM_METRICS_PORT)"}


# Open files beyond the connections: the listening sockets, gRPC's connections, model and voice files.
OTHER_FILES = 256


def raise_open_file_limit() -> tuple[int, int]:
    """Raises RLIMIT_NOFILE's soft limit to the hard limit (to the kernel's per-process
    maximum, fs.nr_open, when the hard limit is unlimited). Returns (before, after); `after`
    is `before` when the kernel refuses."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        nr_open = Path("/proc/sys/fs/nr_open")
        target = int(nr_open.read_text()) if nr_open.is_file() else 1024 * 1024
    if soft != resource.RLIM_INFINITY and soft >= target:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft, soft
    return soft, target


class PortUnavailable(OSError):
    """A port the configuration names cannot be listened on."""


def port_error(name: str, host: str, port: int, cause: OSError) -> PortUnavailable:
    flag = FLAGS[name]
    if cause.errno in (errno.EADDRINUSE, None):  # gRPC's bind failure carries no errno
        why = ("the address is already in use (another csm-serve, or another program, listens there; "
               "csm-serve never shares a port: SO_REUSEPORT is off)")
    else:
        why = cause.strerror or str(cause)
    off = ", or 0 to turn it off" if name != "port" else ""
    return PortUnavailable(f"cannot listen on {host}:{port} for {flag}: {why}. Choose another {flag.split()[0]}{off}.")


def bind(name: str, host: str, port: int, send_buffer: int | None = None) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port), or PortUnavailable. Its
    accepted connections inherit `send_buffer` (bytes; None: the kernel's autotuning)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        sock = socket.create_server((host, port), family=family, reuse_port=False,
                                    dualstack_ipv6=family == socket.AF_INET6 and host in ("::", ""))
    except OSError as exc:
        raise port_error(name, host, port, exc) from exc
    if send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.setblocking(False)
    return sock


def check_free(name: str, host: str, port: int) -> None:
    """Raises PortUnavailable when host:port cannot be listened on right now (port 0 always can)."""
    if port != 0:
        bind(name, host, port).close()


@dataclass(slots=True)
class Listeners:
    """Sockets bound ahead of the servers that will use them; None where that server is off."""

    http: socket.socket | None = None
    metrics: socket.socket | None = None

    @classmethod
    def claim(cls, host: str, grpc_port: int, http_port: int | None, metrics_port: int | None) -> Listeners:
        check_free("port", host, grpc_port)
        listeners = cls()
        try:
            if http_port is not None:
                listeners.http = bind("http_port", host, http_port, SEND_BUFFER_BYTES)
            if metrics_port is not None:
                listeners.metrics = bind("metrics_port", host, metrics_port)
        except PortUnavailable:
            listeners.close()
            raise
        return listeners

    def close(self) -> None:
        for sock in (self.http, self.metrics):
            if sock is not None:
                sock.close()
        self.http = self.metrics = None
