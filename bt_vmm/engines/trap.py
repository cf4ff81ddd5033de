"""The trap-and-emulate engine: classic ring compression, for comparison with BT.

The guest kernel runs untranslated in unicorn at ring 1 with IOPL 0. Its
ring-0 descriptors are compressed to ring 1 in the shadow GDT; every
instruction that faults there (privileged ones, cli/sti, iret back to ring 0,
loads of SS with RPL 0, ...) reaches the monitor as a #GP (or #NP for a
transfer to ring-3 code, whose descriptors are marked not present while the
kernel runs), is decoded with capstone and emulated by the same Emulator the
BT engine uses. Everything else -- vCPU, shadow MMU (the kernel view keeps the
monitor region out of reach through SMAP at ring 1 as at ring 0), devices,
direct execution of user code -- is the BT engine's, so a comparison measures
the technique and nothing else.

The instructions that are sensitive but do not fault at ring 1 (Robin and
Irvine's list) run natively and show the guest the wrong thing: `popf`
cannot restore IF, `pushf` shows the real IOPL, `sgdt`/`sidt`/`str`/`sldt`
reveal the monitor's tables, `mov r, cs`/`push cs` show RPL 1, and so on.
With `--audit` every one of them that runs is counted, by mnemonic and by
guest address (a code hook on guest kernel code: slow, for analysis only).
Unicorn also does not check I/O permissions, so the kernel's port accesses
arrive as instruction hooks and are served there.
"""

from __future__ import annotations

from collections import Counter

from capstone import x86_const as C
from unicorn import UC_HOOK_CODE, UC_HOOK_INSN
from unicorn import x86_const as X

from bt_vmm.decoder.classify import Kind, classify
from bt_vmm.decoder.tu import Insn, _md
from bt_vmm.engines.bt import BTEngine, EngineOptions
from bt_vmm.errors import Unsupported
from bt_vmm.machine.memory import GuestFault
from bt_vmm.machine.pc import Machine
from bt_vmm.shadow_mmu.mmu import RegionWanted
from bt_vmm.vcpu import cpuid as cpuid_mod
from bt_vmm.vcpu.emulate import HALT
from bt_vmm.vcpu.frame import Frame
from bt_vmm.vcpu.state import AC, IF

# Sensitive, unprivileged: they run at ring 1 without a trap (Popek and
# Goldberg's condition fails for them; Robin and Irvine, USENIX Security 2000).
SENSITIVE_UNPRIVILEGED = {
    C.X86_INS_PUSHF: "pushf", C.X86_INS_PUSHFD: "pushf", C.X86_INS_POPF: "popf",
    C.X86_INS_POPFD: "popf", C.X86_INS_SGDT: "sgdt", C.X86_INS_SIDT: "sidt",
    C.X86_INS_SLDT: "sldt", C.X86_INS_SMSW: "smsw", C.X86_INS_STR: "str",
    C.X86_INS_LAR: "lar", C.X86_INS_LSL: "lsl", C.X86_INS_VERR: "verr", C.X86_INS_VERW: "verw",
    C.X86_INS_LJMP: "far jmp", C.X86_INS_LCALL: "far call", C.X86_INS_RETF: "far ret",
    C.X86_INS_INT: "int n",
}
SEGMENT_REGS = {C.X86_REG_CS, C.X86_REG_DS, C.X86_REG_ES, C.X86_REG_FS, C.X86_REG_GS, C.X86_REG_SS}
# Faults that mean "the guest kernel did something ring 1 may not do".
TRAP_VECTORS = {13, 11}


