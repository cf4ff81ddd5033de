"""Hostile and broken guests: small assembly kernels that go after the monitor
and the machine, each checked for the outcome real hardware would give (a
fault delivered to the guest, a shutdown, a hang that --timeout ends) or, where
the monitor is not hardware-faithful yet, for the documented outcome (README,
"Robustness: bad input and hostile guests", which lists every case here).

After every run the monitor's own memory is compared with a snapshot taken
before the guest started: the TC's shared code, the monitor's GDT slots and
GS selector, every live CCF's bytes (exit fields aside, which chaining
patches), the lookup table and the monitor region's page-directory entries in
every shadow address space. A hostile guest may end its run; it may not change
the monitor.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass

import pytest

from asmkernel import DATA, POWEROFF, ListSink, build_kernel, exit_with, read_u32
from bt_vmm.engines.bt import BTEngine, EngineOptions, RunResult
from bt_vmm.errors import EXIT_MONITOR, EXIT_OK, EXIT_TIMEOUT, EXIT_TRIPLE_FAULT
from bt_vmm.hosted.disk import DiskImage
from bt_vmm.loaders import load_multiboot
from bt_vmm.machine.layout import MON_BASE, MON_SIZE
from bt_vmm.machine.pc import Machine
from bt_vmm.shadow_mmu import mmu as mmu_mod
from bt_vmm.tcache import region as R
from bt_vmm.vcpu.descriptors import Descriptor
from unicorn import x86_const as X

MON_DATA = MON_BASE                       # the monitor's data page (virtual IF, scratch, ...)
TC = MON_BASE + R.TC_BASE                 # the first TC byte: the shared lookup routine
SHADOW_GDT = MON_BASE + R.SHADOW_GDT
GARBAGE = 0x300000                        # scratch area the kernels fill with 0xFF bytes
PD, PT0, PT_USER = 0x280000, 0x281000, 0x282000
USER_PHYS = 0x380000                      # ring-3 code (and stack) frames
CR4_SMAP = 1 << 21


# ---------------------------------------------------------------- the monitor's state

@dataclass
class Snapshot:
    base: int              # the region's linear placement
    shared: bytes          # lookup routine + miss stub, at the start of the TC
    gdt_slots: bytes       # the monitor's CS and GS descriptors
    gs_sel: bytes
    kpde: tuple            # the monitor region's two shadow PDEs in the kernel view ...
    upde: tuple            # ... and in the user view
    mon_pt: bytes          # the kernel view's page tables for the region


def _mon_pt(engine: BTEngine, kpde: tuple) -> bytes:
    # accessed and dirty bits aside: the CPU's page walks set them
    mmu = engine.mmu
    return b"".join(struct.pack("<Q", mmu._peek((table & ~0xFFF) + 8 * i) & ~0x60)
                    for table in kpde for i in range(512))


def _pdes(engine: BTEngine, view) -> tuple:
    return tuple(e & ~0x60 for index in engine.placement.pdes for e in engine.mmu.pde(view, index))


def snapshot(engine: BTEngine) -> Snapshot:
    uc, tc, mmu = engine.m.uc, engine.tcache, engine.mmu
    kpde = _pdes(engine, mmu.space.kview)
    return Snapshot(
        base=engine.placement.base,
        shared=tc._read(tc.lookup_addr, len(tc.shared_code)),
        gdt_slots=bytes(uc.mem_read(R.phys(R.SHADOW_GDT) + 8 * R.MON_CS_INDEX, 16)),
        gs_sel=bytes(uc.mem_read(R.phys(R.MON_GS_SEL), 4)),
        kpde=kpde,
        upde=_pdes(engine, mmu.space.uview),
        mon_pt=_mon_pt(engine, kpde),
    )


def assert_monitor_intact(engine: BTEngine, before: Snapshot) -> None:
    """The monitor's code, data and mappings are what the monitor made them --
    at the region's current placement, if the guest made it move."""
    uc, tc, mmu = engine.m.uc, engine.tcache, engine.mmu
    after = snapshot(engine)
    assert after.shared == tc.shared_code, "the TC's shared lookup code changed"
    if after.base == before.base:
        assert after.shared == before.shared and after.gdt_slots == before.gdt_slots
    cs, gs = after.gdt_slots[:8], after.gdt_slots[8:]
    assert cs == before.gdt_slots[:8], "the monitor's CS descriptor changed"
    assert gs == Descriptor(engine.placement.base, MON_SIZE - 1, 0x93, 0x4).pack(), \
        "the monitor's GS descriptor does not describe the region"
    assert after.gs_sel == before.gs_sel, "the monitor's GS selector changed"
    assert after.mon_pt == before.mon_pt, "the monitor region's page table changed"
    for space in mmu.spaces.values():
        assert _pdes(engine, space.kview) == before.kpde
        assert _pdes(engine, space.uview) == before.upde
    # Every live CCF is byte for byte what the translator produced, except the
    # rel32 fields of its exits (chaining points them at successors).
    live = list(tc.by_pc.values())
    for ccf in live:
        code = ccf.code
        actual = bytearray(tc._read(code.base, len(code.code)))
        expected = bytearray(code.code)
        for site in code.exits:
            off = site.field - code.base
            actual[off:off + 4] = expected[off:off + 4]
        assert actual == expected, f"CCF for guest {ccf.pc:#x} changed in the TC"
    # The lookup table points at the miss stub or at the entry of a live CCF
    # whose guest PC hashes to that slot.
    table = struct.unpack(f"<{R.LTABLE_ENTRIES}I", uc.mem_read(R.phys(R.LTABLE), 4 * R.LTABLE_ENTRIES))
    entries = {ccf.code.entry: ccf.pc & 0xFFFF for ccf in live}
    for slot, target in enumerate(table):
        if target != tc.miss_stub:
            assert entries.get(target) == slot, f"lookup slot {slot:#x} points at {target:#x}"
    assert engine.regs.read(X.UC_X86_REG_CR4) & CR4_SMAP, "CR4.SMAP was turned off"


