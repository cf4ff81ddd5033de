"""The side under test: the real Machine and BTEngine running the case.

The machine boots as for a kernel (Machine.load), then gets the case's state
the way a guest would have set it: the GDT/IDT registers and control registers
through the vCPU, FS/GS through the vCPU's segment loads, the general
registers and EFLAGS (virtual IF/IOPL/AC in the monitor page). Nothing in the
engine is bypassed or patched: the case ends at the debug-exit `out` after its
code, in a guest fault handler's `hlt`, or -- for single translation units --
when the instruction budget stops the engine at the next TU.
"""

from __future__ import annotations

import struct

from bt_vmm.engines.bt import BTEngine, EngineOptions
from bt_vmm.errors import EXIT_INSN_LIMIT, EXIT_OK
from bt_vmm.hosted.console import SerialSink
from bt_vmm.loaders.multiboot import BootImage
from bt_vmm.machine.clock import GuestClock
from bt_vmm.machine.pc import Machine
from bt_vmm.selfcheck import layout as L
from bt_vmm.selfcheck.case import Case
from bt_vmm.selfcheck.observe import State
from bt_vmm.selfcheck.reference import ERR_VECTORS, read_fpu, read_sse
from bt_vmm.vcpu.regs import GPRS
from bt_vmm.vcpu.state import VIRTUAL_FLAGS
from unicorn import x86_const as X

TIMEOUT = 20.0                # seconds: only a hung BT side ever reaches it
SMALL_TC = 12 << 10
STILL_WALLCLOCK = 946684800.0         # 2000-01-01 00:00:00 UTC


