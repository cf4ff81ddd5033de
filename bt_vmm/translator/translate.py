"""Translating one TU into one CCF.

Layout of a CCF in the TC:

    entry:  indirect entry -- checks that the looked-up guest PC is this TU's
    body:   [execution counter]  translated instructions ...  exits
    stubs:  one `int3` per exit, the unchained target of that exit's jmp

Direct exits are `jmp rel32` to their stub until the monitor chains them to the
successor's body. A `ret` or indirect branch loads the guest target into ECX
and enters the shared lookup routine, which jumps through the lookup table to
some CCF's entry; the entry either matches and falls into the body or exits to
the monitor ("lookup miss"). Every guest-memory access in a rewrite sequence
runs with EFLAGS.AC clear, so SMAP keeps the guest out of the monitor region
even through a rewritten instruction.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable, Collection

from capstone import x86_const as C

from bt_vmm.decoder import Insn, Kind, TranslationUnit
from bt_vmm.machine.layout import MON_BASE
from bt_vmm.tcache import region as R
from bt_vmm.translator.templates import (INT3, STAC, Template, preempt_check, push_vsel, rel32,
                                        seg_read, t)

TB_BREAK = b"\xeb\x00"   # jmp $+2: ends unicorn's translation block here
PREFIXES = {0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67}
_REG_NAMES = {C.X86_REG_EAX: "eax", C.X86_REG_ECX: "ecx", C.X86_REG_EDX: "edx",
              C.X86_REG_EBX: "ebx", C.X86_REG_ESP: "esp", C.X86_REG_EBP: "ebp",
              C.X86_REG_ESI: "esi", C.X86_REG_EDI: "edi", C.X86_REG_AX: "ax",
              C.X86_REG_CX: "cx", C.X86_REG_DX: "dx", C.X86_REG_BX: "bx",
              C.X86_REG_SP: "sp", C.X86_REG_BP: "bp", C.X86_REG_SI: "si",
              C.X86_REG_DI: "di"}


@dataclass
class ExitSite:
    """A direct exit of a CCF: a `jmp rel32` that starts pointing at its stub."""
    target: int          # guest PC
    field: int           # TC address of the rel32 field
    stub: int            # TC address of the int3 stub
    kind: str            # jmp / taken / fallthrough / call


@dataclass
class Callout:
    """What the monitor must do when the int3 at `addr` fires."""
    kind: str            # exit / lookup-miss / emulate / emulate-end / irq-window / insn-limit / undefined,
                         # breakpoint / step-exit / step-lookup (a debugger's, see engines/debug.py)
    addr: int            # TC address of the int3
    guest_eip: int       # the guest instruction it stands for (or the PC to resume at)
    insn: Insn | None = None
    exit: ExitSite | None = None
    ccf: object = None   # filled in by the tcache
    fast: object = None  # the engine's specialised handler, once it has looked
    fast_ready: bool = False


@dataclass
class CCFCode:
    tu: TranslationUnit
    base: int
    code: bytes
    entry: int
    body: int
    pcmap: list[tuple[int, int, str | None]]      # (TC address, guest EIP, register to restore)
    exits: list[ExitSite]
    callouts: list[Callout]
    rewrites: list[tuple[Insn, int, int]] = field(default_factory=list)  # (insn, TC start, TC end)
    ident: int = 0
    preempt_points: list[Callout] = field(default_factory=list)          # bound checks: #BR -> preempt


class _Emitter:
    def __init__(self, base: int) -> None:
        self.base = base
        self.buf = bytearray()
        self.pcmap: list[tuple[int, int, str | None]] = []
        self.exit_fields: list[tuple[int, int, str]] = []   # (buffer offset of rel32, target, kind)
        self.callouts: list[Callout] = []
        self.preempt_points: list[Callout] = []

    @property
    def here(self) -> int:
        return self.base + len(self.buf)

    def mark(self, guest_eip: int, fixup: str | None = None) -> None:
        self.pcmap.append((self.here, guest_eip, fixup))

    def raw(self, code: bytes) -> None:
        self.buf += code

    def int3(self, kind: str, guest_eip: int, insn: Insn | None = None) -> None:
        self.callouts.append(Callout(kind, self.here, guest_eip, insn))
        self.buf += INT3

    def int3_inside(self, template: Template, kind: str, guest_eip: int, **fields: int) -> None:
        """Emit a template that contains exactly one int3 callout."""
        self.callouts.append(Callout(kind, self.here + template.int3, guest_eip))
        self.buf += template.emit(**fields)

    def exit_jmp(self, target: int, kind: str, opcode: bytes = b"\xe9") -> None:
        self.buf += opcode
        self.exit_fields.append((len(self.buf), target, kind))
        self.buf += b"\0\0\0\0"

    def jmp_to(self, addr: int) -> None:
        self.buf += b"\xe9" + rel32(self.here + 5, addr)


class Translator:
    def __init__(self, lookup_addr: int, count: bool, budget: bool, mon_base: int = MON_BASE,
                 step: bool = False) -> None:
        self.lookup_addr = lookup_addr   # the shared lookup routine in the TC
        self.mon_base = mon_base         # the monitor region's linear placement
        self.count = count or budget     # execution counters at the top of every CCF
        self.budget = budget             # --max-insns budget check as well
        # A debugger's single step: the CCF of one instruction whose every way
        # out (direct exits, and `lookup_addr`, a stub, for ret and indirect
        # branches) is a callout, never chained; no preemption or interrupt
        # checks, so nothing but the instruction itself runs.
        self.step = step
        self.exit_kind = "step-exit" if step else "exit"

    def translate(self, tu: TranslationUnit, base: int, slot: int,
                  resolve: Callable[[int], int | None],
                  breakpoints: Collection[int] = ()) -> CCFCode:
        """Translate `tu` to run at TC address `base`; `slot` is its counter
        slot; `resolve(pc)` gives the body of an existing CCF to pre-chain to.
        An instruction at an address in `breakpoints` is preceded by a
        breakpoint callout, at a guest instruction boundary (the first one's
        before the execution counter, so a stop there does not count a run)."""
        e = _Emitter(base)
        e.mark(tu.pc)
        e.int3_inside(t("entry_check"), "lookup-miss", tu.pc, negpc=-tu.pc)
        body = e.here
        if tu.pc in breakpoints:
            e.int3("breakpoint", tu.pc)
        if self.count:
            so = R.COUNTERS + 8 * slot
            if self.budget:
                e.int3_inside(t("count_budget"), "insn-limit", tu.pc,
                              slot=so, slot4=so + 4, n=len(tu.insns))
            else:
                e.raw(t("count").emit(slot=so, slot4=so + 4))
        rewrites = []
        ident = 0
        irq_check_owed = False
        for i, insn in enumerate(tu.insns):
            if i and insn.addr in breakpoints:
                e.int3("breakpoint", insn.addr)
            start = e.here
            e.mark(insn.addr)
            if insn.kind is Kind.IDENT:
                if insn.cs is not None and insn.cs.id == C.X86_INS_CMPXCHG8B:
                    e.raw(TB_BREAK)             # see _needs_flags_sync
                elif insn.cs is not None and _needs_flags_sync(insn.cs):
                    e.raw(t("flags_sync").code)
                e.raw(insn.raw)
                ident += 1
            else:
                self._rewrite(e, insn)
            if insn.kind is not Kind.IDENT:
                rewrites.append((insn, start, e.here))
            # sti lets one more instruction run before an interrupt (SDM 6.8.3
            # "Masking Maskable Hardware Interrupts"): check after it.
            if irq_check_owed and insn.kind in (Kind.IDENT, Kind.GS_ACCESS, Kind.SEG_READ, Kind.FPU_ENV):
                e.mark(insn.next)
                e.int3_inside(t("irq_check"), "irq-window", insn.next)
            irq_check_owed = insn.kind is Kind.STI and not self.step
            if insn.kind is Kind.POPF and not self.step:
                e.mark(insn.next)
                e.int3_inside(t("irq_check"), "irq-window", insn.next)
        last = tu.insns[-1]
        if last.kind in (Kind.IDENT, Kind.CLI, Kind.STI, Kind.PUSHF, Kind.POPF, Kind.SEG_READ,
                         Kind.GS_ACCESS, Kind.CALLOUT, Kind.FPU_ENV):
            e.mark(last.next)
            e.exit_jmp(last.next, "fallthrough")
        # Stubs, then point every exit at its stub or, when the successor is
        # already translated, straight at the successor (chained at birth).
        exits = []
        for fo, target, kind in e.exit_fields:
            stub = e.here
            site = ExitSite(target, base + fo, stub, kind)
            exits.append(site)
            e.callouts.append(Callout(self.exit_kind, stub, target, exit=site))
            e.buf += INT3
            dest = None if self.step else resolve(target)
            struct.pack_into("<4s", e.buf, fo, rel32(base + fo + 4, dest if dest is not None else stub))
        return CCFCode(tu, base, bytes(e.buf), base, body, e.pcmap, exits, e.callouts, rewrites, ident,
                       e.preempt_points)

    def _rewrite(self, e: _Emitter, insn: Insn) -> None:
        k = insn.kind
        cs = insn.cs
        if k is Kind.JMP:
            self._back_edge_check(e, insn, cs.operands[0].imm)
            e.exit_jmp(cs.operands[0].imm, "jmp")
        elif k is Kind.JCC:
            op = cs.opcode
            cc = (op[1] if op[0] == 0x0F else op[0]) & 0xF
            target = cs.operands[0].imm
            if target <= insn.addr:
                # A loop: the taken side goes through the preemption check.
                e.raw(bytes([0x0F, 0x80 | (cc ^ 1)]) + b"\0\0\0\0")
                skip = len(e.buf)
                self._back_edge_check(e, insn, target)
                e.exit_jmp(target, "taken")
                struct.pack_into("<i", e.buf, skip - 4, len(e.buf) - skip)
            else:
                e.exit_jmp(target, "taken", bytes([0x0F, 0x80 | cc]))
            e.exit_jmp(insn.next, "fallthrough")
        elif k is Kind.JRCXZ:
            if cs.id in (C.X86_INS_LOOPE, C.X86_INS_LOOPNE):
                # Unicorn 2.1.4 syncs its lazy-flag state (cc_op) for loopz/loopnz
                # only on the path where ECX stays nonzero: when ECX reaches 0 the
                # block ends with a stale cc_op, and the next exit folds garbage
                # (operand bits) into EFLAGS -- DF, AC, TF included. Starting a new
                # block here makes the state already synced (found by selfcheck).
                e.raw(TB_BREAK)
            # jecxz/loop have only a rel8 form: hop over the fall-through exit.
            e.raw(insn.raw[:-1] + b"\x05")
            e.exit_jmp(insn.next, "fallthrough")
            self._back_edge_check(e, insn, cs.operands[0].imm)
            e.exit_jmp(cs.operands[0].imm, "taken")
        elif k is Kind.CALL:
            e.raw(b"\x68" + struct.pack("<I", insn.next))   # push the guest return address
            e.exit_jmp(cs.operands[0].imm, "call")
        elif k is Kind.RET:
            e.raw(t("save_ecx").code)
            e.raw(b"\x59")                                  # pop ecx (AC clear: guest stack)
            if cs.operands:
                e.raw(t("esp_adjust").emit(imm=cs.operands[0].imm))
            e.raw(STAC)
            e.jmp_to(self.lookup_addr)
        elif k in (Kind.JMP_IND, Kind.CALL_IND):
            e.raw(t("save_ecx").code)
            e.raw(_mov_ecx_from_rm(insn.raw))               # the target, read with AC clear
            if k is Kind.CALL_IND:
                e.mark(insn.addr, "ecx")
                e.raw(b"\x68" + struct.pack("<I", insn.next))
            e.raw(STAC)
            e.jmp_to(self.lookup_addr)
        elif k is Kind.CLI:
            e.raw(t("cli").code)
        elif k is Kind.STI:
            e.raw(t("sti").code)
        elif k is Kind.PUSHF:
            e.raw(b"\x9c")
            e.raw(t("pushf_fix").code)
        elif k is Kind.POPF:
            e.raw(t("save_eax").code)
            e.raw(b"\x8b\x04\x24")                          # mov eax, [esp] (AC clear)
            e.raw(t("popf_split").code)
        elif k is Kind.SEG_READ:
            self._seg_read(e, insn)
        elif k is Kind.GS_ACCESS:
            if _needs_flags_sync(cs):
                e.raw(t("flags_sync").code)       # (before the GS swap: it uses the monitor's GS)
            e.raw(t("gs_in").code)
            e.mark(insn.addr, "gs")
            e.raw(insn.raw)
            e.raw(t("gs_out").emit(mon_gs=self.mon_base + R.MON_GS_SEL))
        elif k is Kind.FPU_ENV:
            # The store runs as is; a callout then replaces the TC address it
            # saved as the last x87 instruction's (and the monitor's CS) with the
            # guest's (found by selfcheck: guests could read TC addresses).
            if insn.cs.prefix[1] == 0x65 or any(op.type == C.X86_OP_MEM and op.mem.segment == C.X86_REG_GS
                                                for op in insn.cs.operands):
                e.raw(t("gs_in").code)
                e.mark(insn.addr, "gs")
                e.raw(insn.raw)
                e.raw(t("gs_out").emit(mon_gs=self.mon_base + R.MON_GS_SEL))
            else:
                e.raw(insn.raw)
            e.int3("emulate", insn.addr, insn)
        elif k is Kind.CALLOUT:
            e.int3("emulate", insn.addr, insn)
        elif k is Kind.CALLOUT_END:
            e.int3("emulate-end", insn.addr, insn)
        elif k is Kind.UNDEFINED:
            e.int3("undefined", insn.addr, insn)
        else:  # pragma: no cover - every Kind is handled above
            raise AssertionError(k)

    def _back_edge_check(self, e: _Emitter, insn: Insn, target: int) -> None:
        """Loops are where guest kernel code can run without ever exiting: give
        every backward branch a preemption check, so timer interrupts reach a
        busy-waiting kernel without stopping unicorn from another thread."""
        if target <= insn.addr and not self.step:
            e.mark(target)
            e.preempt_points.append(Callout("preempt", e.here, target))
            e.raw(preempt_check(self.mon_base))
            e.mark(insn.addr)

    def _seg_read(self, e: _Emitter, insn: Insn) -> None:
        ops = insn.cs.operands
        sreg = ops[-1].reg
        off = R.VCS if sreg == C.X86_REG_CS else R.VGS
        if insn.cs.id == C.X86_INS_PUSH:
            code, push_at = push_vsel(off)
            e.raw(code[:push_at])
            e.mark(insn.addr, "eax")
            e.raw(code[push_at:])
        else:
            e.raw(seg_read(_REG_NAMES[ops[0].reg], off))


_SETCC_IDS = {getattr(C, f"X86_INS_SET{cc}") for cc in (
    "A", "AE", "B", "BE", "E", "G", "GE", "L", "LE", "NE", "NO", "NP", "NS", "O", "P", "S")}


def _needs_flags_sync(cs) -> bool:
    """Instructions unicorn 2.1.4 gets wrong after flag-setting code in the
    same translation block (all found by selfcheck):

    * cmpxchg8b: its helper recomputes the flags it must keep from a stale
      cc_op (no sync before the call) whenever a flag-setting instruction
      precedes it in the block (the counter template at the top of a CCF is
      one) -- garbage that can even reach TF/DF/AC at the next exit. Starting
      a block there (TB_BREAK) is enough: the state is synced at block ends.
    * setcc and rcl/rcr with a memory operand: they evaluate the lazy flags,
      overwriting the state's operands, before a store that may fault; the
      rollback after a fault restores the old cc_op but not its operands, so
      after a hidden page fault (the shadow MMU filling an entry) the
      instruction reruns on wrong flags. The flags_sync template first turns
      the lazy state into plain EFLAGS, for which re-evaluation is harmless.
      (This one returns True; cmpxchg8b is handled by the caller.)"""
    if cs.id in _SETCC_IDS or cs.id in (C.X86_INS_RCL, C.X86_INS_RCR):
        return any(op.type == C.X86_OP_MEM for op in cs.operands)
    return False


def _mov_ecx_from_rm(raw: bytes) -> bytes:
    """Turn `jmp/call r/m32` (FF /4, FF /2) into `mov ecx, r/m32` (8B /r) with the
    same prefixes, ModRM addressing, SIB and displacement."""
    i = 0
    while raw[i] in PREFIXES:
        i += 1
    assert raw[i] == 0xFF
    modrm = raw[i + 1]
    return raw[:i] + b"\x8b" + bytes([(modrm & 0xC7) | (1 << 3)]) + raw[i + 2:]
