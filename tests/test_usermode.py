"""Paging through the shadow MMU and user mode by direct execution, on a small
assembly kernel: ring transitions through the TSS, int 0x80 from ring 3, iret
back, hidden and true page faults, accessed/dirty bits."""

from __future__ import annotations

from asmkernel import DATA, POWEROFF, exit_with, read_u32, run_kernel
from bt_vmm.errors import EXIT_OK

USER_PHYS=0x300000
asm = f"""
    mov esp, 0x90000
    .byte 0x0f, 0x01, 0x15
    .long gdtr2
    .byte 0xea
    .long reload2
    .word 0x08
reload2:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    /* TSS: esp0 = 0x80000, ss0 = 0x10 */
    mov dword ptr [tss+4], 0x80000
    mov dword ptr [tss+8], 0x10
    mov eax, tss
    mov word ptr [gdt2+0x28+2], ax
    shr eax, 16
    mov byte ptr [gdt2+0x28+4], al
    mov byte ptr [gdt2+0x28+7], ah
    mov ax, 0x28
    ltr ax
    /* IDT: 0x80 -> syscall (DPL3 trap gate), 14 -> pf, 13 -> gp */
    mov eax, syscall_handler
    mov word ptr [idt2 + 0x80*8], ax
    mov word ptr [idt2 + 0x80*8+2], 0x08
    mov word ptr [idt2 + 0x80*8+4], 0xEF00
    shr eax, 16
    mov word ptr [idt2 + 0x80*8+6], ax
    mov eax, pf_handler
    mov word ptr [idt2 + 14*8], ax
    mov word ptr [idt2 + 14*8+2], 0x08
    mov word ptr [idt2 + 14*8+4], 0x8E00
    shr eax, 16
    mov word ptr [idt2 + 14*8+6], ax
    mov eax, gp_handler
    mov word ptr [idt2 + 13*8], ax
    mov word ptr [idt2 + 13*8+2], 0x08
    mov word ptr [idt2 + 13*8+4], 0x8E00
    shr eax, 16
    mov word ptr [idt2 + 13*8+6], ax
    .byte 0x0f, 0x01, 0x1d
    .long idtr2
    /* page tables: PD at 0x280000, PT0 at 0x281000 identity 0-4M supervisor,
       PT1 at 0x282000 for 0x40000000: code page and stack page, user */
    mov edi, 0x280000
    xor eax, eax
    mov ecx, 3*1024
    rep stosd
    mov dword ptr [0x280000], 0x281003
    mov dword ptr [0x280000 + 0x100*4], 0x282007
    mov ecx, 0
ptloop:
    mov eax, ecx
    shl eax, 12
    or eax, 3
    mov [0x281000 + ecx*4], eax
    inc ecx
    cmp ecx, 1024
    jne ptloop
    mov dword ptr [0x282000], {USER_PHYS} + 7
    mov dword ptr [0x282004], {USER_PHYS} + 0x1000 + 7
    /* copy user code */
    mov esi, user_code
    mov edi, {USER_PHYS}
    mov ecx, user_end - user_code
    rep movsb
    mov eax, 0x280000
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80010000
    mov cr0, eax
    /* to ring 3 */
    push 0x23
    push 0x40002000
    push 0x202
    push 0x1b
    push 0x40000000
    iretd
syscall_handler:
    mov [{DATA}], eax
    mov [{DATA+4}], ebx
    mov eax, [esp]          /* user eip */
    mov [{DATA+8}], eax
    mov eax, [esp+4]
    mov [{DATA+12}], eax    /* user cs */
    mov [{DATA+16}], esp
    iretd
pf_handler:
    mov eax, cr2
    mov [{DATA+20}], eax
    mov eax, [esp]
    mov [{DATA+24}], eax    /* error code */
    mov eax, [esp+4]
    mov [{DATA+28}], eax    /* eip */
    {POWEROFF}
gp_handler:
    {exit_with(0x33)}
fault_handler:
    {exit_with(0x34)}
user_code:
    mov eax, 0x1234
    mov ebx, 0x5678
    int 0x80
    mov ecx, 100
uloop:
    dec ecx
    jnz uloop
    push 7
    pop edx
    mov eax, [0x50000000]
    {exit_with(0x35)}
user_end:
    .align 8
gdt2:
    .quad 0
    .quad 0x00CF9B000000FFFF
    .quad 0x00CF93000000FFFF
    .quad 0x00CFFB000000FFFF
    .quad 0x00CFF3000000FFFF
    .quad 0x0000890000000067
gdtr2:
    .word 47
    .long gdt2
idtr2:
    .word 256*8-1
    .long idt2
    .align 16
tss:
    .byte {",".join(["0"]*104)}
    .align 8
idt2:
    .byte {",".join(["0"]*8)}
"""


