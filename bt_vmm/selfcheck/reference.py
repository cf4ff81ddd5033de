"""The reference: the same bytes run untranslated in a plain unicorn at CPL0.

Same CPU model as the Machine (Broadwell), protected mode, paging off, the
case's own GDT and IDT loaded in unicorn's GDTR/IDTR, the same registers and
RAM. Where bt_vmm deliberately presents a different CPU than unicorn's (CPUID,
the MSR set), the reference is given the virtual CPU's answer, so both sides
model one machine. Port I/O goes to the same device bus the BT machine uses.
Faults are taken from the INTR hook (the error code from the saved context,
see vcpu/quirks.py) and #UD from emu_start's INSN_INVALID error.

The code runs in long blocks with no per-instruction hook, as it would
untranslated; the executed instructions are recovered from a block hook (the
harness follows the flags the SDM leaves undefined along them).
"""

from __future__ import annotations

import struct

import capstone
from unicorn import (UC_ARCH_X86, UC_ERR_FETCH_UNMAPPED, UC_ERR_INSN_INVALID, UC_HOOK_BLOCK, UC_HOOK_CODE, UC_HOOK_INSN,
                     UC_HOOK_INTR, UC_MODE_32, Uc, UcError)
from unicorn import x86_const as X

from bt_vmm.devices.bus import PortBus
from bt_vmm.errors import GuestExit
from bt_vmm.selfcheck import layout as L
from bt_vmm.selfcheck.case import Case
from bt_vmm.selfcheck.observe import State
from bt_vmm.vcpu import cpuid as cpuid_mod
from bt_vmm.vcpu.quirks import FaultState

ERR_VECTORS = {8, 10, 11, 12, 13, 14, 17}
MSR_MISC_ENABLE = 0x1A0
_GPRS = (X.UC_X86_REG_EAX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX, X.UC_X86_REG_EBX,
         X.UC_X86_REG_ESP, X.UC_X86_REG_EBP, X.UC_X86_REG_ESI, X.UC_X86_REG_EDI)
_SEGS = (X.UC_X86_REG_CS, X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS, X.UC_X86_REG_GS,
         X.UC_X86_REG_SS)
REF_TIMEOUT_US = 5_000_000     # microseconds: generated code always terminates

_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)


