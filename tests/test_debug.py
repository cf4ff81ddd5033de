"""The engines' debug target (engines/debug.py), driven in-process: single
steps through every kind of rewritten instruction land on the guest
instruction the CPU would run next, under BT (one-instruction CCFs) and
trap-and-emulate (unicorn runs one instruction); breakpoints take effect in
code already translated; watchpoints report each access once, after it, with
the guest's own state; a step survives the monitor region moving."""

from __future__ import annotations

import threading

import pytest
from capstone import CS_ARCH_X86, CS_MODE_32, Cs

from asmkernel import BASE, CODE, DATA, POWEROFF, build_kernel, read_u32
from bt_vmm.engines.bt import BTEngine, EngineOptions
from bt_vmm.engines.trap import TrapEngine
from bt_vmm.errors import EXIT_OK
from bt_vmm.hosted.console import SerialSink
from bt_vmm.loaders import load_multiboot
from bt_vmm.machine.layout import MON_BASE
from bt_vmm.machine.pc import Machine

# One instruction per line; the comments number them for TRACE.
STEPPED = [
    "mov eax, 5",                 # 0
    "cli",                        # 1
    "pushfd",                     # 2
    "sti",                        # 3
    "popfd",                      # 4  (IF back to 0)
    "call func",                  # 5
    "jmp over",                   # 6
    "func: inc eax",              # 7
    "ret",                        # 8
    "over: cmp eax, 6",           # 9
    "je yes",                     # 10 taken
    "hlt",                        # 11 never
    "yes: mov ecx, 2",            # 12
    "again: dec ecx",             # 13
    "jnz again",                  # 14 taken once
    "lea ebx, [target]",          # 15
    "jmp ebx",                    # 16 indirect
    "nop",                        # 17 never
    "target: out 0x80, al",       # 18 port I/O: emulated
    "int 0x30",                   # 19 through the IDT to the handler
    f"mov [{DATA}], eax",         # 20 after the handler's iretd
    "pushfd",                     # 21
    f"pop dword ptr [{DATA + 4}]",  # 22
]
TRACE = [0, 1, 2, 3, 4, 5, 7, 8, 6, 9, 10, 12, 13, 14, 13, 14, 15, 16, 18, 19, "handler", 20, 21, 22]


def _program() -> str:
    return "\n".join(STEPPED) + f"\n{POWEROFF}\nfault_handler:\n    iretd\n"


def _insns(asm: str) -> list:
    """The test's own instructions in the kernel build_kernel makes (they
    follow the prologue, which ends with lidt)."""
    image = build_kernel(asm)
    code = image[CODE - BASE:]
    insns = list(Cs(CS_ARCH_X86, CS_MODE_32).disasm(code, CODE))
    first = next(i for i, insn in enumerate(insns) if insn.mnemonic == "lidt") + 1
    return insns[first:]


def _line_addresses() -> tuple[list[int], int]:
    insns = _insns(_program())
    return [i.address for i in insns[:len(STEPPED)]], next(i.address for i in insns if i.mnemonic == "iretd")


class Recorder:
    """A debugger front end that runs a script: one action per stop."""

    def __init__(self, script) -> None:
        self.script = script
        self.stops = []

    def stopped(self, event) -> str:
        self.stops.append(event)
        return self.script(self, event)

    def exited(self, status, reason) -> None:
        self.exit = status


def _run(asm: str, script, engine_cls=BTEngine, wait=True, setup=None):
    image = build_kernel(asm)
    boot = load_multiboot("dbg.bin", image, 16 << 20)
    machine = Machine(16 << 20, SerialSink())
    machine.load(boot)
    engine = engine_cls(machine, EngineOptions(timeout=30))
    front = Recorder(script)
    control = engine.attach_debugger(front, wait=wait)
    front.control = control
    if setup is not None:
        setup(control)
    result = engine.run(boot.entry)
    return result, engine, front


@pytest.mark.parametrize("engine_cls", [BTEngine, TrapEngine], ids=["bt", "trap"])
def test_single_steps_visit_each_instruction_the_cpu_runs(engine_cls):
    addrs, handler = _line_addresses()
    steps_left = [len(TRACE) - 1]

    def script(front, event):
        if event.reason == "attach":
            front.control.insert_breakpoint(addrs[0])
            return "continue"
        if event.reason == "breakpoint":
            front.control.remove_breakpoint(addrs[0])
        if steps_left[0] == 0:
            return "continue"
        steps_left[0] -= 1
        return "step"

    result, engine, front = _run(_program(), script, engine_cls)
    assert result.status == EXIT_OK, result
    seen = [e.pc for e in front.stops[1:]]
    expected = [handler if line == "handler" else addrs[line] for line in TRACE]
    assert seen == expected
    assert [e.reason for e in front.stops[2:]] == ["step"] * (len(TRACE) - 1)
    assert read_u32(engine, DATA) == 6                     # state survived the steps
    if engine_cls is BTEngine:   # (under trap, popf cannot clear IF: README, trap-and-emulate)
        assert read_u32(engine, DATA + 4) & 0x200 == 0     # popfd restored IF=0 (virtual IF)


