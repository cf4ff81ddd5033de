"""Debugging the guest: stops at guest instruction boundaries, breakpoints,
watchpoints and single steps, for a debugger front end (the gdb stub,
bt_vmm/gdbstub) -- the engine side of a debug target.

The guest is only ever stopped where its state is entirely its own: at a
guest instruction boundary, with every register the guest's (borrowed
registers given back, as for a precise fault) and its EIP a guest address.
While stopped the machine's clock stands still (machine/clock.py). On resume
the engine dispatches on the guest PC afresh, so a debugger may change
registers, memory or breakpoints freely. Nothing is ever written into guest
memory: breakpoints and steps are made of the monitor's own code.

* Breakpoints. Kernel code runs from the TC: every CCF with an instruction at
  a breakpoint is translated again with a `breakpoint` callout in front of
  it (tcache.breakpoint_changed). Code unicorn runs as is (user code, the
  kernel under trap-and-emulate) gets a code hook on exactly that address,
  which stops unicorn before the instruction (compiled blocks are dropped so
  the hook is compiled in: unicorn #2200).
* Single steps. In the TC: a CCF of the one instruction (tcache.translate_step)
  whose exits, ret and indirect branches are all callouts that stop. Code run
  as is: unicorn runs one instruction (a count-limited emu_start), again if a
  hidden page fault or a move of the monitor region made it start over.
  Either way, an exception or interrupt delivered during the step, or an
  emulated instruction that picks the next PC, ends it at the guest PC it
  leads to (a handler's first instruction, an iret's target). No interrupt is delivered during a step
  unless the instruction waits for one (hlt). Resuming from a breakpoint
  address steps over it first.
* Watchpoints (hardware style, any number, any length). A memory hook on the
  watched linear range sees the access before it lands. The monitor stops
  unicorn there: unicorn stops after the access with the instruction's other
  effects not done and EIP on the accessing instruction -- exact only while a
  code hook makes unicorn write EIP back before every instruction, so one is
  kept while watchpoints exist (stop_points.ExactEip). The store is undone,
  the guest brought back to that instruction's boundary like a precise fault,
  the instruction single-stepped with watchpoints quiet, and the hit reported
  after it, as a debug register would (SDM vol. 3, 17.3.1.2). Accesses the
  monitor makes for an emulated instruction are not seen.
* Interrupting (Ctrl-C). From any thread: the preemption request the timers
  use, and the host event for a halted guest; the engine stops at the next
  preemption check (a loop back-edge, an indirect branch, a block of code run
  as is) or at once in a halt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_MEM_WRITE
from unicorn import x86_const as X

from bt_vmm.engines.stop_points import ExactEip
from bt_vmm.errors import EXIT_DEBUGGER
from bt_vmm.machine.layout import MON_SIZE, PAGE_SIZE
from bt_vmm.machine.memory import GuestFault
from bt_vmm.vcpu.frame import Frame
from bt_vmm.vcpu.regs import GPR_NAMES

WATCH_HOOKS = {"write": UC_HOOK_MEM_WRITE, "read": UC_HOOK_MEM_READ,
               "access": UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE}


class DebugError(Exception):
    """A debugger request the target cannot carry out (unmapped memory, ...)."""


@dataclass
class WatchHit:
    kind: str        # the watchpoint's: write / read / access
    addr: int        # the linear address accessed (within the watched range)


@dataclass
class StopEvent:
    reason: str                  # attach / breakpoint / step / watch / interrupt
    pc: int                      # the guest EIP it stands at
    watch: WatchHit | None = None
    internal: bool = False       # a step the debug layer took for itself: not reported


@dataclass
class _Step:
    start: int                   # guest PC it started from
    report: bool                 # False: over a breakpoint, before continuing
    native: bool                 # unicorn runs one instruction (code run as is)
    restarts: int = 0            # (native) the engine's count of restarted instructions
    watch: WatchHit | None = None


class Debugger(Protocol):
    """A debugger front end (the gdb stub). The engine calls `stopped` when
    the guest stops; it returns what to do next: continue, step, detach or kill."""

    def stopped(self, event: StopEvent) -> str: ...

    def exited(self, status: int, reason: str) -> None: ...


class DebugControl:
    """The debug target of one engine: what the front end may do while the
    guest is stopped, and the events the engine reports to it."""

    def __init__(self, engine, frontend: Debugger) -> None:
        self.e = engine
        self.frontend = frontend
        self.stop: StopEvent | None = None       # the stop the run loop is to serve
        self.step: _Step | None = None
        self.breakpoints: dict[int, int] = {}     # guest address -> native code hook
        self.watchpoints: dict[tuple[str, int, int], int] = {}   # (kind, addr, len) -> hook
        self._pc = 0                              # the stopped guest's EIP (the debugger may set it)
        self._interrupt = False
        self._pending_watch: tuple[WatchHit, int, bytes | None] | None = None
        self._next_eip: int | None = None         # where a step the debug layer began runs from
        self._exact_eip: ExactEip | None = None   # while watchpoints are set

    # --- from any thread ----------------------------------------------------------------
    def interrupt(self) -> None:
        """Stop the guest at the next guest instruction boundary (Ctrl-C)."""
        self._interrupt = True
        self.e._set_preempt(True)
        self.e.m.host_event.set()

    # --- events (engine side) --------------------------------------------------------------
    def take_interrupt(self) -> bool:
        """Is there an interrupt request to stop for now? (Not during a step:
        it waits for the step to end.)"""
        if self._interrupt and self.step is None:
            self._interrupt = False
            return True
        return False

    def stop_at(self, reason: str, pc: int) -> None:
        if self.stop is None:
            self.stop = StopEvent(reason, pc)
        self.e.m.uc.emu_stop()

    def step_done(self, pc: int) -> None:
        """The stepped instruction is done; the guest stands at `pc`."""
        st = self.step
        if st is None or self.stop is not None:
            return
        self.step = None
        self.stop = StopEvent("watch" if st.watch else "step", pc, st.watch, internal=not st.report)
        self.e.m.uc.emu_stop()

    def _in_monitor(self, address: int) -> bool:
        """In the monitor region's linear range (which moves when the guest
        wants it): the TC's own code and data, never the guest's."""
        base = self.e.placement.base
        return base <= address < base + MON_SIZE

    def _on_native_breakpoint(self, uc, address: int, size: int, _ud) -> None:
        if self.step is None and self.stop is None and not self._in_monitor(address):
            self.stop_at("breakpoint", address)

    def _on_watch(self, uc, access: int, address: int, size: int, value: int, wp) -> None:
        if self._in_monitor(address):
            return
        kind, lo, length = wp
        hit = WatchHit(kind, max(address, lo))
        if self.step is not None:
            if self.step.watch is None:
                self.step.watch = hit             # reported when the step ends
            return
        if self.stop is not None or self._pending_watch is not None:
            return
        old = None
        if access == UC_MEM_WRITE:
            try:
                old = self.read_memory(address, size)   # what the store is about to replace
            except DebugError:
                old = None
        self._pending_watch = (hit, address, old)
        uc.emu_stop()

    def after_emulation(self) -> bool:
        """After emu_start returned: finish a watchpoint hit or a step that ran
        as is. True when the debug layer took this stop over."""
        e = self.e
        if self._pending_watch is not None:
            hit, address, old = self._pending_watch
            self._pending_watch = None
            if old is not None:
                self.write_memory(address, old)
            pc = e.rewind_to_guest()
            self._next_eip = self._start_step(pc, report=True)
            self.step.watch = hit
            return True
        st = self.step
        if self.stop is not None:
            return True
        if st is None or not st.native or e._pending_fault is not None:
            return False
        eip = e.regs.read(X.UC_X86_REG_EIP)
        if eip == st.start and _restarts(e) != st.restarts:
            st.restarts = _restarts(e)     # a shadow entry filled, the region moved: run it again
            self._next_eip = eip
            return True
        self.step_done(eip)
        return True

    @property
    def native_step(self) -> bool:
        return self.step is not None and self.step.native

    # --- the stop: the front end has the machine -------------------------------------------
    def dispatch(self, eip: int) -> int:
        """Called at the top of the run loop: serve a stop, or run a step the
        debug layer began; returns where unicorn goes on."""
        if self._next_eip is not None:
            eip, self._next_eip = self._next_eip, None
            return eip
        if self.stop is None:
            return eip
        event, self.stop = self.stop, None
        e = self.e
        if event.internal:                 # stepped over a breakpoint: go on
            return e.resume_at(event.pc)
        self._pc = event.pc
        clock = e.m.clock
        clock.pause()
        e.m.devices.uart.flush()           # what the guest printed so far, before the prompt
        t0 = time.monotonic()
        try:
            action = self.frontend.stopped(event)
            self._interrupt = False        # this stop answered any request for one
        finally:
            if e._deadline is not None:    # --timeout counts the guest's time, not the debugger's
                e._deadline += time.monotonic() - t0
            clock.resume()
        pc = self._pc
        if pc != event.pc:
            e._halted = False              # the debugger moved the guest out of its hlt
        if action == "kill":
            e.finish_at(EXIT_DEBUGGER, "the debugger ended the run", pc)
            return eip
        if action == "detach":
            self.detach()
            return e.resume_at(pc)
        if action == "step":
            return self._start_step(pc, report=True)
        if pc in self.breakpoints:
            return self._start_step(pc, report=False)
        return e.resume_at(pc)

    def _start_step(self, pc: int, report: bool) -> int:
        """Set up a step of the instruction at `pc`; returns unicorn's EIP."""
        e = self.e
        e._set_preempt(False)
        native = e.user_mode or e.kernel_native
        self.step = _Step(pc, report, native and not e._halted, _restarts(e))
        if native and not e._halted:
            e.m.uc.ctl_flush_tb()          # unicorn's instruction count is a hook (unicorn #2200)
        if e._halted or native:
            return pc                      # (halted: the run loop waits for an interrupt)
        try:
            return e.tcache.translate_step(pc).body
        except GuestFault as f:            # the instruction cannot be fetched: its #PF ends the step
            e._deliver(Frame(e.regs), f, pc)
            return e.regs.read(X.UC_X86_REG_EIP)

    def detach(self) -> None:
        """The debugger went away: no breakpoints or watchpoints are left behind."""
        for addr in list(self.breakpoints):
            self.remove_breakpoint(addr)
        for kind, addr, length in list(self.watchpoints):
            self.remove_watchpoint(kind, addr, length)
        self._interrupt = False

    def exited(self, status: int, reason: str) -> None:
        self.frontend.exited(status, reason)

    # --- what a stopped guest shows the debugger -----------------------------------------
    @property
    def pc(self) -> int:
        return self._pc

    def registers(self) -> dict[str, int]:
        """The guest's registers as the guest sees them."""
        e = self.e
        frame = Frame(e.regs)
        regs = dict(zip(GPR_NAMES, frame.r[:8]))
        regs["eip"] = self._pc
        regs["eflags"] = e.vcpu.guest_eflags(frame.eflags)
        regs.update(e.guest_selectors())
        return regs

    def set_register(self, name: str, value: int) -> None:
        e = self.e
        value &= 0xFFFFFFFF
        if name in GPR_NAMES:
            frame = Frame(e.regs)
            frame.set(name, value)
            frame.commit()
        elif name == "eip":
            self._pc = value
        elif name == "eflags":
            frame = Frame(e.regs)
            e.vcpu.load_eflags(frame, value)
            frame.commit()
        else:
            raise DebugError(f"register {name} cannot be changed here")

    def fpu(self) -> dict[str, object]:
        """x87 (stack order) and SSE registers as the guest has them."""
        uc = self.e.m.uc
        v = self.e.vcpu
        control = dict(zip(("fctrl", "fstat", "ftag", "fop", "fioff", "fiseg", "fooff", "foseg",
                            "mxcsr"), (uc.reg_read(r) for r in v.FPU_REGS)))
        tc_ip = self.e._tc_to_guest(control["fioff"])
        if tc_ip is not None:
            control["fioff"] = tc_ip        # the last x87 instruction ran from the TC
        top = (control["fstat"] >> 11) & 7
        st = [uc.reg_read(v.FP_REGS[(top + i) & 7]) for i in range(8)]
        xmm = [uc.reg_read(r) for r in v.XMM_REGS]
        return {**control, "st": st, "xmm": xmm}

    def read_memory(self, addr: int, n: int) -> bytes:
        """Guest-linear memory through the guest's page tables (no access
        rights checked, no accessed bits set)."""
        return b"".join(self.e.m.mem.read_phys(p, c) for p, c in self._pieces(addr, n))

    def write_memory(self, addr: int, data: bytes) -> None:
        """Stores go through the traces: CCFs and shadow entries follow."""
        off = 0
        for phys, chunk in list(self._pieces(addr, len(data))):
            self.e.m.mem.write_phys(phys, data[off:off + chunk])
            off += chunk

    def _pieces(self, addr: int, n: int):
        mmu, ram = self.e.mmu, self.e.m.mem_size
        while n > 0:
            chunk = min(n, PAGE_SIZE - (addr & (PAGE_SIZE - 1)))
            if addr + chunk > 1 << 32:
                raise DebugError(f"{addr:#x} is not guest memory")
            try:
                phys = mmu.walk(addr, False, False, set_ad=False)[0] if mmu.paging else addr
            except GuestFault:
                raise DebugError(f"{addr:#x} is not mapped") from None
            if phys + chunk > ram:
                raise DebugError(f"{addr:#x} maps to {phys:#x}, outside RAM")
            yield phys, chunk
            addr += chunk
            n -= chunk

    # --- breakpoints and watchpoints ------------------------------------------------------------
    def insert_breakpoint(self, addr: int) -> None:
        if addr in self.breakpoints:
            return
        uc = self.e.m.uc
        self.breakpoints[addr] = uc.hook_add(UC_HOOK_CODE, self._on_native_breakpoint,
                                             begin=addr, end=addr)
        uc.ctl_flush_tb()
        self.e.tcache.breakpoints.add(addr)
        self.e.tcache.breakpoint_changed(addr)

    def remove_breakpoint(self, addr: int) -> None:
        hook = self.breakpoints.pop(addr, None)
        if hook is None:
            return
        uc = self.e.m.uc
        uc.hook_del(hook)
        uc.ctl_flush_tb()
        self.e.tcache.breakpoints.discard(addr)
        self.e.tcache.breakpoint_changed(addr)

    def insert_watchpoint(self, kind: str, addr: int, length: int) -> None:
        key = (kind, addr, length)
        if key in self.watchpoints:
            return
        if length <= 0 or addr + length > 1 << 32:
            raise DebugError(f"cannot watch {length} bytes at {addr:#x}")
        uc = self.e.m.uc
        self.watchpoints[key] = uc.hook_add(WATCH_HOOKS[kind], self._on_watch, key,
                                            begin=addr, end=addr + length - 1)
        if self._exact_eip is None:
            self._exact_eip = ExactEip(uc)         # (flushes compiled blocks)
        else:
            uc.ctl_flush_tb()

    def remove_watchpoint(self, kind: str, addr: int, length: int) -> None:
        hook = self.watchpoints.pop((kind, addr, length), None)
        if hook is None:
            return
        uc = self.e.m.uc
        uc.hook_del(hook)
        if not self.watchpoints:
            self._exact_eip.remove()
            self._exact_eip = None
        else:
            uc.ctl_flush_tb()



def _restarts(engine) -> int:
    """Instructions the engine made start over: a hidden page fault filled, or
    the monitor region moved out of the guest's way."""
    return engine.exits["hidden-fault"] + engine.exits["monitor-moved"]
