"""The binary-translation engine: the monitor loop around the TC.

Unicorn runs CCFs; Python runs only on exits. There are three kinds:
callouts (an `int3` the translator planted: exits to unchained successors,
lookup misses, emulated instructions), faults raised by guest instructions
inside a CCF (reported to the guest at the guest EIP that caused them), and
writes to traced code pages. Every exit is counted by reason.
"""

from __future__ import annotations

import bisect
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from unicorn import UC_HOOK_CODE, UC_HOOK_INSN_INVALID, UC_HOOK_INTR, UcError
from unicorn import x86_const as X

from bt_vmm.errors import (EXIT_INSN_LIMIT, EXIT_MONITOR, EXIT_TIMEOUT, EXIT_TRIPLE_FAULT,
                           BtVmmError, GuestExit, Unsupported)
from bt_vmm.machine.layout import MON_BASE
from bt_vmm.machine.memory import GuestFault
from bt_vmm.machine.pc import Machine
from bt_vmm.shadow_mmu import CodeTraces
from bt_vmm.tcache.cache import CCF, TCache
from bt_vmm.tcache import region as R
from bt_vmm.translator import Callout, Translator
from bt_vmm.vcpu.emulate import HALT, Emulator
from bt_vmm.vcpu.frame import Frame
from bt_vmm.vcpu.quirks import FaultState
from bt_vmm.vcpu.state import AC, TripleFault

ERROR_CODE_VECTORS = {8, 10, 11, 12, 13, 14, 17}


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


