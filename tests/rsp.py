"""A small gdb remote-protocol client for the stub's tests, a way to start
`bt-vmm run --gdb` on a free port and find out which, and guest symbols."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import time

from bt_vmm.gdbstub.packets import PacketReader, frame


class RspClient:
    def __init__(self, port: int, timeout: float = 30) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.reader = PacketReader()
        self.pending: list = []

    def close(self) -> None:
        self.sock.close()

    def send(self, payload: str | bytes) -> None:
        if isinstance(payload, str):
            payload = payload.encode()
        self.sock.sendall(frame(payload))

    def receive(self) -> str:
        """The next packet (acknowledged); acks from the stub are skipped."""
        while True:
            while self.pending:
                item = self.pending.pop(0)
                if not isinstance(item, bytes):
                    assert item.ok, item
                    self.sock.sendall(b"+")
                    return item.payload.decode("latin-1")
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the stub closed the connection")
            self.pending += self.reader.feed(data)

    def cmd(self, payload: str | bytes) -> str:
        self.send(payload)
        return self.receive()

    def interrupt(self) -> None:
        self.sock.sendall(b"\x03")

    def monitor(self, command: str) -> str:
        self.send("qRcmd," + command.encode().hex())
        out = ""
        while True:
            reply = self.receive()
            if reply.startswith("O") and reply != "OK":
                out += bytes.fromhex(reply[1:]).decode()
            else:
                assert reply == "OK", reply
                return out

    def reg(self, n: int) -> int:
        return int.from_bytes(bytes.fromhex(self.cmd(f"p{n:x}")), "little")

    def mem(self, addr: int, n: int) -> bytes:
        return bytes.fromhex(self.cmd(f"m{addr:x},{n:x}"))


def guest_symbols(elf) -> dict[str, int]:
    """A guest's symbols (guests/build/NAME.sym.elf), by name, from binutils' nm."""
    out = subprocess.run(["nm", str(elf)], capture_output=True, text=True, check=True).stdout
    return {parts[2]: int(parts[0], 16) for parts in (line.split() for line in out.splitlines())
            if len(parts) == 3}


@contextlib.contextmanager
def debugged(*args: str, wait: bool = True):
    """Run `bt-vmm run ARGS --gdb 127.0.0.1:0 [--wait-gdb]`; yields (process, port)."""
    cmd = [sys.executable, "-m", "bt_vmm", "run", *args, "--gdb", "127.0.0.1:0"]
    if wait:
        cmd.append("--wait-gdb")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        m = re.search(r"gdb (?:on|can connect on) [\d.]+:(\d+)", line)
        assert m, line + proc.stderr.read()
        yield proc, int(m.group(1))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()


def wait_exit(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    deadline = time.monotonic() + timeout
    out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    return proc.returncode, out, err
