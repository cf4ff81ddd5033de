"""The BT engine on small assembly kernels: exits, precise faults, virtual
flags, the monitor region, chaining, counters, flushes and the --check proof."""

from __future__ import annotations

import struct

import pytest

from asmkernel import DATA, POWEROFF, exit_with, read_u32, run_kernel
from bt_vmm.errors import EXIT_INSN_LIMIT, EXIT_MONITOR, EXIT_OK, EXIT_TIMEOUT, EXIT_TRIPLE_FAULT
from bt_vmm.machine.layout import MON_BASE
from bt_vmm.tcache import region as R

# A handler that records the pushed EIP (and the error code slot) and powers off.
RECORD = f"""
fault_handler:
    mov eax, [esp]
    mov [{DATA}], eax
    mov eax, [esp+4]
    mov [{DATA + 4}], eax
    {POWEROFF}
"""


def test_power_off_is_status_0():
    result, _, _ = run_kernel("nop;" + POWEROFF + "fault_handler: hlt;")
    assert (result.status, result.reason) == (EXIT_OK, "guest powered off (ACPI S5)")


@pytest.mark.parametrize("value", [0, 1, 5, 0x7F])
def test_debug_exit_status(value):
    result, _, _ = run_kernel(exit_with(value) + "fault_handler: hlt;")
    assert result.status == (value << 1) | 1


def test_hlt_with_interrupts_disabled_is_status_0():
    result, _, _ = run_kernel("cli; hlt; fault_handler: hlt;")
    assert result.status == EXIT_OK
    assert "halted with interrupts disabled" in result.reason


def test_hlt_with_interrupts_enabled_waits_until_timeout():
    result, _, _ = run_kernel("sti; hlt;" + exit_with(9) + "fault_handler: hlt;", timeout=0.3)
    assert result.status == EXIT_TIMEOUT


def test_spinning_guest_ends_at_timeout():
    result, _, _ = run_kernel("spin: jmp spin; fault_handler: hlt;", timeout=0.3)
    assert result.status == EXIT_TIMEOUT


def test_triple_fault_gives_status_and_register_dump():
    # An IDT limit of 0 makes every delivery fault: int3 -> #GP -> #DF -> shutdown.
    asm = f"""
        mov ebx, 0x1234abcd
        .byte 0x0f, 0x01, 0x1d
        .long empty_idtr
        int3
        {POWEROFF}
    fault_handler: hlt
    empty_idtr:
        .word 0
        .long 0
    """
    result, _, _ = run_kernel(asm)
    assert result.status == EXIT_TRIPLE_FAULT
    assert "triple fault" in result.reason
    assert "ebx=1234abcd" in result.dump and "guest eip=" in result.dump


@pytest.mark.parametrize("before", range(6))
def test_divide_error_reports_the_guest_eip_at_any_position(before):
    # `before` IDENT instructions precede the faulting div in the same TU.
    asm = f"""
        mov eax, fault_at
        mov [{DATA + 8}], eax
        xor ecx, ecx
        jmp tu
    tu:
        {"inc esi;" * before}
    fault_at:
        div ecx
        {exit_with(1)}
    """ + RECORD
    result, engine, _ = run_kernel(asm)
    assert result.status == EXIT_OK
    assert read_u32(engine, DATA) == read_u32(engine, DATA + 8)
    assert read_u32(engine, DATA + 4) == 0x08          # the pushed CS is the guest's
    assert engine.vectors[0] == 1


def test_undefined_opcode_is_delivered_as_ud_at_the_instruction():
    asm = f"""
        mov eax, fault_at
        mov [{DATA + 8}], eax
    fault_at:
        ud2
        {exit_with(1)}
    """ + RECORD
    result, engine, _ = run_kernel(asm)
    assert result.status == EXIT_OK
    assert read_u32(engine, DATA) == read_u32(engine, DATA + 8)
    assert engine.vectors[6] == 1


def test_gp_from_an_emulated_segment_load_has_the_selector_as_error_code():
    asm = f"""
        mov eax, fault_at
        mov [{DATA + 8}], eax
        mov ax, 0x78
    fault_at:
        mov ds, ax
        {exit_with(1)}
    fault_handler:
        mov eax, [esp]          /* error code */
        mov [{DATA + 4}], eax
        mov eax, [esp+4]        /* EIP */
        mov [{DATA}], eax
        {POWEROFF}
    """
    result, engine, _ = run_kernel(asm)
    assert result.status == EXIT_OK
    assert read_u32(engine, DATA) == read_u32(engine, DATA + 8)
    assert read_u32(engine, DATA + 4) == 0x78


