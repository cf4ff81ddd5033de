"""The guest memory both sides of a differential case start from.

Everything lives in the first 1 MiB of guest-physical memory (paging is off,
so linear = physical on both sides):

    0x01000  GDT A            0x01800  GDT B (a copy: lgdt switches between them)
    0x02000  IDT A            0x02800  IDT B (a copy: lidt switches between them)
    0x03000  constants: pseudo-descriptors, far pointers, bounds, selectors
    0x04000  TSS              0x04100  LDT
    0x05000  fault handlers: one `hlt` per vector, at HANDLERS + vector
    0x06000  page directory   0x07000  page table for the first 4 MiB (paging cases)
    0x10000  the case's code (any offset in the first page; up to 8 KiB)
    0x20000  data area (8 KiB), initial contents drawn per case
    0x30000  stack page, ESP starts at STACK_TOP
    0x40000  scratch area for segment-relative accesses (data base 0x20000)
    0x50000  the paging window: 8 pages whose PTEs vary (identity, absent,
             read-only, remapped; each frame has a `ret` at WINDOW_RET)

Every IDT gate is a 32-bit interrupt gate to HANDLERS + vector on selector
0x08, so the BT side ends a faulting case in the handler's `hlt` (IF is clear
after an interrupt gate) with the exception frame on the stack; the reference
side records the fault from unicorn's INTR hook instead.
"""

from __future__ import annotations

import random
import struct

from bt_vmm.vcpu.descriptors import Descriptor

RAM_SIZE = 1 << 20

GDT_A = 0x1000
GDT_B = 0x1800
IDT_A = 0x2000
IDT_B = 0x2800
CONST = 0x3000
TSS = 0x4000
LDT = 0x4100
HANDLERS = 0x5000
PD = 0x6000
PT = 0x7000
CODE_PAGE = 0x10000
CODE_MAX = 0x2000
DATA = 0x20000
DATA_SIZE = 0x2000
STACK = 0x30000
STACK_TOP = 0x30800
SCRATCH = 0x40000
WINDOW = 0x50000
WINDOW_PAGES = 8
WINDOW_RET = 0x800          # offset of the `ret` in every window frame (clear of page-crossing stores)
P, RW, US, A, D = 0x1, 0x2, 0x4, 0x20, 0x40

# Constants area: fixed slots the generator addresses directly.
GDTR_A = CONST + 0x00        # lgdt operands (limit, base)
GDTR_B = CONST + 0x08
IDTR_A = CONST + 0x10
IDTR_B = CONST + 0x18
ZERO = CONST + 0x20          # a dword (and qword) of zeros: div [ZERO] -> #DE
BOUNDS_NEVER = CONST + 0x30  # bound with lower 1, upper 0: always #BR
BOUNDS_WIDE = CONST + 0x38   # bound 0x80000000 .. 0x7fffffff: never faults
FARPTR = CONST + 0x40        # far pointers the generator fills in (16 x 8 bytes)
SELSLOT = CONST + 0xC0       # 16-bit selector slots (16 x 2 bytes)
CONST_END = CONST + 0x100

# Selectors of the test GDT (index << 3). A = the accessed bit is preset.
SEL_CODE = 0x08          # flat code, DPL0, 32-bit, A
SEL_DATA = 0x10          # flat data, DPL0, A
SEL_CODE2 = 0x18         # flat code alias, A
SEL_DBASE = 0x20         # data, base DATA, limit 0xffff, not accessed
SEL_DATA2 = 0x28         # flat data alias, not accessed
SEL_RODATA = 0x30        # flat read-only data
SEL_NPDATA = 0x38        # data, not present
SEL_DATA3 = 0x40         # flat data, DPL3
SEL_XCODE = 0x48         # execute-only code, A
SEL_RCODE = 0x50         # readable code, DPL0, not accessed (loadable into DS..GS)
SEL_CONF = 0x58          # conforming readable code, DPL0, A
SEL_CODE3 = 0x60         # code, DPL3, A
SEL_CODE16 = 0x68        # 16-bit code, A (not a far-transfer target: see exclusions)
SEL_TSS = 0x70           # 32-bit TSS, available
SEL_LDT = 0x78           # LDT
SEL_DATA16 = 0x80        # 16-bit flat data (B=0)
SEL_CBASE = 0x88         # readable code with base 0x1000, A
SEL_CGATE = 0x90         # a call gate (lar/lsl/verr only)
SEL_EXPDOWN = 0x98       # expand-down data
SEL_SMALL = 0xA0         # data, base 0, byte-granular limit 0xfff
SEL_RESERVED = 0xA8      # system descriptor of a reserved type
SEL_BUSYTSS = 0xB0       # 32-bit TSS, busy
SEL_NPCODE = 0xB8        # code, not present
GDT_ENTRIES = 24
GDT_LIMIT = GDT_ENTRIES * 8 - 1

