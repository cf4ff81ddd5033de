"""Classification of guest instructions for the translator.

Every instruction is IDENT (copied byte for byte) unless running it unchanged
inside the TC would let the guest observe or alter something the monitor
virtualizes: PC-relative control flow (its target depends on where it runs),
`call` (it pushes a return address), `ret` and indirect branches (their target
is a guest PC, not a TC address), the virtual flags IF/IOPL/AC, the CS and GS
selectors (the TC runs on the monitor's), privileged state, and I/O.
"""

from __future__ import annotations

import enum

from capstone import x86_const as C


class Kind(enum.Enum):
    IDENT = "ident"
    JMP = "jmp"                # direct near jmp
    JCC = "jcc"                # conditional near jump (rel8 or rel32)
    JRCXZ = "jcxz/loop"        # jcxz/jecxz/loop/loope/loopne: rel8 only
    CALL = "call"              # direct near call
    RET = "ret"                # near ret [imm16]
    JMP_IND = "jmp-indirect"
    CALL_IND = "call-indirect"
    CLI = "cli"
    STI = "sti"
    PUSHF = "pushf"
    POPF = "popf"
    SEG_READ = "segment-read"  # mov r/m, cs|gs ; push cs|gs
    GS_ACCESS = "gs-access"    # memory operand with a gs: override
    FPU_ENV = "fpu-env-store"  # fnstenv/fnsave/fxsave: run as is, then the stored x87 IP fixed up
    CALLOUT = "callout"        # emulated by the monitor, execution continues in the CCF
    CALLOUT_END = "callout-end"  # emulated by the monitor, which then picks the next CCF
    UNDEFINED = "undefined"    # #UD on real hardware


JCC_IDS = {
    C.X86_INS_JA, C.X86_INS_JAE, C.X86_INS_JB, C.X86_INS_JBE, C.X86_INS_JE,
    C.X86_INS_JG, C.X86_INS_JGE, C.X86_INS_JL, C.X86_INS_JLE, C.X86_INS_JNE,
    C.X86_INS_JNO, C.X86_INS_JNP, C.X86_INS_JNS, C.X86_INS_JO, C.X86_INS_JP,
    C.X86_INS_JS,
}
JRCXZ_IDS = {C.X86_INS_JCXZ, C.X86_INS_JECXZ, C.X86_INS_LOOP, C.X86_INS_LOOPE,
             C.X86_INS_LOOPNE}

# Emulated, and the TU continues after them.
CALLOUT_IDS = {
    C.X86_INS_IN, C.X86_INS_OUT, C.X86_INS_INSB, C.X86_INS_INSW, C.X86_INS_INSD,
    C.X86_INS_OUTSB, C.X86_INS_OUTSW, C.X86_INS_OUTSD,
    C.X86_INS_CPUID, C.X86_INS_RDMSR, C.X86_INS_WRMSR, C.X86_INS_RDPMC,
    C.X86_INS_SGDT, C.X86_INS_SIDT, C.X86_INS_SLDT, C.X86_INS_STR, C.X86_INS_SMSW,
    C.X86_INS_LGDT, C.X86_INS_LIDT, C.X86_INS_LLDT, C.X86_INS_LTR,
    C.X86_INS_CLTS, C.X86_INS_INVLPG, C.X86_INS_INVD, C.X86_INS_WBINVD,
    C.X86_INS_LAR, C.X86_INS_LSL, C.X86_INS_VERR, C.X86_INS_VERW,
    C.X86_INS_LDS, C.X86_INS_LES, C.X86_INS_LFS, C.X86_INS_LGS, C.X86_INS_LSS,
    C.X86_INS_PUSHF, C.X86_INS_POPF,   # 16-bit forms; the 32-bit ones are inline
}

# Emulated, and control goes wherever the emulation says.
CALLOUT_END_IDS = {
    C.X86_INS_HLT, C.X86_INS_IRET, C.X86_INS_IRETD, C.X86_INS_RETF,
    C.X86_INS_LJMP, C.X86_INS_LCALL, C.X86_INS_INT, C.X86_INS_INT3, C.X86_INS_INTO,
    C.X86_INS_INT1, C.X86_INS_SYSENTER, C.X86_INS_SYSEXIT, C.X86_INS_SYSCALL,
    C.X86_INS_SYSRET, C.X86_INS_LMSW, C.X86_INS_RSM,
}

# They store the address of the last x87 instruction (FIP/FCS), which in the
# TC is a TC address on the monitor's CS: the monitor rewrites it afterwards.
FPU_ENV_IDS = {C.X86_INS_FNSTENV, C.X86_INS_FNSAVE, C.X86_INS_FXSAVE}

