"""Running the bench guest (guests/bench/) under an engine.

The guest prints a marker line before and after each loop; the UART hands
the sink a line when its newline arrives, inside the monitor thread, so the
sink's clock reading and the engine's exit counters at that moment bracket
the loop:

    BEGIN <op> <n>    (then the loop)    END    RESULT <op> <n> <hex>

The guest never reads a clock. What the markers themselves cost (writing a
line takes port I/O) is measured the same way by the `null`/`unull` loops
(zero iterations) and subtracted, as is the bare loop (`empty`/`uempty`).
"""

from __future__ import annotations

import gc
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from bt_vmm.bench.engines import exit_count, exit_reasons
from bt_vmm.hosted.console import SerialSink

MEM = 64 << 20
WARM = 16          # iterations of each loop run once, unmarked, before the timed rounds


@dataclass
class Sample:
    op: str
    n: int
    t0: float
    t1: float | None = None
    x0: int = 0
    x1: int = 0
    r0: Counter | None = None
    r1: Counter | None = None
    result: int | None = None

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0

    @property
    def exits(self) -> int:
        return self.x1 - self.x0


class MarkerSink(SerialSink):
    """Timestamps the bench guest's marker lines."""

    def __init__(self, clock=time.perf_counter) -> None:
        super().__init__()
        self.clock = clock
        self.engine = None
        self.samples: list[Sample] = []
        self.tail: deque[str] = deque(maxlen=12)
        self.done = False
        self.current: str | None = None       # the loop running now (between WARM/BEGIN and END)
        self._open: Sample | None = None

    def write(self, data: bytes) -> None:
        t = self.clock()
        x = exit_count(self.engine)
        super().write(data)
        line = data.decode("ascii", "replace").rstrip("\r\n")
        if line.startswith("BEGIN "):
            parts = line.split()
            self.current = parts[1]
            self._open = Sample(parts[1], int(parts[2]), t, x0=x, r0=exit_reasons(self.engine))
        elif line.startswith("WARM "):
            self.current = line.split()[1]
        elif line == "END":
            self.current = None
            s = self._open
            if s is not None:
                s.t1, s.x1, s.r1 = t, x, exit_reasons(self.engine)
                self.samples.append(s)
                self._open = None
        elif line.startswith("RESULT "):
            parts = line.split()
            for s in reversed(self.samples):
                if s.op == parts[1]:
                    if s.result is None:
                        s.result = int(parts[3], 16)
                    break
        else:
            if line == "bench: done":
                self.done = True
            self.tail.append(line)


@dataclass
class GuestRun:
    samples: list[Sample] = field(default_factory=list)
    status: int | None = None
    reason: str = ""
    wall: float = 0.0
    error: str | None = None
    failed_in: str | None = None      # the loop that was running when the run failed

    def by_op(self) -> dict[str, list[Sample]]:
        out: dict[str, list[Sample]] = {}
        for s in self.samples:
            out.setdefault(s.op, []).append(s)
        return out


def cmdline(ops: list[str], iters: dict[str, int], rounds: int, warm: int = WARM) -> str:
    counts = ",".join(f"{op}:{iters[op]}" for op in ops if op in iters)
    return f"bench={','.join(ops)} iters={counts} rounds={rounds} warm={warm}"


def run_guest(engine_cls, kernel: bytes, line: str, timeout: float) -> GuestRun:
    """Boot the bench guest with command line `line` under `engine_cls`."""
    from bt_vmm.engines.bt import EngineOptions
    from bt_vmm.loaders import load_multiboot
    from bt_vmm.machine.pc import Machine

    run = GuestRun()
    sink = MarkerSink()
    gc.collect()
    gc.disable()            # no collector pauses inside the timed loops
    try:
        boot = load_multiboot("bench.elf", kernel, MEM, line)
        machine = Machine(MEM, sink)
        try:
            machine.load(boot)
            engine = engine_cls(machine, EngineOptions(timeout=timeout))
            sink.engine = engine
            result = engine.run(boot.entry)
        finally:
            machine.close()
            sink.close()
    except Exception as e:          # an engine bug ends this measurement, not the bench
        run.error = f"{type(e).__name__}: {e}"
        run.samples, run.failed_in = sink.samples, sink.current
        return run
    finally:
        gc.enable()
    run.samples = sink.samples
    run.status, run.reason, run.wall = result.status, result.reason, result.wall_seconds
    if result.status != 0 or not sink.done:
        tail = " | ".join(list(sink.tail)[-4:])
        run.error = f"status {result.status}: {result.reason}" + (f" (guest: {tail})" if tail else "")
        run.failed_in = sink.current
    return run
