"""Drive a guest's serial console through a pseudo-terminal, as a user would.

Used by tests/test_linux.py and benchmarks/linux_boot.py for bt-vmm and for
qemu-system-i386 alike: the program runs on the pty's slave side, and what
it prints is matched against patterns as it arrives.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path


class PtyConsole:
    def __init__(self, argv: list[str], cwd: Path | None = None) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=subprocess.PIPE,
                                     cwd=cwd, close_fds=True)
        os.close(slave)
        self.out = b""

    def read_until(self, pattern: bytes, timeout: float) -> bytes:
        """What arrived from now until `pattern` matched (AssertionError with
        the last output if it does not within `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        start = len(self.out)
        while True:
            m = re.search(pattern, self.out[start:])
            if m:
                return self.out[start:start + m.end()]
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise AssertionError(f"no {pattern!r} on the console; last output:\n"
                                     f"{self.out[-3000:].decode(errors='replace')}")
            ready, _, _ = select.select([self.master], [], [], min(left, 1.0))
            if ready:
                try:
                    self.out += os.read(self.master, 65536)
                except OSError:        # the slave side closed: the program ended
                    pass

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def command(self, line: str, n: int, timeout: float) -> str:
        """Type a shell command line and return what it printed, up to a marker
        only the shell's arithmetic produces (not the echo of the typing)."""
        self.type(f"{line}; echo @@$((1000+{n}))@@\r")
        return self.read_until(rb"@@%d@@" % (1000 + n), timeout).decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.master)