# ---------------------------------------------------------------- running kernels

@dataclass
class Run:
    result: RunResult
    engine: BTEngine
    sink: ListSink
    wall: float
    cpu: float

    def u32(self, addr: int) -> int:
        return read_u32(self.engine, addr)


def run_hostile(asm: str, mem: int = 16 << 20, with_tables: bool = True, disks=(),
                timeout: float = 10.0, **options) -> Run:
    """Boot `asm` (see asmkernel.py), run it to the end and check the monitor."""
    boot = load_multiboot("hostile.bin", build_kernel(asm, with_tables), mem)
    sink = ListSink()
    machine = Machine(mem, sink, list(disks))
    machine.load(boot)
    engine = BTEngine(machine, EngineOptions(timeout=timeout, **options))
    before = snapshot(engine)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        result = engine.run(boot.entry)
    finally:
        machine.close()
    run = Run(result, engine, sink, time.perf_counter() - t0, time.process_time() - c0)
    assert_monitor_intact(engine, before)
    return run


def lgdt(addr: int) -> str:      # keystone mis-assembles lgdt/lidt [m32] (see asmkernel.py)
    return f".byte 0x0f, 0x01, 0x15\n.long {addr}\n"


def lidt(addr: int) -> str:
    return f".byte 0x0f, 0x01, 0x1d\n.long {addr}\n"


def table_register(addr: int, base: int, limit: int) -> str:
    """Store a GDTR/IDTR image (limit, base) at addr."""
    return f"mov word ptr [{addr}], {limit}; mov dword ptr [{addr}+2], {base};"


def fill_garbage(addr: int = GARBAGE, dwords: int = 1024) -> str:
    return f"mov edi, {addr}; mov ecx, {dwords}; mov eax, 0xffffffff; rep stosd;"


def gate(vector: int, handler: str, idt: str = "idt", dpl: int = 0) -> str:
    """A 32-bit interrupt gate in the asmkernel IDT (or another one)."""
    access = 0x8E00 | (dpl << 13)
    return (f"mov eax, {handler}; mov word ptr [{idt} + {vector}*8], ax;"
            f"mov word ptr [{idt} + {vector}*8 + 2], 0x08; mov word ptr [{idt} + {vector}*8 + 4], {access};"
            f"shr eax, 16; mov word ptr [{idt} + {vector}*8 + 6], ax;")


def not_present(vector: int, idt: str = "idt") -> str:
    return f"mov byte ptr [{idt} + {vector}*8 + 5], 0x0E;"


# Records the error code (or EIP) at [esp], the next word, and CR2, then powers off.
RECORD = f"""
fault_handler:
    mov eax, [esp]
    mov [{DATA}], eax
    mov eax, [esp+4]
    mov [{DATA + 4}], eax
    mov eax, cr2
    mov [{DATA + 8}], eax
    {POWEROFF}
"""

# Identity-map the first 4 MiB (supervisor) through PD/PT0 and turn paging on
# (CR0.WP set, as the monitor requires); `extra` edits the tables first.
def paging_on(extra: str = "") -> str:
    return f"""
    mov edi, {PD}; xor eax, eax; mov ecx, 3*1024; rep stosd
    mov dword ptr [{PD}], {PT0} + 3
    xor ecx, ecx
idmap:
    mov eax, ecx; shl eax, 12; or eax, 3
    mov [{PT0} + ecx*4], eax
    inc ecx; cmp ecx, 1024; jne idmap
    {extra}
    mov eax, {PD}; mov cr3, eax
    mov eax, cr0; or eax, 0x80010000; mov cr0, eax
"""


# ---------------------------------------------------------------- ring 3