class Scratch:
    """Four I/O ports that read back what was last written to them."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.data = bytearray(4)

    def io_read(self, port: int, size: int) -> int:
        off = port - self.base
        return int.from_bytes(bytes(self.data[(off + i) & 3] for i in range(size)), "little")

    def io_write(self, port: int, size: int, value: int) -> None:
        off = port - self.base
        for i in range(size):
            self.data[(off + i) & 3] = (value >> (8 * i)) & 0xFF

    def reset(self) -> None:
        self.data[:] = bytes(4)


def options(case: Case) -> EngineOptions:
    if case.tu_insns is not None:
        # One TU: the budget check at the next CCF's entry stops the engine there.
        return EngineOptions(max_insns=case.tu_insns, timeout=TIMEOUT)
    return {
        "plain": EngineOptions(timeout=TIMEOUT),
        "count": EngineOptions(count=True, timeout=TIMEOUT),
        "budget": EngineOptions(max_insns=5_000_000, timeout=TIMEOUT),
        "small-tc": EngineOptions(tc_size=SMALL_TC, timeout=TIMEOUT),
    }[case.profile]


def still_clock() -> GuestClock:
    """Device time that stands still during a case (at guest time 0, on
    2000-01-01), so that a read of a timer (PIT counters, ACPI PM timer, RTC)
    gives the reference run and the BT run the same value, every time."""
    clock = GuestClock()
    clock.pause()
    clock.restore({"now": 0.0, "wall_epoch": STILL_WALLCLOCK})
    return clock


def new_machine(case: Case, scratch_port: int) -> Machine:
    m = Machine(case.ram_size, SerialSink(), clock=still_clock())
    m.bus.register(scratch_port, 4, Scratch(scratch_port))
    return m


def run_bt(case: Case, ram: bytes, m: Machine) -> tuple[State, BTEngine]:
    init = case.init
    boot = BootImage(case.entry, 0, 0, [(0, bytes(ram))], (0, case.ram_size), "selfcheck case")
    m.load(boot)
    v = m.vcpu
    v.gdtr = (L.GDT_A, L.GDT_LIMIT)
    v.idtr = (L.IDT_A, 256 * 8 - 1)
    if init.paging:
        v.write_cr(3, L.PD)
        v.write_cr(0, (init.cr0 if init.cr0 is not None else v.cr0) | 0x80000000)
    elif init.cr0 is not None:
        v.write_cr(0, init.cr0)
    v.write_cr(4, init.cr4)
    for name, sel in (("fs", init.fs), ("gs", init.gs)):
        if sel != L.SEL_DATA:
            v.load_data_segment(name, sel)
    m.regs.write_many(GPRS, init.gprs)
    m.regs.write(X.UC_X86_REG_EFLAGS, (init.eflags & ~VIRTUAL_FLAGS) | 0x2)
    v.set_vflags(init.eflags)
    m.uc.reg_write(X.UC_X86_REG_FPCW, init.fpcw)
    m.uc.reg_write(X.UC_X86_REG_MXCSR, init.mxcsr)
    engine = BTEngine(m, options(case))
    result = engine.run(case.entry)
    return read_state(case, m, engine, result), engine


def read_state(case: Case, m: Machine, engine: BTEngine, result) -> State:
    st = State("bt")
    v = m.vcpu
    # Every way a case ends is an exit (a callout): the guest EIP it stands for.
    # (guest_eip() maps the TC address after the callout's int3, i.e. the next one.)
    geip = getattr(engine, "_exit_eip", None)
    if geip is None:
        geip = engine.guest_eip()
    status, reason = result.status, result.reason
    if status == EXIT_OK and "halted with interrupts disabled" in reason:
        if geip is not None and L.HANDLERS <= geip < L.HANDLERS + 256:
            st.end, st.vector = "fault", geip - L.HANDLERS
        else:
            st.end, st.where = "halt", geip
    elif status == EXIT_INSN_LIMIT and case.tu_insns is not None:
        if geip is not None and L.HANDLERS <= geip < L.HANDLERS + 256:
            st.end, st.vector = "fault", geip - L.HANDLERS
        else:
            st.end, st.where = "next", geip
    elif case.end is not None and geip == case.end and status & 1:
        st.end, st.where = "end", geip
    elif status & 1 or (status == EXIT_OK and "powered off" in reason):
        st.end, st.where, st.status = "exit", geip, status
    elif case.tu_insns is not None and "guest executes nonexistent physical memory at" in reason:
        # the next TU lies outside RAM: the reference stops at its PC too
        st.end, st.where = "next", int(reason.rsplit(" ", 1)[1], 16)
    else:
        st.end, st.detail = "error", f"bt: status {status}: {reason}" + (f"\n{result.dump}" if result.dump else "")
        return st
    r = m.regs.read_many(GPRS)
    eflags = v.guest_eflags(m.regs.read(X.UC_X86_REG_EFLAGS))
    segs = [v.segs[n].selector for n in ("cs", "ds", "es", "fs", "gs", "ss")]
    mem = bytes(m.ram[:case.ram_size])
    if st.end == "fault":
        # A case ends at its first delivery: an exception (not int n) was delivered
        # iff the engine counted a fault exit for it; only those push error codes.
        has_err = st.vector in ERR_VECTORS and engine.exits.get(f"fault:{st.vector}", 0) > 0
        n = 4 if has_err else 3
        addr = (v.seg_base("ss") + r[4]) & 0xFFFFFFFF
        words = list(struct.unpack(f"<{n}I", mem[addr:addr + 4 * n]))
        if has_err:
            st.error_code = words.pop(0)
        st.where, segs[0], eflags = words[0], words[1] & 0xFFFF, words[2]
        r[4] = (r[4] + 4 * n) & 0xFFFFFFFF
        st.frame = (addr, 4 * n)
    st.gprs = tuple(r)
    st.eflags = eflags
    st.segs = tuple(segs)
    st.crs = (v.cr0, v.cr2, v.cr3, v.cr4)
    st.drs = (v.dr[0], v.dr[1], v.dr[2], v.dr[3], v.dr[6], v.dr[7])
    st.tables = (v.gdtr[0], v.gdtr[1], v.idtr[0], v.idtr[1], v.ldtr.selector, v.tr.selector)
    st.msrs = tuple(v.msr.get(i, 0) for i in (0x174, 0x175, 0x176))
    st.fpu = read_fpu(m.uc)
    st.sse = read_sse(m.uc)
    st.mem = mem
    return st