UNDEFINED_IDS = {C.X86_INS_UD2, C.X86_INS_UD0, C.X86_INS_UD1, C.X86_INS_SWAPGS}

SEGMENT_REGS = {C.X86_REG_CS, C.X86_REG_DS, C.X86_REG_ES, C.X86_REG_FS,
                C.X86_REG_GS, C.X86_REG_SS}
CONTROL_REGS = set(range(C.X86_REG_CR0, C.X86_REG_CR15 + 1))
DEBUG_REGS = set(range(C.X86_REG_DR0, C.X86_REG_DR15 + 1))


def classify(insn) -> Kind:
    """Kind of a capstone instruction (detail mode, 32-bit)."""
    iid = insn.id
    if iid in JCC_IDS:
        return Kind.JCC
    if iid in JRCXZ_IDS:
        return Kind.JRCXZ
    if iid == C.X86_INS_JMP:
        if insn.operands[0].type == C.X86_OP_IMM:
            return Kind.JMP
        return Kind.JMP_IND if _near32(insn) and not _uses_gs(insn) else Kind.CALLOUT_END
    if iid == C.X86_INS_CALL:
        if insn.operands[0].type == C.X86_OP_IMM:
            return Kind.CALL
        return Kind.CALL_IND if _near32(insn) and not _uses_gs(insn) else Kind.CALLOUT_END
    if iid == C.X86_INS_RET:
        return Kind.RET if insn.prefix[2] != 0x66 else Kind.CALLOUT_END
    if iid == C.X86_INS_CLI:
        return Kind.CLI
    if iid == C.X86_INS_STI:
        return Kind.STI
    if iid == C.X86_INS_PUSHFD:
        return Kind.PUSHF
    if iid == C.X86_INS_POPFD:
        return Kind.POPF
    if iid in UNDEFINED_IDS:
        return Kind.UNDEFINED
    if iid in FPU_ENV_IDS:
        return Kind.FPU_ENV
    if iid in CALLOUT_END_IDS:
        return Kind.CALLOUT_END
    if iid in CALLOUT_IDS:
        return Kind.CALLOUT
    if iid == C.X86_INS_MOV:
        return _classify_mov(insn)
    if iid == C.X86_INS_PUSH and _reg_operand(insn, 0) in (C.X86_REG_CS, C.X86_REG_GS):
        return Kind.SEG_READ if insn.prefix[2] != 0x66 else Kind.CALLOUT
    if iid == C.X86_INS_POP and _reg_operand(insn, 0) in SEGMENT_REGS:
        return Kind.CALLOUT
    if _uses_gs(insn):
        return Kind.GS_ACCESS
    return Kind.IDENT


def _classify_mov(insn) -> Kind:
    dst, src = insn.operands[0], insn.operands[1]
    if dst.type == C.X86_OP_REG and dst.reg in CONTROL_REGS:
        # CR0/CR3/CR4 writes change how everything after them runs.
        return Kind.CALLOUT_END if dst.reg in (C.X86_REG_CR0, C.X86_REG_CR3, C.X86_REG_CR4) else Kind.CALLOUT
    if (dst.type == C.X86_OP_REG and dst.reg in DEBUG_REGS) or (
            src.type == C.X86_OP_REG and (src.reg in CONTROL_REGS or src.reg in DEBUG_REGS)):
        return Kind.CALLOUT
    if dst.type == C.X86_OP_REG and dst.reg in SEGMENT_REGS:
        return Kind.CALLOUT          # segment load: descriptor checks, shadow GDT
    if src.type == C.X86_OP_REG and src.reg in (C.X86_REG_CS, C.X86_REG_GS):
        # register destinations read the virtual selector inline; stores to memory are rare
        return Kind.SEG_READ if dst.type == C.X86_OP_REG else Kind.CALLOUT
    if _uses_gs(insn):
        return Kind.GS_ACCESS
    return Kind.IDENT


def _reg_operand(insn, i: int) -> int | None:
    ops = insn.operands
    if len(ops) > i and ops[i].type == C.X86_OP_REG:
        return ops[i].reg
    return None


def _near32(insn) -> bool:
    """A near indirect branch with a 32-bit operand (not a far pointer, not 16-bit).
    The ModRM reg field tells near (FF /2 call, FF /4 jmp) from far (FF /3, FF /5):
    capstone 5 reports `call far m16:32` with a 4-byte operand, which made it a
    near call here (found by selfcheck)."""
    return ((insn.modrm >> 3) & 7) in (2, 4) and insn.prefix[2] != 0x66


def _uses_gs(insn) -> bool:
    return insn.prefix[1] == 0x65 or any(
        op.type == C.X86_OP_MEM and op.mem.segment == C.X86_REG_GS for op in insn.operands)
