"""Soak: a long run of the test OS workload, with host memory measured and the
monitor's counters checked at the end.

    python benchmarks/soak.py                          # 100 x 'forkwait 50', full TC
    python benchmarks/soak.py --rounds 1000 --tc-size 24K --json soak.json

The bundled test OS (or --kernel PATH) boots with `shell` on its command line,
runs its self-tests, then its shell reads ROUNDS commands `forkwait N` (fork N
children, reap them) from a pipe and finally `exit`. Every round creates and
drops N address spaces, copy-on-write faults, system calls, context switches
and timer interrupts; a small --tc-size adds repeated TC flushes.

A thread samples the process's resident set size (/proc/self/statm) while the
guest runs, together with how many rounds the guest has completed. The script
prints RSS after warm-up (when WARMUP of the rounds are done) and at the end,
the growth in between per 100 rounds, and the monitor's counters. It exits 1
if the guest did not complete every round correctly, if a bounded structure
(shadow page-table pool, address spaces, TC occupancy) exceeded its bound, or
if RSS grew by more than --max-growth-mib after warm-up.

`run_soak()` is also the short form that tests/test_robustness.py runs in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bt_vmm.engines.bt import BTEngine, EngineOptions          # noqa: E402
from bt_vmm.guests.registry import guest_path                 # noqa: E402
from bt_vmm.hosted.console import SerialSink                  # noqa: E402
from bt_vmm.loaders import load_multiboot                     # noqa: E402
from bt_vmm.machine.pc import Machine                         # noqa: E402
from bt_vmm.shadow_mmu import mmu as mmu_mod                  # noqa: E402
from bt_vmm.tcache import region as R                         # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
ROUND_DONE = re.compile(rb"forkwait: (\d+) children forked and reaped, (\d+) bad statuses")
SELFTESTS_DONE = re.compile(rb"testos: \d+ tests, \d+ failed")
PROMPT = b"testos> "


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class CountingSink(SerialSink):
    """Keeps the guest's output and counts completed rounds as they arrive."""

    def __init__(self, echo: bool = False) -> None:
        super().__init__()
        self.data = bytearray()
        self.rounds = 0
        self._echo = echo
        self._tail = b""
        self._shell = False        # rounds count once the self-tests are over
        self.prompts = threading.Semaphore(0)   # released at each shell prompt

    def write(self, data: bytes) -> None:
        super().write(data)
        self.data += data
        if self._echo:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        text = self._tail + data
        lines = text.split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            if SELFTESTS_DONE.search(line):
                self._shell = True
            elif self._shell and ROUND_DONE.search(line):
                self.rounds += 1
        if self._shell and self._tail.endswith(PROMPT):
            self.prompts.release()


@dataclass
class SoakResult:
    status: int
    reason: str
    wall_seconds: float
    rounds_asked: int
    rounds_done: int
    bad_rounds: list[str]
    selftest_line: str | None
    samples: list[tuple[float, int, int]] = field(default_factory=list)   # (t, rounds done, rss)
    rss_warm: int | None = None
    rss_end: int | None = None
    counters: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    output: bytes = b""                  # the guest's console output

    @property
    def ok(self) -> bool:
        return not self.problems

    def growth_mib(self) -> float | None:
        if self.rss_warm is None or self.rss_end is None:
            return None
        return (self.rss_end - self.rss_warm) / (1 << 20)


def _feeder(fd: int, commands: list[bytes], prompts: threading.Semaphore, done: threading.Event) -> None:
    """Type one command per shell prompt, as a user (or expect) would: the
    test OS keeps 256 bytes of input and, like a real 16550 whose FIFO gets
    enabled, loses what waits in the UART while it boots."""
    try:
        for command in commands:
            while not prompts.acquire(timeout=0.5):
                if done.is_set():
                    return
            os.write(fd, command)
    finally:
        os.close(fd)


