"""Emulation of the instructions the translator turns into callouts.

Each handler gets the register frame of the exit and the decoded guest
instruction, changes the frame and guest state as the instruction would, and
returns None to continue after the callout, or the guest EIP where execution
goes next. A GuestFault raised here is delivered to the guest at the
instruction, with the frame discarded (x86 faults leave no partial results).
"""

from __future__ import annotations

from typing import Callable

from capstone import x86_const as C
from unicorn.x86_const import (UC_X86_REG_EAX, UC_X86_REG_EDX, UC_X86_REG_FCS, UC_X86_REG_FDS,
                               UC_X86_REG_FIP)

from bt_vmm.devices.bus import PortBus
from bt_vmm.errors import GuestExit, EXIT_OK, Unsupported
from bt_vmm.machine.memory import GuestFault
from bt_vmm.tcache import region as R
from bt_vmm.vcpu import cpuid as cpuid_mod
from bt_vmm.vcpu.descriptors import Descriptor
from bt_vmm.vcpu.frame import Frame
from bt_vmm.vcpu.state import CR0_TS, IF, IOPL, Segment, VCpu

# capstone register -> (frame index, size in bytes, bit shift)
_GPR = {}
for _i, _n in enumerate(("EAX", "ECX", "EDX", "EBX", "ESP", "EBP", "ESI", "EDI")):
    _GPR[getattr(C, f"X86_REG_{_n}")] = (_i, 4, 0)
    _GPR[getattr(C, f"X86_REG_{_n[1:]}")] = (_i, 2, 0)
for _i, _n in enumerate(("AL", "CL", "DL", "BL")):
    _GPR[getattr(C, f"X86_REG_{_n}")] = (_i, 1, 0)
    _GPR[getattr(C, f"X86_REG_{_n[0]}H")] = (_i, 1, 8)
_SEG_NAME = {C.X86_REG_CS: "cs", C.X86_REG_DS: "ds", C.X86_REG_ES: "es", C.X86_REG_FS: "fs",
             C.X86_REG_GS: "gs", C.X86_REG_SS: "ss"}
_CR = {getattr(C, f"X86_REG_CR{n}"): n for n in range(16)}
_DR = {getattr(C, f"X86_REG_DR{n}"): n for n in range(8)}
_SEG_LOAD_IDS = {C.X86_INS_LDS: "ds", C.X86_INS_LES: "es", C.X86_INS_LFS: "fs",
                 C.X86_INS_LGS: "gs", C.X86_INS_LSS: "ss"}
HALT = -1   # returned by hlt with interrupts enabled: wait for an interrupt
# Iterations of a rep ins/outs per exit: a longer one is restarted at the
# instruction with ECX/ESI/EDI advanced, as an interrupted one is on hardware,
# so a guest's `rep insb` of 4 G bytes cannot keep the monitor past --timeout.
REP_CHUNK = 4096
CR4_DE = 1 << 3
_X87_POINTERS = (UC_X86_REG_FIP, UC_X86_REG_FCS, UC_X86_REG_FDS)
DR6_FIXED_1, DR7_FIXED_1 = 0xFFFF0FF0, 0x400