def test_int_n_pushes_the_return_address_and_the_virtual_flags():
    asm = f"""
        mov eax, after
        mov [{DATA + 8}], eax
        sti
        int 0x10
    after:
        {exit_with(1)}
    fault_handler:
        mov eax, [esp]
        mov [{DATA}], eax
        mov eax, [esp+8]        /* EFLAGS image */
        mov [{DATA + 4}], eax
        pushfd                  /* interrupt gate: IF now clear */
        pop eax
        mov [{DATA + 12}], eax
        {POWEROFF}
    """
    result, engine, _ = run_kernel(asm)
    assert result.status == EXIT_OK
    assert read_u32(engine, DATA) == read_u32(engine, DATA + 8)
    assert read_u32(engine, DATA + 4) & 0x200
    assert not read_u32(engine, DATA + 12) & 0x200


def test_virtual_flags_cli_sti_pushf_popf():
    asm = f"""
        cli
        pushfd
        pop eax
        mov [{DATA}], eax       /* IF clear */
        sti
        pushfd
        pop eax
        mov [{DATA + 4}], eax   /* IF set */
        push 0x3202             /* IOPL 3, IF */
        cli
        popfd
        pushfd
        pop eax
        mov [{DATA + 8}], eax
        stc                     /* arithmetic flags survive cli/sti and pushf */
        cli
        sti
        setc bl
        mov [{DATA + 12}], bl
        pushfd
        pop eax
        mov [{DATA + 16}], eax
        {POWEROFF}
    fault_handler: hlt
    """
    result, engine, _ = run_kernel(asm)
    assert result.status == EXIT_OK
    assert not read_u32(engine, DATA) & 0x200
    assert read_u32(engine, DATA + 4) & 0x200
    assert read_u32(engine, DATA + 8) & 0x3200 == 0x3200
    assert engine.m.uc.mem_read(DATA + 12, 1) == b"\x01"
    assert read_u32(engine, DATA + 16) & 0x1        # CF as the guest left it
    # The real EFLAGS never carries the guest's IF/IOPL/AC: only the monitor page does.
    assert engine.vcpu.vflags() & 0x3000 == 0x3000


# Paging off: the region's linear range is physical address space with nothing
# behind it (a PC has its BIOS flash there). The guest gets what such a PC
# gives -- reads of all ones, writes that vanish, no code to run -- once the
# monitor has moved out of the way; the monitor's own code and data stay intact.
@pytest.mark.parametrize("access, status, reason", [
    (f"mov eax, [{MON_BASE + 0x10}]; mov [{DATA}], eax", 3, None),    # read of the old virtual IF
    (f"mov dword ptr [{MON_BASE + R.TC_BASE}], 0", 3, None),        # write into the old TC
    (f"mov esp, {MON_BASE + 0x100}; pushfd", 3, None),               # rewritten pushf
    (f"jmp dword ptr [{MON_BASE + 0x10}]", EXIT_MONITOR, "executes nonexistent physical memory"),
    (f"mov esp, {MON_BASE + 0x100}; ret", EXIT_MONITOR, "executes nonexistent physical memory"),
    (f"mov esp, {MON_BASE + 0x100}; popfd", EXIT_MONITOR, "single-step"),   # pops all ones: TF set
])
def test_the_monitor_region_moves_away_from_the_guest(access, status, reason):
    asm = f"mov dword ptr [{DATA}], 0; {access}; {exit_with(1)} fault_handler: hlt;"
    result, engine, _ = run_kernel(asm)
    assert result.status == status, result
    assert reason is None or reason in result.reason
    assert engine.exits["monitor-moved"] == 1
    assert engine.placement.base != MON_BASE
    if "mov [" in access:
        assert read_u32(engine, DATA) == 0xFFFFFFFF        # open bus
    # the TC's shared lookup routine, rebuilt at the new place, and the data page are intact
    assert engine.tcache._read(engine.tcache.lookup_addr, 3) == bytes.fromhex("65890d")
    assert engine.tcache.lookup_addr == engine.placement.lin(R.TC_BASE)


def test_jumping_into_the_monitor_region_is_refused():
    """Fetches go through the guest's view of memory, never the monitor's:
    with paging off there is no memory there to run."""
    result, engine, _ = run_kernel(f"mov eax, {MON_BASE + R.TC_BASE}; jmp eax; fault_handler: hlt;")
    assert result.status == EXIT_MONITOR
    assert "nonexistent physical memory" in result.reason


CALL_LOOP = f"""
    mov ecx, 1000
loop_top:
    call func
    dec ecx
    jnz loop_top
    {POWEROFF}
func:
    add eax, ecx
    ret
fault_handler: hlt
"""


