#!/usr/bin/env python3
"""Boot-to-shell time of Debian's i386 Linux under bt-vmm and under QEMU TCG.

    python benchmarks/linux_boot.py                 # one boot each
    python benchmarks/linux_boot.py --repeat 3 --json out.json

The guest is guests/linux/debian.py's (Debian 12's linux-image-*-686-unsigned
bzImage and a busybox initramfs), the command line `console=ttyS0 nokaslr
quiet`, 128 MiB. Each boot runs on a pseudo-terminal as a user's would: the
clock starts when the program starts and stops when the busybox prompt
appears; then `poweroff -f` ends it (its exit status is checked). Runs of
the two are interleaved; medians are compared. bt-vmm runs as the user runs
it (`bt-vmm run --kernel ... --initrd ...`, two processes); one more boot
with `--stats-json` gives the exits by reason (that boot is not timed: the
execution counters --stats turns on cost time). QEMU is
`qemu-system-i386 -M pc -cpu qemu32 -accel tcg` when it is installed.

A benchmark, not a test: it asserts only that each boot reaches the shell
and powers off cleanly.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPEND = "console=ttyS0 nokaslr quiet"
MEM_MIB = 128
PROMPT = rb"/ # "


def _guest_module(name: str):
    spec = importlib.util.spec_from_file_location(f"linux_{name}", ROOT / "guests" / "linux" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def boot(argv: list[str], timeout: float) -> float:
    """Seconds from starting `argv` to the shell prompt; then powers off."""
    console = _guest_module("ptyconsole").PtyConsole(argv, cwd=ROOT)
    try:
        t0 = time.perf_counter()
        console.read_until(PROMPT, timeout)
        elapsed = time.perf_counter() - t0
        console.type("poweroff -f\r")
        status = console.proc.wait(timeout=timeout)
        if status != 0:
            raise SystemExit(f"{argv[0]}: exit status {status} after poweroff")
        return elapsed
    finally:
        console.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="boots per configuration (default 1)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds a boot may take")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--no-exits", action="store_true", help="skip the extra --stats-json boot")
    args = ap.parse_args()
    kernel, initrd = _guest_module("debian").guest()
    common = ["--kernel", str(kernel), "--initrd", str(initrd), "-m", f"{MEM_MIB}M", "--append", APPEND]
    configs = {"bt-vmm": [sys.executable, "-m", "bt_vmm", "run", *common]}
    qemu = shutil.which("qemu-system-i386")
    if qemu:
        configs["qemu-tcg"] = [qemu, "-M", "pc", "-cpu", "qemu32", "-accel", "tcg", "-m", str(MEM_MIB),
                               "-nographic", "-no-reboot", "-monitor", "none", "-kernel", str(kernel),
                               "-initrd", str(initrd), "-append", APPEND]
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.repeat):
        for name, argv in configs.items():
            times[name].append(boot(argv, args.timeout))
            print(f"{name:10s} boot to shell {times[name][-1]:7.1f} s", flush=True)
    exits = {}
    if not args.no_exits:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "stats.json"
            boot(configs["bt-vmm"] + ["--stats-json", str(out)], args.timeout)
            exits = json.loads(out.read_text())
    med = {name: statistics.median(v) for name, v in times.items()}
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"Python {platform.python_version()}, {platform.platform()}")
    print(f"\nDebian Linux boot to a busybox shell, median of {args.repeat} ({machine})")
    for name, v in times.items():
        print(f"  {name:10s} {med[name]:7.1f} s   (min {min(v):.1f}, max {max(v):.1f})")
    if "qemu-tcg" in med:
        print(f"  ratio bt-vmm / qemu-tcg: {med['bt-vmm'] / med['qemu-tcg']:.1f}x")
    if exits:
        by_reason = sorted(exits.get("exits_by_reason", {}).items(), key=lambda kv: -kv[1])
        print(f"\nexits in one --stats-json boot to the shell and power-off: {exits.get('exits_total', 0):,}")
        for reason, n in by_reason[:15]:
            print(f"  {reason:24s} {n:>9,}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "append": APPEND, "mem_mib": MEM_MIB,
                                               "seconds": times, "median": med, "stats": exits}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