def ring3_kernel(user: str, handlers: str, setup: str = "", esp0: int = 0x80000, ss0: int = 0x10) -> str:
    """Paging on, a TSS (ESP0/SS0), a user code page at 0x40000000 (frame
    USER_PHYS) and a stack page after it, then iret to `user` at ring 3.
    Every vector goes to `fault_handler`, int 0x80 (DPL 3) to `syscall_handler`;
    `handlers` defines both. `user` may use relative branches only (it is
    copied)."""
    return f"""
    mov esp, 0x90000
    {lgdt("gdtr3")}
    .byte 0xea
    .long reload3
    .word 0x08
reload3:
    mov ax, 0x10; mov ds, ax; mov es, ax; mov ss, ax
    mov dword ptr [tss+4], {esp0}
    mov dword ptr [tss+8], {ss0}
    mov eax, tss
    mov word ptr [gdt3+0x28+2], ax
    shr eax, 16
    mov byte ptr [gdt3+0x28+4], al
    mov byte ptr [gdt3+0x28+7], ah
    mov ax, 0x28
    ltr ax
    xor ecx, ecx
fill3:
    mov eax, fault_handler
    mov word ptr [idt3 + ecx*8], ax
    mov word ptr [idt3 + ecx*8 + 2], 0x08
    mov word ptr [idt3 + ecx*8 + 4], 0x8E00
    shr eax, 16
    mov word ptr [idt3 + ecx*8 + 6], ax
    inc ecx; cmp ecx, 256; jne fill3
    {gate(0x80, "syscall_handler", "idt3", dpl=3)}
    {lidt("idtr3")}
    {paging_on(f'''
    mov dword ptr [{PD} + 0x100*4], {PT_USER} + 7
    mov dword ptr [{PT_USER}], {USER_PHYS} + 7
    mov dword ptr [{PT_USER} + 4], {USER_PHYS} + 0x1000 + 7
    mov esi, user_code; mov edi, {USER_PHYS}; mov ecx, user_end - user_code; rep movsb
    {setup}''')}
    push 0x23
    push 0x40002000
    push 0x202
    push 0x1b
    push 0x40000000
    iretd
{handlers}
user_code:
    {user}
user_end:
    .align 8
gdt3:
    .quad 0
    .quad 0x00CF9B000000FFFF
    .quad 0x00CF93000000FFFF
    .quad 0x00CFFB000000FFFF
    .quad 0x00CFF3000000FFFF
    .quad 0x0000890000000067
gdtr3:
    .word 47
    .long gdt3
idtr3:
    .word 256*8-1
    .long idt3
    .align 16
tss:
    .byte {",".join(["0"] * 104)}
    .align 8
idt3:
    .byte 0
"""


def run_ring3(user: str, handlers: str, **kw) -> Run:
    setup = kw.pop("setup", "")
    esp0 = kw.pop("esp0", 0x80000)
    ss0 = kw.pop("ss0", 0x10)
    return run_hostile(ring3_kernel(user, handlers, setup, esp0, ss0), mem=16 << 20,
                       with_tables=False, **kw)


# ================================================================ the monitor region and the TC
#
# Paging off: the region's linear range is where the TC lives; a PC would
# have its BIOS flash there, and here there is nothing. The guest's own
# accesses make the monitor move out of the way and then read all ones and
# write into nothing (status 3: the guest got to its exit). Accesses the
# monitor makes for the guest (exception frames, descriptor tables, string
# I/O) and fetches end the run (status 6). The TC and monitor data never change.

MONITOR_CASES = [
    ("read-monitor-data", f"mov eax, [{MON_DATA + R.VIF}]", "moved"),
    ("write-tc-rep-stosd", f"mov edi, {TC}; mov ecx, 16; xor eax, eax; rep stosd", "moved"),
    ("xchg-with-tc", f"xchg eax, [{TC}]", "moved"),
    # (fxsave runs, then the monitor rewrites its x87 instruction pointer: in nothing)
    ("fxsave-into-region", f"fxsave [{MON_DATA + 0x1000}]", "nonexistent physical memory"),
    ("push-with-esp-in-region", f"mov esp, {MON_DATA + 0x100}; push eax", "moved"),
    ("call-with-esp-in-region", f"mov esp, {MON_DATA + 0x100}; call next_; next_:", "moved"),
    # The monitor itself writes the exception frame: through guest memory, never unicorn's map.
    ("exception-frame-in-region", f"mov esp, {MON_DATA + 0x100}; int3", "nonexistent physical memory"),
    ("sgdt-into-shadow-gdt", f"sgdt [{SHADOW_GDT}]", "nonexistent physical memory"),
    ("sidt-into-tc", f"sidt [{TC}]", "nonexistent physical memory"),
    ("lgdt-shadow-gdt-then-load", table_register(DATA + 0x100, SHADOW_GDT, 0xFFFF) + lgdt(DATA + 0x100)
     + "mov ax, 0x10; mov ds, ax", "nonexistent physical memory"),
    ("lidt-tc-then-int3", table_register(DATA + 0x100, TC, 0x7FF) + lidt(DATA + 0x100) + "int3",
     "nonexistent physical memory"),
    ("rep-insd-into-tc", f"mov edi, {TC}; mov ecx, 4; mov dx, 0x2f8; rep insd", "nonexistent physical memory"),
    ("rep-outsd-from-monitor-data", f"mov esi, {MON_DATA}; mov ecx, 4; mov dx, 0x2f8; rep outsd",
     "nonexistent physical memory"),
    ("jmp-into-tc", f"mov eax, {TC}; jmp eax", "executes nonexistent physical memory"),
    ("call-lookup-routine", f"mov eax, {TC}; call eax", "executes nonexistent physical memory"),
    ("ret-into-tc", f"push {TC}; ret", "executes nonexistent physical memory"),
    ("iret-into-tc", f"pushfd; push 0x08; push {TC}; iretd", "executes nonexistent physical memory"),
]


@pytest.mark.parametrize("name, access, reason", MONITOR_CASES, ids=[c[0] for c in MONITOR_CASES])
def test_monitor_region_access_changes_nothing_of_the_monitor(name, access, reason):
    # Translate a few CCFs first, so that there is live TC code to corrupt.
    run = run_hostile(f"mov ecx, 3; warm: dec ecx; jnz warm; {access}; {exit_with(1)} fault_handler: {exit_with(2)}")
    if reason == "moved":
        assert run.result.status == 3, run.result
        assert run.engine.exits["monitor-moved"] == 1
    else:
        assert run.result.status == EXIT_MONITOR, run.result
        assert reason in run.result.reason
    assert run.engine.tcache.stats["translated"] >= 3


