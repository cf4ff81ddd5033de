"""The virtual CPU: everything the guest believes about its processor that the
real (unicorn) CPU does not hold for it.

Unicorn runs the TC on the monitor's CS, GS, GDT, page tables and control
registers. The guest's versions live here: its GDTR/IDTR/LDTR/TR, its CS and
GS, its CR0-CR4, its MSRs and the virtual EFLAGS bits (IF, IOPL, AC, kept in the
monitor data page so that the TC can flip them inline).
"""

from __future__ import annotations

import struct
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from unicorn import Uc
from unicorn import x86_const as X

from bt_vmm.errors import Unsupported
from bt_vmm.machine.memory import GuestFault, GuestMemory
from bt_vmm.tcache import region as R
from bt_vmm.vcpu.descriptors import (ACC_ACCESSED, FLAT_CODE, FLAT_DATA, GATE_INT32, GATE_TASK,
                                     GATE_TRAP32, Descriptor, Gate)
from bt_vmm.vcpu.regs import Regs

IF = 0x200
IOPL = 0x3000
AC = 0x40000
TF, NT, RF, VM = 0x100, 0x4000, 0x10000, 0x20000
VIRTUAL_FLAGS = IF | IOPL | AC

# Guest CR0 bits mirrored into the real CR0 because they change how the
# instructions unicorn executes behave (FPU traps and error reporting).
CR0_PE, CR0_MP, CR0_EM, CR0_TS, CR0_ET, CR0_NE, CR0_WP, CR0_PG = (
    1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5, 1 << 16, 1 << 31)
CR0_MIRRORED = CR0_MP | CR0_EM | CR0_TS | CR0_NE
CR4_PSE, CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_SMAP = 1 << 4, 1 << 9, 1 << 10, 1 << 21
CR4_MIRRORED = CR4_OSFXSR | CR4_OSXMMEXCPT
CR4_VME, CR4_PVI, CR4_PAE, CR4_PGE = 1 << 0, 1 << 1, 1 << 5, 1 << 7
CR4_UNSUPPORTED = CR4_VME | CR4_PVI | CR4_PAE

UC_SEG = {"ds": X.UC_X86_REG_DS, "es": X.UC_X86_REG_ES, "fs": X.UC_X86_REG_FS,
          "ss": X.UC_X86_REG_SS}

# MSRs a 32-bit kernel touches on this CPU (others raise #GP, as on hardware).
MSR_TSC = 0x10
MSR_PLATFORM_ID = 0x17
MSR_BIOS_SIGN_ID = 0x8B      # microcode revision (EDX after a cpuid): no update loaded, 0
MSR_SYSENTER_CS, MSR_SYSENTER_ESP, MSR_SYSENTER_EIP = 0x174, 0x175, 0x176
MSR_MISC_ENABLE = 0x1A0
# The bits an MSR keeps where not all 64 do (SDM vol. 4, table 2-2): bits
# 63:32 of IA32_SYSENTER_CS ignore writes and read as zero.
MSR_KEPT_BITS = {MSR_SYSENTER_CS: 0xFFFFFFFF}


@dataclass
class Segment:
    selector: int
    desc: Descriptor


class TripleFault(Exception):
    """Shutdown: an exception while delivering a double fault (SDM 6.15, #DF)."""


CONTRIBUTORY = {0, 10, 11, 12, 13}
USER_CODE = Descriptor(0, 0xFFFFFFFF, 0xFB, 0xC)
USER_DATA = Descriptor(0, 0xFFFFFFFF, 0xF3, 0xC)


