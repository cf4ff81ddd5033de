"""The test OS macrobenchmarks: boot to the shell prompt, and forkwait.

One run boots guests/testos with `shell forkwait=20` (the boot self-tests
fork 20 children instead of 200) and plays the user at the console: the
sink feeds COM1 as the shell's lines arrive, inside the monitor thread.

    `testos shell, pid N` arrives      -> type an empty line
    `testos> ` + echoed newline        -> boot time = now - start of engine.run
                                          type `forkwait N`
    `testos> forkwait N` (echo)        -> forkwait starts
    `forkwait: N children ...`         -> forkwait ends; type `exit`

The prompt has no newline of its own, so the boot is timed at the echo of
the empty line, which the shell reads as soon as it asks (the line is
already waiting): the boot time includes reading and echoing one byte.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from bt_vmm.bench.engines import exit_count
from bt_vmm.hosted.console import SerialSink

MEM = 64 << 20
CMDLINE = "shell forkwait=20"


class ShellSink(SerialSink):
    def __init__(self, forkwait: int, clock=time.perf_counter) -> None:
        super().__init__()
        self.clock = clock
        self.forkwait = forkwait
        self.engine = None
        self.machine = None
        self.t_start = 0.0
        self.state = "boot"
        self.boot: tuple[float, int] | None = None           # (seconds, exits) to the prompt
        self.fw_start: tuple[float, int] | None = None
        self.fw_end: tuple[float, int] | None = None
        self.fw_line = ""
        self.tail: deque[str] = deque(maxlen=12)

    def _type(self, text: bytes) -> None:
        self.machine.devices.uart.feed(text)

    def write(self, data: bytes) -> None:
        t = self.clock()
        x = exit_count(self.engine)
        super().write(data)
        line = data.decode("ascii", "replace").rstrip("\r\n")
        self.tail.append(line)
        if self.state == "boot" and line.startswith("testos shell"):
            self._type(b"\n")
            self.state = "prompt"
        elif self.state == "prompt" and line == "testos> ":
            self.boot = (t - self.t_start, x)
            self._type(f"forkwait {self.forkwait}\n".encode())
            self.state = "echo"
        elif self.state == "echo" and line == f"testos> forkwait {self.forkwait}":
            self.fw_start = (t, x)
            self.state = "forkwait"
        elif self.state == "forkwait" and line.startswith("forkwait: "):
            self.fw_end = (t, x)
            self.fw_line = line
            self._type(b"exit\n")
            self.state = "exit"


@dataclass
class TestosRun:
    boot_s: float | None = None
    boot_exits: int | None = None
    forkwait_s: float | None = None       # per child
    forkwait_exits: float | None = None   # per child
    forkwait_error: str | None = None
    error: str | None = None
    status: int | None = None


def run_testos(engine_cls, kernel: bytes, forkwait: int, timeout: float) -> TestosRun:
    from bt_vmm.engines.bt import EngineOptions
    from bt_vmm.loaders import load_multiboot
    from bt_vmm.machine.pc import Machine

    out = TestosRun()
    sink = ShellSink(forkwait)
    result = None
    try:
        boot = load_multiboot("testos.elf", kernel, MEM, CMDLINE)
        machine = Machine(MEM, sink)
        sink.machine = machine
        try:
            machine.load(boot)
            engine = engine_cls(machine, EngineOptions(timeout=timeout))
            sink.engine = engine
            sink.t_start = time.perf_counter()
            result = engine.run(boot.entry)
        finally:
            machine.close()
            sink.close()
    except Exception as e:
        out.error = f"{type(e).__name__}: {e}"
    if result is not None:
        out.status = result.status
        if result.status != 0:
            tail = " | ".join(list(sink.tail)[-4:])
            out.error = f"status {result.status}: {result.reason}" + (f" (guest: {tail})" if tail else "")
    if sink.boot is not None:
        out.boot_s, out.boot_exits = sink.boot
    if sink.fw_start is not None and sink.fw_end is not None:
        want = f"forkwait: {forkwait} children forked and reaped, 0 bad statuses"
        if sink.fw_line.startswith(want):
            out.forkwait_s = (sink.fw_end[0] - sink.fw_start[0]) / forkwait
            out.forkwait_exits = (sink.fw_end[1] - sink.fw_start[1]) / forkwait
        else:
            out.forkwait_error = f"the shell said: {sink.fw_line}"
    return out