def test_kernel_touching_the_unmapped_region_gets_a_page_fault():
    """The guest does not map the region's range: a not-present #PF, as on hardware;
    the monitor stays where it is."""
    run = run_hostile(paging_on() + f"mov eax, [{MON_DATA + 0x10}]; {exit_with(1)}" + RECORD)
    assert run.result.status == EXIT_OK, run.result
    assert run.u32(DATA) == 0 and run.u32(DATA + 8) == MON_DATA + 0x10      # error code, CR2
    assert run.engine.exits["monitor-moved"] == 0


def test_kernel_mapping_the_monitor_range_gets_its_own_memory():
    """The guest maps the region's range (onto its first 4 MiB): the monitor moves to a
    range the guest does not use and the guest reads its own memory there."""
    run = run_hostile("mov dword ptr [0x10], 0x12345678;"
                      + paging_on(f"mov dword ptr [{PD} + {MON_BASE >> 22}*4], {PT0} + 3")
                      + f"mov eax, [{MON_DATA + 0x10}]; mov [{DATA} + 12], eax; {POWEROFF}" + RECORD)
    assert run.result.status == EXIT_OK, run.result
    assert run.u32(DATA + 12) == 0x12345678
    assert run.engine.exits["monitor-moved"] == 1
    assert MON_BASE >> 22 not in run.engine.placement.pdes


def test_user_code_mapping_the_monitor_range_gets_its_own_memory():
    """Ring 3 reads its own code page through a mapping at the region's address."""
    run = run_ring3(f"mov eax, [{MON_DATA}]; int 0x80",
                    f"syscall_handler: mov [{DATA} + 12], eax; {POWEROFF}\n" + RECORD,
                    setup=f"mov dword ptr [{PD} + {MON_BASE >> 22}*4], {PT_USER} + 7")
    assert run.result.status == EXIT_OK, run.result
    assert run.u32(DATA + 12) == 0x000000A1 | (MON_BASE & 0xFFFFFF) << 8   # the first bytes of `mov eax, [MON_BASE]`
    assert run.engine.exits["monitor-moved"] == 1


@pytest.mark.parametrize("name, user, err", [
    ("read", f"mov eax, [{MON_DATA + 0x10}]", 0x4),
    ("write-tc", f"mov dword ptr [{TC}], 0", 0x6),
    ("jump-tc", f"mov eax, {TC}; jmp eax", 0x4),
])
def test_user_code_touching_the_region_gets_a_page_fault(name, user, err):
    """Ring 3, guest not mapping the range: a true #PF with the guest's error
    code and CR2, as on hardware (the user view maps the region supervisor-only)."""
    run = run_ring3(f"{user}; {exit_with(1)}", "syscall_handler: iretd\n" + RECORD)
    assert run.result.status == EXIT_OK, run.result
    addr = TC if "tc" in name else MON_DATA + 0x10
    assert run.u32(DATA + 8) == addr                  # CR2
    assert run.u32(DATA) == err                       # U=1, W per access, P=0
    assert run.engine.vectors[14] == 1


# ================================================================ descriptor tables

def test_gdt_limit_zero_is_a_triple_fault():
    """The #GP for `mov ds, 0x10` cannot reach its handler (CS 0x08 is beyond
    the limit too): #GP -> #DF -> shutdown, as on hardware."""
    run = run_hostile(table_register(DATA + 0x100, 0x1000, 0) + lgdt(DATA + 0x100)
                      + f"mov ax, 0x10; mov ds, ax; {exit_with(1)}" + RECORD)
    assert run.result.status == EXIT_TRIPLE_FAULT
    assert "guest eip=" in run.result.dump


GARBAGE_GDT = (fill_garbage() + f"""
    mov esi, gdt; mov edi, {GARBAGE}; mov ecx, 24; rep movsb     /* entries 0-2 valid, the rest 0xFF */
    {table_register(DATA + 0x100, GARBAGE, 0xFFFF)}
    {lgdt(DATA + 0x100)}
""")


@pytest.mark.parametrize("load", ["mov ax, 0x18; mov ss, ax", "push 0x18; pop ss",
                                  ".byte 0xea\n.long far_\n.word 0x18\nfar_:"])
def test_garbage_descriptor_gets_gp_with_its_selector(load):
    """An all-ones descriptor is a DPL-3 conforming code segment: SS refuses
    it, and a far jump from CPL 0 to it is #GP(selector) (SDM vol. 2, MOV, JMP)."""
    run = run_hostile(GARBAGE_GDT + f"{load}; {exit_with(1)}" + RECORD)
    assert run.result.status == EXIT_OK, run.result
    assert run.u32(DATA) == 0x18
    assert run.engine.vectors[13] == 1


def test_gdt_beyond_ram_ends_the_run():
    """Hardware: descriptor reads from nowhere return all ones. Here: status 6."""
    run = run_hostile(table_register(DATA + 0x100, 0x40000000, 0xFFFF) + lgdt(DATA + 0x100)
                      + f"mov ax, 0x10; mov ds, ax; {exit_with(1)}" + RECORD)
    assert run.result.status == EXIT_MONITOR
    assert "nonexistent physical memory at 0x40000010" in run.result.reason