def run_soak(rounds: int = 100, forkwait: int = 50, tc_size: int = R.TC_END - R.TC_BASE,
             mem: int = 64 << 20, kernel: str | None = None, timeout: float | None = None,
             warmup: float = 0.2, sample_every: float = 0.25, echo: bool = False) -> SoakResult:
    """Run the workload in this process and check it; see the module docstring."""
    path = kernel or str(guest_path("testos"))
    data = Path(path).read_bytes()
    boot = load_multiboot(Path(path).name, data, mem, "shell")
    sink = CountingSink(echo)
    machine = Machine(mem, sink)
    machine.load(boot)
    commands = [f"forkwait {forkwait}\n".encode()] * rounds + [b"exit\n"]
    rfd, wfd = os.pipe()
    done = threading.Event()
    feeder = threading.Thread(target=_feeder, args=(wfd, commands, sink.prompts, done), daemon=True)
    feeder.start()
    machine.attach_console_input(rfd)
    engine = BTEngine(machine, EngineOptions(tc_size=tc_size, timeout=timeout))

    samples: list[tuple[float, int, int]] = []
    t0 = time.monotonic()

    def sampler() -> None:
        while not done.wait(sample_every):
            samples.append((time.monotonic() - t0, sink.rounds, rss_bytes()))

    sampling = threading.Thread(target=sampler, daemon=True)
    sampling.start()
    try:
        result = engine.run(boot.entry)
    finally:
        done.set()
        sampling.join()
        machine.close()
        feeder.join()                  # closes the write end: the console thread sees EOF
        machine.console_input._thread.join(timeout=2)
        os.close(rfd)
    samples.append((time.monotonic() - t0, sink.rounds, rss_bytes()))

    out = bytes(sink.data)
    selftest = SELFTESTS_DONE.search(out)
    matches = ROUND_DONE.findall(out[selftest.end():]) if selftest else []
    bad = [f"{n.decode()} children, {b.decode()} bad" for n, b in matches
           if int(n) != forkwait or int(b) != 0]
    res = SoakResult(result.status, result.reason, result.wall_seconds, rounds, len(matches), bad,
                     selftest.group(0).decode() if selftest else None, samples, output=out)
    warm_at = max(1, int(rounds * warmup))
    warm = [s for s in samples if s[1] >= warm_at]
    if warm:
        res.rss_warm = warm[0][2]
        res.rss_end = samples[-1][2]
    res.counters = counters(engine)
    res.problems = check(res, engine)
    return res


def counters(engine: BTEngine) -> dict:
    tc, mmu = engine.tcache, engine.mmu
    return {
        "tus_translated": tc.stats["translated"],
        "tc_flushes": dict(tc.flushes),
        "tc_occupancy_peak_bytes": tc.occupancy_peak,
        "tc_size_bytes": tc._tc_hi - tc._tc_lo,
        "retired_ccfs": len(tc.retired),
        "live_ccfs": len(tc.by_pc),
        "invalidations": dict(tc.invalidations),
        "exits_total": sum(engine.exits.values()),
        "to_user": engine.exits["to-user"],
        "syscalls": engine.exits["user-int:0x80"],
        "interrupts": engine.exits["interrupt"],
        "hidden_faults": mmu.stats["hidden-faults"],
        "true_faults": mmu.stats["true-faults"],
        "pt_writes": mmu.stats["pt-writes"],
        "address_spaces_built": mmu.stats["spaces-built"],
        "address_spaces_dropped": mmu.stats["spaces-dropped"],
        "address_spaces_live": len(mmu.spaces),
        "shadow_pts_built": mmu.stats["shadow-pts-built"],
        "shadow_pts_live": len(mmu.pts),
        "shadow_pool_pages_used": mmu_mod.POOL_PAGES - len(mmu._free),
        "shadow_pool_pages": mmu_mod.POOL_PAGES,
        "pool_resets": mmu.stats["pool-resets"],
        "traced_pages": len(engine.traces.owners),
        "trace_faults": engine.traces.trace_faults,
        "vectors": {str(k): v for k, v in sorted(engine.vectors.items())},
    }


