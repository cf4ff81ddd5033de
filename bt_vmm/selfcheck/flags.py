"""Which arithmetic flags are undefined at the end of a run.

The SDM leaves some flags undefined after many instructions (AF after a
logical operation, everything after a division, OF after a multi-bit shift
...). Those bits are masked from the comparison: the mask follows the
instructions the reference executed, in order -- a flag is undefined when the
last instruction that wrote it left it undefined. Capstone's per-instruction
flag tables give the first cut; the corrections below fix the cases where they
are looser than the SDM.
"""

from __future__ import annotations

from functools import lru_cache

import capstone
from capstone import x86_const as C

CF, PF, AF, ZF, SF, OF = 0x1, 0x4, 0x10, 0x40, 0x80, 0x800
ARITH = CF | PF | AF | ZF | SF | OF

_BITS = {"CF": CF, "PF": PF, "AF": AF, "ZF": ZF, "SF": SF, "OF": OF}
_DEFINE: list[tuple[int, int]] = []
_UNDEF: list[tuple[int, int]] = []
_TEST: list[tuple[int, int]] = []
for _name, _bit in _BITS.items():
    _c = getattr(C, f"X86_EFLAGS_TEST_{_name}", 0)
    if _c:
        _TEST.append((_c, _bit))
    for _how in ("MODIFY", "SET", "RESET"):
        _c = getattr(C, f"X86_EFLAGS_{_how}_{_name}", 0)
        if _c:
            _DEFINE.append((_c, _bit))
    _c = getattr(C, f"X86_EFLAGS_UNDEFINED_{_name}", 0)
    if _c:
        _UNDEF.append((_c, _bit))

_SHIFTS = {C.X86_INS_SHL, C.X86_INS_SAL, C.X86_INS_SHR, C.X86_INS_SAR, C.X86_INS_ROL, C.X86_INS_ROR,
           C.X86_INS_RCL, C.X86_INS_RCR, C.X86_INS_SHLD, C.X86_INS_SHRD}

# Instructions that read flags capstone does not list as tested.
_READS = {C.X86_INS_PUSHF: ARITH, C.X86_INS_PUSHFD: ARITH, C.X86_INS_LAHF: CF | PF | AF | ZF | SF,
          C.X86_INS_AAA: AF, C.X86_INS_AAS: AF, C.X86_INS_DAA: AF | CF, C.X86_INS_DAS: AF | CF,
          C.X86_INS_INTO: OF, C.X86_INS_SALC: CF}
# Instructions whose only output is flags: reading an undefined flag leaves
# their result undefined instead of leaking it into registers or memory.
_FLAGS_ONLY = {C.X86_INS_CMC}

_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
_md.detail = True


@lru_cache(maxsize=65536)
def effect(code: bytes) -> tuple[int, int]:
    """(flags the instruction defines, flags it leaves undefined)."""
    return _effect(code)[:2]


@lru_cache(maxsize=65536)
def _effect(code: bytes) -> tuple[int, int, int, bool]:
    """(defines, leaves undefined, reads, flags-only)."""
    insn = next(_md.disasm(code, 0, 1), None)
    if insn is None:
        return 0, 0, 0, False
    if insn.group(capstone.x86.X86_GRP_FPU):
        # capstone keeps the x87 condition codes in the same field for FPU
        # instructions: only fcomi & co. write EFLAGS, fcmovcc reads it
        m = insn.mnemonic
        if m.startswith(("fcomi", "fucomi", "fcompi", "fucompi")):
            return ARITH, 0, 0, False
        if m.startswith("fcmov"):
            return 0, 0, CF | ZF | PF, False
        return 0, 0, 0, False
    try:
        f = insn.eflags
    except (capstone.CsError, AttributeError):
        return 0, 0, 0, False
    defined = 0
    undef = 0
    reads = _READS.get(insn.id, 0)
    for c, bit in _TEST:
        if f & c:
            reads |= bit
    for c, bit in _DEFINE:
        if f & c:
            defined |= bit
    for c, bit in _UNDEF:
        if f & c:
            undef |= bit
    iid = insn.id
    if iid in _SHIFTS:
        count_op = insn.operands[-1]
        if count_op.type == C.X86_OP_IMM:
            n = count_op.imm & 0x1F
            if n == 0:
                return 0, 0, reads, False        # a zero count changes no flag
            if n != 1:
                undef |= OF                      # OF is defined for 1-bit shifts only
        else:
            # a CL count: zero leaves every flag alone, one defines OF: mask what it may touch
            undef |= defined | OF
            defined = 0
    elif iid == C.X86_INS_IMUL:
        undef |= SF | ZF | AF | PF               # SDM: only CF and OF are defined
    elif iid in (C.X86_INS_BSF, C.X86_INS_BSR):
        undef |= CF | OF | SF | AF | PF
    defined &= ~undef
    return defined, undef, reads & ARITH, insn.id in _FLAGS_ONLY


def undefined_after(trace: list[bytes]) -> int:
    """The undefined-flag mask after executing the instructions in `trace`."""
    return analyze(trace)[0]


def analyze(trace: list[bytes]) -> tuple[int, int | None]:
    """(undefined-flag mask at the end, index of the first instruction that
    consumed an undefined flag -- branched on it, or moved it into a register
    or memory -- or None).

    Unicorn evaluates flags lazily, and what an "undefined" flag holds can
    depend on where its translation blocks begin -- which differs between the
    reference and the TC by construction. A run that consumed one has no
    single right answer to compare with."""
    mask = 0
    consumer = None
    for i, code in enumerate(trace):
        defined, undef, reads, flags_only = _effect(code)
        if reads & mask:
            if flags_only:
                undef |= defined & ARITH
                defined = 0
            elif consumer is None:
                consumer = i
        mask = (mask & ~defined) | undef
    return mask & ARITH, consumer