def test_garbage_idt_is_a_triple_fault():
    """All-ones gates name selector 0xFFFF, beyond the GDT: #GP, #DF, shutdown."""
    run = run_hostile(fill_garbage() + table_register(DATA + 0x100, GARBAGE, 0x7FF) + lidt(DATA + 0x100)
                      + f"mov ebx, 0x600dcafe; int3; {exit_with(1)} fault_handler: {exit_with(2)}")
    assert run.result.status == EXIT_TRIPLE_FAULT
    assert "ebx=600dcafe" in run.result.dump


def test_fault_delivering_gp_becomes_a_double_fault():
    """#GP's gate is not present: #NP while delivering #GP is #DF (SDM Table 6-5),
    delivered with error code 0."""
    run = run_hostile(not_present(13) + gate(8, "df_handler")
                      + f"mov dword ptr [{DATA}], 0xdead; mov ax, 0x78; mov ds, ax; {exit_with(1)}"
                      + f"df_handler: mov eax, [esp]; mov [{DATA}], eax; {POWEROFF}"
                      + f"fault_handler: {exit_with(2)}")
    assert run.result.status == EXIT_OK, run.result
    assert run.u32(DATA) == 0
    assert run.engine.vectors[8] == 1 and run.engine.vectors[13] == 0


def test_fault_delivering_a_double_fault_is_a_triple_fault():
    run = run_hostile(not_present(13) + not_present(8)
                      + f"mov ebx, 0xabcdef; mov ax, 0x78; mov ds, ax; {exit_with(1)} fault_handler: {exit_with(2)}")
    assert run.result.status == EXIT_TRIPLE_FAULT
    assert "while delivering a double fault" in run.result.reason
    assert "ebx=00abcdef" in run.result.dump


@pytest.mark.parametrize("selector, err", [(0x10, 0x10), (0, 0)])
def test_ltr_of_a_non_tss_is_gp(selector, err):
    run = run_hostile(f"mov ax, {selector}; ltr ax; {exit_with(1)}" + RECORD)
    assert run.result.status == EXIT_OK, run.result
    assert run.u32(DATA) == err and run.engine.vectors[13] == 1


def test_tss_with_null_ss0_is_a_triple_fault():
    """int 0x80 from ring 3 needs SS0: null is #TS, delivering #TS needs SS0
    again (#DF), and so does #DF: shutdown."""
    run = run_ring3(f"int 0x80; {exit_with(1)}", f"syscall_handler: {exit_with(2)}\nfault_handler: {exit_with(3)}",
                    ss0=0)
    assert run.result.status == EXIT_TRIPLE_FAULT
    assert run.engine.exits["to-user"] == 1


def test_tss_with_unmapped_esp0_is_a_triple_fault():
    """ESP0 in unmapped memory: #PF pushing the frame, #PF again delivering
    #PF (#DF), and again delivering #DF: shutdown."""
    run = run_ring3(f"int 0x80; {exit_with(1)}", f"syscall_handler: {exit_with(2)}\nfault_handler: {exit_with(3)}",
                    esp0=0x20000000)
    assert run.result.status == EXIT_TRIPLE_FAULT
    assert "while delivering a double fault" in run.result.reason


# ================================================================ exception storms

def test_exception_loop_hangs_until_timeout():
    """#UD whose handler returns to the ud2: the CPU loops forever. --timeout
    ends it (it did not before: no TC check point lies on that path)."""
    run = run_hostile(f"ud2; {exit_with(1)} fault_handler: inc dword ptr [{DATA}]; iretd", timeout=0.5)
    assert run.result.status == EXIT_TIMEOUT
    assert 0.5 <= run.wall < 3
    assert run.engine.vectors[6] > 100
    assert 0 <= run.engine.vectors[6] - run.u32(DATA) <= 1     # the last handler may not have run


def test_page_fault_loop_hangs_until_timeout():
    run = run_hostile(paging_on() + f"mov eax, [0x800000]; {exit_with(1)}"
                      + f"fault_handler: inc dword ptr [{DATA}]; add esp, 4; iretd", timeout=0.5)
    assert run.result.status == EXIT_TIMEOUT
    assert run.engine.mmu.stats["true-faults"] > 100
    assert 0 <= run.engine.mmu.stats["true-faults"] - run.u32(DATA) <= 1


def test_user_exception_loop_hangs_until_timeout():
    """Ring 3 `cli` (IOPL 0) is #GP; the handler returns to it: forever."""
    run = run_ring3(f"cli; {exit_with(1)}",
                    f"syscall_handler: iretd\nfault_handler: inc dword ptr [{DATA}]; add esp, 4; iretd",
                    timeout=0.5)
    assert run.result.status == EXIT_TIMEOUT
    assert run.engine.vectors[13] > 50
    assert 0 <= run.engine.vectors[13] - run.u32(DATA) <= 1


