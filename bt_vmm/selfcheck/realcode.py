"""Real code: translation units cut from kernel images.

A kernel (the project's bundled guests, or any Multiboot/ELF32 image given to
`bt-vmm selfcheck --kernel`) is loaded at its physical addresses; its
executable bytes are swept linearly for instruction boundaries, and a case
runs exactly one TU from one of them: the reference stops at the first
instruction of the next TU, the BT engine when its instruction budget (the
TU's length) runs out at the next CCF's entry. Registers start as pointers
into a data area full of pointers (real code follows pointers), so most TUs
run to their end instead of leaving RAM.

TUs that cannot end deterministically in both are not cut: ones holding
`hlt` together with an instruction that may set IF (the BT side would wait for
an interrupt that never comes), and ones with `rep ins`/`rep outs` (the
emulator resumes a long one at itself, which looks like the next TU to the
budget that ends a one-TU run; generated cases cover them).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache

import capstone

from bt_vmm.decoder import Kind, decode_tu
from bt_vmm.loaders.elf import is_elf, parse_elf32
from bt_vmm.selfcheck import layout as L
from bt_vmm.selfcheck.case import Case, Init
from bt_vmm.selfcheck.draw import Draw

MiB = 1 << 20
PF_X = 1
_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)


@dataclass
class Kernel:
    name: str
    chunks: list[tuple[int, bytes]]         # physical address, bytes
    code: list[tuple[int, int]]             # executable [lo, hi) ranges
    starts: list[int] = field(default_factory=list)   # instruction boundaries in code
    ram_size: int = 2 * MiB

    def read(self, addr: int, n: int) -> bytes:
        for base, blob in self.chunks:
            if base <= addr < base + len(blob):
                return blob[addr - base:addr - base + n]
        return b""


def load_kernel(name: str, data: bytes) -> Kernel:
    """The loaded image of a Multiboot kernel (ELF or a.out kludge) or of any
    ELF32 executable; BadInput if it is neither."""
    from bt_vmm.errors import BadInput
    from bt_vmm.loaders import load_multiboot
    chunks: list[tuple[int, bytes]] = []
    code: list[tuple[int, int]] = []
    if is_elf(data):
        elf = parse_elf32(name, data)
        for ph in elf.load_segments():
            blob = data[ph.offset:ph.offset + ph.filesz].ljust(ph.memsz, b"\0")
            chunks.append((ph.paddr, blob))
            if ph.flags & PF_X:
                code.append((ph.paddr, ph.paddr + ph.filesz))
    else:
        boot = load_multiboot(name, data, 256 * MiB)
        lo, hi = boot.kernel_range
        for addr, blob in boot.chunks:
            if lo <= addr < hi:
                chunks.append((addr, blob))
                code.append((addr, addr + len(blob)))
    if not code:
        raise BadInput(f"{name}: no executable code found")
    lowest = min(a for a, _ in chunks)
    highest = max(a + len(b) for a, b in chunks)
    if lowest < L.SCRATCH + 0x10000:
        raise BadInput(f"{name}: loads at {lowest:#x}, inside the selfcheck tables (below 1 MiB is theirs)")
    if highest > 0xC0000000:
        raise BadInput(f"{name}: loads at physical {highest:#x}, beyond guest RAM")
    k = Kernel(name, chunks, code, ram_size=max(2 * MiB, (highest + MiB) & ~(MiB - 1)))
    k.starts = _sweep(k)
    return k


def _sweep(k: Kernel) -> list[int]:
    """Instruction boundaries by linear sweep (resynchronising after bad bytes)."""
    out = []
    for lo, hi in k.code:
        blob = k.read(lo, hi - lo)
        off = 0
        while off < len(blob):
            n = 0
            for addr, size, _, _ in _md.disasm_lite(blob[off:], lo + off):
                out.append(addr)
                n += size
            off += max(n, 1)
    return out


@lru_cache(maxsize=None)
def bundled_kernels() -> tuple[Kernel, ...]:
    """The project's guest kernels (bt_vmm/guests)."""
    from bt_vmm.guests.registry import GUESTS, guest_path
    out = []
    for name in GUESTS:
        path = guest_path(name)
        if path.exists():
            out.append(load_kernel(name, path.read_bytes()))
    return tuple(out)


def _usable(k: Kernel, pc: int) -> tuple[object, bool]:
    """The TU at pc, and whether a case can run it deterministically."""
    tu = decode_tu(pc, lambda addr, n: k.read(addr, n))
    mnems = {i.mnemonic for i in tu.insns}
    if "hlt" in mnems and mnems & {"sti", "popfd", "popf", "iretd", "iret"}:
        return tu, False
    if any(i.kind is Kind.UNDEFINED and i.cs is None for i in tu.insns[:-1]):
        return tu, False
    if any(i.mnemonic.startswith(("rep ins", "rep outs")) for i in tu.insns):
        # the emulator resumes a long rep ins/outs at itself (a new TU each
        # chunk), which ends a one-TU run early; generated cases cover these
        return tu, False
    return tu, True


def kernel_case(d: Draw, k: Kernel) -> Case:
    """One TU of kernel `k` from a state drawn with `d`."""
    for _ in range(20):
        pc = k.starts[d.int(0, len(k.starts) - 1)]
        tu, ok = _usable(k, pc)
        if ok:
            break
    rng = random.Random(d.u32())

    def reg() -> int:
        r = rng.random()
        if r < 0.6:
            return L.DATA + 0x400 + (rng.randrange(0, L.DATA_SIZE - 0x800) & ~3)
        if r < 0.75:
            return L.STACK_TOP - (rng.randrange(0, 0x100) & ~3)
        if r < 0.9:
            return rng.randrange(0, 0x100)
        return rng.getrandbits(32)
    gprs = [reg() for _ in range(8)]
    gprs[4] = L.STACK_TOP
    eflags = (rng.getrandbits(12) & 0xCD5) | 0x2 | (0x1000 * rng.randrange(4) if rng.random() < 0.2 else 0)
    init = Init(tuple(gprs), eflags, None, 0x600, 0x37F, 0x1F80, L.SEL_DATA, L.SEL_DATA,
                data_seed=rng.randrange(1, 1 << 32))
    code = k.read(tu.pc, tu.end - tu.pc)
    return Case(f"kernel:{k.name}", code, tu.pc, init, "budget",
                tu_insns=len(tu.insns), ram_size=k.ram_size, extra=k.chunks, pointers=True,
                label=f"{k.name} TU at {tu.pc:#x}, {len(tu.insns)} instructions, ends: {tu.end_reason}")