def new_uc(case: Case, ram: bytes) -> Uc:
    """A unicorn in the case's initial state."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.ctl_set_cpu_model(X.UC_CPU_X86_BROADWELL)
    uc.mem_map(0, case.ram_size)
    uc.mem_write(0, bytes(ram))
    init = case.init
    uc.reg_write(X.UC_X86_REG_GDTR, (0, L.GDT_A, L.GDT_LIMIT, 0))
    uc.reg_write(X.UC_X86_REG_IDTR, (0, L.IDT_A, 256 * 8 - 1, 0))
    cr0 = init.cr0 if init.cr0 is not None else 0x11
    if init.paging:
        uc.reg_write(X.UC_X86_REG_CR3, L.PD)
        cr0 |= 0x80000000
    uc.reg_write(X.UC_X86_REG_CR0, cr0)
    uc.reg_write(X.UC_X86_REG_CR4, init.cr4)
    uc.reg_write(X.UC_X86_REG_CS, L.SEL_CODE)
    for reg in (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_SS):
        uc.reg_write(reg, L.SEL_DATA)
    uc.reg_write(X.UC_X86_REG_FS, init.fs)
    uc.reg_write(X.UC_X86_REG_GS, init.gs)
    for reg, v in zip(_GPRS, init.gprs):
        uc.reg_write(reg, v)
    uc.reg_write(X.UC_X86_REG_EFLAGS, init.eflags)
    uc.reg_write(X.UC_X86_REG_FPCW, init.fpcw)
    uc.reg_write(X.UC_X86_REG_MXCSR, init.mxcsr)
    uc.reg_write(X.UC_X86_REG_MSR, (MSR_MISC_ENABLE, 1))    # the virtual CPU's value (vcpu/state.py)
    return uc


def run_reference(case: Case, ram: bytes, bus: PortBus) -> State:
    uc = new_uc(case, ram)
    faults = FaultState(uc)
    st = State("reference")
    blocks: list[tuple[int, int]] = []   # executed blocks (address, size)
    tu = _TuStop(case, ram) if case.tu_insns is not None else None
    last_insn = [None]
    captured = [False]

    def on_code(uc, address, size, _ud):
        verdict = tu.check(address)
        if verdict == "stop":
            st.end, st.where = "next", address
            uc.emu_stop()
        elif verdict == "terminal":
            uc.emu_stop()          # run the TU's last instruction on its own (see _TuStop)

    def on_block(uc, address, size, _ud):
        blocks.append((address, size))

    def on_intr(uc, intno, _ud):
        eip = uc.reg_read(X.UC_X86_REG_EIP)
        err = faults.error_code_and_reset()
        st.end, st.vector, st.where = "fault", intno, eip
        # Faults report the faulting instruction; traps (int n, int3, into) the
        # next one, and push no error code.
        prev = _insn_before(uc, eip, blocks, intno)
        soft = prev is not None
        if intno in ERR_VECTORS and not soft:
            st.error_code = err
        last_insn[0] = prev
        uc.emu_stop()

    def on_in(uc, port, size, _ud):
        try:
            return bus.read(port, size)
        except GuestExit as e:
            _exit(uc, e)
            return 0

    def on_out(uc, port, size, value, _ud):
        try:
            bus.write(port, size, value)
        except GuestExit as e:
            _exit(uc, e)

    def _exit(uc, e: GuestExit) -> None:
        # emu_stop takes effect only at the end of the current block: the state
        # is the one at the exiting instruction, so capture it here.
        st.end, st.status, st.where = "exit", e.status, uc.reg_read(X.UC_X86_REG_EIP)
        _read_state(uc, st, case.ram_size)
        captured[0] = True
        uc.emu_stop()

    def on_cpuid(uc, _ud):
        eax, ecx = uc.reg_read(X.UC_X86_REG_EAX), uc.reg_read(X.UC_X86_REG_ECX)
        a, b_, c, d = cpuid_mod.cpuid(eax, ecx)
        for reg, v in ((X.UC_X86_REG_EAX, a), (X.UC_X86_REG_EBX, b_), (X.UC_X86_REG_ECX, c),
                       (X.UC_X86_REG_EDX, d)):
            uc.reg_write(reg, v)
        return 1

    uc.hook_add(UC_HOOK_BLOCK, on_block)
    if tu is not None:
        # Hooks only at the TU's first and last instruction and outside it:
        # the TU itself is translated without per-instruction hooks.
        for lo, hi in tu.hook_ranges():
            uc.hook_add(UC_HOOK_CODE, on_code, begin=lo, end=hi)
    uc.hook_add(UC_HOOK_INTR, on_intr)
    uc.hook_add(UC_HOOK_INSN, on_in, None, 1, 0, X.UC_X86_INS_IN)
    uc.hook_add(UC_HOOK_INSN, on_out, None, 1, 0, X.UC_X86_INS_OUT)
    uc.hook_add(UC_HOOK_INSN, on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
    until = case.end if case.end is not None else 0xFFFFFFFF
    try:
        uc.emu_start(case.entry, until, timeout=REF_TIMEOUT_US)
        if tu is not None and tu.at_terminal and st.end == "error":
            # the TU's last instruction (a control transfer) alone: where it
            # goes is the next TU
            tu.stepping = True
            blocks.append((tu.last.addr, tu.last.size))
            uc.emu_start(tu.last.addr, until, count=1)
            if st.end == "error":
                eip = uc.reg_read(X.UC_X86_REG_EIP)
                if tu.last.raw == b"\xf4" and eip == tu.last.next:
                    st.end, st.where = "halt", tu.last.addr
                else:
                    st.end, st.where = "next", eip
    except UcError as e:
        eip = uc.reg_read(X.UC_X86_REG_EIP)
        if e.errno == UC_ERR_INSN_INVALID:
            st.end, st.vector, st.where = "fault", 6, eip
        elif tu is not None and e.errno == UC_ERR_FETCH_UNMAPPED:
            st.end, st.where = "next", eip           # the next TU is outside RAM: still its PC
        else:
            st.end, st.detail = "error", f"reference: {e} at {eip:#x}"
            return st
    eip = uc.reg_read(X.UC_X86_REG_EIP)
    trace = _trace_from_blocks(uc, blocks, st.where if st.end in ("next", "exit") else case.end)
    if st.end == "error":
        if eip > 0 and trace and trace[-1] == eip - 1 and bytes(uc.mem_read(eip - 1, 1)) == b"\xf4":
            st.end, st.where = "halt", eip - 1          # (also when the hlt is right before the end)
        elif case.end is not None and eip == case.end:
            st.end, st.where = "end", eip
        else:
            st.end, st.detail = "error", f"reference: stopped at {eip:#x} (timeout)"
            return st
    if st.end == "fault":
        # A faulting instruction did not run: leave it out. A trap (int n,
        # int3, into) ran: it changed no arithmetic flag, but it may have read
        # one (into reads OF), so it stays.
        trap = last_insn[0]
        stop = st.where if trap is None else trap
        if stop in trace:
            del trace[len(trace) - trace[::-1].index(stop) - (trap is None):]
    st.trace = trace
    if not captured[0]:
        _read_state(uc, st, case.ram_size)
    if st.end == "fault":
        _push_frame(uc, st)
    return st


_TRAPS = ("int", "int3", "into", "int1")


def _insn_before(uc: Uc, eip: int, blocks: list[tuple[int, int]], intno: int) -> int | None:
    """For a trap (int n, int3, into: the only ones generated), the address of
    the instruction that trapped, which ends just before EIP; None for a fault,
    where EIP is the faulting instruction itself. (The instruction before a
    faulting one can be an int too -- an into that did not trap -- so the
    vector and OF must fit as well.)"""
    if blocks and blocks[-1][0] <= eip < blocks[-1][0] + 0x1000:
        addr = blocks[-1][0]
        code = bytes(uc.mem_read(addr, eip - addr + 15))
        cands = [a for a, size, _, _ in _md.disasm_lite(code, addr) if a + size == eip]
    else:
        return None
    for a in cands:
        insn = next(_md.disasm_lite(bytes(uc.mem_read(a, 15)), a), None)
        if insn is None or insn[0] + insn[1] != eip:
            continue
        m, ops = insn[2], insn[3]
        if (m == "int" and int(ops, 0) == intno) or (m == "int3" and intno == 3) or (
                m == "into" and intno == 4 and uc.reg_read(X.UC_X86_REG_EFLAGS) & 0x800) or (
                m == "int1" and intno == 1):
            return a
    return None


def _trace_from_blocks(uc: Uc, blocks: list[tuple[int, int]], stop: int | None) -> list[int]:
    """The executed instructions: each block runs straight through to its end
    but the last, which stops at `stop` (the end, the next TU, a device exit)
    or at a fault (where the caller cuts the trace)."""
    out: list[int] = []
    cache: dict[tuple[int, int], list[int]] = {}
    for i, (addr, size) in enumerate(blocks):
        key = (addr, size)
        insns = cache.get(key)
        if insns is None:
            code = bytes(uc.mem_read(addr, size))
            insns = [a for a, _, _, _ in _md.disasm_lite(code, addr)]
            cache[key] = insns
        if i == len(blocks) - 1 and stop in insns[1:]:
            insns = insns[:insns.index(stop, 1)]
        out += insns
    return out


class _TuStop:
    """Stops the reference where the BT side's budget stops it: at the first
    instruction of the next translation unit.

    The only hooks are at the TU's first instruction, at its last one when
    that is a control transfer, and outside the TU: the run stops before the
    control transfer, which then runs on its own (one instruction), so a
    branch back into the middle of the TU is seen too."""

    def __init__(self, case: Case, ram: bytes) -> None:
        from bt_vmm.decoder import decode_tu
        from bt_vmm.decoder.tu import TERMINAL
        tu = decode_tu(case.code_addr, lambda addr, n: bytes(ram[addr:addr + n]))
        self.pc = tu.pc
        self.last = tu.insns[-1]
        self.terminal = self.last.kind in TERMINAL
        self.end = tu.end
        self.entered = False
        self.at_terminal = False
        self.stepping = False

    def hook_ranges(self) -> list[tuple[int, int]]:
        out = [(0, self.pc), (self.end, 0xFFFFFFFF)]
        if self.terminal and self.last.addr != self.pc:
            out.append((self.last.addr, self.last.addr))
        return out

    def check(self, address: int) -> str | None:
        """Called from a code hook at `address`: None (run on), "stop" (this is
        the next TU) or "terminal" (stop before the TU's last instruction)."""
        if self.stepping:
            return None if address == self.last.addr else "stop"
        if address == self.pc and not self.entered:
            self.entered = True
            if self.last.addr == self.pc and self.terminal:
                self.at_terminal = True
                return "terminal"
            return None
        if address == self.pc and not self.at_terminal:
            return None                # another iteration of a rep-prefixed first instruction
        if self.terminal and address == self.last.addr and not self.at_terminal:
            self.at_terminal = True
            return "terminal"
        return "stop"


def _read_state(uc: Uc, st: State, ram_size: int) -> None:
    st.gprs = tuple(uc.reg_read(r) for r in _GPRS)
    st.eflags = uc.reg_read(X.UC_X86_REG_EFLAGS)
    st.segs = tuple(uc.reg_read(r) for r in _SEGS)
    st.crs = tuple(uc.reg_read(r) for r in (X.UC_X86_REG_CR0, X.UC_X86_REG_CR2, X.UC_X86_REG_CR3,
                                            X.UC_X86_REG_CR4))
    st.drs = tuple(uc.reg_read(r) for r in (X.UC_X86_REG_DR0, X.UC_X86_REG_DR1, X.UC_X86_REG_DR2,
                                            X.UC_X86_REG_DR3, X.UC_X86_REG_DR6, X.UC_X86_REG_DR7))
    _, gbase, glimit, _ = uc.reg_read(X.UC_X86_REG_GDTR)
    _, ibase, ilimit, _ = uc.reg_read(X.UC_X86_REG_IDTR)
    st.tables = (gbase, glimit, ibase, ilimit, uc.reg_read(X.UC_X86_REG_LDTR)[0],
                 uc.reg_read(X.UC_X86_REG_TR)[0])
    st.msrs = tuple(uc.reg_read(X.UC_X86_REG_MSR, m) for m in (0x174, 0x175, 0x176))
    st.fpu = read_fpu(uc)
    st.sse = read_sse(uc)
    st.mem = bytes(uc.mem_read(0, ram_size))


def read_fpu(uc: Uc) -> tuple:
    return (uc.reg_read(X.UC_X86_REG_FPCW), uc.reg_read(X.UC_X86_REG_FPSW), uc.reg_read(X.UC_X86_REG_FPTAG),
            *(tuple(uc.reg_read(X.UC_X86_REG_FP0 + i)) for i in range(8)))


def read_sse(uc: Uc) -> tuple:
    return (uc.reg_read(X.UC_X86_REG_MXCSR), *(uc.reg_read(X.UC_X86_REG_XMM0 + i) for i in range(8)))


def _push_frame(uc: Uc, st: State) -> None:
    """Write the exception frame the architecture pushes (EFLAGS, CS, EIP and
    the error code) into the reference's RAM image, where the BT side's guest
    handler finds it. SS is flat in every case (see the generator), so the
    frame sits at ESP."""
    words = [st.where, st.segs[0], st.eflags]
    if st.error_code is not None:
        words.insert(0, st.error_code)
    esp = st.gprs[4]
    addr = (esp - 4 * len(words)) & 0xFFFFFFFF
    if addr + 4 * len(words) > len(st.mem):
        return
    frame = struct.pack(f"<{len(words)}I", *words)
    st.mem = st.mem[:addr] + frame + st.mem[addr + len(frame):]
    st.frame = (addr, len(frame))
