"""Random instruction sequences for differential cases.

A case is a list of *items*; an item is one instruction or a short idiom
(an operand set-up followed by the instruction under test, a bounded loop, a
subroutine with its call, a far transfer with its target). Each item is a
kind and a seed: the kind picks the generator below, the seed its details, so
the shrinker (or hypothesis) can drop items and simplify seeds independently.

Generated code always terminates: branches only go forward, loops run a few
times on a counter their body never writes, subroutine bodies keep the stack
balanced, and memory operands are confined to the data area, the stack page
and the constant tables (see layout.py). Every exclusion -- something the
generator deliberately never produces -- is listed in EXCLUSIONS with the
reason; nothing is left out because bt_vmm got it wrong.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Callable

from keystone import KS_ARCH_X86, KS_MODE_32, Ks, KsError

from bt_vmm.selfcheck import layout as L
from bt_vmm.selfcheck.case import PROFILES, Case, CaseSpec, Init, ItemSpec
from bt_vmm.selfcheck.draw import Draw

END_MARKER = bytes([0xE6, 0xF4])     # out 0xf4, al: the debug-exit port ends the BT run here
# ud2 after it (never reached) ends the last TU there, so that the decoder does
# not go on through the zeros behind the code
TAIL = END_MARKER + bytes([0x0F, 0x0B])

# What the generator never produces, and why (README and benchmarks/selfcheck.md
# carry the same list).
EXCLUSIONS = {
    "EFLAGS.TF set by popf/iret": "single-step traps are not virtualized yet (README, Current scope)",
    "EFLAGS.NT set before iret": "iret with NT is a hardware task return; task switching is not virtualized",
    "DR7 breakpoint enables (L0-3/G0-3) and GD": "debug exceptions (#DB) are not virtualized yet",
    "int1 / icebp (F1)": "unicorn 2.1.4 raises #UD for it instead of a #DB trap: the reference is wrong",
    "syscall, sysenter, sysexit": "unicorn 2.1.4 does not emulate them (issue #1048): no reference",
    "rdpmc": "unicorn 2.1.4 raises #UD (unimplemented): no reference",
    "int 6": "unicorn 2.1.4 reports a software interrupt to vector 6 as an invalid opcode at the int "
             "itself (no reference); int n is generated for every other vector",
    "ltr with a null selector": "unicorn loads it without a fault; the SDM (and bt_vmm) raise #GP(0)",
    "rdmsr/wrmsr outside the virtual CPU's MSRs": "unicorn reads unknown MSRs as 0 without #GP: no reference",
    "bits 31:16 of IA32_SYSENTER_CS": "unicorn keeps only the selector (bits 15:0); the SDM (and bt_vmm) "
                                       "keep bits 31:0 readable and writable",
    "rdtsc results, rdmsr of the TSC": "time-dependent; rdtsc is generated but its result is overwritten",
    "hlt with IF=1": "waits for an interrupt, and the harness has no interrupt source",
    "CR0.PE=0": "real mode is not virtualized (README, Current scope)",
    "guest paging with CR0.WP=0": "not virtualized (bt_vmm stops with 'unsupported')",
    "CR0.PG toggled by generated code; PAE": "paging cases start with paging on (category paging); "
                                              "PAE is not in the virtual CPU",
    "a PTE change used before invlpg or a CR3 reload": "the TLB may still hold the old entry: either "
                                                       "mapping is architecturally right",
    "code descriptors without the accessed bit": "unicorn does not set it on CS loads (hardware and bt_vmm do)",
    "far transfers to another privilege level, call/task gates, 16-bit code segments":
        "not virtualized yet (README, Current scope); retf/iret to an outer ring are generated "
        "only with selectors that fault",
    "VIF/VIP in iret EFLAGS images": "unicorn leaves them unchanged at CPL0, the SDM (and bt_vmm) load them",
    "data-segment loads from an LDT": "not virtualized yet (README, Current scope)",
    "16-bit stack segments (SS.B=0)": "the monitor assumes a 32-bit stack; 32-bit kernels never use one",
    "16-bit near branches (0x66 jmp/call/ret)": "not translated; never used by 32-bit kernels",
    "ports 0xf4-0xf7, 0x600-0x60b in generated I/O": "debug-exit and ACPI power-off end the run (0xf4 marks the case end)",
    "stores into the executing TU's own later bytes": "bt_vmm documents 486-style prefetch semantics there; "
                                                       "unicorn applies such stores at once",
    "AVX, XSAVE": "not in the virtual CPU (CPUID)",
    "cmpxchg8b right after a flag-setting instruction in the same unicorn block":
        "unicorn 2.1.4 computes the flags cmpxchg8b must preserve from stale lazy-flag state "
        "(no cc_op sync before its helper); the generator puts a jmp before it so the "
        "reference starts a block there (bt_vmm's translator does the same, see translate.py)",
    "loopz/loopnz right after a flag-setting instruction in the same unicorn block":
        "when ECX reaches 0 unicorn 2.1.4 ends the block without syncing its lazy-flag state, "
        "so later flag reads are garbage; the generator puts a jmp before them (bt_vmm's "
        "translator does the same, see translate.py)",
    "setcc/rcl/rcr with a memory operand that faults": "unicorn's state after such a fault has lost the "
        "lazy flags' operands, so the reference's EFLAGS are wrong; the generator aims them at mapped "
        "memory (bt_vmm syncs the flags first, see translate.py)",
    "code bytes that are not code": "unicorn executes encodings the CPU rejects (e.g. 8F /1); generated "
                                    "programs never run data, window pages only run their `ret`",
    "CR4.VME/PVI/PAE": "not reported by the virtual CPU (CPUID); bt_vmm stops with 'unsupported'",
}

R32 = ("eax", "ecx", "edx", "ebx", "ebp", "esi", "edi")
R16 = ("ax", "cx", "dx", "bx", "bp", "si", "di")
R8 = ("al", "cl", "dl", "bl", "ah", "ch", "dh", "bh")
_R16_OF = dict(zip(R32, R16))
_R8_OF = {"eax": ("al", "ah"), "ecx": ("cl", "ch"), "edx": ("dl", "dh"), "ebx": ("bl", "bh")}
CC = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g")
SEGS = ("es", "cs", "ss", "ds", "fs", "gs")
SEG_PREFIX = {"es": 0x26, "cs": 0x2E, "ss": 0x36, "ds": 0x3E, "fs": 0x64, "gs": 0x65}
ERR_VECTORS = {8, 10, 11, 12, 13, 14, 17}

# Selectors a data-segment load may name: good ones (base 0 or the data area,
# so every access stays in RAM) and ones that fault.
DATA_SELS_OK = (L.SEL_DATA, L.SEL_DATA2, L.SEL_DBASE, L.SEL_DATA3, L.SEL_RCODE, L.SEL_CONF,
                L.SEL_EXPDOWN, L.SEL_SMALL, L.SEL_DATA16, L.SEL_DATA | 1, L.SEL_DATA3 | 3, 0, 3)
DATA_SELS_BAD = (L.SEL_NPDATA, L.SEL_XCODE, L.SEL_TSS, L.SEL_LDT, L.SEL_CGATE, 0x1F8, L.SEL_DATA | 2,
                 L.SEL_RCODE | 3, L.SEL_RESERVED, L.SEL_NPCODE, L.SEL_CBASE)
SS_SELS_OK = (L.SEL_DATA, L.SEL_DATA2)
SS_SELS_BAD = (0, L.SEL_RODATA, L.SEL_NPDATA, L.SEL_DATA3, L.SEL_CODE, L.SEL_DATA | 1, 0x1F8,
               L.SEL_DATA3 | 3, L.SEL_TSS)
CODE_SELS_OK = (L.SEL_CODE, L.SEL_CODE2, L.SEL_CONF, L.SEL_CONF | 2)
CODE_SELS_BAD = (0, L.SEL_DATA, L.SEL_NPDATA, L.SEL_CODE3, L.SEL_NPCODE, 0x1F8, L.SEL_CODE | 3,
                 L.SEL_XCODE | 1, 0x04)
ANY_SELS = tuple(range(0, 8 * L.GDT_ENTRIES + 16, 8)) + (0x04, 0x0C, 0x0F, 0x13, 0x43, 0x1F8, 0xFFFF)


def b(*vals: int) -> str:
    return ".byte " + ", ".join(f"{v & 0xFF:#04x}" for v in vals)


def push_label(lab: str) -> list[str]:
    """push imm32 of a label (keystone encodes `push label` as a 16-bit push)."""
    return [b(0x68), f".long {lab}"]


def le32(v: int) -> list[int]:
    return [(v >> s) & 0xFF for s in (0, 8, 16, 24)]


# --- the context an item is realized in ------------------------------------------
class Program:
    def __init__(self) -> None:
        self.n = 0

    def label(self) -> str:
        self.n += 1
        return f"L{self.n}"


class Ctx:
    """What an item may do where it is: registers it may write, whether the
    stack must balance (subroutine bodies), how deep it is nested."""

    def __init__(self, prog: Program, rng: random.Random, regs: tuple[str, ...] = R32,
                 balanced: bool = False, depth: int = 0, simple: bool = False) -> None:
        self.prog = prog
        self.rng = rng
        self.regs = regs
        self.balanced = balanced
        self.depth = depth
        self.simple = simple            # single-instruction items only (fault cases)
        self._fwd: Callable[[], str] | None = None

    # registers
    def r32(self) -> str:
        return self.rng.choice(self.regs)

    def r32src(self) -> str:
        return self.rng.choice(self.regs + ("esp",))

    def r16(self) -> str:
        return _R16_OF[self.r32()]

    def r8(self) -> str:
        regs = [r for r in self.regs if r in _R8_OF]
        return self.rng.choice(_R8_OF[self.rng.choice(regs)])

    def reg(self, size: int) -> str:
        return {1: self.r8, 2: self.r16, 4: self.r32}[size]()

    def free(self, reg: str) -> bool:
        return reg in self.regs

    # immediates
    def imm(self, bits: int = 32) -> int:
        r = self.rng.random()
        mask = (1 << bits) - 1
        if r < 0.15:
            return self.rng.choice((0, 1, mask, mask >> 1, 1 << (bits - 1), 2, 0x80, 0xFF & mask))
        if r < 0.45:
            return self.rng.randrange(0, 0x100) & mask
        return self.rng.getrandbits(bits)

    # memory operands
    def mem(self, kw: str, align: int = 1, simple: bool | None = None,
            span: int = 16) -> tuple[list[str], str]:
        """A memory operand of size keyword `kw` inside the data area (or the
        stack page), with the instructions that set its registers up."""
        rng = self.rng
        simple = self.simple if simple is None else simple
        seg = ""
        if rng.random() < 0.12:
            seg = rng.choice(("ds", "es", "ss", "fs", "gs", "cs")) + ":"
        form = 0 if simple else rng.randrange(0, 5)
        limit = L.DATA_SIZE - span - 0x10
        if form <= 1:
            off = rng.randrange(0, limit)
            if align > 1 or rng.random() < 0.6:
                off &= ~(max(align, 4) - 1)
            return [], f"{kw} ptr {seg}[{L.DATA + off:#x}]"
        if form == 2 and not self.balanced:
            disp = rng.randrange(0, 0x40) & ~(align - 1 if align > 1 else 0)
            return [], f"{kw} ptr {seg}[esp + {disp:#x}]"
        base = self.r32()
        mask = 0xFF0 if align >= 16 else 0xFFC if align >= 4 or rng.random() < 0.7 else 0xFFF
        pre = [f"and {base}, {mask:#x}"]
        if form == 4 and len(self.regs) > 1:
            index = self.rng.choice([r for r in self.regs if r != base])
            scale = rng.choice((1, 2, 4, 8))
            imask = (0x3F0 if align >= 16 else 0x3FC) // scale * scale // scale
            imask &= ~((align // scale) - 1) if align > scale else ~0
            pre.append(f"and {index}, {imask & 0x3FF:#x}")
            return pre, f"{kw} ptr {seg}[{base} + {index}*{scale} + {L.DATA:#x}]"
        disp = rng.randrange(0, 0x100) & ~(align - 1 if align > 1 else 0)
        return pre, f"{kw} ptr {seg}[{base} + {L.DATA + disp:#x}]"

    # structure
    def fwd(self) -> str:
        """A label somewhere later at this nesting level (or at its end)."""
        assert self._fwd is not None
        return self._fwd()

    def body(self, kinds: tuple[str, ...], lo: int, hi: int, **kw) -> list[str]:
        """A nested sequence of items (a loop or subroutine body)."""
        n = self.rng.randint(lo, hi)
        specs = [ItemSpec(self.rng.choice(kinds), self.rng.getrandbits(32)) for _ in range(n)]
        sub = Ctx(self.prog, self.rng, kw.pop("regs", self.regs), kw.pop("balanced", self.balanced),
                  self.depth + 1, self.simple)
        return realize_level(specs, sub)


def realize_level(specs: list[ItemSpec] | tuple[ItemSpec, ...], ctx: Ctx) -> list[str]:
    labels_at: dict[int, list[str]] = defaultdict(list)
    per_item = []
    n = len(specs)
    for i, spec in enumerate(specs):
        rng = random.Random(spec.seed * 131 + _KIND_SALT.get(spec.kind, 0))
        ictx = Ctx(ctx.prog, rng, ctx.regs, ctx.balanced, ctx.depth, ctx.simple)

        def fwd(i=i, rng=rng) -> str:
            lab = ctx.prog.label()
            labels_at[rng.randint(i + 1, n)].append(lab)
            return lab
        ictx._fwd = fwd
        per_item.append(KINDS[spec.kind](ictx))
    out: list[str] = []
    for i, lines in enumerate(per_item):
        out += [f"{lab}:" for lab in labels_at.get(i, ())]
        out += lines
    out += [f"{lab}:" for lab in labels_at.get(n, ())]
    return out


# --- integer ------------------------------------------------------------------------
_SIZES = ((4, "dword"), (2, "word"), (1, "byte"))


def _size(c: Ctx) -> tuple[int, str]:
    return c.rng.choice(_SIZES + ((4, "dword"),) * 2)


def k_alu(c: Ctx) -> list[str]:
    op = c.rng.choice(("add", "adc", "sub", "sbb", "and", "or", "xor", "cmp", "test"))
    size, kw = _size(c)
    form = c.rng.randrange(5)
    if form == 0:
        return [f"{op} {c.reg(size)}, {c.reg(size) if size != 4 else c.r32src()}"]
    if form == 1:
        return [f"{op} {c.reg(size)}, {c.imm(8 * size):#x}"]
    pre, m = c.mem(kw)
    if form == 2 and op != "test":
        return pre + [f"{op} {c.reg(size)}, {m}"]
    if form == 3:
        lock = "lock " if op not in ("cmp", "test") and c.rng.random() < 0.3 else ""
        return pre + [f"{lock}{op} {m}, {c.reg(size)}"]
    return pre + [f"{op} {m}, {c.imm(8 * size):#x}"]


def k_unop(c: Ctx) -> list[str]:
    op = c.rng.choice(("inc", "dec", "neg", "not"))
    size, kw = _size(c)
    if c.rng.random() < 0.5:
        return [f"{op} {c.reg(size)}"]
    pre, m = c.mem(kw)
    return pre + [f"{op} {m}"]


def k_shift(c: Ctx) -> list[str]:
    op = c.rng.choice(("rol", "ror", "rcl", "rcr", "shl", "shr", "sar"))
    size, kw = _size(c)
    count = c.rng.choice(("1", "cl", str(c.rng.randrange(0, 40))))
    if count == "cl" and not c.free("ecx") and c.rng.random() < 0.5:
        count = "1"
    if c.rng.random() < 0.6:
        return [f"{op} {c.reg(size)}, {count}"]
    pre, m = c.mem(kw)
    return pre + [f"{op} {m}, {count}"]


def k_shiftd(c: Ctx) -> list[str]:
    op = c.rng.choice(("shld", "shrd"))
    size = c.rng.choice((4, 2))
    count = c.rng.choice(("cl", str(c.rng.randrange(0, 34))))
    src = c.reg(size)
    if c.rng.random() < 0.6:
        return [f"{op} {c.reg(size)}, {src}, {count}"]
    pre, m = c.mem("dword" if size == 4 else "word")
    return pre + [f"{op} {m}, {src}, {count}"]


def k_muldiv(c: Ctx) -> list[str]:
    size, kw = _size(c)
    form = c.rng.randrange(6)
    if form == 0:
        op = c.rng.choice(("mul", "imul"))
        return [f"{op} {c.reg(size)}"]
    if form == 1 and size != 1:
        return [f"imul {c.reg(size)}, {c.reg(size)}"]
    if form == 2 and size != 1:
        return [f"imul {c.reg(size)}, {c.reg(size)}, {c.imm(8 * size if size == 2 else 32):#x}"]
    if form in (3, 4) and c.free("edx") and c.free("eax"):
        op = c.rng.choice(("div", "idiv"))
        # Usually a safe divide (no #DE); sometimes as it comes (#DE is a fault to compare).
        divisor = c.rng.choice([r for r in c.regs if r not in ("eax", "edx")] or ["ebx"])
        dsz = {4: divisor, 2: _R16_OF[divisor], 1: _R8_OF.get(divisor, ("bl",))[0]}[size]
        if not c.free(divisor) or c.rng.random() < 0.25:
            return [f"{op} {dsz}"]
        pre = [f"or {divisor}, 0x80000001" if op == "div" else f"or {divisor}, 1"]
        pre += ["xor edx, edx"] if op == "div" else ["cdq"]
        if size == 1:
            pre = [f"or {dsz}, 0x81", "and eax, 0x7fff"]
        if size == 2:
            pre = [f"or {dsz}, 0x8001", "and eax, 0x7fff", "xor edx, edx"]
        return pre + [f"{op} {dsz}"]
    pre, m = c.mem(kw)
    op = c.rng.choice(("mul", "imul"))
    return pre + [f"{op} {m}"]


def k_mov(c: Ctx) -> list[str]:
    size, kw = _size(c)
    form = c.rng.randrange(5)
    if form == 0:
        return [f"mov {c.reg(size)}, {c.reg(size) if size != 4 else c.r32src()}"]
    if form == 1:
        return [f"mov {c.reg(size)}, {c.imm(8 * size):#x}"]
    pre, m = c.mem(kw)
    if form == 2:
        return pre + [f"mov {c.reg(size)}, {m}"]
    if form == 3:
        return pre + [f"mov {m}, {c.reg(size) if size != 4 else c.r32src()}"]
    return pre + [f"mov {m}, {c.imm(8 * size):#x}"]


def k_movx(c: Ctx) -> list[str]:
    op = c.rng.choice(("movzx", "movsx"))
    dst = c.rng.choice((c.r32(), c.r16()))
    src_size = 1 if dst in R16 else c.rng.choice((1, 2))
    if c.rng.random() < 0.5:
        return [f"{op} {dst}, {c.reg(src_size)}"]
    pre, m = c.mem("byte" if src_size == 1 else "word")
    return pre + [f"{op} {dst}, {m}"]


def k_lea(c: Ctx) -> list[str]:
    base, index = c.r32src(), c.r32()
    scale = c.rng.choice((1, 2, 4, 8))
    disp = c.imm()
    dst = c.r32() if c.rng.random() < 0.8 else c.r16()
    return [f"lea {dst}, [{base} + {index}*{scale} + {disp:#x}]"]


def k_xchg(c: Ctx) -> list[str]:
    size, kw = _size(c)
    op = c.rng.choice(("xchg", "xadd", "cmpxchg"))
    if c.rng.random() < 0.5 or (op == "cmpxchg" and not c.free("eax")):
        if op == "cmpxchg" and not c.free("eax"):
            return [f"xchg {c.reg(size)}, {c.reg(size)}"]
        return [f"{op} {c.reg(size)}, {c.reg(size)}"]
    pre, m = c.mem(kw)
    lock = "lock " if c.rng.random() < 0.4 else ""
    return pre + [f"{lock}{op} {m}, {c.reg(size)}"]


def k_cmpxchg8b(c: Ctx) -> list[str]:
    if not all(c.free(r) for r in ("eax", "edx")):
        return ["nop"]
    pre, m = c.mem("qword")
    # A jmp first: unicorn must start a block at cmpxchg8b to get its flags right (EXCLUSIONS).
    lab = c.prog.label()
    return pre + [f"jmp {lab}", f"{lab}:", ("lock " if c.rng.random() < 0.5 else "") + f"cmpxchg8b {m}"]


def k_bitop(c: Ctx) -> list[str]:
    op = c.rng.choice(("bt", "bts", "btr", "btc"))
    size = c.rng.choice((4, 2))
    if c.rng.random() < 0.4:
        return [f"{op} {c.reg(size)}, {c.reg(size)}"]
    if c.rng.random() < 0.5:
        return [f"{op} {c.reg(size)}, {c.rng.randrange(0, 64)}"]
    pre, m = c.mem("dword" if size == 4 else "word")
    return pre + [f"{op} {m}, {c.rng.randrange(0, 64)}"]


def k_bitscan(c: Ctx) -> list[str]:
    op = c.rng.choice(("bsf", "bsr", "popcnt", "bsf", "bsr"))
    size = c.rng.choice((4, 2))
    if c.rng.random() < 0.6:
        return [f"{op} {c.reg(size)}, {c.reg(size)}"]
    pre, m = c.mem("dword" if size == 4 else "word")
    return pre + [f"{op} {c.reg(size)}, {m}"]


def k_setcc(c: Ctx) -> list[str]:
    cc = c.rng.choice(CC)
    if c.rng.random() < 0.6:
        return [f"set{cc} {c.r8()}"]
    pre, m = c.mem("byte")
    return pre + [f"set{cc} {m}"]


def k_cmov(c: Ctx) -> list[str]:
    cc = c.rng.choice(CC)
    size = c.rng.choice((4, 2))
    if c.rng.random() < 0.6:
        return [f"cmov{cc} {c.reg(size)}, {c.reg(size)}"]
    pre, m = c.mem("dword" if size == 4 else "word")
    return pre + [f"cmov{cc} {c.reg(size)}, {m}"]


def k_conv(c: Ctx) -> list[str]:
    if not (c.free("eax") and c.free("edx")):
        return ["nop"]
    return [c.rng.choice(("cbw", "cwde", "cdq", "cwd"))]


def k_bcd(c: Ctx) -> list[str]:
    if not c.free("eax"):
        return ["nop"]
    op = c.rng.choice(("aaa", "aas", "daa", "das", "aam", "aad"))
    if op in ("aam", "aad"):
        return [b(0xD4 if op == "aam" else 0xD5, c.rng.choice((10, 16, 7, 1, 0xFF)))]
    return [op]


def k_flagop(c: Ctx) -> list[str]:
    op = c.rng.choice(("clc", "stc", "cmc", "cld", "std", "lahf", "sahf", "cld"))
    if op == "lahf" and not c.free("eax"):
        return ["cmc"]
    return [op]


def k_stack(c: Ctx) -> list[str]:
    r = c.rng.random()
    if r < 0.3 or c.balanced:
        # push something, pop it somewhere: balanced
        src = c.rng.choice((c.r32src(), f"{c.imm():#x}"))
        if c.rng.random() < 0.3:
            pre, m = c.mem("dword")
            return pre + [f"push {m}", f"pop {c.r32()}"]
        if c.rng.random() < 0.3:
            pre, m = c.mem("dword")
            return pre + [f"push {src}", f"pop {m}"]
        return [f"push {src}", f"pop {c.r32()}"]
    if r < 0.6:
        return [f"push {c.rng.choice((c.r32src(), f'{c.imm():#x}', f'{c.imm(8):#x}'))}"]
    if r < 0.7:
        return [b(0x66, 0x6A, c.imm(8)), f"pop {c.r16()}"]           # 16-bit push and pop
    return [f"pop {c.r32()}"]


def k_pusha(c: Ctx) -> list[str]:
    if c.regs != R32:
        return ["pushal", "add esp, 32"] if not c.balanced else ["nop"]
    return ["pushal", "popal"]


def k_enter(c: Ctx) -> list[str]:
    if not c.free("ebp"):
        return ["nop"]
    size = c.rng.choice((0, 8, 16, 0x20))
    level = c.rng.choice((0, 0, 1, 2))
    mid = []
    if level >= 2:
        # enter with nesting copies frame pointers from [ebp - 4k]: point EBP at the stack
        mid = ["mov ebp, esp"]
    return mid + [f"enter {size}, {level}", f"mov dword ptr [ebp - 4], {c.imm():#x}", "leave"]


def k_bswap(c: Ctx) -> list[str]:
    return [f"bswap {c.r32()}"]


def k_xlat(c: Ctx) -> list[str]:
    if not (c.free("ebx") and c.free("eax")):
        return ["nop"]
    return [f"mov ebx, {L.DATA + c.rng.randrange(0, 0x1000):#x}", "xlatb"]


def k_nop(c: Ctx) -> list[str]:
    return [c.rng.choice(("nop", b(0x0F, 0x1F, 0x00), b(0x66, 0x90), b(0x0F, 0x1F, 0x44, 0, 0),
                          "pause", "lfence", "mfence", "sfence"))]


def k_misc_mem(c: Ctx) -> list[str]:
    pre, m = c.mem("byte")
    return pre + [c.rng.choice((f"prefetchnta {m}", f"prefetcht0 {m}", f"clflush {m}"))]


# --- strings ----------------------------------------------------------------------------
def k_string(c: Ctx) -> list[str]:
    if not all(c.free(r) for r in ("esi", "edi", "ecx", "eax")):
        return ["nop"]
    rng = c.rng
    op = rng.choice(("movs", "stos", "lods", "cmps", "scas", "movs", "stos"))
    size = rng.choice((1, 2, 4))
    base = {"movs": 0xA4, "cmps": 0xA6, "stos": 0xAA, "lods": 0xAC, "scas": 0xAE}[op]
    opc = [base + (size > 1)]
    if size == 2:
        opc = [0x66] + opc
    down = rng.random() < 0.3
    n = rng.choice((0, 1, 2, 3, 5, 8, 17, 33))
    si = L.DATA + 0x400 + rng.randrange(0, 0x600)
    di = L.DATA + 0xC00 + rng.randrange(0, 0x600)
    if rng.random() < 0.5:
        si &= ~3
        di &= ~3
    pre = [f"mov esi, {si:#x}", f"mov edi, {di:#x}", f"mov ecx, {n}", "std" if down else "cld"]
    if op == "scas" or op == "cmps":
        pre.append(f"mov eax, {rng.choice((0, c.imm()))}")
    rep = rng.choice(([], [0xF3], [0xF2], [0xF3])) if op not in ("lods",) or rng.random() < 0.3 else []
    seg = []
    if op in ("movs", "lods", "cmps") and rng.random() < 0.2:
        seg = [SEG_PREFIX[rng.choice(("es", "ss", "fs", "gs", "cs"))]]
    post = ["cld"] if down and rng.random() < 0.5 else []
    return pre + [b(*(rep + seg + opc))] + post


# --- x87 ----------------------------------------------------------------------------------
_X87_NOARG = ("fld1", "fldz", "fldpi", "fldl2e", "fldln2", "fldlg2", "fldl2t", "fchs", "fabs",
              "fsqrt", "frndint", "fxam", "ftst", "fincstp", "fdecstp", "fnclex", "fwait",
              "fxtract", "fprem", "fprem1", "fscale", "f2xm1", "fyl2x", "fpatan", "fsin", "fcos",
              "fptan", "fsincos", "fyl2xp1", "fnop", "fld1", "fldz")


def k_x87(c: Ctx) -> list[str]:
    rng = c.rng
    r = rng.random()
    i = rng.randrange(1, 8)
    if r < 0.25:
        return [rng.choice(_X87_NOARG)]
    if r < 0.45:
        op = rng.choice(("fadd", "fsub", "fmul", "fdiv", "fsubr", "fdivr"))
        return [rng.choice((f"{op} st(0), st({i})", f"{op} st({i}), st(0)", f"{op}p st({i}), st(0)"))]
    if r < 0.55:
        return [rng.choice((f"fxch st({i})", f"fld st({i})", f"fst st({i})", f"fstp st({i})",
                            f"ffree st({i})", f"fcom st({i})", f"fcomp st({i})", f"fucom st({i})",
                            f"fcomi st(0), st({i})", f"fucomip st(0), st({i})",
                            f"fcmov{rng.choice(('b', 'e', 'be', 'u', 'nb', 'ne', 'nbe', 'nu'))} st(0), st({i})"))]
    if r < 0.8:
        kw = rng.choice(("dword", "qword", "tbyte", "word"))
        pre, m = c.mem(kw)
        if kw == "tbyte":
            return pre + [rng.choice((f"fld {m}", f"fstp {m}", f"fbld {m}", f"fbstp {m}"))]
        if kw == "word":
            return pre + [rng.choice((f"fild {m}", f"fist {m}", f"fistp {m}", f"fiadd {m}", f"fisttp {m}"))]
        op = rng.choice(("fld", "fst", "fstp", "fadd", "fmul", "fcom", "fcomp", "fdiv", "fsub"))
        if kw == "dword" and rng.random() < 0.3:
            op = rng.choice(("fild", "fist", "fistp", "fimul", "fisttp"))
        if kw == "qword" and rng.random() < 0.2:
            op = rng.choice(("fild", "fistp", "fisttp"))
        return pre + [f"{op} {m}"]
    if r < 0.85 and c.free("eax"):
        return ["fnstsw ax"]
    if r < 0.9:
        # a control word: usually exceptions masked, sometimes not
        cw = rng.choice((0x37F, 0x27F, 0x7F, 0x37F | 0xC00, 0x372, 0x360))
        pre, m = c.mem("word", align=2)
        return pre + [f"mov {m}, {cw:#x}", f"fldcw {m}"]
    # the environment and state stores: they reveal the last x87 instruction's address
    pre, m = c.mem("dword", align=16, span=512)
    op = rng.choice(("fnstenv", "fnsave", "fxsave", "fnstcw", "fnstenv", "fxsave", "fstenv"))
    if op == "fnstcw":
        m = m.replace("dword", "word")
    if op == "fnsave":
        return pre + [f"fnsave {m}", rng.choice((f"frstor {m}", "fninit", "fld1"))]
    if op == "fxsave" and rng.random() < 0.3:
        return pre + [f"fxsave {m}", f"fxrstor {m}"]
    return pre + [f"{op} {m}"]


# --- MMX / SSE ------------------------------------------------------------------------------
def k_mmx(c: Ctx) -> list[str]:
    rng = c.rng
    a, bb = rng.randrange(8), rng.randrange(8)
    r = rng.random()
    if r < 0.2:
        return [f"movd mm{a}, {c.r32src()}"]
    if r < 0.3:
        return [f"movd {c.r32()}, mm{a}"]
    if r < 0.5:
        pre, m = c.mem("qword")
        return pre + [rng.choice((f"movq mm{a}, {m}", f"movq {m}, mm{a}", f"paddw mm{a}, {m}"))]
    if r < 0.9:
        op = rng.choice(("paddb", "paddw", "paddd", "psubb", "psubusw", "paddsw", "pand", "por", "pxor",
                         "pandn", "pmullw", "pmulhw", "pmaddwd", "pcmpeqb", "pcmpgtw", "punpcklbw",
                         "punpckhdq", "packsswb", "packuswb", "pavgb", "pminub", "pmaxsw", "psadbw"))
        return [f"{op} mm{a}, mm{bb}"]
    if r < 0.95:
        return [f"{rng.choice(('psllw', 'psrlw', 'psraw', 'pslld', 'psrlq'))} mm{a}, {rng.randrange(0, 70)}"]
    return ["emms"]


def k_sse(c: Ctx) -> list[str]:
    rng = c.rng
    a, bb = rng.randrange(8), rng.randrange(8)
    r = rng.random()
    if r < 0.25:
        op = rng.choice(("addps", "subps", "mulps", "divps", "minps", "maxps", "sqrtps", "andps",
                         "orps", "xorps", "andnps", "rcpps", "rsqrtps", "unpcklps", "unpckhps",
                         "addss", "mulss", "divss", "sqrtss", "cmpltps", "cmpeqss", "movss",
                         "addsd", "mulsd", "divsd", "sqrtsd", "subpd", "maxsd", "addsubps",
                         "haddps", "movshdup", "movsldup", "cvtps2pd", "cvtpd2ps", "cvtdq2ps",
                         "cvttps2dq", "cvtss2sd", "cvtsd2ss", "movaps", "movapd"))
        return [f"{op} xmm{a}, xmm{bb}"]
    if r < 0.45:
        op = rng.choice(("paddd", "paddq", "psubb", "psubq", "pmuludq", "pmullw", "pand", "por",
                         "pxor", "pcmpeqd", "pcmpgtb", "punpcklqdq", "punpckhbw", "packssdw",
                         "pavgw", "psadbw", "pmaxub", "pminsw", "movdqa"))
        return [f"{op} xmm{a}, xmm{bb}"]
    if r < 0.55:
        op = rng.choice(("pshufd", "pshuflw", "pshufhw", "shufps", "shufpd"))
        return [f"{op} xmm{a}, xmm{bb}, {rng.randrange(256):#x}"]
    if r < 0.62:
        return [f"{rng.choice(('psrldq', 'pslldq', 'psllq', 'psrad', 'psrlw'))} xmm{a}, {rng.randrange(0, 20)}"]
    if r < 0.7:
        dst = c.r32()
        return [rng.choice((f"movd xmm{a}, {c.r32src()}", f"movd {dst}, xmm{a}", f"pmovmskb {dst}, xmm{a}",
                            f"movmskps {dst}, xmm{a}", f"cvttss2si {dst}, xmm{a}", f"cvtsi2ss xmm{a}, {c.r32src()}",
                            f"cvtsd2si {dst}, xmm{a}", f"pextrw {dst}, xmm{a}, {rng.randrange(8)}",
                            f"pinsrw xmm{a}, {c.r32src()}, {rng.randrange(8)}"))]
    if r < 0.78:
        return [rng.choice((f"ucomiss xmm{a}, xmm{bb}", f"comiss xmm{a}, xmm{bb}",
                            f"ucomisd xmm{a}, xmm{bb}", f"comisd xmm{a}, xmm{bb}"))]
    if r < 0.92:
        aligned = rng.random() < 0.85
        pre, m = c.mem("xmmword", align=16 if aligned else 1)
        op = rng.choice(("movaps", "movups", "movdqa", "movdqu", "addps", "paddd", "lddqu", "movapd")
                        if aligned else ("movups", "movdqu", "lddqu", "movaps"))
        if rng.random() < 0.3 and op in ("movaps", "movups", "movdqa", "movdqu", "movapd"):
            return pre + [f"{op} {m}, xmm{a}"]
        return pre + [f"{op} xmm{a}, {m}"]
    if r < 0.96:
        pre, m = c.mem("qword")
        return pre + [rng.choice((f"movq xmm{a}, {m}", f"movq {m}, xmm{a}", f"movsd xmm{a}, {m}",
                                  f"movlps xmm{a}, {m}", f"movhps {m}, xmm{a}"))]
    # MXCSR: sometimes with exceptions unmasked (#XM), or reserved bits set (#GP)
    value = rng.choice((0x1F80, 0x1F80, 0x0000, 0x1D80, 0x7F80, 0x9F80, 0x1FBF, 0x11F80))
    pre, m = c.mem("dword", align=4)
    return pre + [f"mov {m}, {value:#x}", f"ldmxcsr {m}", f"stmxcsr {m}"]


# --- control flow ---------------------------------------------------------------------------
def k_jcc(c: Ctx) -> list[str]:
    cc = c.rng.choice(CC)
    lab = c.fwd()
    if c.rng.random() < 0.5:
        return [f"j{cc} {lab}"]
    op = CC.index(cc)
    return [b(0x0F, 0x80 | op), f".long {lab} - . - 4"]    # force the rel32 form


def k_jmp(c: Ctx) -> list[str]:
    lab = c.fwd()
    r = c.rng.random()
    if r < 0.5:
        return [f"jmp {lab}"]
    if r < 0.75:
        return [b(0xE9), f".long {lab} - . - 4"]
    return [f"jmp {lab}", *(["nop"] * c.rng.randrange(1, 4))]        # dead bytes after it


def k_jrcxz(c: Ctx) -> list[str]:
    """jecxz/jcxz/loop*: rel8 only, so they branch to a trampoline right after
    them that jumps on to the real (possibly distant) forward target."""
    lab = c.fwd()
    near, skip = c.prog.label(), c.prog.label()
    tramp = [b(0xEB, 5), f"{near}:", b(0xE9), f".long {lab} - . - 4", f"{skip}:"]
    if c.free("ecx"):
        pre = [f"mov ecx, {c.rng.choice((0, 0, 1, 0x10000, 3))}"] if c.rng.random() < 0.6 else []
        op = c.rng.choice(("jecxz", "loop", "loope", "loopne", "jcxz"))
        if op == "jcxz":
            return pre + [b(0x67, 0xE3, 2)] + tramp                     # jcxz: skips the 2-byte jmp
        if op == "loop" and c.rng.random() < 0.3:
            return pre + [b(0x67, 0xE2, 2)] + tramp                     # 16-bit CX count
        if op in ("loope", "loopne"):
            # a block must start at loopz/loopnz for unicorn to get them right (EXCLUSIONS)
            blk = c.prog.label()
            pre += [f"jmp {blk}", f"{blk}:"]
        return pre + [f"{op} {near}"] + tramp
    return [f"jecxz {near}"] + tramp


_LOOP_BODY = ("alu", "unop", "shift", "mov", "movx", "lea", "setcc", "cmov", "bitop", "flagop",
              "stack", "x87", "sse", "jcc", "bswap")


def k_loop(c: Ctx) -> list[str]:
    """A backward loop that runs 1-4 times on ECX (which its body never writes)."""
    if not c.free("ecx") or c.depth >= 2:
        return ["nop"]
    top = c.prog.label()
    n = c.rng.randint(1, 4)
    regs = tuple(r for r in c.regs if r != "ecx")
    body = c.body(_LOOP_BODY, 1, 5, regs=regs, balanced=True)
    form = c.rng.randrange(3)
    if form == 0:
        tail = [f"loop {top}"]
    elif form == 1:
        tail = ["dec ecx", f"jnz {top}"]
    else:
        tail = ["sub ecx, 1", b(0x0F, 0x85), f".long {top} - . - 4"]
    return [f"mov ecx, {n}", f"{top}:"] + body + tail


_SUB_BODY = ("alu", "unop", "shift", "mov", "movx", "lea", "xchg", "setcc", "cmov", "bitop", "flagop",
             "stack", "x87", "sse", "mmx", "jcc", "jmp", "string", "pushf", "cli_sti", "seg_read",
             "call", "loop", "io", "cpuid", "muldiv", "gs_mem")


def k_call(c: Ctx) -> list[str]:
    """call a subroutine placed inline (jumped over), ret or ret imm16."""
    if c.depth >= 2:
        return ["nop"]
    sub, after = c.prog.label(), c.prog.label()
    body = c.body(_SUB_BODY, 0, 5, balanced=True)
    args = c.rng.choice((0, 0, 0, 1, 2))
    pre = [f"push {c.imm():#x}" for _ in range(args)]
    ret = f"ret {4 * args}" if args else c.rng.choice(("ret", "ret", b(0xC2, 0, 0)))
    form = c.rng.randrange(5)
    if form <= 1:
        call = [f"call {sub}"]
    elif form == 2 and c.regs:
        r = c.r32()
        call = [f"mov {r}, {sub}", f"call {r}"]
    elif form == 3:
        slot = L.DATA + (c.rng.randrange(0, 0x100) & ~3)
        call = [f"mov dword ptr [{slot:#x}], {sub}", f"call dword ptr [{slot:#x}]"]
    else:
        r = c.r32()
        slot = L.DATA + 0x200 + (c.rng.randrange(0, 0x40) & ~3)
        call = [f"mov dword ptr [{slot:#x}], {sub}", f"mov {r}, {(slot - L.DATA) // 4}",
                f"call dword ptr [{r}*4 + {L.DATA:#x}]"]
    return pre + call + [f"jmp {after}", f"{sub}:"] + body + [ret, f"{after}:"]


def k_jmp_ind(c: Ctx) -> list[str]:
    lab = c.fwd()
    r = c.r32()
    form = c.rng.randrange(5)
    if form == 0:
        return [f"mov {r}, {lab}", f"jmp {r}"]
    if form == 1:
        slot = L.DATA + (c.rng.randrange(0, 0x800) & ~3)
        return [f"mov dword ptr [{slot:#x}], {lab}", f"jmp dword ptr [{slot:#x}]"]
    if form == 2:
        # a jump table indexed by a register
        slot = L.DATA + 0x300 + (c.rng.randrange(0, 0x40) & ~3)
        return [f"mov dword ptr [{slot:#x}], {lab}", f"mov {r}, {(slot - L.DATA) // 4}",
                f"jmp dword ptr [{L.DATA:#x} + {r}*4]"]
    if form == 3:
        # push + ret as a jump (common in hand-written kernel code)
        if c.balanced:
            return [f"mov {r}, {lab}", f"jmp {r}"]
        return [*push_label(lab), "ret"]
    # through a segment override (fs/gs are first loaded with the flat selector).
    # The target is stored through the same segment, whatever its base (an
    # earlier item may have loaded DS or ES with the data-area selector), or
    # for CS (flat, not writable) through SS, flat too.
    slot = L.DATA + (c.rng.randrange(0, 0x800) & ~3)
    seg = c.rng.choice(("ds", "ss", "es", "fs", "gs", "cs", "gs"))
    pre = [f"push {L.SEL_DATA:#x}", {"fs": b(0x0F, 0xA1), "gs": b(0x0F, 0xA9)}[seg]] if seg in ("fs", "gs") else []
    store = f"mov dword ptr {'ss' if seg == 'cs' else seg}:[{slot:#x}], {lab}"
    modrm = [0x20 | R32_ENC[r]] if r != "ebp" else [0x65, 0x00]
    return pre + [store, f"mov {r}, {slot:#x}", b(SEG_PREFIX[seg], 0xFF, *modrm)]


R32_ENC = {"eax": 0, "ecx": 1, "edx": 2, "ebx": 3, "esp": 4, "ebp": 5, "esi": 6, "edi": 7}


def k_ret_imm(c: Ctx) -> list[str]:
    """A `ret imm16` used as a jump that also drops arguments (unbalanced)."""
    if c.balanced:
        return ["nop"]
    lab = c.fwd()
    n = c.rng.choice((0, 4, 8, 2))
    return [f"push {c.imm():#x}"] * (n // 4) + [*push_label(lab), f"ret {n}"]


# --- far transfers --------------------------------------------------------------------------
def _farptr_slot(c: Ctx) -> int:
    return L.FARPTR + 8 * c.rng.randrange(16)


def k_far(c: Ctx) -> list[str]:
    rng = c.rng
    lab = c.fwd()
    bad = rng.random() < 0.12
    sel = rng.choice(CODE_SELS_BAD if bad else CODE_SELS_OK)
    form = rng.randrange(6)
    if form == 0:
        return [b(0xEA), f".long {lab}", f".word {sel:#x}"]
    if form == 1:
        slot = _farptr_slot(c)
        return [f"mov dword ptr [{slot:#x}], {lab}", f"mov word ptr [{slot + 4:#x}], {sel:#x}",
                b(0xFF, 0x2D, *le32(slot))]                                   # ljmp [slot]
    if form in (2, 3) and sel & 3:
        sel = rng.choice(CODE_SELS_BAD)      # no valid return to an outer ring (EXCLUSIONS)
    if form == 2 and not c.balanced:
        return [f"push {sel:#x}", *push_label(lab), "retf"]
    if form == 3 and not c.balanced:
        # iretd as a jump: an EFLAGS image with random arithmetic and virtual flags
        img = _eflags_image(c, iret=True)
        flags = ["pushfd"] if rng.random() < 0.5 else [f"push {img:#x}"]
        return flags + [f"push {sel:#x}", *push_label(lab), "iretd"]
    if form == 4 and c.depth < 2:
        # far call to an inline subroutine, back with retf [imm16]
        sub, after = c.prog.label(), c.prog.label()
        body = c.body(_SUB_BODY, 0, 3, balanced=True)
        args = rng.choice((0, 0, 1))
        call = [b(0x9A), f".long {sub}", f".word {sel:#x}"]
        if rng.random() < 0.4:
            slot = _farptr_slot(c)
            call = [f"mov dword ptr [{slot:#x}], {sub}", f"mov word ptr [{slot + 4:#x}], {sel:#x}",
                    b(0xFF, 0x1D, *le32(slot))]                               # lcall [slot]
        return ([f"push {c.imm():#x}"] * args + call + [f"jmp {after}", f"{sub}:"] + body
                + [f"retf {4 * args}" if args else "retf", f"{after}:"])
    return [b(0xEA), f".long {lab}", f".word {sel:#x}"]


def _eflags_image(c: Ctx, iret: bool = False) -> int:
    """A random EFLAGS image the generator may load (popf/iret): TF and NT stay
    clear, and VIF/VIP too for iret (see EXCLUSIONS)."""
    arith = c.rng.getrandbits(32) & 0x8D5           # CF PF AF ZF SF OF
    others = (0, 0x200, 0x400, 0x3000, 0x1200, 0x40000, 0x200000, 0x243200, 0x80000, 0x100000)
    other = c.rng.choice(others[:-2] if iret else others)
    return arith | other | 0x2


# --- flags and interrupts -------------------------------------------------------------------
def k_pushf(c: Ctx) -> list[str]:
    r = c.rng.random()
    if r < 0.3:
        return ["pushfd", f"pop {c.r32()}"]
    if r < 0.55:
        return [f"push {_eflags_image(c):#x}", "popfd"]
    if r < 0.65:
        # 16-bit forms: emulated callouts
        return [b(0x66, 0x9C), b(0x66, 0x68, *le32(_eflags_image(c))[:2]), b(0x66, 0x9D),
                f"pop {c.r16()}"] if not c.balanced else ["pushfd", "popfd"]
    if r < 0.8:
        # modify the image on the stack and load it back
        return ["pushfd", f"xor dword ptr [esp], {c.rng.choice((0x200, 0x3000, 0x40000, 0x8D5, 0x200000, 0x1)):#x}",
                "popfd"]
    if r < 0.9 and not c.balanced:
        return ["pushfd"]
    return ["pushfd", "popfd"]


def k_cli_sti(c: Ctx) -> list[str]:
    seq = c.rng.choice((["cli"], ["sti"], ["sti", "nop"], ["cli", "sti"], ["sti", "cli"],
                        ["sti", f"mov {c.r32()}, {c.imm():#x}"], ["sti", "sti"], ["sti", "pushfd", "popfd"]))
    return seq


def k_int(c: Ctx) -> list[str]:
    """Software interrupts (traps: they end the case in the handler)."""
    r = c.rng.random()
    if r < 0.3:
        return ["int3"]
    if r < 0.5:
        return [b(0xCD, 3)]
    if r < 0.7:
        return ["into"]
    return [b(0xCD, _int_vector(c.rng))]


def _int_vector(rng: random.Random) -> int:
    v = rng.randrange(256)
    return 7 if v == 6 else v          # `int 6`: see EXCLUSIONS


# --- system -------------------------------------------------------------------------------
_CR0_BITS = (0x2, 0x4, 0x8, 0x20, 0x10000, 0x40000, 0x20000000, 0x40000000)
_CR4_BITS = (0x4, 0x8, 0x10, 0x40, 0x80, 0x100, 0x200, 0x400)   # not VME/PVI/PAE: see EXCLUSIONS


def cr0_value(rng: random.Random) -> int:
    v = 0x11
    for bit in _CR0_BITS:
        if rng.random() < 0.2:
            v |= bit
    return v


def cr4_value(rng: random.Random) -> int:
    v = 0x600 if rng.random() < 0.8 else 0
    for bit in _CR4_BITS:
        if rng.random() < 0.15:
            v ^= bit
    return v


def k_cr(c: Ctx) -> list[str]:
    rng = c.rng
    r = c.r32()
    n = rng.choice((0, 2, 3, 4))
    if rng.random() < 0.5:
        return [f"mov {r}, cr{n}"]
    value = {0: cr0_value(rng), 2: c.imm(), 3: c.imm() & ~0xFFF | rng.choice((0, 8, 0x18)),
             4: cr4_value(rng)}[n]
    if n == 0 and rng.random() < 0.3:
        # read-modify-write, as kernels do it
        return [f"mov {r}, cr0", f"xor {r}, {rng.choice(_CR0_BITS):#x}", f"mov cr0, {r}"]
    return [f"mov {r}, {value:#x}", f"mov cr{n}, {r}"]


def k_dr(c: Ctx) -> list[str]:
    rng = c.rng
    r = c.r32()
    n = rng.randrange(8)
    if rng.random() < 0.5:
        return [f"mov {r}, dr{n}"]
    value = c.imm()
    if n in (5, 7):
        value &= ~0x20FF                   # no breakpoint enables, no GD
    return [f"mov {r}, {value:#x}", f"mov dr{n}, {r}"]


def k_desc(c: Ctx) -> list[str]:
    rng = c.rng
    op = rng.choice(("sgdt", "sidt", "lgdt", "lidt", "sgdt", "sidt"))
    if op in ("sgdt", "sidt"):
        pre, m = c.mem("dword")
        out = pre + [f"{op} {m.replace('dword ptr ', '')}"]
        if rng.random() < 0.2:
            out = [b(0x66)] + out[-1:] if not pre else out          # 16-bit operand size
        return out
    which = rng.choice((L.GDTR_A, L.GDTR_B) if op == "lgdt" else (L.IDTR_A, L.IDTR_B))
    opc = 0x15 if op == "lgdt" else 0x1D
    prefix = [0x66] if rng.random() < 0.15 else []
    return [b(*prefix, 0x0F, 0x01, opc, *le32(which))]


def k_ldt_tr(c: Ctx) -> list[str]:
    rng = c.rng
    op = rng.choice(("sldt", "str", "lldt", "ltr", "sldt", "str"))
    r = c.r32()
    if op in ("sldt", "str"):
        if rng.random() < 0.5:
            return [f"{op} {rng.choice((r, _R16_OF[r]))}"]
        pre, m = c.mem("word")
        return pre + [f"{op} {m}"]
    good = L.SEL_LDT if op == "lldt" else L.SEL_TSS
    sel = rng.choice((good, good, 0, L.SEL_DATA, L.SEL_BUSYTSS, L.SEL_TSS, L.SEL_LDT, 0x1F8, good | 3, 4))
    if op == "ltr" and sel & 0xFFFC == 0:
        sel = L.SEL_BUSYTSS               # ltr of a null selector: see EXCLUSIONS
    return [f"mov {_R16_OF[r]}, {sel:#x}", f"{op} {_R16_OF[r]}"]


def k_lar(c: Ctx) -> list[str]:
    rng = c.rng
    op = rng.choice(("lar", "lsl", "verr", "verw"))
    sel = rng.choice(ANY_SELS)
    src = c.r32()
    pre = [f"mov {src}, {sel | (rng.getrandbits(16) << 16 if rng.random() < 0.3 else 0):#x}"]
    if op in ("verr", "verw"):
        if rng.random() < 0.3:
            pre2, m = c.mem("word")
            return pre2 + [f"mov {m}, {sel:#x}", f"{op} {m}"]
        return pre + [f"{op} {_R16_OF[src]}"]
    dst = c.r32()
    enc = 0x02 if op == "lar" else 0x03
    size16 = rng.random() < 0.2
    modrm = 0xC0 | (R32_ENC[dst] << 3) | R32_ENC[src]
    return pre + [b(*([0x66] if size16 else []), 0x0F, enc, modrm)]


def k_msw(c: Ctx) -> list[str]:
    rng = c.rng
    r = c.r32()
    op = rng.choice(("smsw", "lmsw", "clts", "smsw"))
    if op == "clts":
        return ["clts"]
    if op == "smsw":
        if rng.random() < 0.5:
            return [f"smsw {rng.choice((r, _R16_OF[r]))}"]
        pre, m = c.mem("word")
        return pre + [f"smsw {m}"]
    return [f"mov {r}, {rng.randrange(0, 16) | 1:#x}", f"lmsw {_R16_OF[r]}"]


def k_cpuid(c: Ctx) -> list[str]:
    if not all(c.free(r) for r in ("eax", "ebx", "ecx", "edx")):
        return ["nop"]
    leaf = c.rng.choice((0, 1, 2, 3, 4, 7, 0x80000000, 0x80000001, 0x80000002, 0x80000003, 0x80000004,
                         0x80000008, 0x40000000, c.imm()))
    return [f"mov eax, {leaf:#x}", f"mov ecx, {c.imm(8):#x}", "cpuid"]


def k_msr(c: Ctx) -> list[str]:
    if not all(c.free(r) for r in ("eax", "ecx", "edx")):
        return ["nop"]
    rng = c.rng
    msr = rng.choice((0x174, 0x175, 0x176, 0x1A0, 0x17))
    if rng.random() < 0.5 or msr == 0x17:
        return [f"mov ecx, {msr:#x}", "rdmsr"]
    value = c.imm()
    if msr == 0x174:
        value &= 0xFFFF                    # bits 31:16: see EXCLUSIONS
    if msr == 0x1A0:
        value = rng.choice((1, 0, 0x81, 0x1))
    return [f"mov ecx, {msr:#x}", f"mov eax, {value:#x}", f"mov edx, {c.imm() if msr != 0x1A0 else 0:#x}",
            "wrmsr", "rdmsr"]


def k_cache(c: Ctx) -> list[str]:
    op = c.rng.choice(("invlpg", "wbinvd", "invd", "clflush"))
    if op in ("invlpg", "clflush"):
        pre, m = c.mem("byte")
        return pre + [f"{op} {m}"]
    return [op]


def k_rdtsc(c: Ctx) -> list[str]:
    if not (c.free("eax") and c.free("edx")):
        return ["nop"]
    return ["rdtsc", f"mov eax, {c.imm():#x}", f"mov edx, {c.imm():#x}"]


def k_hlt(c: Ctx) -> list[str]:
    return ["cli", "hlt"]


def k_ud(c: Ctx) -> list[str]:
    return [c.rng.choice(("ud2", b(0x0F, 0xFF, 0xC0), b(0xF0, 0x90), b(0x8E, 0xC8), b(0x0F, 0x0B),
                          b(0xF0, 0x01, 0xC0), b(0x0F, 0x37)))]


# --- I/O ----------------------------------------------------------------------------------------
SCRATCH_PORT = 0xE0           # 4 ports that read back what was written
UNCLAIMED_PORTS = (0x80, 0xE4, 0xE5, 0xE7)   # nothing decodes them: reads float high
UART_PORTS = (0x3F8, 0x3F9, 0x3FA, 0x3FB, 0x3FC, 0x3FD, 0x3FE, 0x3FF)


def _port(c: Ctx) -> int:
    r = c.rng.random()
    if r < 0.45:
        return SCRATCH_PORT + c.rng.randrange(4)
    if r < 0.75:
        return c.rng.choice(UNCLAIMED_PORTS)
    return c.rng.choice(UART_PORTS[1:]) if c.rng.random() < 0.7 else 0x3F8


def k_io(c: Ctx) -> list[str]:
    rng = c.rng
    port = _port(c)
    size = rng.choice((1, 2, 4))
    acc = {1: "al", 2: "ax", 4: "eax"}[size]
    out = rng.random() < 0.5
    if not c.free("eax") and not out:
        return ["nop"]
    if port <= 0xFF and rng.random() < 0.5:
        return [f"out {port:#x}, {acc}"] if out else [f"in {acc}, {port:#x}"]
    if not c.free("edx"):
        return ["nop"]
    pre = [f"mov edx, {port | (c.imm(16) << 16 if rng.random() < 0.2 else 0):#x}"]
    if out:
        return pre + [f"mov {acc}, {c.imm(8 * size):#x}" if rng.random() < 0.5 else "nop", f"out dx, {acc}"]
    return pre + [f"in {acc}, dx"]


def k_io_string(c: Ctx) -> list[str]:
    if not all(c.free(r) for r in ("esi", "edi", "ecx", "edx")):
        return ["nop"]
    rng = c.rng
    port = _port(c)
    size = rng.choice((1, 2, 4))
    ins = rng.random() < 0.5
    opc = (0x6C if ins else 0x6E) + (size > 1)
    # (sometimes more than the emulator does per exit: it resumes such a rep)
    count = rng.choice((0, 1, 2, 5, 9, 0x1100 if size == 1 else 9))
    pre = [f"mov edx, {port:#x}", f"mov ecx, {count}",
           f"mov esi, {L.DATA + rng.randrange(0x400, 0x800):#x}", f"mov edi, {L.DATA + rng.randrange(0x800, 0xC00):#x}"]
    down = rng.random() < 0.25
    if rng.random() < 0.15:
        # 16-bit addressing: SI/DI/CX only (the upper halves must survive)
        pre = [f"mov edx, {port:#x}", f"mov ecx, {c.imm(16) << 16 | rng.choice((0, 1, 3, 7)):#x}",
               f"mov esi, {c.imm(16) << 16 | 0x8000 + rng.randrange(0x400):#x}",
               f"mov edi, {c.imm(16) << 16 | 0x9000 + rng.randrange(0x400):#x}"]
        prefixes = [0x67] + ([0x66] if size == 2 else []) + ([0xF3] if rng.random() < 0.7 else [])
        return pre + (["std"] if down else []) + [b(*prefixes, opc)] + (["cld"] if down else [])
    prefixes = ([0x66] if size == 2 else []) + ([0xF3] if rng.random() < 0.7 else [])
    seg = [SEG_PREFIX[rng.choice(("es", "cs", "ss", "fs", "gs"))]] if not ins and rng.random() < 0.2 else []
    return pre + (["std"] if down else []) + [b(*prefixes, *seg, opc)] + (["cld"] if down else [])


# --- segments --------------------------------------------------------------------------------
def k_seg_load(c: Ctx) -> list[str]:
    rng = c.rng
    seg = rng.choice(("ds", "es", "fs", "gs", "ss", "fs", "gs"))
    bad = rng.random() < 0.15
    if seg == "ss":
        sel = rng.choice(SS_SELS_BAD if bad else SS_SELS_OK)
    else:
        sel = rng.choice(DATA_SELS_BAD if bad else DATA_SELS_OK)
        if seg in ("ds", "es") and sel in (0, 3) and not bad:
            sel = L.SEL_DATA           # null DS/ES would fault every later access: keep them usable
    r = c.r32()
    form = rng.randrange(5 if not c.balanced else 3)
    if form == 0:
        return [f"mov {_R16_OF[r]}, {sel:#x}", f"mov {seg}, {_R16_OF[r]}"]
    if form == 1:
        return [f"mov {r}, {sel | (c.imm(16) << 16):#x}", f"mov {seg}, {r}"]
    if form == 2:
        slot = L.SELSLOT + 2 * rng.randrange(16)
        return [f"mov word ptr [{slot:#x}], {sel:#x}", f"mov {seg}, word ptr [{slot:#x}]"]
    if form == 3:
        pop = {"ds": [0x1F], "es": [0x07], "ss": [0x17], "fs": [0x0F, 0xA1], "gs": [0x0F, 0xA9]}[seg]
        if rng.random() < 0.2:
            return [b(0x66, 0x68, sel & 0xFF, sel >> 8), b(0x66, *pop)]        # 16-bit push and pop
        return [f"push {sel:#x}", b(*pop)]
    # lds/les/lfs/lgs/lss through a far pointer
    slot = _farptr_slot(c)
    dst = c.r32()
    if seg == "ss":
        return [f"mov dword ptr [{slot:#x}], esp", f"mov word ptr [{slot + 4:#x}], {sel:#x}",
                b(0x0F, 0xB2, 0x25, *le32(slot))]                                 # lss esp, [slot]
    op = {"ds": [0xC5], "es": [0xC4], "fs": [0x0F, 0xB4], "gs": [0x0F, 0xB5]}[seg]
    return [f"mov dword ptr [{slot:#x}], {c.imm():#x}", f"mov word ptr [{slot + 4:#x}], {sel:#x}",
            b(*op, 0x05 | (R32_ENC[dst] << 3), *le32(slot))]


def k_seg_read(c: Ctx) -> list[str]:
    rng = c.rng
    seg = rng.choice(SEGS)
    r = c.r32()
    form = rng.randrange(4)
    if form == 0:
        return [f"mov {r}, {seg}"] if rng.random() < 0.5 else [f"mov {_R16_OF[r]}, {seg}"]
    if form == 1:
        pre, m = c.mem("word")
        return pre + [f"mov {m}, {seg}"]
    push = {"es": b(0x06), "cs": b(0x0E), "ss": b(0x16), "ds": b(0x1E), "fs": b(0x0F, 0xA0), "gs": b(0x0F, 0xA8)}[seg]
    if form == 2 or c.balanced:
        return [push, f"pop {r}"]
    return [push]


def k_gs_mem(c: Ctx) -> list[str]:
    """Memory accesses through fs/gs (gs is virtual in bt_vmm: swapped in around them)."""
    rng = c.rng
    seg = rng.choice(("gs", "gs", "fs"))
    size, kw = _size(c)
    off = rng.randrange(0, 0x1000) & ~3
    m = f"{kw} ptr {seg}:[{L.DATA + off:#x}]"
    r = rng.random()
    if r < 0.4:
        return [f"mov {c.reg(size)}, {m}"]
    if r < 0.7:
        return [f"mov {m}, {c.reg(size)}"]
    if r < 0.85:
        return [f"add {m}, {c.imm(8 * size):#x}"]
    if c.balanced:
        return [f"push {m.replace(kw, 'dword')}", f"pop {c.r32()}"]
    return [f"push {m.replace(kw, 'dword')}"]


# --- self-modifying code -------------------------------------------------------------------------
def k_smc(c: Ctx) -> list[str]:
    """Patch the immediate of a `mov` in a later TU (past a jmp), then run it."""
    r = c.r32()
    lab, nxt = c.prog.label(), c.prog.label()
    value = c.imm()
    return [f"mov dword ptr [{lab} + 1], {value:#x}", f"jmp {nxt}", f"{nxt}:",
            f"{lab}:", b(0xB8 + R32_ENC[r], 0, 0, 0, 0)]


# --- paging (cases of the "paging" category run with CR0.PG set) -------------------------------
def _window_addr(c: Ctx, span: int = 4) -> int:
    """An address in the window for an access of `span` bytes (sometimes one
    that crosses into the next page), never touching the `ret` stubs."""
    page = c.rng.randrange(L.WINDOW_PAGES)
    off = c.rng.choice((0, c.rng.randrange(0, 0x1000 - span), 0x1000 - span + c.rng.randrange(0, span)))
    if off + span > L.WINDOW_RET - 0x10 and off < L.WINDOW_RET + 0x10:
        off = L.WINDOW_RET + 0x10
    return L.WINDOW + 0x1000 * page + off


def k_page_access(c: Ctx) -> list[str]:
    """Loads and stores through the window: true page faults (absent, read-only
    with CR0.WP), accessed/dirty updates, remapped frames, page-crossing accesses."""
    rng = c.rng
    size, kw = _size(c)
    a = _window_addr(c, size)
    m = f"{kw} ptr [{a:#x}]"
    r = rng.random()
    if r < 0.35:
        return [f"mov {c.reg(size)}, {m}"]
    if r < 0.65:
        return [f"mov {m}, {c.reg(size)}"]
    if r < 0.8:
        return [f"add {m}, {c.imm(8 * size):#x}"]
    if r < 0.85 and c.free("esi") and c.free("edi") and c.free("ecx"):
        return [f"mov esi, {_window_addr(c, 16):#x}", f"mov edi, {_window_addr(c, 16):#x}",
                f"mov ecx, {rng.randrange(1, 5)}", "cld", b(0xF3, 0xA5)]      # rep movsd
    if r < 0.9 and all(c.free(x) for x in ("esi", "edi", "ecx", "edx")):
        # rep insb/outsb across a page end: a #PF part-way leaves ECX/EDI/ESI mid-way
        n = rng.randrange(2, 9)
        a = L.WINDOW + 0x1000 * rng.randrange(L.WINDOW_PAGES) + 0x1000 - rng.randrange(1, n)
        return [f"mov edx, {SCRATCH_PORT + rng.randrange(4):#x}", f"mov ecx, {n}", f"mov edi, {a:#x}",
                f"mov esi, {a:#x}", "cld", b(0xF3, rng.choice((0x6C, 0x6E)))]
    return [f"push dword ptr [{_window_addr(c):#x}]", f"pop {c.r32()}"] if c.balanced else \
        [f"push dword ptr [{_window_addr(c):#x}]"]


def k_page_pte(c: Ctx) -> list[str]:
    """Rewrite a window PTE, then make the change visible (invlpg or a CR3 reload:
    without one, which mapping the next access sees is up to the TLB)."""
    rng = c.rng
    page = rng.randrange(L.WINDOW_PAGES)
    frame, flags = L.window_pte(rng)
    addr = L.WINDOW + 0x1000 * page
    pte = (addr if frame < 0 else frame) | flags
    slot = L.PT + 4 * (addr >> 12)
    out = [f"mov dword ptr [{slot:#x}], {pte:#x}"]
    r = c.r32()
    if rng.random() < 0.6:
        out.append(f"invlpg byte ptr [{addr + rng.randrange(0x1000):#x}]")
    else:
        out += [f"mov {r}, cr3", f"mov cr3, {r}"]
    return out


def k_page_misc(c: Ctx) -> list[str]:
    rng = c.rng
    r = c.r32()
    x = rng.random()
    if x < 0.3:
        return [f"mov {r}, cr2"]
    if x < 0.6:
        return [f"mov {r}, {L.PD:#x}", f"mov cr3, {r}"]
    # run the `ret` in a window page (a #PF on fetch when absent)
    return [f"mov {r}, {L.WINDOW + 0x1000 * rng.randrange(L.WINDOW_PAGES) + L.WINDOW_RET:#x}", f"call {r}"]


# --- faults at a chosen position in a TU ------------------------------------------------------
def k_fault(c: Ctx) -> list[str]:
    """One instruction (with at most a register or memory set-up) that faults."""
    rng = c.rng
    kind = rng.randrange(14)
    if kind == 0:
        return [rng.choice(("div dword ptr", "idiv dword ptr", "div byte ptr", "idiv word ptr"))
                + f" [{L.ZERO:#x}]"]
    if kind == 1:
        return [b(0xD4, 0x00)]                                   # aam 0: #DE
    if kind == 2:
        return k_ud(c)
    if kind == 3:
        return [f"bound {c.rng.choice(('eax', 'ebx', 'esi'))}, qword ptr [{L.BOUNDS_NEVER:#x}]"]
    if kind == 4:
        return ["int3"] if rng.random() < 0.5 else [b(0xCD, _int_vector(rng))]
    if kind == 5:
        return [f"movaps xmm{rng.randrange(8)}, xmmword ptr [{L.DATA + rng.choice((4, 8, 12, 0x104)):#x}]"]
    if kind == 6:
        seg = rng.choice(("ds", "es", "fs", "gs", "ss"))
        sel = rng.choice(SS_SELS_BAD if seg == "ss" else DATA_SELS_BAD)
        slot = L.SELSLOT + 2 * rng.randrange(16)
        return [f"mov word ptr [{slot:#x}], {sel:#x}", f"mov {seg}, word ptr [{slot:#x}]"]
    if kind == 7:
        sel = rng.choice(CODE_SELS_BAD)
        return [b(0xEA), f".long {L.HANDLERS:#x}", f".word {sel:#x}"]
    if kind == 8:
        return [rng.choice(("fld1", "fldz", "fnop", "fsqrt", "emms", "addps xmm0, xmm1", "fwait",
                            "paddb mm0, mm1"))]                                  # #NM/#UD/#MF/#XM per CR0
    if kind == 9:
        return ["into"]
    if kind == 10:
        return [f"mov ax, {L.SEL_BUSYTSS:#x}" if c.free("eax") else "nop", "ltr ax" if c.free("eax") else "nop"]
    if kind == 11:
        return [rng.choice(("divps xmm0, xmm1", "sqrtps xmm2, xmm3"))]
    if kind == 12:
        return [b(0x8E, 0xC8)]                                                   # mov cs, ax: #UD
    return [b(0xF0, 0x01, 0xC0)]                                  # lock add eax, eax: #UD


_SINGLE = ("alu", "unop", "shift", "mov", "lea", "setcc", "cmov", "bitop", "flagop", "stack", "x87",
           "sse", "mmx", "cli_sti", "pushf", "seg_read", "gs_mem", "io", "bswap", "nop", "xchg", "movx")


KINDS: dict[str, Callable[[Ctx], list[str]]] = {
    "alu": k_alu, "unop": k_unop, "shift": k_shift, "shiftd": k_shiftd, "muldiv": k_muldiv,
    "mov": k_mov, "movx": k_movx, "lea": k_lea, "xchg": k_xchg, "cmpxchg8b": k_cmpxchg8b,
    "bitop": k_bitop, "bitscan": k_bitscan, "setcc": k_setcc, "cmov": k_cmov, "conv": k_conv,
    "bcd": k_bcd, "flagop": k_flagop, "stack": k_stack, "pusha": k_pusha, "enter": k_enter,
    "bswap": k_bswap, "xlat": k_xlat, "nop": k_nop, "misc_mem": k_misc_mem,
    "string": k_string, "x87": k_x87, "mmx": k_mmx, "sse": k_sse,
    "jcc": k_jcc, "jmp": k_jmp, "jrcxz": k_jrcxz, "loop": k_loop, "call": k_call,
    "jmp_ind": k_jmp_ind, "ret_imm": k_ret_imm, "far": k_far,
    "pushf": k_pushf, "cli_sti": k_cli_sti, "int": k_int,
    "cr": k_cr, "dr": k_dr, "desc": k_desc, "ldt_tr": k_ldt_tr, "lar": k_lar, "msw": k_msw,
    "cpuid": k_cpuid, "msr": k_msr, "cache": k_cache, "rdtsc": k_rdtsc, "hlt": k_hlt, "ud": k_ud,
    "io": k_io, "io_string": k_io_string,
    "seg_load": k_seg_load, "seg_read": k_seg_read, "gs_mem": k_gs_mem,
    "smc": k_smc, "fault": k_fault,
    "page_access": k_page_access, "page_pte": k_page_pte, "page_misc": k_page_misc,
}
_KIND_SALT = {k: i * 7919 for i, k in enumerate(KINDS)}

_INTEGER = ("alu", "alu", "alu", "unop", "shift", "shiftd", "muldiv", "mov", "mov", "movx", "lea",
            "xchg", "cmpxchg8b", "bitop", "bitscan", "setcc", "cmov", "conv", "bcd", "flagop", "stack",
            "stack", "pusha", "enter", "bswap", "xlat", "nop", "misc_mem")

# Category -> (kinds it draws from (with repeats as weights), share of integer filler)
CATEGORIES: dict[str, tuple[tuple[str, ...], float]] = {
    "integer": (_INTEGER, 0.0),
    "string": (("string",), 0.4),
    "x87": (("x87",), 0.25),
    "mmx-sse": (("mmx", "sse", "sse", "sse"), 0.25),
    "branch": (("jcc", "jcc", "jmp", "jrcxz", "loop", "call"), 0.5),
    "indirect": (("jmp_ind", "call", "call", "ret_imm"), 0.5),
    "far": (("far",), 0.5),
    "flags": (("pushf", "pushf", "cli_sti"), 0.5),
    "system": (("cr", "dr", "desc", "ldt_tr", "lar", "lar", "msw", "cpuid", "msr", "cache", "rdtsc",
                "int", "hlt", "ud"), 0.5),
    "io": (("io", "io", "io_string"), 0.5),
    "segment": (("seg_load", "seg_load", "seg_read", "gs_mem"), 0.5),
    "smc": (("smc",), 0.6),
    "paging": (("page_access", "page_access", "page_pte", "page_misc"), 0.4),
    "fault": (_SINGLE, 0.0),          # special: see gen_spec
    "mixed": (tuple(k for k in KINDS if k not in ("fault", "hlt", "ud", "int") and not k.startswith("page"))
              + ("int", "ud"), 0.3),
}
# Kinds that end a case: rare outside the categories that are about them.
_ENDING = {"int", "hlt", "ud"}


def gen_spec(d: Draw, category: str | None = None) -> CaseSpec:
    """Draw a case of `category` (or of a category drawn too)."""
    if category is None:
        category = d.choice(tuple(CATEGORIES))
    kinds, filler = CATEGORIES[category]
    items: list[ItemSpec] = []
    if category == "fault":
        n = d.int(1, 70)
        at = d.int(0, n - 1)
        for i in range(n):
            kind = "fault" if i == at else d.choice(_SINGLE)
            items.append(ItemSpec(kind, d.u32()))
    else:
        n = d.int(1, 24)
        for _ in range(n):
            if d.bool(filler):
                kind = d.choice(_INTEGER)
            else:
                kind = d.choice(kinds)
                if kind in _ENDING and category not in ("system",) and d.bool(0.7):
                    kind = d.choice(_INTEGER)
            items.append(ItemSpec(kind, d.u32()))
    init = gen_init(d, category)
    offset = d.choice((0, 0, d.int(0, 0xFFF), 0x1000 - d.int(1, 0x80))) if d.bool(0.5) else 0
    profile = d.choice(PROFILES) if d.bool(0.6) else "plain"
    return CaseSpec(category, tuple(items), init, offset, profile)


def gen_init(d: Draw, category: str) -> Init:
    gprs = [d.u32() if d.bool(0.8) else d.int(0, 0xFF) for _ in range(8)]
    gprs[4] = L.STACK_TOP - (d.int(0, 0x40) * 4 if d.bool(0.3) else 0)
    arith = d.int(0, 0xFFF) & 0xCD5
    virt = 0
    if d.bool(0.5):
        virt |= 0x200
    if d.bool(0.15):
        virt |= d.choice((0x1000, 0x2000, 0x3000))
    if d.bool(0.15):
        virt |= 0x40000
    if d.bool(0.1):
        virt |= 0x200000          # ID
    eflags = arith | virt | 0x2
    cr0 = None
    if d.bool(0.25 if category in ("x87", "mmx-sse", "fault") else 0.1):
        cr0 = d.choice((0x11, 0x31, 0x33, 0x19, 0x39, 0x15, 0x35, 0x80011 & 0x7FFFFFFF, 0x10033))
    cr4 = d.choice((0x600, 0x600, 0x600, 0x200, 0x0, 0x608))
    fpcw = d.choice((0x37F, 0x37F, 0x27F, 0x37E, 0x0))
    mxcsr = d.choice((0x1F80, 0x1F80, 0x1F80, 0x0, 0x7F80, 0x1D80))
    fs = d.choice((L.SEL_DATA, L.SEL_DATA, L.SEL_DBASE, L.SEL_DATA2, 0))
    gs = d.choice((L.SEL_DATA, L.SEL_DATA, L.SEL_DBASE, L.SEL_DATA2, 0))
    seed = d.int(1, 0xFFFFFFFF) if d.bool(0.8) else 0
    paging = category == "paging"
    if paging:
        cr0 = (cr0 or 0x11) | 0x10000          # CR0.WP (bt_vmm requires it with paging: EXCLUSIONS)
    if paging:
        cr4 &= ~0x10 if d.bool(0.5) else ~0   # (PSE, sometimes)
    return Init(tuple(gprs), eflags, cr0, cr4, fpcw, mxcsr, fs, gs, seed, paging)


# --- from a spec to bytes ------------------------------------------------------------------------
_ks = Ks(KS_ARCH_X86, KS_MODE_32)


class AssemblyError(Exception):
    pass


def asm_case(lines: str | list[str], init: Init = Init(), profile: str = "plain",
             category: str = "handwritten", code_offset: int = 0) -> Case:
    """A case from hand-written assembly (keystone, Intel syntax; `;` or a list
    separates instructions); it ends at the END marker appended after it."""
    if isinstance(lines, str):
        lines = [x.strip() for x in lines.replace("\n", ";").split(";") if x.strip()]
    addr = L.CODE_PAGE + code_offset
    text = "\n".join(list(lines) + ["END:", b(*TAIL)])
    try:
        code = bytes(_ks.asm(text, addr)[0] or b"")
    except KsError as e:
        raise AssemblyError(f"{e}: {text}") from None
    return Case(category, code, addr, init, profile, end=addr + len(code) - len(TAIL),
                source=list(lines))


def realize(spec: CaseSpec) -> Case:
    prog = Program()
    ctx = Ctx(prog, random.Random(0), simple=spec.category == "fault")
    lines = []
    if spec.category == "fault":
        # start a fresh TU, then the straight-line run with the fault in it
        lines = ["jmp TU", "TU:"]
    lines += realize_level(spec.items, ctx)
    lines += ["END:", b(*TAIL)]
    addr = L.CODE_PAGE + spec.code_offset
    text = "\n".join(lines)
    try:
        enc, _ = _ks.asm(text, addr)
    except KsError as e:
        raise AssemblyError(f"{e}: {text}") from None
    code = bytes(enc or b"")
    if len(code) > L.CODE_MAX - spec.code_offset or not code.endswith(TAIL):
        raise AssemblyError(f"bad program size {len(code)}")
    return Case(spec.category, code, addr, spec.init, spec.profile, end=addr + len(code) - len(TAIL),
                source=lines, spec=spec)