def run():
    return run_kernel(asm, with_tables=False, timeout=20)


def test_user_mode_round_trip_and_true_page_fault():
    result, engine, _ = run()
    assert result.status == EXIT_OK, result
    # the system call saw the user's registers, return EIP, CS and the TSS stack
    assert read_u32(engine, DATA) == 0x1234 and read_u32(engine, DATA + 4) == 0x5678
    assert read_u32(engine, DATA + 8) == 0x4000000C          # after int 0x80
    assert read_u32(engine, DATA + 12) == 0x1B
    assert read_u32(engine, DATA + 16) == 0x80000 - 20       # esp0 minus the 5-word frame
    # the user's read of an unmapped page: a true fault, U=1 W=0 P=0, at the instruction
    assert read_u32(engine, DATA + 20) == 0x50000000
    assert read_u32(engine, DATA + 24) == 0x4
    assert read_u32(engine, DATA + 28) == 0x40000017
    assert engine.exits["to-user"] == 2 and engine.exits["to-kernel"] == 2
    assert engine.mmu.stats["true-faults"] == 1
    assert engine.mmu.stats["hidden-faults"] >= 3


def test_accessed_and_dirty_bits_are_set_in_the_guest_tables():
    result, engine, _ = run()
    assert result.status == EXIT_OK
    code_pte = read_u32(engine, 0x282000)
    stack_pte = read_u32(engine, 0x282004)
    assert code_pte & 0x20 and not code_pte & 0x40            # executed, never written
    assert stack_pte & 0x60 == 0x60                             # pushed to: accessed and dirty
    assert read_u32(engine, 0x280000 + 0x100 * 4) & 0x20        # the PDE too


SYSENTER_ASM = asm.replace("""    /* to ring 3 */""", """    /* fast system calls: IA32_SYSENTER_CS/ESP/EIP */
    mov ecx, 0x174
    mov eax, 0x08
    xor edx, edx
    wrmsr
    mov ecx, 0x175
    mov eax, 0x70000
    wrmsr
    mov ecx, 0x176
    mov eax, sysenter_entry
    wrmsr
    /* to ring 3 */""").replace("""user_code:
    mov eax, 0x1234""", """user_code:
    mov ebp, esp
    call here                       /* EDX = the user-linear address of back_in_user */
here:
    pop edx
    add edx, back_in_user - here
    mov ecx, esp
    .byte 0x0f, 0x34                /* sysenter */
back_in_user:
    mov eax, 0x1234""").replace("""syscall_handler:""", """sysenter_entry:
    mov [{DATA}+32], esp            /* IA32_SYSENTER_ESP */
    pushfd
    pop eax
    mov [{DATA}+36], eax            /* IF cleared by sysenter */
    mov ax, cs
    mov [{DATA}+40], eax
    .byte 0x0f, 0x35                /* sysexit */
syscall_handler:""".replace("{DATA}", str(DATA)))


def test_sysenter_and_sysexit_round_trip():
    result, engine, _ = run_kernel(SYSENTER_ASM, with_tables=False, timeout=20)
    assert result.status == EXIT_OK, result
    assert read_u32(engine, DATA + 32) == 0x70000
    assert not read_u32(engine, DATA + 36) & 0x200
    assert read_u32(engine, DATA + 40) & 0xFFFF == 0x08
    # back in ring 3 after sysexit, the int 0x80 system call still works
    assert read_u32(engine, DATA) == 0x1234 and read_u32(engine, DATA + 12) == 0x1B
    assert engine.exits["sysenter"] == 1 and engine.exits["emulate-end:sysexit"] == 1