# LDT: a flat code and a flat data descriptor (selectors 0x04 and 0x0c).
LDT_ENTRIES = 2
LDT_LIMIT = LDT_ENTRIES * 8 - 1


def _desc(base: int, limit: int, access: int, flags: int = 0xC) -> bytes:
    return Descriptor(base, limit, access, flags).pack()


def _gate(selector: int, offset: int, type_: int, dpl: int = 0, present: bool = True) -> bytes:
    lo = (offset & 0xFFFF) | (selector << 16)
    hi = (offset & 0xFFFF0000) | (present << 15) | (dpl << 13) | (type_ << 8)
    return struct.pack("<II", lo, hi)


def gdt_bytes() -> bytes:
    ents = {
        SEL_CODE: _desc(0, 0xFFFFFFFF, 0x9B),
        SEL_DATA: _desc(0, 0xFFFFFFFF, 0x93),
        SEL_CODE2: _desc(0, 0xFFFFFFFF, 0x9B),
        SEL_DBASE: _desc(DATA, 0xFFFF, 0x92, 0x4),
        SEL_DATA2: _desc(0, 0xFFFFFFFF, 0x92),
        SEL_RODATA: _desc(0, 0xFFFFFFFF, 0x90),
        SEL_NPDATA: _desc(0, 0xFFFFFFFF, 0x12),
        SEL_DATA3: _desc(0, 0xFFFFFFFF, 0xF2),
        SEL_XCODE: _desc(0, 0xFFFFFFFF, 0x99),
        SEL_RCODE: _desc(0, 0xFFFFFFFF, 0x9A),
        SEL_CONF: _desc(0, 0xFFFFFFFF, 0x9F),
        SEL_CODE3: _desc(0, 0xFFFFFFFF, 0xFB),
        SEL_CODE16: _desc(0, 0xFFFF, 0x9B, 0x0),
        SEL_TSS: _desc(TSS, 0x67, 0x89, 0x0),
        SEL_LDT: _desc(LDT, LDT_LIMIT, 0x82, 0x0),
        SEL_DATA16: _desc(0, 0xFFFFF, 0x92, 0x0),
        SEL_CBASE: _desc(0x1000, 0xFFFFF, 0x9B, 0x4),
        SEL_CGATE: _gate(SEL_CODE, HANDLERS, 0xC),
        SEL_EXPDOWN: _desc(0, 0xFFFF, 0x96, 0x4),
        SEL_SMALL: _desc(0, 0xFFF, 0x92, 0x4),
        SEL_RESERVED: _desc(0, 0xFFF, 0x80, 0x0),
        SEL_BUSYTSS: _desc(TSS, 0x67, 0x8B, 0x0),
        SEL_NPCODE: _desc(0, 0xFFFFFFFF, 0x1B),
    }
    out = bytearray(8 * GDT_ENTRIES)
    for sel, raw in ents.items():
        out[sel:sel + 8] = raw
    return bytes(out)


def ldt_bytes() -> bytes:
    return _desc(0, 0xFFFFFFFF, 0x9B) + _desc(0, 0xFFFFFFFF, 0x92)


def idt_bytes() -> bytes:
    return b"".join(_gate(SEL_CODE, HANDLERS + v, 0xE) for v in range(256))


def const_bytes() -> bytes:
    out = bytearray(CONST_END - CONST)

    def put(addr: int, fmt: str, *vals: int) -> None:
        struct.pack_into(fmt, out, addr - CONST, *vals)

    put(GDTR_A, "<HI", GDT_LIMIT, GDT_A)
    put(GDTR_B, "<HI", GDT_LIMIT, GDT_B)
    put(IDTR_A, "<HI", 256 * 8 - 1, IDT_A)
    put(IDTR_B, "<HI", 256 * 8 - 1, IDT_B)
    put(BOUNDS_NEVER, "<ii", 1, 0)
    put(BOUNDS_WIDE, "<ii", -0x80000000, 0x7FFFFFFF)
    return bytes(out)