class BTEngine:
    name = "bt"

    def __init__(self, machine: Machine, options: EngineOptions) -> None:
        self.m = machine
        self.opts = options
        uc = machine.uc
        self.regs = machine.regs
        self.vcpu = machine.vcpu
        self.traces = CodeTraces(uc, self._on_code_write)
        self.tcache = TCache(
            uc, lambda lookup: Translator(lookup, options.count, options.max_insns is not None),
            machine.mem.fetch, self.traces.trace, self.traces.untrace, options.tc_size)
        machine.mem.on_write = self._on_monitor_write
        self.emu = Emulator(machine.vcpu, machine.bus)
        self.faults = FaultState(uc)
        self.exits: Counter[str] = Counter()
        self.vectors: Counter[int] = Counter()
        self.check_violations = 0
        self._stop: tuple[int, str] | None = None
        self._error: BaseException | None = None
        self._halted = False
        self._timed_out = False
        self._exit_eip: int | None = None   # guest EIP of the exit being handled
        if options.max_insns is not None:
            uc.mem_write(R.lin(R.BUDGET), struct.pack("<i", min(options.max_insns, 0x7FFFFFFF)))
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid)
        if options.check:
            # Guest code must only ever run as CCFs: any instruction fetched
            # below the monitor region is a guest instruction run untranslated.
            uc.hook_add(UC_HOOK_CODE, self._on_untranslated, begin=0, end=MON_BASE - 1)

    # --- the run loop -------------------------------------------------------------
    def run(self, entry: int) -> RunResult:
        uc = self.m.uc
        start = time.perf_counter()
        deadline = start + self.opts.timeout if self.opts.timeout else None
        watchdog = None
        if self.opts.timeout:
            watchdog = threading.Timer(self.opts.timeout, self._on_timeout)
            watchdog.daemon = True
            watchdog.start()
        try:
            eip = self.tcache.get(entry).body
            while True:
                self._halted = False
                try:
                    uc.emu_start(eip, self.tcache.stop_addr)
                except UcError as e:
                    return self._result(start, EXIT_MONITOR, f"unicorn stopped: {e}", dump=True)
                if self._error is not None:
                    raise self._error
                if self._stop is not None:
                    status, reason = self._stop
                    return self._result(start, status, reason, dump=status == EXIT_TRIPLE_FAULT)
                if self._timed_out:
                    return self._result(start, EXIT_TIMEOUT, f"timeout after {self.opts.timeout:g} s")
                if self._halted:
                    # Nothing on this machine raises interrupts yet: a halt with
                    # IF=1 sleeps until --timeout, as the hardware would forever.
                    self.exits["halt-wait"] += 1
                    if deadline is None:
                        threading.Event().wait()
                    time.sleep(max(0.0, deadline - time.perf_counter()))
                    return self._result(start, EXIT_TIMEOUT, f"timeout after {self.opts.timeout:g} s "
                                        "(guest halted waiting for an interrupt)")
                eip = self.regs.read(X.UC_X86_REG_EIP)
                if not self._in_tc(eip):
                    return self._result(start, EXIT_MONITOR,
                                        f"emulation stopped outside the TC at {eip:#x}", dump=True)
        finally:
            if watchdog is not None:
                watchdog.cancel()
            self.m.devices.uart.flush()

    def _result(self, start: float, status: int, reason: str, dump: bool = False) -> RunResult:
        return RunResult(status, reason, time.perf_counter() - start, self.dump_state() if dump else "")

    def _finish(self, status: int, reason: str) -> None:
        if self._stop is None:
            self._stop = (status, reason)
        self.m.uc.emu_stop()

    def _on_timeout(self) -> None:
        self._timed_out = True
        self.m.uc.emu_stop()

    def _in_tc(self, eip: int) -> bool:
        return R.lin(R.TC_BASE) <= eip < R.lin(R.TC_END)

    # --- hooks ----------------------------------------------------------------------
    def _guarded(self, fn, *args) -> None:
        try:
            fn(*args)
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
        if intno == 3:
            c = self.tcache.callouts.get(self.regs.read(X.UC_X86_REG_EIP))
            if c is not None:
                self._guarded(self._callout, c)
                return
        self._guarded(self._fault, intno)

    def _on_invalid(self, uc, _ud) -> bool:
        self._guarded(self._fault, 6)
        return self._stop is None and self._error is None

    def _on_untranslated(self, uc, address: int, size: int, _ud) -> None:
        self.check_violations += 1
        self._finish(EXIT_MONITOR, f"check failed: guest instruction at {address:#x} ran outside the TC")

    def _on_code_write(self, addr: int, size: int) -> None:
        """A guest store hit a traced page (CodeTraces performs the store)."""
        self.exits["trace-write"] += 1
        self.tcache.guest_write(addr, size)

    def _on_monitor_write(self, addr: int, size: int) -> None:
        """The monitor writes guest RAM (exception frames, emulated stores)."""
        page = addr & ~0xFFF
        if page in self.traces.pages or ((addr + size - 1) & ~0xFFF) in self.traces.pages:
            self.tcache.guest_write(addr, size)

    # --- callouts -----------------------------------------------------------------
    def _callout(self, c: Callout) -> None:
        kind = c.kind
        self._exit_eip = c.guest_eip
        if kind == "exit":
            self.exits["exit"] += 1
            ccf = self.tcache.get(c.exit.target)
            if not c.ccf.dead:
                self.tcache.chain(c.exit, ccf, c.ccf.generation)
            self.regs.write(X.UC_X86_REG_EIP, ccf.body)
        elif kind == "reenter":
            self.exits["reenter"] += 1
            self.regs.write(X.UC_X86_REG_EIP, self.tcache.get(c.guest_eip).body)
        elif kind == "lookup-miss":
            self.exits["lookup-miss"] += 1
            guest_ecx, target = struct.unpack("<II", self.m.uc.mem_read(R.lin(R.S_ECX), 8))
            ccf = self.tcache.get(target)
            self.tcache.fill_table(ccf)
            eflags = self.regs.read(X.UC_X86_REG_EFLAGS)
            self.regs.write_many((X.UC_X86_REG_ECX, X.UC_X86_REG_EFLAGS, X.UC_X86_REG_EIP),
                                 (guest_ecx, eflags & ~AC, ccf.body))
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
            frame = Frame(self.regs)
            self._deliver(frame, GuestFault(6), c.guest_eip)
        elif kind == "irq-window":
            self.exits["irq-window"] += 1    # no interrupt controller yet: nothing can be pending
        elif kind == "insn-limit":
            self._finish(EXIT_INSN_LIMIT, f"--max-insns {self.opts.max_insns} reached")
        else:  # pragma: no cover
            raise AssertionError(kind)

    def _emulate(self, c: Callout) -> None:
        frame = Frame(self.regs)
        insn = c.insn
        try:
            nxt = self.emu.run(frame, insn)
        except GuestFault as f:
            self._deliver(Frame(self.regs), f, insn.addr)
            return
        if nxt == HALT:
            frame.eip = self.tcache.get(insn.next).body
            self._halted = True
            frame.commit()
            self.m.uc.emu_stop()
            return
        if nxt is not None:
            frame.eip = self.tcache.get(nxt).body
        frame.commit()

    # --- faults ---------------------------------------------------------------------
    def _fault(self, vector: int) -> None:
        err = self.faults.error_code_and_reset() if vector != 6 else 0
        frame = Frame(self.regs)
        tc_eip = frame.eip
        ccf = self.tcache.ccf_at(tc_eip)
        if ccf is None:
            raise Unsupported(f"exception {vector} at monitor address {tc_eip:#x} outside any CCF")
        guest_eip, fixup = self._guest_pc(ccf, tc_eip)
        self._exit_eip = guest_eip
        if fixup == "ecx":
            frame.r[1] = struct.unpack("<I", self.m.uc.mem_read(R.lin(R.S_ECX), 4))[0]
        elif fixup == "eax":
            frame.r[0] = struct.unpack("<I", self.m.uc.mem_read(R.lin(R.S_EAX), 4))[0]
        elif fixup == "gs":
            self.regs.write(X.UC_X86_REG_GS, R.MON_GS_SEL_VALUE)
        frame.eflags &= ~AC
        if vector == 14:
            cr2 = self.regs.read(X.UC_X86_REG_CR2)
            where = "the monitor region" if cr2 >= MON_BASE else "nonexistent physical memory"
            raise Unsupported(f"guest instruction at {guest_eip:#x} accessed {where} at {cr2:#x}")
        if vector == 1:
            raise Unsupported(f"single-step trap (EFLAGS.TF) at {guest_eip:#x} is not virtualized yet")
        self._deliver(frame, GuestFault(vector, err if vector in ERROR_CODE_VECTORS else None), guest_eip)

    def _deliver(self, frame: Frame, f: GuestFault, guest_eip: int) -> None:
        self.vectors[f.vector] += 1
        self.exits[f"fault:{f.vector}"] += 1
        if f.cr2 is not None:
            self.vcpu.cr2 = f.cr2
        handler = self.vcpu.raise_exception(frame, f.vector, f.error_code, guest_eip)
        frame.eip = self.tcache.get(handler).body
        frame.commit()

    def _guest_pc(self, ccf: CCF, tc_eip: int) -> tuple[int, str | None]:
        pcmap = ccf.code.pcmap
        i = bisect.bisect_right([p[0] for p in pcmap], tc_eip) - 1
        _, guest_eip, fixup = pcmap[max(i, 0)]
        return guest_eip, fixup

    # --- reporting ----------------------------------------------------------------
    def guest_eip(self) -> int | None:
        """The guest EIP the CPU is at: inside a CCF, mapped back; at an exit,
        the instruction the exit stands for."""
        eip = self.regs.read(X.UC_X86_REG_EIP)
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