def test_handler_that_faults_itself_recurses_until_the_stack_wraps():
    """A #UD handler that is itself ud2 pushes a frame per delivery. Hardware:
    ESP wraps below 0 to 0xFFFFFFFC, where a PC has ROM (the stores vanish) and
    the loop goes on. Here the monitor stops at that store (status 6), having
    delivered 1024 exceptions, and writes nothing of the monitor region."""
    run = run_hostile("mov esp, 0x3000; ud2; fault_handler: ud2")
    assert run.result.status == EXIT_MONITOR
    assert "nonexistent physical memory at 0xfffffffc" in run.result.reason
    assert run.engine.vectors[6] == 0x3000 // 12


# ================================================================ self-modifying code

def test_self_modifying_code_at_a_high_rate():
    """2000 rewrites of an instruction that runs between them: every run sees
    the latest bytes; every rewrite drops exactly the stale CCF."""
    n = 2000
    run = run_hostile(f"""
        xor ebx, ebx
        mov esi, {n}
    again:
        call target
        add ebx, eax
        inc dword ptr [imm]
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
    """)
    assert run.result.status == EXIT_OK
    assert run.u32(DATA) == sum(range(10, 10 + n))
    assert run.engine.tcache.invalidations["smc-write"] == n


def test_stores_to_data_on_a_code_page_at_a_high_rate():
    """20000 stores next to translated code: each is a trace exit, none
    invalidates a CCF."""
    run = run_hostile(f"""
        mov ecx, 20000
    again:
        inc dword ptr [counter]
        dec ecx
        jnz again
        mov eax, [counter]
        mov [{DATA}], eax
        {POWEROFF}
    counter:
        .long 0
    fault_handler: hlt
    """)
    assert run.result.status == EXIT_OK
    assert run.u32(DATA) == 20000
    assert not run.engine.tcache.invalidations
    assert run.engine.traces.trace_faults >= 20000


def test_user_code_rewriting_kernel_code_is_seen_by_the_kernel():
    """The kernel's function lies on a page the guest made user-writable; ring 3
    rewrites its immediate between system calls. The invalidation runs while
    unicorn is at CPL3, where ctl_remove_cache cannot see the TC (see
    tcache/cache.py, TCache._forget): the kernel must still run the new bytes."""
    handlers = f"""
syscall_handler:
    call kfunc
    mov ecx, [{DATA}+40]
    mov [{DATA}+44+ecx*4], eax
    inc dword ptr [{DATA}+40]
    cmp ecx, 2
    je finish
    iretd
finish:
    {POWEROFF}
kfunc:
    .byte 0xb8
kimm:
    .long 10
    ret
""" + RECORD
    user = "int 0x80; mov dword ptr [kimm], 11; int 0x80; mov dword ptr [kimm], 12; int 0x80"
    run = run_ring3(user, handlers, setup=f"""
        mov eax, kfunc; shr eax, 12; or dword ptr [{PT0} + eax*4], 4
        mov dword ptr [{PD}], {PT0} + 7""")
    assert run.result.status == EXIT_OK, run.result
    assert [run.u32(DATA + 44 + 4 * i) for i in range(3)] == [10, 11, 12]
    assert run.engine.tcache.invalidations["smc-write"] == 2


# ================================================================ page tables

def test_recursive_page_directory():
    """A PDE pointing at its own directory (a page-table loop) is legal: the
    directory shows up as a page table and its entries as pages. Writes
    through the window edit the tables; A/D bits land where the CPU sets them."""
    run = run_hostile(paging_on(f"mov dword ptr [{PD} + 768*4], {PD} + 3") + f"""
        mov eax, [0xC0000000 + 768*0x1000 + 768*4]   /* the recursive PDE, read as data */
        mov [{DATA}], eax
        mov dword ptr [0xC0300008], 0x282003         /* PDE 2, written through the window */
        mov dword ptr [0xC0002014], 0x500003         /* its PTE 5: 0x805000 -> 0x500000 */
        mov dword ptr [0x805000], 0x12345678
        mov eax, [0x805000]
        mov [{DATA}+4], eax
        mov dword ptr [0xC0002014], 0x501003         /* remap through the window */
        invlpg [0x805000]
        mov dword ptr [0x805000], 0x9abcdef0
        {POWEROFF}
    """ + RECORD)
    assert run.result.status == EXIT_OK, run.result
    assert run.u32(DATA) == PD | 0x23                 # P, RW, A
    assert run.u32(DATA + 4) == 0x12345678
    assert run.u32(0x500000) == 0x12345678 and run.u32(0x501000) == 0x9ABCDEF0
    assert run.u32(0x282014) == 0x501063              # the PTE: accessed and dirty
    assert run.u32(PD + 8) == 0x282063                # PDE 2, also used as a PTE above


@pytest.mark.parametrize("name, extra", [
    ("pte-beyond-ram", f"mov dword ptr [{PT0} + 0x3ff*4], 0x40000003"),
    ("pte-into-pci-hole", f"mov dword ptr [{PT0} + 0x3ff*4], 0xe0000003"),
])
def test_mappings_of_nothing_read_all_ones(name, extra):
    """As on a PC: reads where no memory or device answers give all ones,
    writes vanish; both are counted."""
    run = run_hostile(paging_on(extra) + f"mov dword ptr [0x3ff000], 1; mov eax, [0x3ff000];"
                      f"mov [{DATA} + 12], eax; {POWEROFF}" + RECORD)
    assert run.result.status == EXIT_OK, run.result
    assert run.u32(DATA + 12) == 0xFFFFFFFF
    assert run.engine.m.unclaimed_memory == {"reads": 1, "writes": 1}