def pointerish(rng: random.Random) -> int:
    """A value that is often a usable address: real code dereferences registers."""
    r = rng.random()
    if r < 0.55:
        return DATA + 0x400 + (rng.randrange(0, DATA_SIZE - 0x800) & ~3)
    if r < 0.7:
        return STACK_TOP - rng.randrange(0, 0x400) & ~3
    if r < 0.85:
        return rng.randrange(0, 0x100)
    return rng.getrandbits(32)


def data_bytes(seed: int, pointers: bool = False) -> bytes:
    """Initial contents of the data area: zeros for seed 0 (what a shrinker
    reaches), otherwise random bytes, or dwords that mostly point back into
    the data area (for real code, which follows pointers)."""
    if seed == 0:
        return bytes(DATA_SIZE)
    rng = random.Random(seed)
    if pointers:
        return struct.pack(f"<{DATA_SIZE // 4}I", *(pointerish(rng) for _ in range(DATA_SIZE // 4)))
    return rng.randbytes(DATA_SIZE)


def window_pte(rng: random.Random) -> int:
    """A PTE for a window page: its own frame or another of the window, with
    random present/writable/user/accessed/dirty bits."""
    # (window frames only: cases call the `ret` at their start, and random data
    # would run as code -- where unicorn accepts encodings the CPU rejects)
    frame = None if rng.random() < 0.7 else WINDOW + 0x1000 * rng.randrange(WINDOW_PAGES)
    flags = (P if rng.random() < 0.75 else 0) | (RW if rng.random() < 0.7 else 0) \
        | (US if rng.random() < 0.3 else 0) | (A if rng.random() < 0.5 else 0) | (D if rng.random() < 0.5 else 0)
    return (frame if frame is not None else -1, flags)


def page_tables(seed: int) -> tuple[bytes, bytes]:
    """Page directory and table: RAM identity-mapped (accessed and dirty set, so
    that only the window's accesses change them), the window's PTEs drawn from
    `seed`."""
    rng = random.Random(seed ^ 0x9A9E)
    pd = [0] * 1024
    pd[0] = PT | P | RW | (A if rng.random() < 0.5 else 0)
    pt = [0] * 1024
    for i in range(RAM_SIZE >> 12):
        pt[i] = (i << 12) | P | RW | A | D
    for k in range(WINDOW_PAGES):
        frame, flags = window_pte(rng)
        addr = WINDOW + 0x1000 * k
        pt[addr >> 12] = (addr if frame < 0 else frame) | flags
    return struct.pack("<1024I", *pd), struct.pack("<1024I", *pt)


def ram_image(code_addr: int, code: bytes, data_seed: int, pointers: bool = False,
              extra: list[tuple[int, bytes]] = ()) -> bytearray:
    """The whole initial RAM of a case (identical on both sides)."""
    ram = bytearray(RAM_SIZE)
    gdt = gdt_bytes()
    idt = idt_bytes()
    ram[GDT_A:GDT_A + len(gdt)] = gdt
    ram[GDT_B:GDT_B + len(gdt)] = gdt
    ram[IDT_A:IDT_A + len(idt)] = idt
    ram[IDT_B:IDT_B + len(idt)] = idt
    ram[CONST:CONST_END] = const_bytes()
    ram[LDT:LDT + 8 * LDT_ENTRIES] = ldt_bytes()
    ram[HANDLERS:HANDLERS + 256] = b"\xf4" * 256
    ram[DATA:DATA + DATA_SIZE] = data_bytes(data_seed, pointers)
    pd, pt = page_tables(data_seed)
    ram[PD:PD + 0x1000] = pd
    ram[PT:PT + 0x1000] = pt
    for k in range(WINDOW_PAGES):
        ram[WINDOW + 0x1000 * k + WINDOW_RET] = 0xC3          # ret
    if pointers and data_seed:
        rng = random.Random(data_seed ^ 0x5A5A)
        ram[STACK:STACK + 0x1000] = struct.pack("<1024I", *(pointerish(rng) for _ in range(1024)))
    for addr, blob in extra:
        ram[addr:addr + len(blob)] = blob
    ram[code_addr:code_addr + len(code)] = code
    return ram


# Regions whose contents are compared (the rest of RAM is never written by a case).
COMPARED = ((0, RAM_SIZE),)