class TrapEngine(BTEngine):
    name = "trap"
    kernel_native = True

    def __init__(self, machine: Machine, options: EngineOptions, audit: bool = False) -> None:
        if options.check:
            raise Unsupported("--check proves that kernel code runs from the TC: it applies to --engine bt")
        machine.vcpu.ring_compression = True
        machine.mmu.run_kernel_natively()
        super().__init__(machine, options)
        uc = machine.uc
        self.emulated: Counter[str] = Counter()
        self.audit_by_mnemonic: Counter[str] = Counter()
        self.audit_by_address: Counter[int] = Counter()
        self._audit_cache: dict[int, str | None] = {}
        uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
        if audit:
            self._add_guest_hook(UC_HOOK_CODE, self._on_audit)
        # The descriptors the guest's segments hold now, as ring 1 sees them.
        v = machine.vcpu
        for seg in v.segs.values():
            if seg.selector & 0xFFFC and not seg.selector & 4:
                v._shadow_put(seg.selector >> 3, seg.desc.pack())
        if v.cpl == 0:               # (a guest restored in user mode enters it when the run starts)
            self._kernel_segments()

    # --- where guest kernel code runs: natively, at ring 1 ----------------------
    def _kernel_eip(self, pc: int) -> int:
        return pc

    def _kernel_eip_valid(self, eip: int) -> bool:
        return True

    def _reload_monitor_gs(self) -> None:
        """Guest kernel code runs on the guest's own GS here."""

    def _kernel_segments(self) -> None:
        v, regs = self.vcpu, self.regs
        v.sync_gdt()                              # compressed again: the kernel runs
        self.cpl_switch.set_cpl(1)
        # Unicorn reads the shadow GDT in the monitor region; with the kernel
        # view live that is a user page under SMAP: allow the reads with AC.
        eflags = regs.read(X.UC_X86_REG_EFLAGS)
        regs.write(X.UC_X86_REG_EFLAGS, eflags | AC)
        regs.write(X.UC_X86_REG_SS, v.segs["ss"].selector | 1)
        regs.write(X.UC_X86_REG_CS, v.segs["cs"].selector | 1)
        for name, reg in (("ds", X.UC_X86_REG_DS), ("es", X.UC_X86_REG_ES),
                          ("fs", X.UC_X86_REG_FS), ("gs", X.UC_X86_REG_GS)):
            regs.write(reg, v.segs[name].selector)
        regs.write(X.UC_X86_REG_EFLAGS, eflags)

    def _sync_mode(self) -> None:
        was_user = self.user_mode
        super()._sync_mode()
        if not was_user and not self.user_mode:
            # Same-level events may have changed the guest's CS (a gate, iret,
            # far jump): unicorn runs on its ring-1 image.
            eflags = self.regs.read(X.UC_X86_REG_EFLAGS)
            self.regs.write(X.UC_X86_REG_EFLAGS, eflags | AC)
            self.regs.write(X.UC_X86_REG_CS, self.vcpu.segs["cs"].selector | 1)
            self.regs.write(X.UC_X86_REG_EFLAGS, eflags)

    def _capture_data_segments(self) -> None:
        """The kernel loads DS/ES/FS/GS natively at ring 1: bring the vCPU's
        view up to date before emulating anything that depends on them."""
        v = self.vcpu
        for name, reg in (("ds", X.UC_X86_REG_DS), ("es", X.UC_X86_REG_ES),
                          ("fs", X.UC_X86_REG_FS), ("gs", X.UC_X86_REG_GS)):
            sel = self.regs.read(reg) & 0xFFFF
            if sel != v.segs[name].selector:
                try:
                    v.load_data_segment(name, sel, commit=False)
                except GuestFault:
                    v.load_data_segment(name, 0, commit=False)

    def _user_io_allowed(self) -> bool:
        # The guest kernel owns the ports; user code goes by IOPL.
        return not self.user_mode or super()._user_io_allowed()

    def _on_cpuid(self, uc, _ud) -> int:
        """CPUID does not trap: answer it with the monitor's CPU (as BT does)."""
        self._guarded(self._cpuid)
        return 1                                  # skip unicorn's own

    def _cpuid(self) -> None:
        eax, ecx = self.regs.read(X.UC_X86_REG_EAX), self.regs.read(X.UC_X86_REG_ECX)
        a, b, c, d = cpuid_mod.cpuid(eax, ecx)
        self.regs.write_many((X.UC_X86_REG_EAX, X.UC_X86_REG_EBX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX),
                             (a, b, c, d))

    # --- traps from the guest kernel ----------------------------------------------
    def _kernel_event(self, intno: int) -> None:
        self._guarded(self._kernel_trap, intno)

    def _fault(self, vector: int) -> None:          # #UD from the kernel (BT: in a CCF)
        self._kernel_trap(vector)

    def _asynchronous_stop(self, counted: bool = True) -> None:
        """A stop lands on an instruction boundary of native code, kernel or user."""
        if counted:
            self.exits["async-stop"] += 1
        self._user_preempted()

    def _kernel_trap(self, vector: int) -> None:
        frame = Frame(self.regs)
        eip = frame.eip
        self._exit_eip = eip
        self._capture_data_segments()
        soft_len = self._software_interrupt_length(vector, eip)
        if soft_len:
            self.exits[f"kernel-int:{vector:#x}"] += 1
            self._enter_handler(frame, lambda: self.vcpu.raise_exception(
                frame, vector, None, eip, soft=True, insn_eip=eip - soft_len))
            return
        err = self.faults.error_code_and_reset() if vector != 6 else 0
        if vector == 14:
            cr2 = self.regs.read(X.UC_X86_REG_CR2)
            try:
                self.mmu.page_fault(cr2, err, user=False)
                self._hidden_fault_done(cr2)
                self._take_preemption(eip)
                return
            except GuestFault as f:
                self._deliver(frame, f, eip)
                return
            except RegionWanted:
                self._move_monitor()         # the instruction runs again, as is
                return
        if vector in TRAP_VECTORS:
            insn = self._decode(eip)
            if insn is not None and self._emulate_trapped(frame, insn):
                return
        self._deliver(frame, GuestFault(vector, err if vector in (8, 10, 11, 12, 13, 14, 17) else None), eip)

    def _decode(self, eip: int) -> Insn | None:
        try:
            code = self.m.mem.read_lin(eip, 15)
        except (GuestFault, Unsupported):
            return None
        cs = next(_md.disasm(code, eip, 1), None)
        if cs is None:
            return None
        return Insn(eip, bytes(cs.bytes), classify(cs), cs.mnemonic, cs.op_str, cs)

    def _emulate_trapped(self, frame: Frame, insn: Insn) -> bool:
        """Emulate the instruction that trapped; False if it is a genuine guest #GP."""
        kind = insn.kind
        self.exits[f"trap:{insn.mnemonic}"] += 1
        self.emulated[insn.mnemonic] += 1
        if kind in (Kind.CLI, Kind.STI):
            frame.eflags = (frame.eflags | IF) if kind is Kind.STI else (frame.eflags & ~IF)
            frame.eip = insn.next
            frame.commit()
            self._take_preemption(insn.next)
            return True
        if kind not in (Kind.CALLOUT, Kind.CALLOUT_END, Kind.SEG_READ, Kind.POPF, Kind.PUSHF):
            return False
        try:
            nxt = self.emu.run(frame, insn)
        except GuestFault as f:
            self._deliver(Frame(self.regs), f, insn.addr)
            return True
        except Unsupported:
            if insn.cs.id in (C.X86_INS_LGDT,):
                raise
            return False
        if insn.cs.id == C.X86_INS_LGDT:
            self.vcpu.sync_gdt()
        if nxt == HALT:
            self._exit_eip_after_halt = insn.next
            frame.eip = insn.next
            self._halted = True
            frame.commit()
            self.m.uc.emu_stop()
            return True
        frame.eip = insn.next if nxt is None else nxt
        frame.commit()
        self._sync_mode()
        if nxt is None:
            self._take_preemption(insn.next)
        return True

    def _take_preemption(self, guest_eip: int) -> None:
        """A trap is a natural exit: hand over a pending preemption here."""
        if self._preempt_pending():
            self._preempted(guest_eip)

    # --- the audit ------------------------------------------------------------------
    def _on_audit(self, uc, address: int, size: int, _ud) -> None:
        if self.user_mode:
            return
        name = self._audit_cache.get(address, False)
        if name is False:
            name = None
            try:
                cs = next(_md.disasm(self.m.mem.read_lin(address, 15), address, 1), None)
            except (GuestFault, Unsupported):
                cs = None
            if cs is not None:
                name = SENSITIVE_UNPRIVILEGED.get(cs.id)
                if name is None and cs.id in (C.X86_INS_MOV, C.X86_INS_PUSH, C.X86_INS_POP):
                    if any(op.type == C.X86_OP_REG and op.reg in SEGMENT_REGS for op in cs.operands):
                        name = f"{cs.mnemonic} sreg"
            self._audit_cache[address] = name
        if name is not None:
            self.audit_by_mnemonic[name] += 1
            self.audit_by_address[address] += 1

    def audit_report(self) -> dict:
        return {
            "by_mnemonic": dict(self.audit_by_mnemonic.most_common()),
            "by_address": {f"{a:#x}": n for a, n in self.audit_by_address.most_common(20)},
        }
