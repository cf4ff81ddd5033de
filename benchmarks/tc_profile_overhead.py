#!/usr/bin/env python3
"""What `--tc-profile` and `--stats live` cost: the test OS run, timed four ways.

  plain     BTEngine(EngineOptions()): what `bt-vmm run --guest testos` does.
  stats     EngineOptions(count=True): the CCF execution counters that --stats,
            --stats-json and --tc-profile all turn on.
  profile   count=True plus a TCRecorder (what `--tc-profile FILE` does); the
            time to build the profile document and write the gzip'd file after
            the run is timed separately ("write").
  live      count=True plus the `--stats live` panel, drawn by rich.live's
            refresh thread 4 times a second into a terminal-mode console
            (backed by a StringIO, so what is measured is the thread's reading
            and rendering, not the host terminal).

Each run boots the bundled test OS in-process (serial output captured, setup
not timed) and is timed around engine.run(entry). Runs are interleaved R times
and medians compared. The test OS is interrupt-driven (its timer is wall
clock), so its instruction count varies a little from run to run; the
instructions per second are given too. This is a benchmark, not a test: it
fails only if a run does not end with the test OS's "0 failed" verdict.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time

from rich.console import Console

from bt_vmm.engines.bt import BTEngine, EngineOptions
from bt_vmm.guests.registry import guest_path
from bt_vmm.hosted.console import SerialSink
from bt_vmm.loaders import load_multiboot
from bt_vmm.machine.pc import Machine
from bt_vmm.tcprofile import TCRecorder, load_profile, write_profile
from bt_vmm.tcprofile.live import LivePanel

MEM = 64 << 20
COLUMNS = ("plain", "stats", "profile", "live")


class TimedRecorder(TCRecorder):
    """A TCRecorder that also adds up the time spent inside its hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.hook_seconds = 0.0
        self.hook_calls = 0

    def _timed(name):
        def hook(self, *args):
            t = time.perf_counter()
            try:
                return getattr(TCRecorder, name)(self, *args)
            finally:
                self.hook_seconds += time.perf_counter() - t
                self.hook_calls += 1
        return hook

    translated = _timed("translated")
    chained = _timed("chained")
    invalidated = _timed("invalidated")
    flushed = _timed("flushed")
    callout = _timed("callout")
    del _timed


class CaptureSink(SerialSink):
    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        super().write(data)
        self.data += data


def run(guest: str, column: str) -> dict:
    path = guest_path(guest)
    boot = load_multiboot(path.name, path.read_bytes(), MEM)
    sink = CaptureSink()
    machine = Machine(MEM, sink)
    machine.load(boot)
    rec = TimedRecorder() if column == "profile" else None
    engine = BTEngine(machine, EngineOptions(count=column != "plain", recorder=rec))
    panel = None
    if column == "live":
        panel = LivePanel(console=Console(file=io.StringIO(), force_terminal=True, width=100))
        panel.start(engine)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        result = engine.run(boot.entry)
    finally:
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        if panel is not None:
            panel.stop()
        machine.close()
    out = {"wall": wall, "cpu": cpu, "status": result.status, "exits": sum(engine.exits.values()),
           "tus": engine.tcache.stats["translated"], "output": bytes(sink.data)}
    if column != "plain":
        out["guest_insns"] = engine.tcache.guest_insns_executed() + engine.insns_direct
    if panel is not None:
        out["refreshes"] = panel.refreshes
        out["panel_busy"] = panel.busy_seconds
    if rec is not None:
        out["hook_seconds"] = rec.hook_seconds
        out["hook_calls"] = rec.hook_calls
        t1 = time.perf_counter()
        doc = rec.profile(engine, result, guest=guest)
        with tempfile.TemporaryDirectory() as tmp:
            file = os.path.join(tmp, "run.tcprof")
            write_profile(doc, file)
            out["write"] = time.perf_counter() - t1
            out["profile_bytes"] = os.path.getsize(file)
            p = load_profile(file)
            out["profile_ccfs"] = len(p)
            out["profile_consistent"] = not p.check()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--guest", default="testos", help="bundled guest (default testos)")
    ap.add_argument("--repeat", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)
    runs: dict[str, list[dict]] = {c: [] for c in COLUMNS}
    for r in range(args.repeat):
        for c in COLUMNS:
            res = run(args.guest, c)
            if args.guest == "testos" and b", 0 failed" not in res["output"]:
                sys.exit(f"tc_profile_overhead: the {c} run did not pass its self-tests "
                         f"(status {res['status']})")
            res.pop("output")
            runs[c].append(res)
            print(f"round {r + 1}/{args.repeat} {c:8} {res['wall']:.3f} s", file=sys.stderr)
    med = {c: statistics.median(x["wall"] for x in runs[c]) for c in COLUMNS}
    cpu = {c: statistics.median(x["cpu"] for x in runs[c]) for c in COLUMNS}
    print(f"guest: {args.guest}; {args.repeat} interleaved runs per column; "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.platform()}")
    print()
    print(f"{'column':8} {'wall s':>7} {'min':>7} {'max':>7} {'vs plain':>9} {'vs stats':>9}"
          f" {'cpu s':>7} {'vs plain':>9} {'vs stats':>9} {'guest MIPS':>11}")
    for c in COLUMNS:
        walls = [x["wall"] for x in runs[c]]
        insns = [x.get("guest_insns") for x in runs[c] if x.get("guest_insns")]
        mips = f"{statistics.median(insns) / med[c] / 1e6:11.2f}" if insns else f"{'-':>11}"
        ws = f"{med[c] / med['stats'] - 1:+9.1%}" if c != "plain" else f"{'':>9}"
        cs = f"{cpu[c] / cpu['stats'] - 1:+9.1%}" if c != "plain" else f"{'':>9}"
        print(f"{c:8} {med[c]:7.3f} {min(walls):7.3f} {max(walls):7.3f} {med[c] / med['plain'] - 1:+9.1%}"
              f" {ws} {cpu[c]:7.3f} {cpu[c] / cpu['plain'] - 1:+9.1%} {cs} {mips}")
    prof = runs["profile"]
    write = statistics.median(x["write"] for x in prof)
    hooks = statistics.median(x["hook_seconds"] for x in prof)
    calls = statistics.median(x["hook_calls"] for x in prof)
    print()
    print(f"recording, measured directly: {calls:,.0f} recorder calls took {hooks * 1e3:.1f} ms "
          f"per run ({hooks / med['profile']:.2%} of the run); building and writing the profile "
          f"afterwards: {write * 1e3:.0f} ms")
    print(f"profile: {statistics.median(x['profile_ccfs'] for x in prof):.0f} CCFs, "
          f"{statistics.median(x['profile_bytes'] for x in prof) / 1024:.0f} KiB gzip'd; consistent "
          f"with the engine's counters in {sum(x['profile_consistent'] for x in prof)}/{len(prof)} runs")
    live = runs["live"]
    busy = statistics.median(x["panel_busy"] / x["wall"] for x in live)
    print(f"live panel, measured directly: {statistics.median(x['refreshes'] / x['wall'] for x in live):.1f}"
          f" refreshes/s; the refresh thread used {busy:.2%} of a CPU")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"guest": args.guest, "repeat": args.repeat, "wall_medians": med,
                       "cpu_medians": cpu, "runs": runs, "write_median": write,
                       "hook_seconds_median": hooks, "panel_busy_share": busy, "cpus": os.cpu_count(),
                       "python": platform.python_version()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
