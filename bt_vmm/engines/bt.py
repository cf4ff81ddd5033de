"""The binary-translation engine: the monitor loop around the TC.

Guest CPL0 code runs as CCFs from the TC; guest CPL3 code runs directly in
unicorn at CPL3 on the user view of the shadow page tables. Python runs only on
exits:

* callouts: an `int3` the translator planted (exits to unchained successors,
  lookup misses, emulated instructions);
* exceptions raised by guest instructions, in a CCF (reported to the guest at
  the guest EIP that caused them) or in user code; #PF first goes to the shadow
  MMU, which fills hidden faults silently;
* stores to traced pages (translated code, guest page tables);
* asynchronous stops: a device deadline (the alarm, hosted/alarm.py), host
  input, --timeout, a stop asked for by the host world. Interrupts are
  delivered at guest instruction boundaries: always in user code, and in the
  TC at the points the CCF's map marks as clean; elsewhere the stop is retried
  a moment later.

Every exit is counted by reason.
"""

from __future__ import annotations

import bisect
import gc
import struct
import time
from collections import Counter
from dataclasses import dataclass

from unicorn import (UC_HOOK_BLOCK, UC_HOOK_CODE, UC_HOOK_INSN, UC_HOOK_INSN_INVALID, UC_HOOK_INTR,
                     UcError)
from unicorn import x86_const as X

from bt_vmm.engines.debug import DebugControl, StopEvent
from bt_vmm.engines.stop_points import StopPoints
from bt_vmm.errors import (EXIT_INSN_LIMIT, EXIT_MONITOR, EXIT_TIMEOUT, EXIT_TRIPLE_FAULT,
                           BtVmmError, GuestExit, Unsupported)
from bt_vmm.machine.memory import GuestFault
from bt_vmm.machine.pc import Machine
from bt_vmm.shadow_mmu.mmu import ERR_ID, RegionWanted
from bt_vmm.tcache import region as R
from bt_vmm.tcache.cache import CCF, TCache
from bt_vmm.translator import Callout, Translator
from bt_vmm.vcpu.emulate import HALT, Emulator
from bt_vmm.vcpu.frame import Frame
from bt_vmm.vcpu.quirks import CplSwitch, FaultState
from bt_vmm.vcpu.state import AC, IOPL, TripleFault

ERROR_CODE_VECTORS = {8, 10, 11, 12, 13, 14, 17}
SEG_REGS = (("ds", X.UC_X86_REG_DS), ("es", X.UC_X86_REG_ES), ("fs", X.UC_X86_REG_FS))


@dataclass
class RunResult:
    status: int
    reason: str
    wall_seconds: float = 0.0
    dump: str = ""


@dataclass
class EngineOptions:
    check: bool = False          # prove no guest CPL0 instruction runs outside the TC
    count: bool = False          # per-CCF execution counters (for --stats)
    max_insns: int | None = None
    timeout: float | None = None
    tc_size: int = R.TC_END - R.TC_BASE   # bytes of TC for CCFs (smaller forces flushes)
    recorder: object = None      # a bt_vmm.tcprofile.TCRecorder (--tc-profile), or None