class VCpu:
    def __init__(self, uc: Uc, regs: Regs, mem: GuestMemory) -> None:
        self._uc = uc
        self._regs = regs
        self.regs = regs
        self.mem = mem
        self.cpl = 0
        self.cr0 = CR0_PE | CR0_ET
        self.cr2 = self.cr3 = self.cr4 = 0
        self.dr = [0] * 8
        self.dr[6], self.dr[7] = 0xFFFF0FF0, 0x400
        self.gdtr = (0, 0)           # (base, limit)
        self.idtr = (0, 0x3FF)
        self.ldtr = Segment(0, Descriptor(0, 0, 0, 0))
        self.tr = Segment(0, Descriptor(0, 0, 0, 0))
        self.msr: dict[int, int] = {MSR_SYSENTER_CS: 0, MSR_SYSENTER_ESP: 0, MSR_SYSENTER_EIP: 0,
                                    MSR_PLATFORM_ID: 0, MSR_MISC_ENABLE: 1, MSR_BIOS_SIGN_ID: 0}
        self.segs: dict[str, Segment] = {}
        self.delivered: Counter[int] = Counter()   # exceptions and interrupts, by vector
        # Set by the trap-and-emulate engine: the guest kernel runs at ring 1,
        # IF is the real flag, IOPL is virtual (real IOPL 0 makes cli/sti trap).
        self.ring_compression = False
        # MSRs that belong to devices (IA32_APIC_BASE): index -> (read, write)
        self.msr_handlers: dict[int, tuple] = {}
        # Called after CR0/CR3/CR4 writes: the shadow MMU follows the guest's paging.
        self.paging_changed = lambda: None
        self.invlpg = lambda linear: None
        # Called with the old selector just before the guest's CS changes (the
        # emulator puts the x87 instruction pointer in guest terms then).
        self.cs_changing: Callable[[int], None] = lambda old: None

    # --- start-up -------------------------------------------------------------
    def reset_boot(self, code_sel: int = 0x08, data_sel: int = 0x10,
                   gdt: tuple[int, int] = (0, 0)) -> None:
        """The state boot protocols promise: flat 32-bit segments with base 0
        and paging off. Multiboot 0.6.96 section 3.2 leaves the selectors and
        GDTR undefined (the defaults are GRUB-like); Linux names them."""
        self.gdtr = gdt
        self._shadow_put(code_sel >> 3, FLAT_CODE)
        self._shadow_put(data_sel >> 3, FLAT_DATA)
        self.segs = {"cs": Segment(code_sel, FLAT_CODE)}
        for name in ("ds", "es", "fs", "gs", "ss"):
            self.segs[name] = Segment(data_sel, FLAT_DATA)
            if name in UC_SEG:
                self._regs.write(UC_SEG[name], data_sel)
        self._put_u32(R.VCS, code_sel)
        self._put_u32(R.VGS, data_sel)

    # --- virtual EFLAGS -------------------------------------------------------
    def vflags(self) -> int:
        vif, viopl, vac = struct.unpack("<III", self._uc.mem_read(R.phys(R.VIF), 12))
        return vif | viopl | vac

    def set_vflags(self, eflags: int) -> None:
        self._uc.mem_write(R.phys(R.VIF), struct.pack("<III", eflags & IF, eflags & IOPL, eflags & AC))

    def guest_eflags(self, real: int) -> int:
        """The guest's EFLAGS. At CPL3 the guest runs directly and the real
        EFLAGS are its own (IOPL and IF included, so that unicorn applies the
        IOPL checks); at CPL0 IF/IOPL/AC live in the monitor page."""
        if self.cpl == 3:
            return real | 0x2
        if self.ring_compression:
            return (real & ~IOPL) | (self.vflags() & IOPL) | 0x2
        return (real & ~VIRTUAL_FLAGS) | self.vflags() | 0x2

    def load_eflags(self, frame, value: int) -> None:
        """Set the guest's EFLAGS: virtual bits to the monitor page, the rest real."""
        if value & VM:
            raise Unsupported("guest entered virtual-8086 mode, which is not virtualized")
        self.set_vflags(value)
        if self.cpl == 3:
            frame.eflags = (value & ~(VM | RF)) | 0x2
        elif self.ring_compression:
            frame.eflags = (value & ~(IOPL | VM | RF)) | 0x2   # IOPL stays 0: cli/sti/popf must trap
        else:
            frame.eflags = (value & ~(VIRTUAL_FLAGS | VM | RF)) | 0x2

    def interrupts_enabled_now(self, real_eflags: int) -> bool:
        """EFLAGS.IF as the guest has it at this moment."""
        if self.cpl == 3 or self.ring_compression:
            return bool(real_eflags & IF)
        return self.interrupts_enabled

    def sync_virtual_gs(self) -> None:
        """Entering the TC: the guest's GS becomes virtual (the TC runs on the
        monitor's GS and swaps the guest's in around gs: accesses)."""
        gs = self.segs["gs"]
        if gs.selector & 0xFFFC and not gs.selector & 4:
            self._shadow_put(gs.selector >> 3, gs.desc.pack())
        self._put_u32(R.VGS, gs.selector)

    @property
    def interrupts_enabled(self) -> bool:
        if self.ring_compression:
            return bool(self._regs.read(X.UC_X86_REG_EFLAGS) & IF)
        return bool(struct.unpack("<I", self._uc.mem_read(R.phys(R.VIF), 4))[0])

    # --- control registers ----------------------------------------------------
    def write_cr(self, n: int, value: int) -> None:
        value &= 0xFFFFFFFF
        if n == 0:
            if not value & CR0_PE:
                raise Unsupported("guest left protected mode (CR0.PE=0): real mode is not virtualized")
            self.cr0 = value | CR0_ET
            real = self._regs.read(X.UC_X86_REG_CR0)
            self._regs.write(X.UC_X86_REG_CR0, (real & ~CR0_MIRRORED) | (value & CR0_MIRRORED))
            self.paging_changed()
        elif n == 2:
            self.cr2 = value
        elif n == 3:
            self.cr3 = value
            self.paging_changed()
        elif n == 4:
            if value & CR4_UNSUPPORTED:
                raise Unsupported(f"guest set CR4 bits {value & CR4_UNSUPPORTED:#x} (PAE/VME/PVI), "
                                  "which this CPU does not report")
            self.cr4 = value
            real = self._regs.read(X.UC_X86_REG_CR4)
            self._regs.write(X.UC_X86_REG_CR4, (real & ~CR4_MIRRORED) | (value & CR4_MIRRORED))
            self.paging_changed()
        else:
            raise GuestFault(6)

    def read_cr(self, n: int) -> int:
        if n == 0:
            return self.cr0
        if n in (2, 3, 4):
            return getattr(self, f"cr{n}")
        raise GuestFault(6)

    # --- MSRs -----------------------------------------------------------------
    def rdmsr(self, index: int) -> int:
        if index in self.msr_handlers:
            return self.msr_handlers[index][0]()
        if index == MSR_TSC:
            return time.perf_counter_ns()   # the TSC follows the host clock (1 GHz)
        if index in self.msr:
            return self.msr[index]
        raise GuestFault(13, 0)

    def wrmsr(self, index: int, value: int) -> None:
        if index in self.msr_handlers:
            self.msr_handlers[index][1](value)
            return
        if index in self.msr:
            self.msr[index] = value & MSR_KEPT_BITS.get(index, 0xFFFFFFFFFFFFFFFF)
            return
        if index == MSR_TSC:
            return   # TSC writes are not virtualized; the TSC keeps following the host clock
        raise GuestFault(13, 0)

    # --- descriptor tables ----------------------------------------------------
    def read_descriptor(self, selector: int, ext: int = 0) -> tuple[Descriptor, bytes]:
        """The descriptor a non-null selector names; #GP(selector) when outside its table."""
        index = selector & 0xFFF8
        if selector & 4:
            base, limit = self.ldtr.desc.base, self.ldtr.desc.limit
            if not self.ldtr.selector:
                raise GuestFault(13, index | 4 | ext)     # the error code keeps TI (found by selfcheck)
        else:
            base, limit = self.gdtr
        if index + 7 > limit:
            raise GuestFault(13, index | 4 * ((selector >> 2) & 1) | ext)
        raw = self.mem.read_lin(base + index, 8)
        return Descriptor.unpack(raw), raw

    def _set_accessed(self, selector: int, raw: bytes) -> bytes:
        """Loading a segment sets the descriptor's accessed bit in guest memory (SDM 3.4.5.1)."""
        if raw[5] & ACC_ACCESSED:
            return raw
        raw = raw[:5] + bytes([raw[5] | ACC_ACCESSED]) + raw[6:]
        base = self.ldtr.desc.base if selector & 4 else self.gdtr[0]
        self.mem.write_lin(base + (selector & 0xFFF8) + 5, raw[5:6])
        return raw

    def _shadow_put(self, index: int, desc: Descriptor | bytes) -> None:
        if index >= R.FIRST_MONITOR_GDT_INDEX:
            raise Unsupported(f"guest selector index {index} collides with the monitor's GDT slots")
        raw = desc if isinstance(desc, bytes) else desc.pack()
        self._uc.mem_write(R.phys(R.SHADOW_GDT) + 8 * index, self._compress(raw))

    def _compress(self, raw: bytes) -> bytes:
        """Ring compression (the trap-and-emulate engine runs the guest kernel at
        ring 1): ring-0 code and data descriptors become ring-1 ones, and
        ring-3 code descriptors are marked not present, so that a native
        transfer to user code (iret, far return) traps to the monitor."""
        if not self.ring_compression or self.cpl == 3 or not raw[5] & 0x10:
            return raw
        access = raw[5] | ACC_ACCESSED      # preset: the shadow GDT is read-only at ring 1
        dpl = (access >> 5) & 3
        if dpl == 0:
            access |= 1 << 5
        elif dpl == 3 and access & 0x08:
            access &= ~0x80
        return raw[:5] + bytes([access]) + raw[6:]

    def load_data_segment(self, name: str, selector: int, commit: bool = True) -> None:
        """mov/pop/lxs into DS, ES, FS, GS or SS, with the checks of SDM vol. 2 'MOV'.
        With commit=False only the vCPU changes (a privilege change in progress:
        the engine loads unicorn's registers once it runs at the new level)."""
        selector &= 0xFFFF
        if selector & 0xFFFC == 0:
            if name == "ss":
                raise GuestFault(13, 0)
            desc = Descriptor(0, 0, 0, 0)
            self.segs[name] = Segment(selector, desc)
            if commit:
                self._commit_segment(name, selector)
            return
        desc, raw = self.read_descriptor(selector)
        rpl, err = selector & 3, selector & 0xFFFC
        if name == "ss":
            if rpl != self.cpl or desc.dpl != self.cpl or not desc.writable:
                raise GuestFault(13, err)
            if not desc.present:
                raise GuestFault(12, err)
        else:
            if not desc.readable or desc.is_system:
                raise GuestFault(13, err)
            if (desc.is_data or not desc.conforming) and (rpl > desc.dpl or self.cpl > desc.dpl):
                raise GuestFault(13, err)
            if not desc.present:
                raise GuestFault(11, err)
        raw = self._set_accessed(selector, raw)
        if not selector & 4:
            self._shadow_put(selector >> 3, raw)
        else:
            raise Unsupported("segment loads from an LDT are not virtualized yet")
        self.segs[name] = Segment(selector, Descriptor.unpack(raw))
        if commit:
            self._commit_segment(name, selector)

    def _commit_segment(self, name: str, selector: int) -> None:
        if name == "gs" and not self.ring_compression:
            self._put_u32(R.VGS, selector)
            return
        if name == "ss" and self.ring_compression and self.cpl == 0:
            selector |= 1          # unicorn runs the guest kernel at ring 1
        if name == "gs":
            name_reg = X.UC_X86_REG_GS
        else:
            name_reg = UC_SEG[name]
        # Unicorn reads the descriptor from the shadow GDT, which sits in the
        # SMAP-protected monitor region: an implicit supervisor access that
        # SMAP allows only with EFLAGS.AC set (SDM 4.6.1). The caller's frame
        # restores the guest's real EFLAGS afterwards.
        eflags = self._regs.read(X.UC_X86_REG_EFLAGS)
        self._regs.write(X.UC_X86_REG_EFLAGS, eflags | AC)
        self._regs.write(name_reg, selector)
        self._regs.write(X.UC_X86_REG_EFLAGS, eflags)

    def code_segment(self, selector: int, ext: int = 0, outer: bool = False,
                     gate: bool = False) -> Segment:
        """Check the code segment a control transfer loads (SDM vol. 2, JMP/CALL/
        RET/IRET and 6.12.1). `outer`: a return to a less privileged ring (the new
        CPL is the selector's RPL); `gate`: an interrupt gate's target, which may be
        more privileged (the new CPL is its DPL)."""
        selector &= 0xFFFF
        if selector & 0xFFFC == 0:
            raise GuestFault(13, ext)
        desc, raw = self.read_descriptor(selector, ext)
        err = (selector & 0xFFFC) | ext
        rpl = selector & 3
        if not desc.is_code:
            if desc.is_system:
                raise Unsupported("far transfers through call gates or task gates are not virtualized yet")
            raise GuestFault(13, err)
        if outer:
            if rpl <= self.cpl or (desc.conforming and desc.dpl > rpl) or (
                    not desc.conforming and desc.dpl != rpl):
                raise GuestFault(13, err)
            new_cpl = rpl
        elif gate:
            if desc.dpl > self.cpl:
                raise GuestFault(13, err)
            new_cpl = self.cpl if desc.conforming else desc.dpl
        else:
            if (desc.conforming and desc.dpl > self.cpl) or (
                    not desc.conforming and (desc.dpl != self.cpl or rpl > self.cpl)):
                raise GuestFault(13, err)
            new_cpl = self.cpl
        if not desc.present:
            raise GuestFault(11, err)
        if desc.base != 0 or not desc.big:
            raise Unsupported(f"code segment {selector:#x} (base {desc.base:#x}, {'32' if desc.big else '16'}-bit)"
                              f" is not virtualized yet: only flat 32-bit code is translated")
        raw = self._set_accessed(selector, raw)
        return Segment((selector & ~3) | new_cpl, Descriptor.unpack(raw))

    def set_cs(self, seg: Segment) -> None:
        old = self.segs.get("cs")
        if old is not None and old.selector != seg.selector:
            self.cs_changing(old.selector)
        self.segs["cs"] = seg
        self._put_u32(R.VCS, seg.selector)

    def seg_base(self, name: str) -> int:
        return self.segs[name].desc.base

    def _put_u32(self, off: int, value: int) -> None:
        self._uc.mem_write(R.phys(off), struct.pack("<I", value))

    # --- exceptions and interrupts (SDM vol. 3, chapter 6) ---------------------
    def raise_exception(self, frame, vector: int, error_code: int | None, eip: int,
                        soft: bool = False, insn_eip: int | None = None) -> int:
        """Deliver `vector` through the guest IDT with `eip` as the return
        address; returns the handler's guest EIP. For a software interrupt,
        `insn_eip` is the instruction's own address: a fault while delivering
        it is reported there, not at the return address. Faults during delivery follow
        SDM Table 6-5: contributory-on-contributory or #PF-on-#PF/contributory
        becomes #DF, and any fault delivering #DF is a triple fault."""
        ext = 0 if soft else 1
        while True:
            try:
                handler = self._deliver(frame, vector, error_code, eip, soft, ext)
                self.delivered[vector] += 1
                return handler
            except GuestFault as f:
                if vector == 8:
                    raise TripleFault(f"exception {f.vector} while delivering a double fault")
                if f.cr2 is not None:
                    self.cr2 = f.cr2
                first_bad = vector in CONTRIBUTORY or vector == 14
                second_bad = f.vector in CONTRIBUTORY or (f.vector == 14 and vector == 14)
                if first_bad and second_bad:
                    vector, error_code = 8, 0
                else:
                    vector, error_code = f.vector, f.error_code
                if insn_eip is not None:
                    eip = insn_eip
                soft, ext = False, 1

    def _deliver(self, frame, vector: int, error_code: int | None, eip: int, soft: bool, ext: int) -> int:
        base, limit = self.idtr
        if vector * 8 + 7 > limit:
            raise GuestFault(13, vector * 8 + 2 + ext)
        gate = Gate.unpack(self.mem.read_lin(base + vector * 8, 8))
        if gate.kind == GATE_TASK:
            raise Unsupported(f"task gate for vector {vector}: hardware task switching is not virtualized")
        if gate.kind not in (GATE_INT32, GATE_TRAP32):
            raise GuestFault(13, vector * 8 + 2 + ext)
        if soft and gate.dpl < self.cpl:
            raise GuestFault(13, vector * 8 + 2)
        if not gate.present:
            raise GuestFault(11, vector * 8 + 2 + ext)
        cs = self.code_segment(gate.selector, ext, gate=True)
        new_cpl = cs.selector & 3
        eflags = self.guest_eflags(frame.eflags)
        words = [eflags, self.segs["cs"].selector, eip]
        if new_cpl < self.cpl:
            # Inner-level delivery: the handler's stack comes from the TSS and
            # the interrupted SS:ESP goes on it first (SDM 6.12.1, figure 6-4).
            ss_sel, esp = self.tss_stack(new_cpl, ext)
            ss = self._stack_segment(ss_sel, new_cpl, ext)
            words = [self.segs["ss"].selector, frame.esp] + words
        else:
            ss, esp = self.segs["ss"], frame.esp
        if error_code is not None:
            words.append(error_code)
        for w in words:
            esp = (esp - 4) & 0xFFFFFFFF
            self.mem.write_u(ss.desc.base + esp, 4, w)
        if new_cpl < self.cpl:
            self.cpl = new_cpl
            self.segs["ss"] = ss
            self._shadow_put(ss.selector >> 3, ss.desc.pack())
        frame.esp = esp
        new = eflags & ~(TF | NT | RF | VM)
        if gate.kind == GATE_INT32:
            new &= ~IF
        self.load_eflags(frame, new)
        self.set_cs(cs)
        return gate.offset

    def tss_stack(self, cpl: int, ext: int = 0) -> tuple[int, int]:
        """SS and ESP for ring `cpl` from the current 32-bit TSS."""
        base, limit = self.tr.desc.base, self.tr.desc.limit
        if not self.tr.selector or 8 * cpl + 11 > limit:
            raise GuestFault(10, (self.tr.selector & 0xFFFC) | ext)
        esp = self.mem.read_u(base + 4 + 8 * cpl, 4)
        ss = self.mem.read_u(base + 8 + 8 * cpl, 2)
        return ss, esp

    def _stack_segment(self, selector: int, cpl: int, ext: int, iret: bool = False) -> Segment:
        """Checks on a new stack segment from the TSS or an iret frame."""
        if selector & 0xFFFC == 0:
            # a null SS popped by iret is #GP(0), one from the TSS #TS (SDM vol. 2, IRET)
            raise GuestFault(13, 0) if iret else GuestFault(10, ext)
        desc, raw = self.read_descriptor(selector, ext)
        err = (selector & 0xFFFC) | ext
        if (selector & 3) != cpl or desc.dpl != cpl or not desc.writable:
            raise GuestFault(10 if ext else 13, err)
        if not desc.present:
            raise GuestFault(12, err)
        return Segment(selector, Descriptor.unpack(self._set_accessed(selector, raw)))

    def iret_outer(self, frame, eip: int, cs_sel: int, eflags: int) -> int:
        """iret to a less privileged ring: also pops ESP and SS; data segments
        the new ring may not use become null (SDM vol. 2, IRET)."""
        cs = self.code_segment(cs_sel, outer=True)
        new_cpl = cs.selector & 3
        esp = self.mem.read_u(self.seg_base("ss") + ((frame.esp + 12) & 0xFFFFFFFF), 4)
        ss_sel = self.mem.read_u(self.seg_base("ss") + ((frame.esp + 16) & 0xFFFFFFFF), 2)
        ss = self._stack_segment(ss_sel, new_cpl, 0, iret=True)
        self.cpl = new_cpl
        self.load_eflags(frame, eflags)
        self.set_cs(cs)
        self.segs["ss"] = ss
        self._shadow_put(ss.selector >> 3, ss.desc.pack())
        for name in ("ds", "es", "fs", "gs"):
            d = self.segs[name].desc
            if d.access and (d.is_data or not d.conforming) and d.dpl < new_cpl:
                self.segs[name] = Segment(0, Descriptor(0, 0, 0, 0))
        frame.esp = esp
        return eip

    # --- fast system calls (SDM vol. 2, SYSENTER/SYSEXIT) ------------------------
    def sysenter(self, frame) -> int:
        """Enter ring 0 at IA32_SYSENTER_EIP with flat segments from IA32_SYSENTER_CS."""
        cs = self.msr[MSR_SYSENTER_CS] & 0xFFFC
        if not cs:
            raise GuestFault(13, 0)
        eflags = self.guest_eflags(frame.eflags) & ~(VM | IF | RF)
        self.cpl = 0
        self.set_cs(Segment(cs, FLAT_CODE))
        self.segs["ss"] = Segment(cs + 8, FLAT_DATA)
        self._shadow_put((cs + 8) >> 3, FLAT_DATA)
        self.load_eflags(frame, eflags)
        frame.esp = self.msr[MSR_SYSENTER_ESP] & 0xFFFFFFFF
        return self.msr[MSR_SYSENTER_EIP] & 0xFFFFFFFF

    def sysexit(self, frame) -> int:
        """Return to ring 3 at EDX with ESP = ECX and flat user segments."""
        cs = self.msr[MSR_SYSENTER_CS] & 0xFFFC
        if not cs or self.cpl != 0:
            raise GuestFault(13, 0)
        eflags = self.guest_eflags(frame.eflags)
        self.cpl = 3
        self.set_cs(Segment((cs + 16) | 3, USER_CODE))
        self.segs["ss"] = Segment((cs + 24) | 3, USER_DATA)
        self._shadow_put((cs + 16) >> 3, USER_CODE)
        self._shadow_put((cs + 24) >> 3, USER_DATA)
        self.load_eflags(frame, eflags)
        frame.esp = frame.r[1]
        return frame.r[2]

    def sync_gdt(self) -> None:
        """Copy the guest's GDT into the shadow GDT: code running directly may
        load any of its selectors without an exit."""
        base, limit = self.gdtr
        n = min(limit + 1, 8 * R.FIRST_MONITOR_GDT_INDEX)
        if n > 8:
            table = self.mem.read_lin(base + 8, n - 8)
            if self.ring_compression:
                table = b"".join(self._compress(table[i:i + 8]) for i in range(0, len(table) - 7, 8))
            self._uc.mem_write(R.phys(R.SHADOW_GDT) + 8, table)

    # --- snapshots ------------------------------------------------------------
    def state(self) -> dict:
        """The guest's system state: privilege level, control and debug
        registers, descriptor-table registers, segments with the descriptors
        they hold (which may differ from the tables now), MSRs. The general,
        x87 and SSE registers are the engine's to save (they live in unicorn)."""
        return {
            "cpl": self.cpl,
            "cr": [self.cr0, self.cr2, self.cr3, self.cr4],
            "dr": list(self.dr),
            "gdtr": list(self.gdtr),
            "idtr": list(self.idtr),
            "ldtr": _segment_state(self.ldtr),
            "tr": _segment_state(self.tr),
            "segs": {name: _segment_state(seg) for name, seg in self.segs.items()},
            "msr": [[index, value] for index, value in sorted(self.msr.items())],
        }

    def restore(self, state: dict) -> None:
        """Take the saved system state, with unicorn at CPL0 and paging off
        (the machine turns paging on afterwards): the shadow GDT gets the
        descriptors the segments hold, unicorn's data segments the guest's
        selectors (at CPL3 the engine loads them when it enters user mode)."""
        self.cpl = state["cpl"]
        self.cr0, self.cr2, self.cr3, self.cr4 = state["cr"]
        self.dr = list(state["dr"])
        self.gdtr = tuple(state["gdtr"])
        self.idtr = tuple(state["idtr"])
        self.ldtr = _segment(state["ldtr"])
        self.tr = _segment(state["tr"])
        self.segs = {name: _segment(s) for name, s in state["segs"].items()}
        self.msr = {index: value for index, value in state["msr"]}
        for seg in self.segs.values():
            if seg.selector & 0xFFFC and not seg.selector & 4:
                self._shadow_put(seg.selector >> 3, seg.desc)
        self._put_u32(R.VCS, self.segs["cs"].selector)
        self._put_u32(R.VGS, self.segs["gs"].selector)
        for name, reg in UC_SEG.items():
            self._regs.write(reg, self.segs[name].selector if self.cpl == 0 else R.MON_GS_SEL_VALUE)

    FPU_REGS = tuple(getattr(X, f"UC_X86_REG_{n}") for n in (
        "FPCW", "FPSW", "FPTAG", "FOP", "FIP", "FCS", "FDP", "FDS", "MXCSR"))
    FP_REGS = tuple(getattr(X, f"UC_X86_REG_FP{i}") for i in range(8))
    XMM_REGS = tuple(getattr(X, f"UC_X86_REG_XMM{i}") for i in range(8))

    def fpu_state(self) -> dict:
        """x87 and SSE registers (physical x87 registers, not the stack view)."""
        uc = self._uc
        return {"control": [uc.reg_read(r) for r in self.FPU_REGS],
                "fp": [list(uc.reg_read(r)) for r in self.FP_REGS],
                "xmm": [f"{uc.reg_read(r):032x}" for r in self.XMM_REGS]}

    def restore_fpu(self, state: dict) -> None:
        uc = self._uc
        for r, v in zip(self.FPU_REGS, state["control"]):
            uc.reg_write(r, v)
        for r, v in zip(self.FP_REGS, state["fp"]):
            uc.reg_write(r, tuple(v))
        for r, v in zip(self.XMM_REGS, state["xmm"]):
            uc.reg_write(r, int(v, 16))


def _segment_state(seg: Segment) -> list[int]:
    d = seg.desc
    return [seg.selector, d.base, d.limit, d.access, d.flags]


def _segment(saved: list[int]) -> Segment:
    selector, base, limit, access, flags = saved
    return Segment(selector, Descriptor(base, limit, access, flags))
