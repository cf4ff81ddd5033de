"""The native column: the bench guest's own loop code run in a bare unicorn,
with no monitor at all.

The guest image carries a table of the loops that need nothing a monitor
provides (found by its magic string; guests/bench/main.c, native_table).
Here they run as the guest's code bytes at their linked addresses, in flat
32-bit protected mode at CPL0 without paging, on the CPU model the Machine
uses; each call `fn(n)` is timed around emu_start (as
benchmarks/bt_vs_native.py does), with the same baselines as in the guest:
`fn_empty(0)` for the fixed cost and `fn_empty(n)` for the loop.
"""

from __future__ import annotations

import struct
import time

MAGIC = b"BTVMM-BENCH-NAT\0"
ENTRY = struct.Struct("<16sI")
MEM = 32 << 20
GDT = 0x1F00000                  # flat code 0x08, flat data 0x10
STACK_TOP = 0x1E00000
RET_ADDR = 0x1D00000             # emu_start runs until the loop returns here


class NativeCPU:
    def __init__(self, kernel: bytes) -> None:
        import unicorn
        from unicorn import x86_const as X
        from bt_vmm.loaders import load_multiboot

        boot = load_multiboot("bench.elf", kernel, 64 << 20, "")
        uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_32)
        uc.ctl_set_cpu_model(X.UC_CPU_X86_BROADWELL)     # the model Machine uses
        uc.mem_map(0, MEM)
        lo, hi = boot.kernel_range
        for addr, data in boot.chunks:
            if lo <= addr < hi:
                uc.mem_write(addr, data)
        image = bytes(uc.mem_read(lo, hi - lo))
        at = image.find(MAGIC)
        if at < 0:
            raise ValueError("bench guest image has no native-loop table")
        self.loops: dict[str, int] = {}
        off = at + ENTRY.size
        while True:
            name, fn = ENTRY.unpack_from(image, off)
            name = name.rstrip(b"\0").decode("ascii")
            if not name:
                break
            self.loops[name] = fn
            off += ENTRY.size
        uc.mem_write(GDT, struct.pack("<3Q", 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF))
        uc.reg_write(X.UC_X86_REG_GDTR, (0, GDT, 3 * 8 - 1, 0))
        uc.reg_write(X.UC_X86_REG_CR0, 0x11)            # PE | ET, no paging
        uc.reg_write(X.UC_X86_REG_CS, 0x08)
        for seg in (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS, X.UC_X86_REG_GS,
                    X.UC_X86_REG_SS):
            uc.reg_write(seg, 0x10)
        uc.reg_write(X.UC_X86_REG_EFLAGS, 0x2)
        self._uc, self._X = uc, X

    def call(self, name: str, n: int) -> tuple[float, int]:
        """Run loop `name` with n iterations: (seconds, its return value)."""
        uc, X = self._uc, self._X
        fn = self.loops[name]
        esp = STACK_TOP - 8
        uc.mem_write(esp, struct.pack("<II", RET_ADDR, n & 0xFFFFFFFF))
        uc.reg_write(X.UC_X86_REG_ESP, esp)
        t0 = time.perf_counter()
        uc.emu_start(fn, RET_ADDR)
        t = time.perf_counter() - t0
        if uc.reg_read(X.UC_X86_REG_EIP) != RET_ADDR:
            raise RuntimeError(f"native {name}({n}) stopped at {uc.reg_read(X.UC_X86_REG_EIP):#x}")
        return t, uc.reg_read(X.UC_X86_REG_EAX)
