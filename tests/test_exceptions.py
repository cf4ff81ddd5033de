"""Exception delivery through the guest IDT, vector by vector, and code
remapping under paging: each on a small assembly kernel."""

from __future__ import annotations

import pytest

from asmkernel import DATA, POWEROFF, exit_with, read_u32, run_kernel
from bt_vmm.errors import EXIT_OK

# Every vector's gate points at one handler (asmkernel's PROLOGUE); it records
# the top of its frame and powers off. Each case: (code before the fault, the
# faulting or trapping instruction, pushes an error code).
RECORD = f"""
fault_handler:
    mov eax, [esp]
    mov [{DATA}], eax
    mov eax, [esp+4]
    mov [{DATA + 4}], eax
    mov eax, [esp+8]
    mov [{DATA + 8}], eax
    {POWEROFF}
"""

CASES = {
    "DE": ("xor ecx, ecx", "div ecx", False),
    "BP": ("", "int3", False),
    "OF": ("mov al, 0x7f; add al, 1", "into", False),
    "BR": ("mov eax, 5; mov dword ptr [bounds], 0; mov dword ptr [bounds+4], 3",
           "bound eax, qword ptr [bounds]", False),
    "UD": ("", "ud2", False),
    "NM": ("mov eax, cr0; or eax, 8; mov cr0, eax", "fld1", False),
    "NP": ("mov ax, 0x18", "mov ds, ax", True),             # descriptor 3: not present
    "SS": ("mov ax, 0x18", "mov ss, ax", True),
    "GP": ("mov ax, 0x80", "mov es, ax", True),             # beyond the GDT limit
}
VECTORS = {"DE": 0, "BP": 3, "OF": 4, "BR": 5, "UD": 6, "NM": 7, "NP": 11, "SS": 12, "GP": 13}
TRAPS = {"BP", "OF"}   # reported after the instruction
ERROR_CODES = {"NP": 0x18, "SS": 0x18, "GP": 0x80}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_vector_is_delivered_with_the_architectural_frame(name):
    setup, insn, has_error = CASES[name]
    asm = f"""
        mov dword ptr [gdt4 + 0x18], 0x0000ffff /* descriptor 3: data, not present */
        mov dword ptr [gdt4 + 0x1c], 0x00cf1300
        .byte 0x0f, 0x01, 0x15
        .long gdtr4
        mov eax, at
        mov [{DATA + 16}], eax
        mov eax, after
        mov [{DATA + 20}], eax
        {setup}
    at:
        {insn}
    after:
        {exit_with(1)}
    """ + RECORD + """
    bounds:
        .long 0
        .long 0
    gdtr4:
        .word 31
        .long gdt4
        .align 8
    gdt4:
        .long 0
        .long 0
        .long 0x0000ffff
        .long 0x00cf9b00
        .long 0x0000ffff
        .long 0x00cf9300
        .long 0
        .long 0
    """
    result, engine, _ = run_kernel(asm)
    assert result.status == EXIT_OK, result
    assert engine.vectors[VECTORS[name]] == 1
    eip_slot = DATA + 4 if has_error else DATA
    want_eip = read_u32(engine, DATA + 20 if name in TRAPS else DATA + 16)
    assert read_u32(engine, eip_slot) == want_eip           # faults: the instruction; traps: after it
    assert read_u32(engine, eip_slot + 4) == 0x08           # the guest's CS
    if has_error:
        assert read_u32(engine, DATA) == ERROR_CODES[name]


def test_double_fault_handler_runs_when_delivery_faults():
    # #NP for int 0x30 (gate not present) while delivering a #GP... simplest
    # chain: a #GP whose gate is not present gives #NP, a contributory fault
    # on a contributory fault: #DF, which has a working gate.
    asm = f"""
        mov byte ptr [idt + 13*8 + 5], 0x0E    /* #GP gate: present bit cleared */
        mov byte ptr [idt + 11*8 + 5], 0x0E    /* #NP gate too */
        mov ax, 0x80
        mov es, ax                              /* #GP -> #NP(gate) -> #DF */
        {exit_with(1)}
    """ + RECORD
    result, engine, _ = run_kernel(asm)
    assert result.status == EXIT_OK
    assert engine.vectors[8] == 1
    assert read_u32(engine, DATA) == 0                  # #DF pushes error code 0


def test_remapped_code_page_runs_the_new_code():
    # PD: 4 MiB identity page for the kernel, PDE 1 -> a page table whose
    # entry 0 maps linear 0x400000 to one of two code pages.
    asm = f"""
        mov edi, 0x280000
        xor eax, eax
        mov ecx, 2048
        rep stosd
        mov dword ptr [0x280000], 0x83           /* 0-4M, 4 MiB page */
        mov dword ptr [0x280004], 0x281003       /* 4M-8M via a page table */
        mov dword ptr [0x281000], 0x300003       /* 0x400000 -> 0x300000 */
        mov dword ptr [0x300000], 0x000001B8     /* mov eax, 1 */
        mov dword ptr [0x300004], 0x0000C300     /* ret */
        mov dword ptr [0x301000], 0x000002B8     /* mov eax, 2 */
        mov dword ptr [0x301004], 0x0000C300
        mov eax, cr4
        or eax, 0x10
        mov cr4, eax
        mov eax, 0x280000
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80010000
        mov cr0, eax
        mov ebx, 0x400000
        call ebx
        mov [{DATA}], eax
        mov dword ptr [0x281000], 0x301003       /* remap the code page */
        invlpg [0x400000]
        call ebx
        mov [{DATA + 4}], eax
        {POWEROFF}
    fault_handler: {exit_with(9)}
    """
    result, engine, _ = run_kernel(asm)
    assert result.status == EXIT_OK, result
    assert (read_u32(engine, DATA), read_u32(engine, DATA + 4)) == (1, 2)
    assert engine.tcache.invalidations["remap"] >= 1
