"""Cutting guest code into translation units (TUs).

A TU starts at one guest PC and runs until a control transfer, an instruction
that needs the monitor to pick the next PC, a 4 KiB page boundary (so that one
written page invalidates whole TUs, never parts of them), or a length cap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import capstone

from bt_vmm.decoder.classify import Kind, classify
from bt_vmm.machine.memory import GuestFault

MAX_TU_INSNS = 64
PAGE = 0x1000

# Kinds after which the TU ends.
TERMINAL = {Kind.JMP, Kind.JCC, Kind.JRCXZ, Kind.CALL, Kind.RET, Kind.JMP_IND,
            Kind.CALL_IND, Kind.CALLOUT_END, Kind.UNDEFINED}


@dataclass
class Insn:
    addr: int            # guest linear address
    raw: bytes
    kind: Kind
    mnemonic: str
    op_str: str
    cs: object | None    # the capstone instruction (None when undecodable)

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def next(self) -> int:
        return self.addr + len(self.raw)

    def __str__(self) -> str:
        return f"{self.mnemonic} {self.op_str}".strip()


@dataclass
class TranslationUnit:
    pc: int
    insns: list[Insn] = field(default_factory=list)
    end_reason: str = ""

    @property
    def end(self) -> int:
        """One past the last guest byte."""
        return self.insns[-1].next if self.insns else self.pc

    @property
    def pages(self) -> set[int]:
        return set(range(self.pc & ~(PAGE - 1), self.end, PAGE)) | {(self.end - 1) & ~(PAGE - 1)}


_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
_md.detail = True


def decode_tu(pc: int, fetch: Callable[[int, int], bytes], max_insns: int = MAX_TU_INSNS) -> TranslationUnit:
    """Decode the TU at guest linear address `pc`; `fetch(addr, n)` returns up
    to n guest bytes (fewer at the end of readable memory). A debugger's
    single step asks for a TU of one instruction."""
    page_end = (pc & ~(PAGE - 1)) + PAGE
    # Only this page: reading ahead into the next one walks its page tables,
    # which sets the accessed bit of a page the guest may never touch (found
    # by selfcheck). The next page is read only for an instruction that
    # straddles the boundary.
    code = fetch(pc, page_end - pc)
    more = True
    tu = TranslationUnit(pc)
    off = 0
    while True:
        addr = pc + off
        insn = next(_md.disasm(code[off:off + 15], addr, 1), None)
        if insn is None and more and len(code) - off < 15 and len(code) == page_end - pc:
            more = False
            try:
                code += fetch(page_end, 15)
            except GuestFault:
                pass            # the next page is not mapped: left undecodable, as before
            insn = next(_md.disasm(code[off:off + 15], addr, 1), None)
        if insn is None:
            # Undecodable (or cut off by the end of memory): the CPU raises #UD here.
            tu.insns.append(Insn(addr, code[off:off + 1] or b"\x00", Kind.UNDEFINED, "(bad)", "", None))
            tu.end_reason = "undefined opcode"
            return tu
        kind = classify(insn)
        tu.insns.append(Insn(addr, bytes(insn.bytes), kind, insn.mnemonic, insn.op_str, insn))
        off += insn.size
        if kind in TERMINAL:
            tu.end_reason = kind.value
            return tu
        if pc + off >= page_end:
            tu.end_reason = "page boundary"
            return tu
        if len(tu.insns) >= max_insns:
            tu.end_reason = "length cap"
            return tu