class BTEngine:
    name = "bt"
    kernel_native = False    # guest kernel code runs from the TC, not as is

    def __init__(self, machine: Machine, options: EngineOptions) -> None:
        self.m = machine
        self.opts = options
        uc = machine.uc
        self.regs = machine.regs
        self.vcpu = machine.vcpu
        self.mmu = machine.mmu
        self.traces = machine.traces
        self.placement = machine.placement
        self.tcache = TCache(
            uc, lambda lookup, base: Translator(lookup, options.count, options.max_insns is not None,
                                                mon_base=base),
            machine.mem.fetch, machine.traces, lambda linear, touch: machine.mmu.translate(linear, touch=touch),
            options.tc_size, recorder=options.recorder, placement=machine.placement)
        machine.mmu.on_remap = self.tcache.remapped
        self.emu = Emulator(machine.vcpu, machine.bus)
        self.emu.tc_to_guest = self._tc_to_guest     # the x87 IP that fnstenv/fxsave store
        self.faults = FaultState(uc)
        machine.traces.after_protect = self.faults.reset
        self.cpl_switch = CplSwitch(uc)
        self.exits: Counter[str] = Counter()
        self.insns_direct = 0
        self.check_violations = 0
        self.user_mode = False
        self._stop: tuple[int, str] | None = None
        self._error: BaseException | None = None
        self._halted = False
        self._deadline: float | None = None
        self._exit_eip: int | None = None   # guest EIP of the exit being handled
        self._pending_fault: tuple[int, GuestFault | None] | None = None
        self._reenter = False               # stopped to re-enter unicorn (_hidden_fault_done)
        self._exit_eip_after_halt = 0
        # Where the guest stands when the run ended at a point it can resume
        # from (--timeout, --max-insns, the debugger): (guest PC, halted).
        self.resume_point: tuple[int, bool] | None = None
        self.debug: DebugControl | None = None       # a debugger, when one is attached
        self._wait_for_debugger = False
        # Code below the monitor region runs as is (user code; the kernel under
        # trap-and-emulate): stop points stop it for a preemption request.
        self.stop_points = StopPoints(uc, self.placement.guest_ranges())
        self._guest_hooks: list[tuple[int, object, list[int]]] = []   # (kind, callback, handles)
        self._stop_request: tuple[int, str] | None = None
        self._set_preempt(False)
        self.alarm = machine.make_alarm(self._alarm_fired)
        machine.on_host_input = self.alarm.wake
        if options.max_insns is not None:
            uc.mem_write(R.phys(R.BUDGET), struct.pack("<i", min(options.max_insns, 0x7FFFFFFF)))
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid)
        uc.hook_add(UC_HOOK_INSN, self._on_user_in, None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_user_out, None, 1, 0, X.UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INSN, self._on_sysenter, None, 1, 0, X.UC_X86_INS_SYSENTER)
        if options.count:
            # Blocks below the monitor region are directly executed user code
            # (kernel code only ever runs from the TC): count their instructions.
            self._block_insns: dict[tuple[int, int], int] = {}
            self._add_guest_hook(UC_HOOK_BLOCK, self._on_user_block)
        if options.check:
            # Guest kernel code must only ever run as CCFs: an instruction
            # fetched below the monitor region at CPL0 ran untranslated.
            self._add_guest_hook(UC_HOOK_CODE, self._on_untranslated)

    # --- the run loop -------------------------------------------------------------
    def run(self, entry: int) -> RunResult:
        uc = self.m.uc
        start = time.perf_counter()
        if self.opts.timeout:
            self._deadline = time.monotonic() + self.opts.timeout
        # The monitor keeps many long-lived objects (CCFs and their decoded
        # instructions) that Python's cyclic collector would traverse at every
        # full collection: 13-16% of a Linux boot went there. What exists
        # before the run is frozen, and collections are rarer during it.
        thresholds = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        try:
            eip = self.resume_at(entry)
            if self.debug is not None and self._wait_for_debugger:
                self.debug.stop = StopEvent("attach", entry)
            while True:
                debug = self.debug
                if debug is not None:
                    eip = debug.dispatch(eip)       # a stop: the debugger has the machine
                if self._stop is not None:
                    return self._ended(start)
                due = self._stop_due()
                if due is not None:
                    self.finish_at(*due, self._position())
                    return self._ended(start)
                if self._halted:
                    self._wait_for_interrupt()
                else:
                    # A debugger's step runs with no timers (no interrupt comes in
                    # between); code unicorn runs as is, one instruction.
                    stepping = debug is not None and debug.step is not None
                    self.alarm.arm(None if stepping else self._next_deadline())
                    try:
                        count = 1 if stepping and debug.native_step else 0
                        uc.emu_start(eip, self.tcache.stop_addr, count=count)
                    except UcError as e:
                        return self._result(start, EXIT_MONITOR, f"unicorn stopped: {e}", dump=True)
                    if debug is not None:
                        self.alarm.arm(None)    # no alarm while the debugger holds the machine
                    self.faults.reset()      # an exception cut short by the stop must not linger
                    self.traces.collect()
                    self.mmu.settle()
                    reentered, self._reenter = self._reenter, False
                    if self._error is not None:
                        raise self._error
                    if self._stop is not None:
                        return self._ended(start)
                    if debug is not None and debug.after_emulation():
                        pass                 # a debugger's stop, step or watchpoint hit
                    elif self._pending_fault is not None:
                        self._deliver_pending_fault()
                    elif not self._halted:
                        self._asynchronous_stop(counted=not reentered)
                if self._stop is not None:
                    return self._ended(start)
                eip = self.regs.read(X.UC_X86_REG_EIP)
                if not self.user_mode and not self._kernel_eip_valid(eip) and (
                        debug is None or debug.stop is None):
                    return self._result(start, EXIT_MONITOR,
                                        f"emulation stopped outside the TC at {eip:#x}", dump=True)
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()
            self.alarm.close()
            self.m.devices.uart.flush()

    def _result(self, start: float, status: int, reason: str, dump: bool = False) -> RunResult:
        if self.debug is not None:
            self.debug.exited(status, reason)
        return RunResult(status, reason, time.perf_counter() - start, self.dump_state() if dump else "")

    def _ended(self, start: float) -> RunResult:
        status, reason = self._stop
        return self._result(start, status, reason, dump=status in (EXIT_TRIPLE_FAULT, EXIT_MONITOR))

    def resume_at(self, pc: int) -> int:
        """Where unicorn goes on for a guest that stands at guest PC `pc` with
        its registers in place (the start of a run, after a debugger stop or a
        restore): the privilege level and page-table view brought in line
        with the vCPU, then `pc` itself or its CCF."""
        self._sync_mode()
        if self._halted:
            self._exit_eip_after_halt = pc
        if self.user_mode or self.kernel_native:
            return pc
        try:
            return self._kernel_eip(pc)
        except GuestFault as f:
            self._deliver(Frame(self.regs), f, pc)
            return self.regs.read(X.UC_X86_REG_EIP)

    def finish_at(self, status: int, reason: str, pc: int | None) -> None:
        """End the run at a guest instruction boundary it could resume from."""
        if self._stop is None and pc is not None:
            self.resume_point = (pc, self._halted)
        self._finish(status, reason)

    def _position(self) -> int | None:
        """The guest PC at a point where unicorn would go on at its current EIP
        (the run loop between runs, after an emulated instruction or a
        delivered exception), or None if the EIP names none."""
        if self._halted:
            return self._exit_eip_after_halt
        eip = self.regs.read(X.UC_X86_REG_EIP)
        if self.user_mode or self.kernel_native:
            return eip
        ccf = self.tcache.ccf_at(eip)
        if ccf is None or eip == ccf.tc_end:
            return None
        return self._guest_pc(ccf, eip)[0]

    def _stand_at(self, frame_fixup) -> None:
        """Give the guest back the registers a check point borrowed."""
        if frame_fixup is not None:
            frame = Frame(self.regs)
            frame_fixup(frame)
            frame.commit()

    # --- debugging and snapshots (engines/debug.py, bt_vmm/snapshot) ------------
    def attach_debugger(self, frontend, wait: bool) -> DebugControl:
        """Make `frontend` the guest's debugger; with `wait`, the guest stops
        before its first instruction."""
        self.debug = DebugControl(self, frontend)
        self._wait_for_debugger = wait
        return self.debug

    @property
    def halted(self) -> bool:
        """The guest waits in hlt for an interrupt."""
        return self._halted

    def guest_selectors(self) -> dict[str, int]:
        """The guest's segment registers. CS and SS are the vCPU's (unicorn runs
        the TC on the monitor's CS, and ring compression changes SS's RPL);
        DS, ES and FS are unicorn's; GS is virtual while the TC runs."""
        regs, segs = self.regs, self.vcpu.segs
        out = {"cs": segs["cs"].selector, "ss": segs["ss"].selector}
        for name, reg in SEG_REGS:
            out[name] = regs.read(reg) & 0xFFFF
        native_gs = self.user_mode or self.kernel_native
        out["gs"] = regs.read(X.UC_X86_REG_GS) & 0xFFFF if native_gs else segs["gs"].selector
        return out

    def cpu_state(self) -> dict:
        """The guest's general, EFLAGS, x87 and SSE registers, for a snapshot
        taken at a guest instruction boundary."""
        frame = Frame(self.regs)
        return {"gprs": frame.r[:8], "eflags": self.vcpu.guest_eflags(frame.eflags),
                "fpu": self.vcpu.fpu_state()}

    def restore_cpu(self, state: dict, halted: bool) -> None:
        """The registers of a snapshot (the run then starts at its guest PC)."""
        frame = Frame(self.regs)
        frame.r[:8] = state["gprs"]
        self.vcpu.load_eflags(frame, state["eflags"])
        frame.commit()
        self.vcpu.restore_fpu(state["fpu"])
        self._halted = halted

    def rewind_to_guest(self) -> int:
        """Unicorn stopped before an instruction (a watchpoint's access): give the
        guest back what a rewrite sequence borrowed and return the guest PC."""
        frame = Frame(self.regs)
        if self.user_mode or self.kernel_native:
            return frame.eip
        guest_eip = self._restore_guest_frame(frame)
        frame.commit()
        return guest_eip

    # The preemption bounds the TC's `bound` checks test: open, they admit any
    # value; closed (lower > upper), none, and the next check raises #BR.
    _OPEN_BOUNDS = struct.pack("<ii", -0x80000000, 0x7FFFFFFF)
    _CLOSED_BOUNDS = struct.pack("<ii", 1, 0)

    def _alarm_fired(self) -> None:
        """The alarm (or host input, or a stop request): from another thread,
        get the monitor control -- out of running guest code through the
        preemption request, out of a halt through the host event."""
        self._set_preempt(True)
        self.m.host_event.set()

    def request_stop(self, status: int, reason: str) -> None:
        """End the run with `status` at the next guest instruction boundary
        the monitor reaches; safe from any thread (the host world's stop
        event, its death)."""
        if self._stop_request is None:
            self._stop_request = (status, reason)
        self._alarm_fired()

    def _stop_due(self) -> tuple[int, str] | None:
        """(status, reason) if the run must end now: a stop request, --timeout."""
        if self._stop_request is not None:
            return self._stop_request
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return EXIT_TIMEOUT, f"timeout after {self.opts.timeout:g} s"
        return None

    def _set_preempt(self, on: bool) -> None:
        """Plain stores into host memory, safe from another thread (the alarm's): the
        bounds in the monitor region, seen by the TC at its next check, and
        the stop points' flag, seen at the next block of directly run code."""
        b = R.PREEMPT_BOUNDS
        self.m.mon[b:b + 8] = self._CLOSED_BOUNDS if on else self._OPEN_BOUNDS
        if on:
            self.stop_points.request()
        else:
            self.stop_points.clear()

    def _preempt_pending(self) -> bool:
        b = R.PREEMPT_BOUNDS
        return self.m.mon[b:b + 8] == self._CLOSED_BOUNDS

    def _preempted(self, guest_eip: int, frame_fixup=None) -> None:
        """A check point in the TC saw the preemption flag: the CPU is at a
        guest instruction boundary (`guest_eip`), so timers run and an
        interrupt that is due is delivered here."""
        self._set_preempt(False)
        self.exits["preempt"] += 1
        due = self._stop_due()
        if due is not None:
            self._stand_at(frame_fixup)
            self.finish_at(*due, guest_eip)
            return
        if self.debug is not None and self.debug.take_interrupt():
            self._stand_at(frame_fixup)
            self.debug.stop_at("interrupt", guest_eip)
            return
        if self._interrupt_deliverable():
            frame = Frame(self.regs)
            if frame_fixup is not None:
                frame_fixup(frame)
            self._deliver_interrupt(frame, guest_eip)
        self.alarm.arm(self._next_deadline())

    def _finish(self, status: int, reason: str) -> None:
        if self._stop is None:
            self._stop = (status, reason)
        self.m.uc.emu_stop()

    # --- the monitor region's placement ---------------------------------------
    def _add_guest_hook(self, kind: int, callback) -> None:
        """A unicorn hook over guest code and data: every linear address but
        the monitor region's, wherever the region is."""
        handles = [self.m.uc.hook_add(kind, callback, begin=lo, end=hi)
                   for lo, hi in self.placement.guest_ranges()]
        self._guest_hooks.append((kind, callback, handles))

    def _move_monitor(self) -> None:
        """The guest wants the region's linear range: move the region to one
        it does not use (shadow_mmu.free_monitor_pde). Everything that knows
        the region's linear address follows: the TC is rebuilt (a flush), the
        shadows map the region at its new place, the monitor's GS and GDTR
        bases and the hooks' ranges move. The caller resumes the guest at the
        instruction that wanted the range."""
        old = self.placement.pdes
        self.placement.base = self.mmu.free_monitor_pde() << 22
        self.exits["monitor-moved"] += 1
        self.tcache.rebase()
        self.mmu.move_monitor(old)
        self.m.place_monitor_tables()
        self._reload_monitor_gs()
        ranges = self.placement.guest_ranges()
        self.stop_points.move(ranges)
        for i, (kind, callback, handles) in enumerate(self._guest_hooks):
            for h in handles:
                self.m.uc.hook_del(h)
            self._guest_hooks[i] = (kind, callback, [self.m.uc.hook_add(kind, callback, begin=lo, end=hi)
                                                     for lo, hi in ranges])
        self.m.uc.ctl_flush_tb()             # hooks are compiled into unicorn's blocks

    def _reload_monitor_gs(self) -> None:
        """The TC reaches monitor data through GS: reload its base. The
        descriptor read goes to the shadow GDT, a user page under SMAP in the
        kernel view: allowed with AC set."""
        if self.user_mode:
            return                           # loaded on the way back to the TC
        eflags = self.regs.read(X.UC_X86_REG_EFLAGS)
        self.regs.write(X.UC_X86_REG_EFLAGS, eflags | AC)
        self.regs.write(X.UC_X86_REG_GS, R.MON_GS_SEL_VALUE)
        self.regs.write(X.UC_X86_REG_EFLAGS, eflags)

    # --- what differs between engines: where guest kernel code runs ------------
    def _kernel_eip(self, pc: int) -> int:
        """Where unicorn runs guest kernel code at guest PC `pc`: its CCF in the
        TC (a GuestFault if its code cannot be fetched)."""
        return self.tcache.get(pc).body

    def _kernel_eip_valid(self, eip: int) -> bool:
        return self.placement.lin(R.TC_BASE) <= eip < self.placement.lin(R.TC_END)

    def _kernel_segments(self) -> None:
        """Unicorn's privilege level and segments for guest kernel code: CPL0 on
        the monitor's CS and GS (the TC's), the guest's SS, DS, ES and FS."""
        v, regs = self.vcpu, self.regs
        self.cpl_switch.set_cpl(0)
        regs.write(X.UC_X86_REG_SS, v.segs["ss"].selector)
        regs.write(X.UC_X86_REG_CS, R.MON_CS_SEL)
        regs.write(X.UC_X86_REG_GS, R.MON_GS_SEL_VALUE)
        for name, reg in SEG_REGS:
            regs.write(reg, v.segs[name].selector)
        v.sync_virtual_gs()

    def _next_deadline(self) -> float | None:
        candidates = [d for d in (self._deadline, self.m.next_deadline()) if d is not None]
        return min(candidates) if candidates else None

    # --- interrupts -----------------------------------------------------------------
    def _update_pending(self) -> bool:
        """Bring devices up to date; mirror 'an interrupt is pending' into the
        monitor page, where the TC's sti/popf sequences look."""
        self.m.tick(time.monotonic())
        pending = self.m.interrupt_pending()
        self.m.uc.mem_write(R.phys(R.PENDING), struct.pack("<I", int(pending)))
        return pending

    def _interrupt_deliverable(self) -> bool:
        return self._update_pending() and self.vcpu.interrupts_enabled_now(
            self.regs.read(X.UC_X86_REG_EFLAGS))

    def _user_preempted(self) -> None:
        """Directly executed code is at an instruction boundary (an exit of its
        own, or a stop): hand over a pending preemption there."""
        self._set_preempt(False)
        self.exits["preempt"] += 1
        due = self._stop_due()
        if due is not None:
            self.finish_at(*due, self._position())
            return
        if self.debug is not None and self.debug.take_interrupt():
            self.debug.stop_at("interrupt", self.regs.read(X.UC_X86_REG_EIP))
            return
        if self._interrupt_deliverable():
            frame = Frame(self.regs)
            self._deliver_interrupt(frame, frame.eip)
        else:
            self.alarm.arm(self._next_deadline())

    def _asynchronous_stop(self, counted: bool = True) -> None:
        """Emulation stopped for a deadline or host input (or only to re-enter
        unicorn, not `counted`, when a deadline may have coincided): deliver an
        interrupt if one is due and the CPU is at a guest instruction boundary."""
        if counted:
            self.exits["async-stop"] += 1
        if self.user_mode:
            self._user_preempted()

    def _deliver_interrupt(self, frame: Frame, guest_eip: int) -> None:
        vector = self.m.acknowledge_interrupt()
        self._update_pending()
        self.exits["interrupt"] += 1
        self._enter_handler(frame, lambda: self.vcpu.raise_exception(frame, vector, None, guest_eip))

    def _wait_for_interrupt(self) -> None:
        """hlt with IF=1: sleep until the alarm (a device deadline, --timeout),
        host input or a stop request (with none of them, forever, as the
        hardware would)."""
        self.exits["halt"] += 1
        # An idle guest may be waiting for the user: a partial line on COM1 (a
        # shell prompt, echoed keystrokes) must reach the terminal now, not at
        # the next newline (found by benchmarks/soak.py, which waits for the prompt).
        self.m.devices.uart.flush()
        while True:
            if self._interrupt_deliverable():
                self._halted = False
                self._deliver_interrupt(Frame(self.regs), self._exit_eip_after_halt)
                return
            if self.debug is not None and self.debug.take_interrupt():
                self.debug.stop_at("interrupt", self._exit_eip_after_halt)
                return
            if self._stop_due() is not None:
                return
            self.alarm.arm(self._next_deadline())
            self.m.wait_for_event()
            # Whatever woke us is handled on the next pass: a preemption
            # request still raised would only cost a needless exit later.
            self._set_preempt(False)

    # --- privilege levels ---------------------------------------------------------
    def _enter_handler(self, frame: Frame, deliver) -> None:
        """Run `deliver` (which may change the guest's CPL) and continue at the
        handler it returns, in the TC."""
        was_user = self.user_mode
        if was_user:
            self._capture_user_segments(frame)
        handler = deliver()
        frame.eip = self._kernel_eip(handler) if self.vcpu.cpl == 0 else handler
        frame.commit()
        self._sync_mode()
        self._exit_eip = handler
        if self.debug is not None:
            self.debug.step_done(handler)    # a step that raised or met an exception ends here

    def _capture_user_segments(self, frame: Frame) -> None:
        """User code loads data segments without exits: read them back."""
        v = self.vcpu
        for name, reg in SEG_REGS + (("gs", X.UC_X86_REG_GS),):
            sel = self.regs.read(reg) & 0xFFFF
            if sel != v.segs[name].selector:
                try:
                    v.load_data_segment(name, sel, commit=False)
                except GuestFault:
                    v.load_data_segment(name, 0, commit=False)
        v.set_vflags(frame.eflags)

    def _sync_mode(self) -> None:
        """Make unicorn's privilege level, segments and page-table view match
        the vCPU after a transition between direct execution and the TC."""
        v, regs = self.vcpu, self.regs
        if v.cpl == 3 and not self.user_mode:
            v.sync_gdt()
            self.mmu.set_user(True)
            self.cpl_switch.set_cpl(3)
            regs.write(X.UC_X86_REG_SS, v.segs["ss"].selector)
            regs.write(X.UC_X86_REG_CS, v.segs["cs"].selector)
            for name, reg in SEG_REGS + (("gs", X.UC_X86_REG_GS),):
                regs.write(reg, v.segs[name].selector)
            self.user_mode = True
            self.exits["to-user"] += 1
        elif v.cpl == 0 and self.user_mode:
            # The user view maps the monitor region supervisor-only, so the
            # segment loads below read the shadow GDT without SMAP getting in the way.
            self._kernel_segments()
            self.mmu.set_user(False)
            self.user_mode = False
            self.exits["to-kernel"] += 1
        else:
            return
        # Descriptor reads during the segment loads above go through the new
        # page tables; a miss there leaves unicorn believing a #PF is in flight.
        self.faults.reset()

    # --- hooks ----------------------------------------------------------------------
    def _guarded(self, fn, *args):
        try:
            self.mmu.settle()
            return fn(*args)
        except GuestExit as e:
            self._finish(e.status, e.reason)
        except TripleFault as e:
            self._finish(EXIT_TRIPLE_FAULT, f"guest triple fault: {e}")
        except BtVmmError as e:
            self._finish(e.status, str(e))
        except BaseException as e:   # a monitor bug: stop and re-raise outside unicorn
            self._error = e
            self.m.uc.emu_stop()

    def _on_intr(self, uc, intno: int, _ud) -> None:
        if self.user_mode:
            if self._pending_fault is not None:
                # A refused port access earlier in the block: on hardware the
                # #GP came first and this event never happened.
                self._guarded(self._deliver_pending_fault)
                return
            self._guarded(self._user_exception, intno)
            return
        self._kernel_event(intno)

    def _kernel_event(self, intno: int) -> None:
        """An INTR hook while guest kernel code runs: a callout, a preemption
        check that fired, or a fault in a CCF."""
        if intno == 5:
            point = self.tcache.preempt_points.get(self.regs.read(X.UC_X86_REG_EIP))
            if point is not None:
                self._guarded(self._preempt_point, point)
                return
        if intno == 3:
            c = self.tcache.callouts.get(self.regs.read(X.UC_X86_REG_EIP))
            if c is not None:
                self._guarded(self._callout, c)
                return
        self._guarded(self._fault, intno)

    def _on_invalid(self, uc, _ud) -> bool:
        if self.user_mode:
            self._guarded(self._user_exception, 6)
        else:
            self._guarded(self._fault, 6)
        return self._stop is None and self._error is None

    def _on_user_block(self, uc, address: int, size: int, _ud) -> None:
        key = (address, size)
        n = self._block_insns.get(key)
        if n is None:
            from bt_vmm.decoder.tu import _md
            try:
                n = sum(1 for _ in _md.disasm_lite(self.m.mem.read_lin(address, size), address))
            except (GuestFault, Unsupported):
                n = 0
            self._block_insns[key] = n
        self.insns_direct += n

    def _on_untranslated(self, uc, address: int, size: int, _ud) -> None:
        if not self.user_mode:
            self.check_violations += 1
            self._guarded(self._finish, EXIT_MONITOR,
                          f"check failed: guest instruction at {address:#x} ran outside the TC")

    # User-mode port I/O reaches these hooks with no IOPL check (unicorn's
    # translator skips it, and does not even bring EIP up to date before the
    # helper). The monitor applies IOPL here. A refused access cannot be
    # undone mid-block: the hook finds the instruction by decoding forward from
    # the last synchronised EIP, restores EAX, and the #GP is delivered at
    # that instruction when the block ends -- with any register-only
    # instructions between it and the end of the block already executed.
    def _user_io_allowed(self) -> bool:
        eflags = self.regs.read(X.UC_X86_REG_EFLAGS)
        return (eflags & IOPL) >> 12 >= 3

    def _on_user_in(self, uc, port: int, size: int, _ud) -> int:
        value = self._guarded(self._user_in, port, size)
        return (1 << (8 * size)) - 1 if value is None else value

    def _user_in(self, port: int, size: int) -> int | None:
        if self._user_io_allowed():
            return self.m.bus.read(port, size)
        self._refuse_user_io()
        return None

    def _on_user_out(self, uc, port: int, size: int, value: int, _ud) -> None:
        self._guarded(self._user_out, port, size, value)

    def _user_out(self, port: int, size: int, value: int) -> None:
        if self._user_io_allowed():
            self.m.bus.write(port, size, value)
        else:
            self._refuse_user_io()

    def _refuse_user_io(self) -> None:
        self.exits["user-io-refused"] += 1
        eip = self._find_io_insn(self.regs.read(X.UC_X86_REG_EIP))
        self._pending_fault = (eip, GuestFault(13, 0))
        self._pending_eax = self.regs.read(X.UC_X86_REG_EAX)
        self.m.uc.emu_stop()

    def _find_io_insn(self, start: int) -> int:
        from capstone import x86_const as C
        from bt_vmm.decoder.tu import _md
        io = {C.X86_INS_IN, C.X86_INS_OUT, C.X86_INS_INSB, C.X86_INS_INSW, C.X86_INS_INSD,
              C.X86_INS_OUTSB, C.X86_INS_OUTSW, C.X86_INS_OUTSD}
        try:
            code = self.m.mem.read_lin(start, 256)
        except (GuestFault, Unsupported):
            return start
        for insn in _md.disasm(code, start):
            if insn.id in io:
                return insn.address
        return start

    def _on_sysenter(self, uc, _ud) -> None:
        self._guarded(self._sysenter_hook)

    def _sysenter_hook(self) -> None:
        # Unicorn does not emulate sysenter: finish it after the stop.
        self.exits["sysenter"] += 1
        self._pending_fault = (self.regs.read(X.UC_X86_REG_EIP), None)
        self.m.uc.emu_stop()

    def _deliver_pending_fault(self) -> None:
        eip, fault = self._pending_fault
        self._pending_fault = None
        frame = Frame(self.regs)
        if fault is None:   # sysenter
            self._enter_handler(frame, lambda: self.vcpu.sysenter(frame))
        else:
            frame.r[0] = self._pending_eax
            self._enter_handler(frame, lambda: self.vcpu.raise_exception(frame, 13, 0, eip))

    # --- callouts -----------------------------------------------------------------
    def _callout(self, c: Callout) -> None:
        if self.opts.recorder is not None:
            self.opts.recorder.callout(c)
        kind = c.kind
        self._exit_eip = c.guest_eip
        if kind == "exit":
            self.exits["exit"] += 1
            ccf = self._get(c.exit.target)
            if ccf is None:
                return
            if not c.ccf.dead:
                self.tcache.chain(c.exit, ccf, c.ccf.generation)
            self.regs.write(X.UC_X86_REG_EIP, ccf.body)
        elif kind == "reenter":
            self.exits["reenter"] += 1
            ccf = self._get(c.guest_eip)
            if ccf is not None:
                self.regs.write(X.UC_X86_REG_EIP, ccf.body)
        elif kind == "lookup-miss":
            self.exits["lookup-miss"] += 1
            guest_ecx, target = struct.unpack("<II", self.m.uc.mem_read(R.phys(R.S_ECX), 8))
            eflags = self.regs.read(X.UC_X86_REG_EFLAGS)
            self.regs.write_many((X.UC_X86_REG_ECX, X.UC_X86_REG_EFLAGS),
                                 (guest_ecx, eflags & ~AC))
            ccf = self._get(target)
            if ccf is None:
                return
            self.tcache.fill_table(ccf)
            self.regs.write(X.UC_X86_REG_EIP, ccf.body)
        elif kind in ("emulate", "emulate-end"):
            self.exits[f"{kind}:{c.insn.mnemonic}"] += 1
            if not c.fast_ready:
                c.fast, c.fast_ready = self.emu.fast_path(c.insn), True
            if c.fast is not None:
                c.fast()
            else:
                self._emulate(c)
        elif kind == "undefined":
            self.exits["undefined"] += 1
            self._deliver(Frame(self.regs), GuestFault(6), c.guest_eip)
        elif kind == "irq-window":
            self.exits["irq-window"] += 1
            if self._interrupt_deliverable():
                self._deliver_interrupt(Frame(self.regs), c.guest_eip)
        elif kind == "insn-limit":
            self.finish_at(EXIT_INSN_LIMIT, f"--max-insns {self.opts.max_insns} reached", c.guest_eip)
        elif kind == "breakpoint":
            self.debug.stop_at("breakpoint", c.guest_eip)
        elif kind == "step-exit":
            self.debug.step_done(c.exit.target)
        elif kind == "step-lookup":
            # As at a lookup miss: the guest's ECX is in S_ECX, the target in
            # S_TARGET, AC is set.
            guest_ecx, target = struct.unpack("<II", self.m.uc.mem_read(R.phys(R.S_ECX), 8))
            eflags = self.regs.read(X.UC_X86_REG_EFLAGS)
            self.regs.write_many((X.UC_X86_REG_ECX, X.UC_X86_REG_EFLAGS), (guest_ecx, eflags & ~AC))
            self.debug.step_done(target)
        else:  # pragma: no cover
            raise AssertionError(kind)

    def _preempt_point(self, point: Callout) -> None:
        if self.opts.recorder is not None:
            self.opts.recorder.callout(point)
        self.faults.reset()             # the #BR left unicorn's exception state set
        if point.kind == "preempt":
            self._preempted(point.guest_eip)
            return
        # In the lookup routine: the guest's ECX is in S_ECX, the target in
        # S_TARGET, and AC is set.
        guest_ecx, target = struct.unpack("<II", self.m.uc.mem_read(R.phys(R.S_ECX), 8))

        def restore(frame: Frame) -> None:
            frame.r[1] = guest_ecx
            frame.eflags &= ~AC
        self._preempted(target, restore)

    def _get(self, pc: int) -> CCF | None:
        """The CCF for `pc`; a fault fetching its code goes to the guest
        (at `pc`, the instruction that could not be fetched)."""
        try:
            return self.tcache.get(pc)
        except GuestFault as f:
            self._deliver(Frame(self.regs), f, pc)
            return None

    def _emulate(self, c: Callout) -> None:
        frame = Frame(self.regs)
        insn = c.insn
        try:
            nxt = self.emu.run(frame, insn)
        except GuestFault as f:
            self._deliver(Frame(self.regs), f, insn.addr)
            return
        if nxt == HALT:
            self._exit_eip_after_halt = insn.next
            frame.eip = self._kernel_eip(insn.next)
            self._halted = True
            frame.commit()
            self.m.uc.emu_stop()
            return
        if nxt is not None:
            if self.vcpu.cpl == 3:
                frame.eip = nxt                   # iret/sysexit to user mode: run directly
            else:
                eip = self._get_or_fault(frame, nxt)
                if eip is None:
                    return
                frame.eip = eip
        frame.commit()
        self._sync_mode()
        if nxt is not None and self.debug is not None:
            self.debug.step_done(nxt)        # a stepped iret, far jump, mov cr0, ...
        self._check_timeout()

    def _check_timeout(self) -> None:
        """--timeout (and stop requests) for guest code that never reaches a
        TC check point (an exception loop, a long rep ins/outs restarted chunk
        by chunk): checked at every exception delivery and emulated
        instruction (found by tests/test_hostile_guests.py)."""
        due = self._stop_due()
        if due is not None:
            self.finish_at(*due, self._position())

    def _get_or_fault(self, frame: Frame, pc: int) -> int | None:
        """The unicorn EIP for kernel PC `pc`, or None after delivering the
        fault that fetching its code raised."""
        try:
            return self._kernel_eip(pc)
        except GuestFault as f:
            frame.commit()
            self._deliver(Frame(self.regs), f, pc)
            return None

    # --- exceptions ---------------------------------------------------------------
    def _fault(self, vector: int) -> None:
        """An exception raised by an instruction inside a CCF."""
        err = self.faults.error_code_and_reset() if vector != 6 else 0
        if vector == 14:
            cr2 = self.regs.read(X.UC_X86_REG_CR2)
            if err & ERR_ID:
                # The kernel view is execute-disable outside the TC (shadow_mmu):
                # an instruction fetch there is kernel code run untranslated.
                self.check_violations += 1
                raise Unsupported(f"check failed: guest instruction at {cr2:#x} ran outside the TC")
            try:
                self.mmu.page_fault(cr2, err, user=False)
                self._hidden_fault_done(cr2)
                return                       # hidden: the instruction runs again
            except GuestFault as f:
                fault = f
            except RegionWanted:
                fault = None                 # the region moves; the instruction runs again
        else:
            fault = GuestFault(vector, err if vector in ERROR_CODE_VECTORS else None)
        frame = Frame(self.regs)
        guest_eip = self._restore_guest_frame(frame, f"exception {vector}")
        if fault is None:
            self._move_monitor()
            stepping = self.debug is not None and self.debug.step is not None
            # (the move rebuilt the TC: a debugger's step CCF too)
            frame.eip = (self.tcache.translate_step(guest_eip).body if stepping
                         else self._kernel_eip(guest_eip))
            frame.commit()
            return
        if vector == 1:
            raise Unsupported(f"single-step trap (EFLAGS.TF) at {guest_eip:#x} is not virtualized yet")
        self._deliver(frame, fault, guest_eip)

    def _restore_guest_frame(self, frame: Frame, what: str = "stop") -> int:
        """Unicorn stopped on an instruction inside a CCF (a fault, a
        watchpoint): the guest EIP of the guest instruction it belongs to,
        with the registers its rewrite sequence borrowed given back in `frame`
        (state as at that instruction's boundary: SDM vol. 3, 6.5)."""
        tc_eip = frame.eip
        ccf = self.tcache.ccf_at(tc_eip)
        if ccf is None:
            raise Unsupported(f"{what} at monitor address {tc_eip:#x} outside any CCF")
        guest_eip, fixup = self._guest_pc(ccf, tc_eip)
        self._exit_eip = guest_eip
        if fixup == "ecx":
            frame.r[1] = struct.unpack("<I", self.m.uc.mem_read(R.phys(R.S_ECX), 4))[0]
        elif fixup == "eax":
            frame.r[0] = struct.unpack("<I", self.m.uc.mem_read(R.phys(R.S_EAX), 4))[0]
        elif fixup == "gs":
            # Reloading GS reads the shadow GDT, an SMAP-protected user page: with
            # AC clear (as in a faulting guest instruction) that read faults inside
            # reg_write and corrupts the process (found by selfcheck).
            self.regs.write(X.UC_X86_REG_EFLAGS, frame.eflags | AC)
            self.regs.write(X.UC_X86_REG_GS, R.MON_GS_SEL_VALUE)
        frame.eflags &= ~AC
        return guest_eip

    def _user_exception(self, vector: int) -> None:
        """An exception or software interrupt in directly executed user code."""
        frame = Frame(self.regs)
        eip = frame.eip
        soft_len = self._software_interrupt_length(vector, eip)
        if soft_len:
            self.exits[f"user-int:{vector:#x}"] += 1
            self._enter_handler(frame, lambda: self.vcpu.raise_exception(
                frame, vector, None, eip, soft=True, insn_eip=eip - soft_len))
            return
        err = self.faults.error_code_and_reset() if vector != 6 else 0
        if vector == 14:
            cr2 = self.regs.read(X.UC_X86_REG_CR2)
            try:
                self.mmu.page_fault(cr2, err, user=True)
                self._hidden_fault_done(cr2)
                if self._preempt_pending():
                    self._user_preempted()
                return
            except GuestFault as f:
                fault = f
            except RegionWanted:
                self._move_monitor()         # the instruction runs again
                return
        else:
            fault = GuestFault(vector, err if vector in ERROR_CODE_VECTORS else None)
        self._deliver(frame, fault, eip)

    def _hidden_fault_done(self, cr2: int) -> None:
        """A hidden fault was filled; the instruction runs again. A fault at a
        page's first byte may be the second half of an access that crosses
        pages: unicorn 2.1.4 silences its memory hooks (UC_HOOK_MEM_READ and
        _WRITE) for the duration of such an access and, when the second page
        faults, leaves them silenced until it next enters its CPU loop -- the
        traces of page-table pages went deaf and a PTE write after it was
        missed (selfcheck seed 1, cases 75922 and 99009). Stopping unicorn and
        starting it again at the same instruction turns them back on."""
        self.exits["hidden-fault"] += 1
        if not cr2 & 0xFFF:
            self.exits["hidden-fault-reenter"] += 1
            self._reenter = True
            self.m.uc.emu_stop()

    def _software_interrupt_length(self, vector: int, eip: int) -> int:
        """Unicorn reports `int n`, `int3` and `into` like exceptions but with
        EIP after the instruction; tell them apart by the bytes before EIP."""
        try:
            before = self.m.mem.read_lin(eip - 2, 2)
        except (GuestFault, Unsupported):
            return 0
        if before[0] == 0xCD and before[1] == vector:
            return 2
        if (vector, before[1]) in ((3, 0xCC), (4, 0xCE)):
            return 1
        return 0

    def _deliver(self, frame: Frame, f: GuestFault, guest_eip: int) -> None:
        self.exits[f"fault:{f.vector}"] += 1
        if f.cr2 is not None:
            self.vcpu.cr2 = f.cr2
        self._enter_handler(frame, lambda: self.vcpu.raise_exception(
            frame, f.vector, f.error_code, guest_eip))
        self._check_timeout()

    def _tc_to_guest(self, tc: int) -> int | None:
        ccf = self.tcache.ccf_at(tc)
        return None if ccf is None else self._guest_pc(ccf, tc)[0]

    def _guest_pc(self, ccf: CCF, tc_eip: int) -> tuple[int, str | None]:
        pcmap = ccf.code.pcmap
        i = bisect.bisect_right([p[0] for p in pcmap], tc_eip) - 1
        _, guest_eip, fixup = pcmap[max(i, 0)]
        return guest_eip, fixup

    # --- reporting ----------------------------------------------------------------
    @property
    def vectors(self) -> Counter[int]:
        """Exceptions and interrupts delivered to the guest, by vector."""
        return self.vcpu.delivered

    def guest_eip(self) -> int | None:
        """The guest EIP the CPU is at: inside a CCF, mapped back; at an exit,
        the instruction the exit stands for."""
        eip = self.regs.read(X.UC_X86_REG_EIP)
        if self.user_mode:
            return eip
        ccf = self.tcache.ccf_at(eip)
        if ccf is not None and eip != ccf.tc_end:
            return self._guest_pc(ccf, eip)[0]
        return self._exit_eip

    def dump_state(self) -> str:
        frame = Frame(self.regs)
        v = self.vcpu
        geip = self.guest_eip()
        lines = [
            f"guest eip={geip:08x}" if geip is not None else f"tc eip={frame.eip:08x} (not in a CCF)",
            " ".join(f"{n}={frame.r[i]:08x}" for i, n in enumerate(("eax", "ecx", "edx", "ebx"))),
            " ".join(f"{n}={frame.r[i]:08x}" for i, n in enumerate(("esp", "ebp", "esi", "edi"), 4)),
            f"eflags={v.guest_eflags(frame.eflags):08x} cpl={v.cpl}",
            " ".join(f"{n}={s.selector:04x}" for n, s in v.segs.items()),
            f"cr0={v.cr0:08x} cr2={v.cr2:08x} cr3={v.cr3:08x} cr4={v.cr4:08x}",
            f"gdtr={v.gdtr[0]:08x}/{v.gdtr[1]:04x} idtr={v.idtr[0]:08x}/{v.idtr[1]:04x}",
        ]
        return "\n".join(lines)
