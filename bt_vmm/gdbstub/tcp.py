"""The gdb stub's transport: a TCP listener (`--gdb [HOST:]PORT`).

The only module of the stub that touches sockets. It binds when created (so
a busy port is a command-line error, before the guest starts), accepts one
client at a time on a thread of its own, and hands every byte the client
sends to the stub on that thread; the stub answers through the sender it was
given. A second client waiting while one is connected gets its turn when the
first goes.
"""

from __future__ import annotations

import socket
import threading

from bt_vmm.errors import BadInput

DEFAULT_HOST = "127.0.0.1"


def parse_address(text: str) -> tuple[str, int]:
    """`[HOST:]PORT` (QEMU's -gdb tcp::PORT style); BadInput when malformed."""
    host, _, port = text.rpartition(":")
    host = host or DEFAULT_HOST
    try:
        number = int(port)
    except ValueError:
        raise BadInput(f"--gdb: expected [HOST:]PORT, got '{text}'") from None
    if not 0 <= number <= 65535:
        raise BadInput(f"--gdb: port {number} is out of range (0-65535)")
    return host, number


class TcpServer:
    def __init__(self, host: str, port: int, stub) -> None:
        self._stub = stub
        try:
            self._listener = socket.create_server((host, port), reuse_port=False)
        except OSError as e:
            raise BadInput(f"--gdb: cannot listen on {host}:{port}: {e.strerror or e}") from None
        self.host, self.port = self._listener.getsockname()[:2]
        self._closed = False
        self._conn: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, name="bt-vmm-gdb", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return                       # closed
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
            self._stub.connected(conn.sendall)
            try:
                while True:
                    data = conn.recv(4096)
                    if not data:
                        break
                    self._stub.feed(data)
            except OSError:
                pass
            finally:
                self._conn = None
                self._stub.disconnected()
                conn.close()

    def close(self) -> None:
        self._closed = True
        conn = self._conn
        if conn is not None:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._listener.close()
