#!/usr/bin/env python3
"""BT versus native: one compute-bound CPL0 guest loop, timed both ways.

The guest is built here with keystone: a flat multiboot image (a.out kludge)
whose code runs an outer loop `--iterations` times over a 16-step inner body
(integer arithmetic, a call/ret to a small function, a conditional branch,
loads and stores to a data array), stores a checksum and powers off through
ACPI S5 (`out 0x604, 0x2000`).

  BT      the real engine in-process: Machine + BTEngine(EngineOptions()),
          timed around engine.run(entry) (translation included).
  BT+cnt  the same with EngineOptions(count=True): gives the guest
          instruction count, and the cost of counting.
  fixed   BT on the same guest built with 1 iteration: the per-run cost
          (translation, write-protecting code pages) that does not scale.
  native  the same code bytes run untranslated in a fresh unicorn (flat
          32-bit protected mode from a GDT, CPL0, no paging), timed around
          emu_start(entry, until=<the power-off sequence>).

Runs are interleaved R times; medians are compared. This is a benchmark, not a
test: it asserts only that all three runs compute the same checksum.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import struct
import sys
import time

import keystone
import unicorn
from unicorn import x86_const as X

from bt_vmm.engines.bt import BTEngine, EngineOptions
from bt_vmm.hosted.console import open_serial_sink
from bt_vmm.loaders import load_multiboot
from bt_vmm.machine.pc import Machine

LOAD = 0x100000                  # load_addr = header_addr: the header opens the image
CODE = LOAD + 32                 # entry, right after the 32-byte a.out-kludge header
DATA = LOAD + 0x1000             # data array on its own page (stores must not hit traced code)
WORDS = 16                       # the array: 16 dwords
RESULT = DATA + 4 * WORDS        # the checksum the guest leaves behind
STACK_TOP = LOAD + 0x3000        # bss page [LOAD+0x2000, LOAD+0x3000) for the stack
MEM = 64 << 20
MB_MAGIC, MB_FLAGS = 0x1BADB002, 0x00010003   # page-align + memory-info + a.out kludge

GUEST_ASM = f"""
start:
    mov esp, {STACK_TOP:#x}
    mov ecx, {{iterations}}
    xor eax, eax
    mov ebx, 0x12345678
outer:
    xor esi, esi
inner:
    mov edx, dword ptr [{DATA:#x} + esi*4]
    add edx, ecx
    imul edx, edx, 0x9E3779B1
    xor eax, edx
    call mix
    test eax, 1
    jz even
    add ebx, eax
    jmp join
even:
    sub ebx, edx
join:
    mov dword ptr [{DATA:#x} + esi*4], eax
    inc esi
    cmp esi, {WORDS}
    jb inner
    dec ecx
    jnz outer
    mov dword ptr [{RESULT:#x}], ebx
poweroff:
    mov dx, 0x604
    mov ax, 0x2000
    out dx, ax
    hlt
    jmp poweroff
mix:
    rol eax, 5
    add eax, ebx
    shr ebx, 1
    ret
"""


def build_image(iterations: int) -> tuple[bytes, int, int]:
    """The flat multiboot image, its entry point and the power-off address."""
    ks = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_32)
    code = bytes(ks.asm(GUEST_ASM.format(iterations=iterations), CODE)[0])
    # keystone does not report label values: find the power-off sequence's bytes.
    seq = bytes(ks.asm("mov dx, 0x604; mov ax, 0x2000; out dx, ax", 0)[0])
    assert code.count(seq) == 1, "power-off sequence not found exactly once"
    poweroff = CODE + code.index(seq)
    assert CODE + len(code) <= DATA
    data = struct.pack(f"<{WORDS}I", *(i * 0x01010101 + 7 for i in range(WORDS))) + bytes(4)
    load_end = DATA + len(data)
    header = struct.pack("<8I", MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS) & 0xFFFFFFFF,
                         LOAD, LOAD, load_end, STACK_TOP, CODE)
    image = (header + code).ljust(DATA - LOAD, b"\x90") + data
    return image, CODE, poweroff


def run_bt(image: bytes, count: bool) -> dict:
    boot = load_multiboot("bench.bin", image, MEM)
    sink = open_serial_sink("none")
    machine = Machine(MEM, sink)
    machine.load(boot)
    engine = BTEngine(machine, EngineOptions(count=count))
    t0 = time.perf_counter()
    result = engine.run(boot.entry)
    wall = time.perf_counter() - t0
    sink.finish()
    if result.status != 0:
        sys.exit(f"bt_vs_native: BT run ended with status {result.status}: {result.reason}")
    out = {"wall": wall, "exits": sum(engine.exits.values()), "exit_kinds": dict(engine.exits),
           "tus": engine.tcache.stats["translated"],
           "checksum": machine.mem.read_u(RESULT, 4)}
    if count:
        out["guest_insns"] = engine.tcache.guest_insns_executed()
    return out


def run_native(image: bytes, entry: int, until: int) -> dict:
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_32)
    uc.ctl_set_cpu_model(X.UC_CPU_X86_BROADWELL)        # the model Machine uses
    uc.mem_map(0, MEM)
    uc.mem_write(LOAD, image)
    gdt = 0x1000      # null, flat code 0x08 (ring 0, 32-bit, 4 GiB), flat data 0x10
    uc.mem_write(gdt, struct.pack("<3Q", 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF))
    uc.reg_write(X.UC_X86_REG_GDTR, (0, gdt, 3 * 8 - 1, 0))
    uc.reg_write(X.UC_X86_REG_CR0, 0x11)                 # PE | ET, no paging
    uc.reg_write(X.UC_X86_REG_CS, 0x08)
    for seg in (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS, X.UC_X86_REG_GS, X.UC_X86_REG_SS):
        uc.reg_write(seg, 0x10)
    uc.reg_write(X.UC_X86_REG_EFLAGS, 0x2)
    t0 = time.perf_counter()
    uc.emu_start(entry, until)
    wall = time.perf_counter() - t0
    if uc.reg_read(X.UC_X86_REG_EIP) != until:
        sys.exit("bt_vs_native: native run stopped before the power-off sequence")
    return {"wall": wall, "checksum": struct.unpack("<I", uc.mem_read(RESULT, 4))[0]}


def summary(walls: list[float], insns: int) -> dict:
    med = statistics.median(walls)
    return {"median_s": med, "min_s": min(walls), "max_s": max(walls),
            "spread_pct": 100 * (max(walls) - min(walls)) / med,
            "guest_mips": insns / med / 1e6, "walls_s": walls}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=50000, help="outer loop count (default 50000)")
    p.add_argument("--repeat", type=int, default=7, help="runs per column (default 7)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    if not (0 < args.iterations < 1 << 32 and args.repeat > 0):
        p.error("--iterations must be in [1, 2**32) and --repeat positive")

    image, entry, poweroff = build_image(args.iterations)
    tiny = build_image(1)[0]      # the same guest with one iteration: BT's fixed cost per run
    facts = {"python": platform.python_version(), "implementation": platform.python_implementation(),
             "unicorn": unicorn.__version__, "keystone": keystone.__version__,
             "cpu_count": os.cpu_count(), "platform": platform.platform(),
             "machine": platform.machine()}
    print("bt_vs_native: compute-bound CPL0 guest loop, BT engine vs untranslated unicorn")
    print("machine: python {python} ({implementation}), unicorn {unicorn}, keystone {keystone}, "
          "os.cpu_count()={cpu_count}, {platform}".format(**facts))
    print(f"guest: {len(image)}-byte multiboot a.out image, entry {entry:#x}, power-off at "
          f"{poweroff:#x}, {args.iterations} outer x {WORDS} inner iterations; {args.repeat} "
          f"interleaved runs per column")

    runs: dict[str, list[dict]] = {"bt": [], "bt_count": [], "native": []}
    fixed: list[float] = []
    for _ in range(args.repeat):
        runs["bt"].append(run_bt(image, count=False))
        runs["native"].append(run_native(image, entry, poweroff))
        runs["bt_count"].append(run_bt(image, count=True))
        fixed.append(run_bt(tiny, count=False)["wall"])

    checksums = {r["checksum"] for rs in runs.values() for r in rs}
    if len(checksums) != 1:
        sys.exit(f"bt_vs_native: the runs disagree on the guest's checksum: {sorted(checksums)}")
    insns = runs["bt_count"][0]["guest_insns"]
    if any(r["guest_insns"] != insns for r in runs["bt_count"]):
        sys.exit("bt_vs_native: counted runs disagree on the guest instruction count")
    cols = {name: summary([r["wall"] for r in rs], insns) for name, rs in runs.items()}
    bt0 = runs["bt"][0]
    ratio = cols["bt"]["median_s"] / cols["native"]["median_s"]
    ratio_count = cols["bt_count"]["median_s"] / cols["native"]["median_s"]
    fixed_s = statistics.median(fixed)
    ratio_steady = (cols["bt"]["median_s"] - fixed_s) / cols["native"]["median_s"]

    print(f"guest instructions per run: {insns:,} (counted under BT; the native run executes "
          f"the same path, stopping at the power-off sequence)")
    print(f"BT per run: {bt0['exits']} exits {dict(sorted(bt0['exit_kinds'].items()))}, "
          f"{bt0['tus']} TUs translated; checksum {checksums.pop():#010x} in all runs")
    print()
    print(f"{'column':<22}{'median s':>10}{'min s':>10}{'max s':>10}{'spread':>9}{'guest MIPS':>12}")
    labels = {"native": "native (unicorn)", "bt": "BT", "bt_count": "BT, count=True"}
    for name in ("native", "bt", "bt_count"):
        c = cols[name]
        print(f"{labels[name]:<22}{c['median_s']:>10.4f}{c['min_s']:>10.4f}{c['max_s']:>10.4f}"
              f"{c['spread_pct']:>8.1f}%{c['guest_mips']:>12.1f}")
    print()
    print(f"ratio BT/native (median/median): {ratio:.2f}x")
    print(f"ratio BT count=True/native:      {ratio_count:.2f}x")
    print(f"BT fixed cost per run (same guest, 1 iteration): median {fixed_s:.4f} s "
          f"(min {min(fixed):.4f}, max {max(fixed):.4f}); ratio without it: {ratio_steady:.2f}x")

    if args.json:
        report = {"benchmark": "bt_vs_native", "facts": facts, "iterations": args.iterations,
                  "repeat": args.repeat, "guest_insns": insns, "bt_exits": bt0["exits"],
                  "bt_exit_kinds": bt0["exit_kinds"], "bt_tus_translated": bt0["tus"],
                  "columns": cols, "ratio_bt_native": ratio, "ratio_bt_count_native": ratio_count,
                  "bt_fixed_cost_s": fixed_s, "bt_fixed_cost_walls_s": fixed,
                  "ratio_bt_native_without_fixed_cost": ratio_steady}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