def test_hot_loop_runs_chained_without_exits():
    result, engine, _ = run_kernel(CALL_LOOP, count=True)
    assert result.status == EXIT_OK
    # 1000 calls and returns: chained direct exits and in-TC lookups, a handful of exits.
    assert sum(v for k, v in engine.exits.items() if not k.startswith("trace")) < 40
    assert engine.tcache.stats["chained"] >= 3
    lookups = struct.unpack("<Q", engine.m.uc.mem_read(R.phys(R.N_LOOKUPS), 8))[0]
    assert lookups == 1000
    assert engine.exits["lookup-miss"] <= 2


def test_execution_counters_count_guest_instructions_exactly():
    result, engine, _ = run_kernel(CALL_LOOP, count=True)
    assert result.status == EXIT_OK
    by_pc = {c.pc: engine.tcache.executions(c) for c in engine.tcache.all_ccfs()}
    # func (add; ret) ran 1000 times; the loop body (dec; jnz) 1000 times.
    assert sorted(by_pc.values()).count(1000) >= 2
    # 5 guest instructions per iteration (call, add, ret, dec, jnz), plus the
    # prologue's GDT/IDT set-up (a 256-round loop of 9 instructions).
    total = engine.tcache.guest_insns_executed()
    assert 5000 + 256 * 9 <= total <= 5000 + 256 * 9 + 40


def test_max_insns_stops_at_a_ccf_boundary():
    result, engine, _ = run_kernel(CALL_LOOP, max_insns=2000)
    assert result.status == EXIT_INSN_LIMIT
    assert engine.tcache.guest_insns_executed() <= 2000 + 64


def test_a_small_tc_flushes_and_still_runs_correctly():
    funcs = "".join(f"f{i}: add eax, {i}; ret;\n" for i in range(150))
    calls = "".join(f"call f{i};\n" for i in range(150))
    asm = f"""
        xor eax, eax
        mov esi, 3
    again:
        {calls}
        dec esi
        jnz again
        mov [{DATA}], eax
        {POWEROFF}
    {funcs}
    fault_handler: hlt
    """
    result, engine, _ = run_kernel(asm, tc_size=16 << 10)
    assert result.status == EXIT_OK
    assert read_u32(engine, DATA) == 3 * sum(range(150))
    assert engine.tcache.flushes["tc-full"] >= 1


def test_smc_overwriting_translated_code_invalidates_it():
    asm = f"""
        xor ebx, ebx
        mov esi, 5
    again:
        call target
        add ebx, eax
        inc dword ptr [imm]     /* patch the immediate of target's mov */
        dec esi
        jnz again
        mov [{DATA}], ebx
        {POWEROFF}
    target:
        .byte 0xb8
    imm:
        .long 10
        ret
    fault_handler: hlt
    """
    result, engine, _ = run_kernel(asm)
    assert result.status == EXIT_OK
    assert read_u32(engine, DATA) == 10 + 11 + 12 + 13 + 14
    assert engine.tcache.invalidations["smc-write"] >= 4


def test_check_mode_passes_for_translated_execution():
    result, engine, _ = run_kernel(CALL_LOOP, check=True)
    assert result.status == EXIT_OK and engine.check_violations == 0


def test_check_mode_catches_guest_code_run_outside_the_tc():
    from asmkernel import build_kernel
    from bt_vmm.engines.bt import BTEngine, EngineOptions
    from bt_vmm.loaders import load_multiboot
    from bt_vmm.machine.pc import Machine
    from asmkernel import ListSink

    boot = load_multiboot("t.bin", build_kernel(CALL_LOOP), 16 << 20)
    machine = Machine(16 << 20, ListSink())
    machine.load(boot)
    engine = BTEngine(machine, EngineOptions(check=True))
    # Simulate a monitor bug: start unicorn on the guest's own code.
    machine.uc.emu_start(boot.entry, boot.entry + 2, count=1)
    assert engine.check_violations == 1


def test_multiboot_modules_reach_the_guest():
    from asmkernel import build_kernel, ListSink
    from bt_vmm.engines.bt import BTEngine, EngineOptions
    from bt_vmm.loaders import Module, load_multiboot
    from bt_vmm.machine.pc import Machine

    # EBX -> MBI; mods_count at +20, mods_addr at +24; module 0 starts with its data.
    asm = f"""
        mov eax, [ebx + 20]
        mov [{DATA}], eax
        mov esi, [ebx + 24]
        mov eax, [esi]
        mov eax, [eax]
        mov [{DATA + 4}], eax
        {POWEROFF}
    fault_handler: hlt
    """
    image = build_kernel(asm, with_tables=False)
    boot = load_multiboot("k.bin", image, 16 << 20, "", [Module("m", b"MOD!" + bytes(100), "m arg")])
    machine = Machine(16 << 20, ListSink())
    machine.load(boot)
    engine = BTEngine(machine, EngineOptions())
    assert engine.run(boot.entry).status == EXIT_OK
    assert read_u32(engine, DATA) == 1
    assert engine.m.uc.mem_read(DATA + 4, 4) == b"MOD!"