class Emulator:
    def __init__(self, vcpu: VCpu, bus: PortBus) -> None:
        self.vcpu = vcpu
        self.mem = vcpu.mem
        self.bus = bus
        self._handlers: dict[int, Callable[[Frame, object], int | None]] = {
            C.X86_INS_IN: self._in, C.X86_INS_OUT: self._out,
            C.X86_INS_INSB: self._ins, C.X86_INS_INSW: self._ins, C.X86_INS_INSD: self._ins,
            C.X86_INS_OUTSB: self._outs, C.X86_INS_OUTSW: self._outs, C.X86_INS_OUTSD: self._outs,
            C.X86_INS_CPUID: self._cpuid, C.X86_INS_RDMSR: self._rdmsr, C.X86_INS_WRMSR: self._wrmsr,
            C.X86_INS_RDPMC: self._rdpmc,
            C.X86_INS_SGDT: self._sgdt, C.X86_INS_SIDT: self._sidt,
            C.X86_INS_SLDT: self._sldt, C.X86_INS_STR: self._str, C.X86_INS_SMSW: self._smsw,
            C.X86_INS_LGDT: self._lgdt, C.X86_INS_LIDT: self._lidt,
            C.X86_INS_LLDT: self._lldt, C.X86_INS_LTR: self._ltr,
            C.X86_INS_CLTS: self._clts, C.X86_INS_LMSW: self._lmsw,
            C.X86_INS_INVLPG: self._invlpg, C.X86_INS_INVD: self._nop, C.X86_INS_WBINVD: self._nop,
            C.X86_INS_LAR: self._lar, C.X86_INS_LSL: self._lsl,
            C.X86_INS_VERR: self._verr, C.X86_INS_VERW: self._verw,
            C.X86_INS_PUSHF: self._pushf16, C.X86_INS_POPF: self._popf16,
            C.X86_INS_MOV: self._mov, C.X86_INS_POP: self._pop_seg, C.X86_INS_PUSH: self._push_seg16,
            C.X86_INS_HLT: self._hlt, C.X86_INS_IRETD: self._iret, C.X86_INS_IRET: self._iret,
            C.X86_INS_RETF: self._retf, C.X86_INS_LJMP: self._ljmp, C.X86_INS_LCALL: self._lcall,
            C.X86_INS_JMP: self._ljmp, C.X86_INS_CALL: self._lcall, C.X86_INS_RET: self._unsupported,
            C.X86_INS_INT: self._int, C.X86_INS_INT3: self._int3, C.X86_INS_INTO: self._into,
            C.X86_INS_INT1: self._int1,
            C.X86_INS_SYSENTER: self._sysenter, C.X86_INS_SYSEXIT: self._sysexit,
            C.X86_INS_SYSCALL: self._ud, C.X86_INS_SYSRET: self._ud, C.X86_INS_RSM: self._ud,
        }
        for iid in _SEG_LOAD_IDS:
            self._handlers[iid] = self._lxs
        for iid in (C.X86_INS_FNSTENV, C.X86_INS_FNSAVE, C.X86_INS_FXSAVE):
            self._handlers[iid] = self._fpu_env
        # TC address -> guest EIP (set by the engine): for the x87 instruction
        # pointer that fnstenv/fnsave/fxsave store.
        self.tc_to_guest: Callable[[int], int | None] | None = None
        vcpu.cs_changing = self._x87_pointers_to_guest

    def fast_path(self, insn) -> Callable[[], None] | None:
        """A specialised handler for the hottest callouts, port I/O with a
        register operand: it touches two registers instead of the whole frame."""
        iid = insn.cs.id
        if iid not in (C.X86_INS_IN, C.X86_INS_OUT):
            return None
        ops = insn.cs.operands
        data, port_op = (ops[0], ops[1]) if iid == C.X86_INS_IN else (ops[1], ops[0])
        size = data.size
        mask = (1 << (8 * size)) - 1
        fixed_port = port_op.imm & 0xFF if port_op.type == C.X86_OP_IMM else None
        regs, bus = self.vcpu.regs, self.bus
        EAX, EDX = UC_X86_REG_EAX, UC_X86_REG_EDX

        def port() -> int:
            return fixed_port if fixed_port is not None else regs.read(EDX) & 0xFFFF

        if iid == C.X86_INS_IN:
            def fast_in() -> None:
                value = bus.read(port(), size)
                regs.write(EAX, (regs.read(EAX) & ~mask) | value)
            return fast_in

        def fast_out() -> None:
            bus.write(port(), size, regs.read(EAX) & mask)
        return fast_out

    def run(self, frame: Frame, insn) -> int | None:
        handler = self._handlers.get(insn.cs.id)
        if handler is None:
            raise Unsupported(f"no emulation for '{insn}' at {insn.addr:#x}")
        return handler(frame, insn)

    # --- operands ---------------------------------------------------------------
    def _ea(self, frame: Frame, op) -> int:
        m = op.mem
        addr = m.disp
        if m.base:
            addr += self._reg(frame, m.base)
        if m.index:
            addr += self._reg(frame, m.index) * m.scale
        seg = _SEG_NAME.get(m.segment) or ("ss" if m.base in (C.X86_REG_ESP, C.X86_REG_EBP) else "ds")
        return (self.vcpu.seg_base(seg) + addr) & 0xFFFFFFFF

    def _reg(self, frame: Frame, reg: int) -> int:
        i, size, shift = _GPR[reg]
        return (frame.r[i] >> shift) & ((1 << (8 * size)) - 1)

    def _set_reg(self, frame: Frame, reg: int, value: int) -> None:
        i, size, shift = _GPR[reg]
        mask = ((1 << (8 * size)) - 1) << shift
        frame.r[i] = (frame.r[i] & ~mask) | ((value << shift) & mask)

    def _read_op(self, frame: Frame, op) -> int:
        if op.type == C.X86_OP_REG:
            return self._reg(frame, op.reg)
        if op.type == C.X86_OP_IMM:
            return op.imm & 0xFFFFFFFF
        return self.mem.read_u(self._ea(frame, op), op.size)

    def _write_op(self, frame: Frame, op, value: int, size: int | None = None) -> None:
        if op.type == C.X86_OP_REG:
            i, rsize, _ = _GPR[op.reg]
            # A 32-bit destination register is written whole (zero-extended).
            self._set_reg(frame, op.reg, value if rsize != 4 else value & 0xFFFFFFFF)
        else:
            self.mem.write_u(self._ea(frame, op), size or op.size, value)

    def _push(self, frame: Frame, value: int, size: int = 4) -> None:
        esp = (frame.esp - size) & 0xFFFFFFFF
        self.mem.write_u(self.vcpu.seg_base("ss") + esp, size, value)
        frame.esp = esp

    def _peek(self, frame: Frame, offset: int, size: int = 4) -> int:
        return self.mem.read_u(self.vcpu.seg_base("ss") + ((frame.esp + offset) & 0xFFFFFFFF), size)

    # --- I/O ----------------------------------------------------------------------
    def _in(self, frame: Frame, insn) -> None:
        dst, src = insn.cs.operands
        port = self._read_op(frame, src) & 0xFFFF
        self._set_reg(frame, dst.reg, self.bus.read(port, dst.size))

    def _out(self, frame: Frame, insn) -> None:
        dst, src = insn.cs.operands
        port = self._read_op(frame, dst) & 0xFFFF
        self.bus.write(port, src.size, self._reg(frame, src.reg))

    def _string_io(self, frame: Frame, insn, size: int, index: int, one) -> int | None:
        """The rep loop of ins/outs. The address size (0x67: SI/DI and CX) is
        honoured, and a fault part-way leaves the registers at the iteration
        that faulted, as a rep string instruction does (SDM vol. 1, 7.3.9.1),
        instead of at its start with the earlier iterations' I/O already done
        (both found by selfcheck)."""
        a16 = insn.cs.prefix[3] == 0x67
        mask = 0xFFFF if a16 else 0xFFFFFFFF
        step = -size if frame.eflags & 0x400 else size
        rep = insn.cs.prefix[0] in (0xF3, 0xF2)
        count = (frame.r[1] & mask) if rep else 1
        for _ in range(min(count, REP_CHUNK)):
            try:
                one((frame.r[index] & mask))
            except GuestFault:
                frame.commit()
                raise
            frame.r[index] = (frame.r[index] & ~mask) | ((frame.r[index] + step) & mask)
            if rep:
                frame.r[1] = (frame.r[1] & ~mask) | ((frame.r[1] - 1) & mask)
        return insn.addr if rep and frame.r[1] & mask else None

    def _ins(self, frame: Frame, insn) -> int | None:
        size = insn.cs.operands[0].size if insn.cs.operands[0].type == C.X86_OP_MEM else insn.cs.operands[1].size
        port = frame.r[2] & 0xFFFF
        es = self.vcpu.seg_base("es")

        def one(di: int) -> None:
            value = self.bus.read(port, size)
            self.mem.write_u(es + di, size, value)
        return self._string_io(frame, insn, size, 7, one)

    def _outs(self, frame: Frame, insn) -> int | None:
        mem_op = next(op for op in insn.cs.operands if op.type == C.X86_OP_MEM)
        size = mem_op.size
        base = self.vcpu.seg_base(_SEG_NAME.get(mem_op.mem.segment, "ds"))
        port = frame.r[2] & 0xFFFF

        def one(si: int) -> None:
            self.bus.write(port, size, self.mem.read_u(base + si, size))
        return self._string_io(frame, insn, size, 6, one)

    # --- processor identification and MSRs ------------------------------------
    def _cpuid(self, frame: Frame, insn) -> None:
        frame.r[0], frame.r[3], frame.r[1], frame.r[2] = cpuid_mod.cpuid(frame.r[0], frame.r[1])

    def _rdmsr(self, frame: Frame, insn) -> None:
        v = self.vcpu.rdmsr(frame.r[1])
        frame.r[0], frame.r[2] = v & 0xFFFFFFFF, v >> 32

    def _wrmsr(self, frame: Frame, insn) -> None:
        self.vcpu.wrmsr(frame.r[1], (frame.r[2] << 32) | frame.r[0])

    def _rdpmc(self, frame: Frame, insn) -> None:
        if frame.r[1] > 1:
            raise GuestFault(13, 0)
        frame.r[0] = frame.r[2] = 0

    # --- descriptor-table registers --------------------------------------------
    def _store_table(self, frame: Frame, insn, table: tuple[int, int]) -> None:
        ea = self._ea(frame, insn.cs.operands[0])
        base, limit = table
        self.mem.write_u(ea, 2, limit)
        self.mem.write_u(ea + 2, 4, base)

    def _sgdt(self, frame: Frame, insn) -> None:
        self._store_table(frame, insn, self.vcpu.gdtr)

    def _sidt(self, frame: Frame, insn) -> None:
        self._store_table(frame, insn, self.vcpu.idtr)

    def _load_table(self, frame: Frame, insn) -> tuple[int, int]:
        ea = self._ea(frame, insn.cs.operands[0])
        limit = self.mem.read_u(ea, 2)
        base = self.mem.read_u(ea + 2, 4)
        if insn.cs.prefix[2] == 0x66:
            base &= 0xFFFFFF    # 16-bit operand size loads a 24-bit base
        return base, limit

    def _lgdt(self, frame: Frame, insn) -> None:
        self.vcpu.gdtr = self._load_table(frame, insn)

    def _lidt(self, frame: Frame, insn) -> None:
        self.vcpu.idtr = self._load_table(frame, insn)

    def _store_selector(self, frame: Frame, insn, value: int) -> None:
        op = insn.cs.operands[0]
        self._write_op(frame, op, value, 2)

    def _sldt(self, frame: Frame, insn) -> None:
        self._store_selector(frame, insn, self.vcpu.ldtr.selector)

    def _str(self, frame: Frame, insn) -> None:
        self._store_selector(frame, insn, self.vcpu.tr.selector)

    def _smsw(self, frame: Frame, insn) -> None:
        op = insn.cs.operands[0]
        cr0 = self.vcpu.cr0 & 0xFFFF
        if op.type == C.X86_OP_REG:
            # smsw r32: the SDM leaves the upper half undefined; keep it, as unicorn
            # does, so that the two agree (found by selfcheck)
            i = _GPR[op.reg][0]
            frame.r[i] = (frame.r[i] & ~0xFFFF) | cr0
            return
        self._write_op(frame, op, cr0, 2)

    def _system_descriptor(self, selector: int, types: set[int]) -> tuple[Descriptor, bytes]:
        if selector & 4:
            raise GuestFault(13, selector & 0xFFFC)
        desc, raw = self.vcpu.read_descriptor(selector)
        if not desc.is_system or (desc.access & 0xF) not in types:
            raise GuestFault(13, selector & 0xFFFC)
        if not desc.present:
            raise GuestFault(11, selector & 0xFFFC)
        return desc, raw

    def _lldt(self, frame: Frame, insn) -> None:
        sel = self._read_op(frame, insn.cs.operands[0]) & 0xFFFF
        if sel & 0xFFFC == 0:
            self.vcpu.ldtr = Segment(0, Descriptor(0, 0, 0, 0))
            return
        desc, _ = self._system_descriptor(sel, {0x2})
        self.vcpu.ldtr = Segment(sel, desc)

    def _ltr(self, frame: Frame, insn) -> None:
        sel = self._read_op(frame, insn.cs.operands[0]) & 0xFFFF
        if sel & 0xFFFC == 0:
            raise GuestFault(13, 0)
        desc, raw = self._system_descriptor(sel, {0x1, 0x9})
        # ltr marks the TSS busy in the guest's GDT (SDM vol. 2, LTR).
        self.mem.write_lin(self.vcpu.gdtr[0] + (sel & 0xFFF8) + 5, bytes([raw[5] | 0x2]))
        self.vcpu.tr = Segment(sel, Descriptor.unpack(raw[:5] + bytes([raw[5] | 0x2]) + raw[6:]))

    # --- control registers ------------------------------------------------------
    def _clts(self, frame: Frame, insn) -> None:
        self.vcpu.write_cr(0, self.vcpu.cr0 & ~CR0_TS)

    def _lmsw(self, frame: Frame, insn) -> int:
        v = self._read_op(frame, insn.cs.operands[0]) & 0xF
        # lmsw can set PE but never clear it (SDM vol. 2, LMSW).
        self.vcpu.write_cr(0, (self.vcpu.cr0 & ~0xE) | v | (self.vcpu.cr0 & 1))
        return insn.next

    def _nop(self, frame: Frame, insn) -> None:
        return None

    def _dr_index(self, n: int) -> int:
        """DR4/DR5 are DR6/DR7 with CR4.DE clear and #UD with it set (SDM vol. 3,
        17.2.2). (Found by selfcheck: they were separate registers.)"""
        if n in (4, 5):
            if self.vcpu.cr4 & CR4_DE:
                raise GuestFault(6)
            return n + 2
        return n

    def _invlpg(self, frame: Frame, insn) -> None:
        self.vcpu.invlpg(self._ea(frame, insn.cs.operands[0]))

    def _mov(self, frame: Frame, insn) -> int | None:
        dst, src = insn.cs.operands
        if dst.type == C.X86_OP_REG and dst.reg in _CR:
            n = _CR[dst.reg]
            self.vcpu.write_cr(n, self._reg(frame, src.reg))
            # CR0/CR3/CR4 end the TU (CALLOUT_END); a CR2 write continues in the CCF,
            # as the decoder promised (found by selfcheck: it started a new TU)
            return insn.next if n in (0, 3, 4) else None
        if src.type == C.X86_OP_REG and src.reg in _CR:
            self._set_reg(frame, dst.reg, self.vcpu.read_cr(_CR[src.reg]))
            return None
        if dst.type == C.X86_OP_REG and dst.reg in _DR:
            n = self._dr_index(_DR[dst.reg])
            value = self._reg(frame, src.reg)
            # the bits DR6 and DR7 always read as set (what unicorn keeps, too)
            self.vcpu.dr[n] = value | (DR6_FIXED_1 if n == 6 else DR7_FIXED_1 if n == 7 else 0)
            return None
        if src.type == C.X86_OP_REG and src.reg in _DR:
            self._set_reg(frame, dst.reg, self.vcpu.dr[self._dr_index(_DR[src.reg])])
            return None
        if dst.type == C.X86_OP_REG and dst.reg in _SEG_NAME:
            name = _SEG_NAME[dst.reg]
            if name == "cs":
                raise GuestFault(6)
            self.vcpu.load_data_segment(name, self._read_op(frame, src))
            return None
        if src.type == C.X86_OP_REG and src.reg in _SEG_NAME:
            self._write_op(frame, dst, self.vcpu.segs[_SEG_NAME[src.reg]].selector, 2)
            return None
        raise Unsupported(f"no emulation for '{insn}' at {insn.addr:#x}")

    # --- the x87 instruction and data pointers ------------------------------------------
    # An x87 instruction run in the TC records a TC address as FIP and the
    # monitor's CS as FCS (and as FDS, after a cs: operand). The guest must see
    # the guest PC the TC address maps to and the guest CS it ran under (SDM
    # vol. 1, 8.1.8): the pointers are put in guest terms when the guest stores
    # them, and before the guest's CS changes, while the CS they belong to is
    # still known.
    def _x87_guest_pointers(self, fip: int, fcs: int, fds: int, cs: int) -> tuple[int, int, int]:
        """(FIP, FCS, FDS) as the guest sees them, for x87 instructions run under guest CS `cs`."""
        guest = self.tc_to_guest(fip)
        return (fip if guest is None else guest,       # (not a TC address: e.g. loaded by fldenv)
                cs if fcs == R.MON_CS_SEL else fcs, cs if fds == R.MON_CS_SEL else fds)

    def _fpu_env(self, frame: Frame, insn) -> None:
        """fnstenv/fnsave/fxsave already ran in the TC: fix the pointers they
        stored. (32-bit formats; a 16-bit environment keeps only FIP's low
        half, which cannot be mapped back.)"""
        cs = insn.cs
        if self.tc_to_guest is None or (cs.prefix[2] == 0x66 and cs.id != C.X86_INS_FXSAVE):
            return None
        fip_off, fcs_off, fds_off = (8, 12, 20) if cs.id == C.X86_INS_FXSAVE else (12, 16, 24)
        ea = self._ea(frame, cs.operands[0])
        fields = ((ea + fip_off, 4), (ea + fcs_off, 2), (ea + fds_off, 2))
        stored = [self.mem.read_u(addr, size) for addr, size in fields]
        fixed = self._x87_guest_pointers(*stored, self.vcpu.segs["cs"].selector)
        for (addr, size), old, new in zip(fields, stored, fixed):
            if new != old:
                self.mem.write_u(addr, size, new)
        return None

    def _x87_pointers_to_guest(self, old_cs: int) -> None:
        """The guest's CS is about to change: x87 instructions run in the TC
        since the last change ran under `old_cs`. Put the FPU's own pointers
        in guest terms, for a later store (in the TC or in user code)."""
        regs = self.vcpu.regs
        if self.tc_to_guest is None or regs.read(UC_X86_REG_FCS) != R.MON_CS_SEL:
            return                              # no x87 instruction ran in the TC since
        fip, fds = regs.read_many((UC_X86_REG_FIP, UC_X86_REG_FDS))
        regs.write_many(_X87_POINTERS, self._x87_guest_pointers(fip, R.MON_CS_SEL, fds, old_cs))

    # --- segment registers --------------------------------------------------------
    def _pop_seg(self, frame: Frame, insn) -> None:
        name = _SEG_NAME[insn.cs.operands[0].reg]
        size = 2 if insn.cs.prefix[2] == 0x66 else 4
        self.vcpu.load_data_segment(name, self._peek(frame, 0, size))
        frame.esp += size

    def _push_seg16(self, frame: Frame, insn) -> None:
        self._push(frame, self.vcpu.segs[_SEG_NAME[insn.cs.operands[0].reg]].selector, 2)

    def _lxs(self, frame: Frame, insn) -> None:
        dst, src = insn.cs.operands
        ea = self._ea(frame, src)
        off_size = dst.size
        offset = self.mem.read_u(ea, off_size)
        sel = self.mem.read_u(ea + off_size, 2)
        self.vcpu.load_data_segment(_SEG_LOAD_IDS[insn.cs.id], sel)
        self._set_reg(frame, dst.reg, offset)

    def _access_check(self, frame: Frame, insn, ok: Callable[[Descriptor], bool]) -> Descriptor | None:
        """Shared by lar/lsl/verr/verw: ZF=1 and the descriptor when the selector passes."""
        sel = self._read_op(frame, insn.cs.operands[-1]) & 0xFFFF
        desc = None
        if sel & 0xFFFC:
            try:
                d, _ = self.vcpu.read_descriptor(sel)
            except GuestFault:
                d = None
            privileged = d is not None and not (d.is_code and d.conforming)
            if d is not None and ok(d) and not (privileged and (self.vcpu.cpl > d.dpl or (sel & 3) > d.dpl)):
                desc = d
        frame.eflags = (frame.eflags | 0x40) if desc is not None else (frame.eflags & ~0x40)
        return desc

    def _lar(self, frame: Frame, insn) -> None:
        d = self._access_check(frame, insn, lambda d: not d.is_system or (d.access & 0xF) in {1, 2, 3, 4, 5, 9, 0xB, 0xC})
        if d is not None:
            self._set_reg(frame, insn.cs.operands[0].reg, ((d.flags << 20) | (d.access << 8)) & 0x00FFFF00)

    def _lsl(self, frame: Frame, insn) -> None:
        d = self._access_check(frame, insn, lambda d: not d.is_system or (d.access & 0xF) in {1, 2, 3, 9, 0xB})
        if d is not None:
            self._set_reg(frame, insn.cs.operands[0].reg, d.limit)

    def _verr(self, frame: Frame, insn) -> None:
        self._access_check(frame, insn, lambda d: not d.is_system and d.readable)

    def _verw(self, frame: Frame, insn) -> None:
        self._access_check(frame, insn, lambda d: d.writable)

    # --- flags ------------------------------------------------------------------
    def _pushf16(self, frame: Frame, insn) -> None:
        self._push(frame, self.vcpu.guest_eflags(frame.eflags) & 0xFFFF, 2)

    def _popf16(self, frame: Frame, insn) -> None:
        value = self._peek(frame, 0, 2)
        cur = self.vcpu.guest_eflags(frame.eflags)
        self.vcpu.load_eflags(frame, (cur & 0xFFFF0000) | value)
        frame.esp += 2

    # --- control transfers and halting --------------------------------------------
    def _hlt(self, frame: Frame, insn) -> int:
        if not self.vcpu.interrupts_enabled:
            raise GuestExit(EXIT_OK, "guest halted with interrupts disabled")
        return HALT

    def _iret(self, frame: Frame, insn) -> int:
        if insn.cs.id == C.X86_INS_IRET:
            raise Unsupported("16-bit iret is not virtualized")
        eflags_now = self.vcpu.guest_eflags(frame.eflags)
        if eflags_now & 0x4000:
            raise Unsupported("iret with EFLAGS.NT (task return) is not virtualized")
        eip, cs, eflags = self._peek(frame, 0), self._peek(frame, 4) & 0xFFFF, self._peek(frame, 8)
        if eflags & 0x20000 and self.vcpu.cpl == 0:
            # VM in the popped image at CPL0 is a return to virtual-8086 mode, where
            # CS is a real-mode segment: no descriptor checks, no #GP (found by selfcheck)
            raise Unsupported("iret to virtual-8086 mode is not virtualized")
        if (cs & 3) > self.vcpu.cpl:
            return self.vcpu.iret_outer(frame, eip, cs, eflags)
        seg = self.vcpu.code_segment(cs)
        if self.vcpu.cpl != 0:
            eflags = (eflags & ~IOPL) | (eflags_now & IOPL)
            if self.vcpu.cpl > (eflags_now & IOPL) >> 12:
                eflags = (eflags & ~IF) | (eflags_now & IF)
        self.vcpu.set_cs(seg)
        self.vcpu.load_eflags(frame, eflags)
        frame.esp += 12
        return eip

    def _retf(self, frame: Frame, insn) -> int:
        imm = insn.cs.operands[0].imm if insn.cs.operands else 0
        eip, cs = self._peek(frame, 0), self._peek(frame, 4) & 0xFFFF
        if (cs & 3) > self.vcpu.cpl:
            # The descriptor checks come first: a bad selector is a #GP/#NP for
            # the guest, not a missing feature (found by selfcheck).
            self.vcpu.code_segment(cs, outer=True)
            raise Unsupported("far return to an outer privilege level is not virtualized yet")
        self.vcpu.set_cs(self.vcpu.code_segment(cs))
        frame.esp += 8 + imm
        return eip

    def _far_target(self, frame: Frame, insn) -> tuple[int, int]:
        ops = insn.cs.operands
        if len(ops) == 2:                      # ptr16:32 immediate
            return ops[0].imm & 0xFFFF, ops[1].imm & 0xFFFFFFFF
        # FF /3, FF /5 with m16:32 (capstone may give the operand as 4 or 6 bytes)
        if ops[0].type != C.X86_OP_MEM or insn.cs.prefix[2] == 0x66:
            raise Unsupported(f"'{insn}' at {insn.addr:#x}: 16-bit near/far branches are not translated")
        ea = self._ea(frame, ops[0])
        return self.mem.read_u(ea + 4, 2), self.mem.read_u(ea, 4)

    def _near_indirect(self, frame: Frame, insn) -> int | None:
        """The target of a near `jmp/call r/m32` that reached the emulator (one
        that uses the guest's GS, which the TC cannot read inline); None for the
        far forms. (Found by selfcheck: these used to stop the run.)"""
        cs = insn.cs
        if cs.opcode[0] != 0xFF or ((cs.modrm >> 3) & 7) not in (2, 4):
            return None
        if cs.prefix[2] == 0x66:
            raise Unsupported(f"'{insn}' at {insn.addr:#x}: 16-bit near/far branches are not translated")
        return self._read_op(frame, cs.operands[0]) & 0xFFFFFFFF

    def _ljmp(self, frame: Frame, insn) -> int:
        near = self._near_indirect(frame, insn)
        if near is not None:
            return near
        sel, off = self._far_target(frame, insn)
        self.vcpu.set_cs(self.vcpu.code_segment(sel))
        return off

    def _lcall(self, frame: Frame, insn) -> int:
        near = self._near_indirect(frame, insn)
        if near is not None:
            self._push(frame, insn.next)
            return near
        sel, off = self._far_target(frame, insn)
        seg = self.vcpu.code_segment(sel)
        self._push(frame, self.vcpu.segs["cs"].selector)
        self._push(frame, insn.next)
        self.vcpu.set_cs(seg)
        return off

    def _int(self, frame: Frame, insn) -> int:
        return self.vcpu.raise_exception(frame, insn.cs.operands[0].imm & 0xFF, None, insn.next,
                                         soft=True, insn_eip=insn.addr)

    def _int3(self, frame: Frame, insn) -> int:
        return self.vcpu.raise_exception(frame, 3, None, insn.next, soft=True, insn_eip=insn.addr)

    def _into(self, frame: Frame, insn) -> int:
        if frame.eflags & 0x800:
            return self.vcpu.raise_exception(frame, 4, None, insn.next, soft=True, insn_eip=insn.addr)
        return insn.next

    def _int1(self, frame: Frame, insn) -> int:
        return self.vcpu.raise_exception(frame, 1, None, insn.next)

    def _sysenter(self, frame: Frame, insn) -> int:
        return self.vcpu.sysenter(frame)

    def _sysexit(self, frame: Frame, insn) -> int:
        return self.vcpu.sysexit(frame)

    def _ud(self, frame: Frame, insn) -> int:
        raise GuestFault(6)

    def _unsupported(self, frame: Frame, insn) -> int:
        raise Unsupported(f"'{insn}' at {insn.addr:#x} is not virtualized yet")