def test_page_table_beyond_ram_ends_the_run():
    """Hardware would walk all-ones entries. Here: status 6."""
    run = run_hostile(paging_on(f"mov dword ptr [{PD} + 4], 0x40000003")
                      + f"mov eax, [0x400000]; {exit_with(1)}" + RECORD)
    assert run.result.status == EXIT_MONITOR
    assert "page table at 0x40000000 lies outside guest RAM" in run.result.reason


def test_pte_onto_the_local_apic_reads_the_device():
    run = run_hostile(paging_on(f"mov dword ptr [{PT0} + 0x3ff*4], 0xfee00003")
                      + f"mov eax, [0x3ff030]; mov [{DATA}+16], eax; {POWEROFF}" + RECORD)
    assert run.result.status == EXIT_OK
    assert run.u32(DATA + 16) & 0xFF == 0x14          # the LAPIC version register


def many_spaces(count: int, rounds: int) -> str:
    """`count` address spaces, each with its own PD and its own copy of the
    identity page table, entered round-robin `rounds` times."""
    return paging_on() + f"""
        xor esi, esi
    make:
        mov ebx, esi; shl ebx, 13; add ebx, 0x300000   /* PD_i; PT_i follows it */
        mov edi, ebx; mov ecx, 1024; xor eax, eax; rep stosd
        lea eax, [ebx + 0x1003]; mov [ebx], eax
        xor ecx, ecx
    fill:
        mov eax, ecx; shl eax, 12; or eax, 3
        mov [ebx + 0x1000 + ecx*4], eax
        inc ecx; cmp ecx, 1024; jne fill
        inc esi; cmp esi, {count}; jne make
        mov edx, {rounds}
    round:
        xor esi, esi
    switch:
        mov eax, esi; shl eax, 13; add eax, 0x300000
        mov cr3, eax
        inc dword ptr [{DATA}+32]
        inc esi; cmp esi, {count}; jne switch
        dec edx; jnz round
        mov eax, {PD}; mov cr3, eax
        {POWEROFF}
    """ + RECORD


def test_many_address_spaces_keep_the_shadow_memory_bounded():
    run = run_hostile(many_spaces(100, 3))
    mmu = run.engine.mmu
    assert run.result.status == EXIT_OK
    assert run.u32(DATA + 32) == 300
    assert len(mmu.spaces) <= mmu_mod.MAX_SPACES
    assert mmu.stats["spaces-built"] >= 300 and mmu.stats["spaces-dropped"] >= 300 - mmu_mod.MAX_SPACES
    # each space holds a root page, eight directories (two views of four) and its
    # page tables (two pool pages each): far below the pool
    assert mmu_mod.POOL_PAGES - len(mmu._free) <= 12 * mmu_mod.MAX_SPACES
    assert len(mmu.pts) <= 2 * mmu_mod.MAX_SPACES


def test_exhausting_the_shadow_pool_resets_it_cleanly(monkeypatch):
    """A pool of 40 pages (16 MiB by default): the guest's spaces exhaust it
    over and over. A reset in the middle of a shadow fill left the dropped
    space's directory live in CR3 while its pages went back to the pool; now
    every fill leaves the live directory a pool page in use, of the current
    space."""
    monkeypatch.setattr(mmu_mod, "POOL_PAGES", 40)
    checks = {"fills": 0}
    fill = mmu_mod.ShadowMMU.page_fault

    def checked_fill(self, *args, **kw):
        try:
            return fill(self, *args, **kw)
        finally:
            cr3 = self._uc.reg_read(X.UC_X86_REG_CR3)
            assert self.spaces.get(self.space.cr3) is self.space
            assert cr3 in (self.space.kview.pdpt, self.space.uview.pdpt) and self.space.root not in self._free
            checks["fills"] += 1

    monkeypatch.setattr(mmu_mod.ShadowMMU, "page_fault", checked_fill)
    run = run_hostile(many_spaces(40, 2))
    assert run.result.status == EXIT_OK, run.result
    assert run.u32(DATA + 32) == 80
    assert run.engine.mmu.stats["pool-resets"] >= 5 and checks["fills"] >= 80
    assert len(run.engine.mmu._free) <= 40


# ================================================================ I/O floods

def test_flood_of_unclaimed_port_io():
    """Nothing decodes port 0x2F8 (no COM2): reads float high, writes vanish,
    every access is counted."""
    run = run_hostile(f"""
        mov ecx, 10000
        mov dx, 0x2f8
        mov ebx, 0xffffffff
    again:
        in al, dx
        and bl, al
        in eax, dx
        and ebx, eax
        out dx, al
        out dx, eax
        dec ecx
        jnz again
        mov [{DATA}], ebx
        {POWEROFF}
    fault_handler: hlt
    """)
    bus = run.engine.m.bus
    assert run.result.status == EXIT_OK
    assert run.u32(DATA) == 0xFFFFFFFF
    assert bus.unclaimed_reads[0x2F8] == 20000 and bus.unclaimed_writes[0x2F8] == 20000