def test_registers_at_a_stop_are_the_guests():
    addrs, _ = _line_addresses()
    seen = {}

    def script(front, event):
        if event.reason == "attach":
            front.control.insert_breakpoint(addrs[4])       # popfd, after sti
            return "continue"
        seen.update(front.control.registers())
        return "continue"

    result, _, _ = _run(_program(), script)
    assert result.status == EXIT_OK
    assert seen["eip"] == addrs[4]
    assert seen["eflags"] & 0x200                          # the guest's (virtual) IF after sti
    assert seen["cs"] == 0x08 and seen["ss"] == 0x10 and seen["eax"] == 5


def test_breakpoint_in_code_already_translated_takes_effect():
    """The loop body is translated and runs 1000 times before the breakpoint
    is set (at a stop the guest makes by itself: the second breakpoint)."""
    asm = f"""
        mov ecx, 2000
    top:
        inc dword ptr [{DATA}]
    body:
        cmp ecx, 1000
        jne skip
    mark:
        nop
    skip:
        dec ecx
        jnz top
        {POWEROFF}
    fault_handler:
        iretd
    """
    insns = _insns(asm)
    inc, nop = insns[1].address, next(i.address for i in insns if i.mnemonic == "nop")
    counts = []

    def script(front, event):
        if event.reason == "attach":
            front.control.insert_breakpoint(nop)
            return "continue"
        counts.append((event.pc, int.from_bytes(front.control.read_memory(DATA, 4), "little")))
        if event.pc == nop:
            front.control.remove_breakpoint(nop)
            front.control.insert_breakpoint(inc)           # translated 1000 times over by now
        return "continue" if len(counts) < 4 else "detach"

    result, engine, front = _run(asm, script)
    assert result.status == EXIT_OK
    assert counts[0] == (nop, 1001)
    assert counts[1:] == [(inc, 1001), (inc, 1002), (inc, 1003)]
    assert engine.tcache.invalidations["breakpoint"] >= 2
    assert read_u32(engine, DATA) == 2000


@pytest.mark.parametrize("engine_cls", [BTEngine, TrapEngine], ids=["bt", "trap"])
def test_watchpoints_report_each_access_once_after_it(engine_cls):
    asm = f"""
        mov ecx, 5
    top:
        add dword ptr [{DATA + 0x100}], 1       /* read-modify-write: must not run twice */
    after_add:
        mov eax, [{DATA + 0x104}]
    after_load:
        mov byte ptr [{DATA + 0x10A}], cl        /* outside the write watch */
        dec ecx
        jnz top
        {POWEROFF}
    fault_handler:
        iretd
    """
    insns = _insns(asm)
    after_add, after_load = insns[2].address, insns[3].address
    hits = []

    def script(front, event):
        c = front.control
        if event.reason == "attach":
            c.insert_watchpoint("write", DATA + 0x100, 8)
            c.insert_watchpoint("read", DATA + 0x104, 4)
            return "continue"
        value = int.from_bytes(c.read_memory(DATA + 0x100, 4), "little")
        hits.append((event.reason, event.watch.kind, event.watch.addr, event.pc, value, c.registers()["ecx"]))
        return "continue"

    result, engine, _ = _run(asm, script, engine_cls)
    assert result.status == EXIT_OK, result
    expected = []
    for i in range(5):
        ecx = 5 - i
        expected.append(("watch", "write", DATA + 0x100, after_add, i + 1, ecx))
        expected.append(("watch", "read", DATA + 0x104, after_load, i + 1, ecx))
    assert hits == expected
    assert read_u32(engine, DATA + 0x100) == 5


def test_interrupt_stops_a_spinning_guest_and_detach_lets_it_finish():
    asm = f"""
    spin:
        inc dword ptr [{DATA}]
        cmp dword ptr [{DATA + 4}], 0
        je spin
        {POWEROFF}
    fault_handler:
        iretd
    """

    def script(front, event):
        front.control.write_memory(DATA + 4, b"\x01\x00\x00\x00")   # let it out of the loop
        return "detach"

    def setup(control):
        threading.Timer(0.3, control.interrupt).start()

    result, engine, front = _run(asm, script, wait=False, setup=setup)
    assert result.status == EXIT_OK
    assert [e.reason for e in front.stops] == ["interrupt"]
    assert read_u32(engine, DATA) > 0


@pytest.mark.parametrize("engine_cls", [BTEngine, TrapEngine], ids=["bt", "trap"])
def test_a_step_over_an_instruction_that_makes_the_monitor_region_move(engine_cls):
    """Paging off, the guest reads the region's linear range: the monitor moves
    out of the way (the TC, step CCF included, is rebuilt) and the step ends
    after that instruction, not before or beyond it."""
    asm = f"""
        mov dword ptr [{DATA}], 0
        mov eax, [{MON_BASE + 0x10}]
        mov [{DATA}], eax
        mov al, 1
        out 0xf4, al
    fault_handler:
        hlt
    """
    insns = _insns(asm)
    touch, after = insns[1].address, insns[2].address

    def script(front, event):
        if event.reason == "attach":
            front.control.insert_breakpoint(touch)
            return "continue"
        return "step" if event.reason == "breakpoint" else "continue"

    result, engine, front = _run(asm, script, engine_cls)
    assert result.status == 3, result
    assert [(e.reason, e.pc) for e in front.stops[1:]] == [("breakpoint", touch), ("step", after)]
    assert engine.exits["monitor-moved"] == 1 and engine.placement.base != MON_BASE
    assert read_u32(engine, DATA) == 0xFFFFFFFF            # open bus, as without a debugger