def check(res: SoakResult, engine: BTEngine) -> list[str]:
    """What must hold at the end of a soak run."""
    c = res.counters
    problems = []
    if res.status != 0:
        problems.append(f"exit status {res.status}: {res.reason}")
    if res.selftest_line is None or not res.selftest_line.endswith(" 0 failed"):
        problems.append(f"self-tests: {res.selftest_line!r}")
    if res.rounds_done != res.rounds_asked:
        problems.append(f"{res.rounds_done} of {res.rounds_asked} rounds completed")
    if res.bad_rounds:
        problems.append(f"bad rounds: {res.bad_rounds[:3]}")
    if c["address_spaces_live"] > mmu_mod.MAX_SPACES + 1:      # + the paging-off space
        problems.append(f"{c['address_spaces_live']} live address spaces (bound {mmu_mod.MAX_SPACES})")
    if c["shadow_pool_pages_used"] > c["shadow_pool_pages"]:
        problems.append("shadow page-table pool overcommitted")
    if c["tc_occupancy_peak_bytes"] > c["tc_size_bytes"]:
        problems.append(f"TC occupancy {c['tc_occupancy_peak_bytes']} above --tc-size {c['tc_size_bytes']}")
    if c["to_user"] < res.rounds_asked or c["syscalls"] < res.rounds_asked:
        problems.append("too few transitions to user mode or system calls for the rounds run")
    if c["address_spaces_built"] < res.rounds_asked:
        problems.append("fewer address spaces built than rounds (forks did not happen?)")
    return problems


def _size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KkMm]?)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r}")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20}[m.group(2).lower()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=100, help="shell commands 'forkwait N' (default 100)")
    p.add_argument("--forkwait", type=int, default=50, help="children per round (default 50)")
    p.add_argument("--tc-size", type=_size, default=R.TC_END - R.TC_BASE,
                   help="TC bytes (K/M suffix); small values force flushes")
    p.add_argument("-m", "--mem", type=_size, default=64 << 20, help="guest RAM (default 64M)")
    p.add_argument("--kernel", help="test OS image (default: the bundled testos)")
    p.add_argument("--warmup", type=float, default=0.2, help="fraction of rounds that is warm-up")
    p.add_argument("--max-growth-mib", type=float, default=None,
                   help="fail if RSS grows by more than this after warm-up")
    p.add_argument("--timeout", type=float, default=None, help="stop the guest after SECONDS")
    p.add_argument("--echo", action="store_true", help="show the guest's console output")
    p.add_argument("--json", help="write the results as JSON")
    args = p.parse_args(argv)

    print(f"soak: {args.rounds} x 'forkwait {args.forkwait}', tc {args.tc_size} bytes, "
          f"RAM {args.mem >> 20} MiB", flush=True)
    res = run_soak(args.rounds, args.forkwait, args.tc_size, args.mem, args.kernel, args.timeout,
                   args.warmup, echo=args.echo)
    mib = 1 << 20
    print(f"status {res.status} ({res.reason}) after {res.wall_seconds:.1f} s; "
          f"{res.rounds_done}/{res.rounds_asked} rounds; {res.selftest_line}")
    if res.rss_warm is not None:
        growth = res.growth_mib()
        warm_rounds = next(s[1] for s in res.samples if s[2] == res.rss_warm)
        span = max(1, res.rounds_done - warm_rounds)
        print(f"RSS after warm-up ({warm_rounds} rounds): {res.rss_warm / mib:.1f} MiB; "
              f"at the end: {res.rss_end / mib:.1f} MiB; growth {growth:+.1f} MiB "
              f"({100 * growth / span:+.2f} MiB per 100 rounds)")
        if args.max_growth_mib is not None and growth > args.max_growth_mib:
            res.problems.append(f"RSS grew {growth:.1f} MiB after warm-up (limit {args.max_growth_mib})")
    else:
        print("RSS: not enough samples after warm-up")
    peak = max(s[2] for s in res.samples)
    print(f"RSS peak {peak / mib:.1f} MiB over {len(res.samples)} samples")
    for k, v in res.counters.items():
        print(f"  {k}: {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"status": res.status, "reason": res.reason, "wall_seconds": res.wall_seconds,
                       "rounds": res.rounds_done, "rss_warm": res.rss_warm, "rss_end": res.rss_end,
                       "samples": res.samples, "counters": res.counters, "problems": res.problems},
                      f, indent=2)
    for problem in res.problems:
        print(f"soak: FAILED: {problem}")
    if res.problems:
        print("last lines of the guest's output:")
        for line in res.output.decode(errors="replace").splitlines()[-15:]:
            print(f"  | {line}")
    if res.ok:
        print("soak: ok")
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