def test_endless_rep_insb_is_ended_by_timeout():
    """rep insd with ECX = 2^32 - 1 from an unclaimed port. It ran inside one
    exit until RAM ended (a minute per 64 MiB); now it restarts every 4096
    iterations, as an interrupted rep does, and --timeout ends it."""
    run = run_hostile(f"mov ecx, 0xffffffff; mov dx, 0x2f8; mov edi, 0x400000; rep insd; {exit_with(1)}"
                      f" fault_handler: hlt", timeout=0.5)
    assert run.result.status == EXIT_TIMEOUT
    assert run.wall < 3
    assert run.u32(0x400000) == 0xFFFFFFFF
    assert run.engine.regs.read(X.UC_X86_REG_ECX) < 0xFFFFFFFF     # progress was kept


def test_long_rep_outsb_completes_in_chunks():
    run = run_hostile(f"mov ecx, 20000; mov dx, 0x2f8; mov esi, 0x400000; rep outsb; mov [{DATA}], ecx;"
                      f" mov [{DATA}+4], esi; {POWEROFF} fault_handler: hlt")
    assert run.result.status == EXIT_OK
    assert run.u32(DATA) == 0 and run.u32(DATA + 4) == 0x400000 + 20000
    assert run.engine.m.bus.unclaimed_writes[0x2F8] == 20000


SKIP_PORTS = [0x64, 0x92, 0xF4, 0xF5, 0xF6, 0xF7] + list(range(0x600, 0x60C))   # reset, debug exit, ACPI


def test_garbage_to_every_isa_port(tmp_path):
    """0xFF, then 0x00, then byte/word/dword reads on every port below 0x1000
    (every device of this PC, with a disk attached), except the ones that end
    the run. The devices must take it; the disk image must not change."""
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(64 << 10))
    before = image.read_bytes()
    skip = " ".join(f"cmp dx, {p}; je next;" for p in SKIP_PORTS)
    run = run_hostile(f"""
        xor edx, edx
    again:
        {skip}
        mov al, 0xff
        out dx, al
        xor al, al
        out dx, al
        in al, dx
        in ax, dx
        in eax, dx
    next:
        inc edx
        cmp edx, 0x1000
        jne again
        mov dx, 0xcf8
        mov eax, 0xffffffff
        out dx, eax
        mov dx, 0xcfc
        in eax, dx
        {POWEROFF}
    fault_handler: {exit_with(5)}
    """, disks=[DiskImage(str(image))])
    assert run.result.status == EXIT_OK, run.result
    assert image.read_bytes() == before


def test_unbacked_physical_memory_reads_all_ones():
    """Paging off, a read in the PCI hole: all ones, as on a PC."""
    run = run_hostile(f"mov eax, [0xe0000000]; mov [{DATA} + 12], eax; {POWEROFF}" + RECORD)
    assert run.result.status == EXIT_OK, run.result
    assert run.u32(DATA + 12) == 0xFFFFFFFF
    assert run.engine.m.unclaimed_memory["reads"] == 1


def test_flood_of_apic_mmio_on_unimplemented_registers():
    """Reads and writes of every local APIC and IOAPIC register offset."""
    run = run_hostile(f"""
        xor ecx, ecx
    again:
        mov eax, [0xfee00000 + ecx]
        mov eax, [0xfec00000 + ecx]
        mov dword ptr [0xfec00000 + ecx], 0xffffffff
        add ecx, 0x10
        cmp ecx, 0x1000
        jne again
        mov eax, [0xfee00030]
        mov [{DATA}], eax
        {POWEROFF}
    fault_handler: {exit_with(5)}
    """)
    assert run.result.status == EXIT_OK, run.result
    assert run.u32(DATA) & 0xFF == 0x14


# ================================================================ interrupts masked forever

def test_cli_hlt_ends_the_run():
    """Hardware: the CPU stops until NMI or reset. Here: status 0, the same
    convention QEMU's -no-shutdown users rely on (documented exit status)."""
    run = run_hostile("cli; hlt; fault_handler: hlt")
    assert run.result.status == EXIT_OK
    assert "halted with interrupts disabled" in run.result.reason


@pytest.mark.parametrize("pit_divisor, cpu_share", [(None, 0.25), (1193, 0.6), (16, None)],
                         ids=["pit-off", "pit-1khz", "pit-75khz"])
def test_masked_interrupts_and_hlt_sleep_until_timeout(pit_divisor, cpu_share):
    """IF=1 but both 8259s masked (the LAPIC and IOAPIC are masked from reset):
    hlt waits forever, and --timeout ends it. The monitor sleeps until the next
    device deadline, masked or not: with the PIT off or at 1 kHz the host CPU
    stays mostly idle; a masked PIT at 75 kHz keeps it busy (measured, not
    bounded)."""
    pit = "" if pit_divisor is None else (
        f"mov al, 0x34; out 0x43, al; mov al, {pit_divisor & 0xFF}; out 0x40, al;"
        f"mov al, {pit_divisor >> 8}; out 0x40, al;")
    run = run_hostile("mov al, 0xff; out 0x21, al; out 0xa1, al;" + pit
                      + "sti; again: hlt; jmp again; fault_handler: hlt", timeout=1.0)
    assert run.result.status == EXIT_TIMEOUT
    assert 1.0 <= run.wall < 3
    if cpu_share is not None:
        assert run.cpu < cpu_share * run.wall
    assert run.engine.exits["halt"] >= 1 and not run.engine.vectors


def test_spinning_with_interrupts_masked_ends_at_timeout():
    run = run_hostile("cli; again: jmp again; fault_handler: hlt", timeout=0.5)
    assert run.result.status == EXIT_TIMEOUT
