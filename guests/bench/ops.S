/* bench: the operations' loops.  Each is a cdecl function
 *     uint32_t op_NAME(uint32_t n)
 * whose loop runs the operation n times (n may be 0) with nothing else
 * in the loop but `dec %ecx; jnz` -- the same overhead as op_empty, which
 * the harness subtracts.  The kernel-mode loops are in .text, the ring-3
 * ones in .utext.  Only EAX, ECX and EDX may be clobbered. */
#include "bench/bench.h"

.macro loop_head
    movl 4(%esp), %ecx
    testl %ecx, %ecx
    jz 9f
.endm

    .text

    .globl op_empty
op_empty:
    loop_head
1:  decl %ecx
    jnz 1b
9:  xorl %eax, %eax
    ret

/* call/ret: a near call to a function that only returns. */
    .globl op_callret
op_callret:
    loop_head
1:  call callret_fn
    decl %ecx
    jnz 1b
9:  movl 4(%esp), %eax
    ret
callret_fn:
    ret

/* pushf/popf: the flags round trip (EFLAGS.IF is virtual under a monitor). */
    .globl op_pushfpopf
op_pushfpopf:
    loop_head
1:  pushfl
    popfl
    decl %ecx
    jnz 1b
9:  movl 4(%esp), %eax
    ret

/* cli/sti: the interrupt-flag pair (no interrupt is ever pending here);
 * the caller's IF is restored afterwards. */
    .globl op_clisti
op_clisti:
    pushfl
    movl 8(%esp), %ecx
    testl %ecx, %ecx
    jz 9f
1:  cli
    sti
    decl %ecx
    jnz 1b
9:  popfl
    movl 4(%esp), %eax
    ret

/* in: a byte read from an I/O port the monitor emulates. */
    .globl op_in
op_in:
    loop_head
1:  inb $IN_PORT, %al
    decl %ecx
    jnz 1b
9:  movl 4(%esp), %eax
    ret

/* tprwr: a write to the local APIC's task-priority register (the 32-bit
 * counterpart of a CR8 write), alternately raising and lowering it. */
    .globl op_tprwr
op_tprwr:
    movl $LAPIC_BASE + LAPIC_TPR, %edx
    xorl %eax, %eax
    loop_head
1:  xorl $0x20, %eax
    movl %eax, (%edx)
    decl %ecx
    jnz 1b
9:  movl $0, (%edx)
    movl 4(%esp), %eax
    ret

/* pgfault: a read of a not-present page; the guest's #PF handler (trap.c)
 * checks CR2 and the EIP and resumes after the instruction.  Returns the
 * number of faults handled. */
    .globl op_pgfault, pf_insn, pf_resume, pf_handled
op_pgfault:
    movl pf_handled, %eax
    pushl %eax
    movl $PF_ADDR, %edx
    movl 8(%esp), %ecx
    testl %ecx, %ecx
    jz 9f
1:
pf_insn:
    movl (%edx), %eax
pf_resume:
    decl %ecx
    jnz 1b
9:  popl %edx
    movl pf_handled, %eax
    subl %edx, %eax
    ret

/* divzero: DIV by zero; the guest's #DE handler resumes after it.
 * Returns the number of faults handled. */
    .globl op_divzero, de_insn, de_resume, de_handled
op_divzero:
    pushl %ebx
    pushl de_handled
    xorl %ebx, %ebx
    movl 12(%esp), %ecx
    testl %ecx, %ecx
    jz 9f
1:  xorl %edx, %edx
    movl $1, %eax
de_insn:
    divl %ebx
de_resume:
    decl %ecx
    jnz 1b
9:  popl %edx
    movl de_handled, %eax
    subl %edx, %eax
    popl %ebx
    ret

/* ptemod: a store to a PTE in a page table that maps a live page (the
 * page at PTEMOD_VA, touched first), switching it between two frames.
 * Afterwards the PTE maps frame A again and its TLB entry is flushed. */
    .globl op_ptemod, ptemod_pte, ptemod_flip
op_ptemod:
    pushl %ebx
    movl PTEMOD_VA, %eax            /* touch it: the page table is in use */
    movl ptemod_pte, %edx
    movl (%edx), %eax
    pushl %eax                      /* the PTE as it was (frame A) */
    movl ptemod_flip, %ebx
    movl 12(%esp), %ecx
    testl %ecx, %ecx
    jz 9f
1:  xorl %ebx, %eax
    movl %eax, (%edx)
    decl %ecx
    jnz 1b
9:  popl %eax
    movl %eax, (%edx)
    invlpg PTEMOD_VA
    movl PTEMOD_VA, %eax            /* reads frame A's first word */
    popl %ebx
    ret

/* cr3: an address-space switch, between two page directories that map
 * the same kernel; it ends on the directory it started from. */
    .globl op_cr3, cr3_flip
op_cr3:
    movl %cr3, %eax
    movl cr3_flip, %edx
    loop_head
1:  xorl %edx, %eax
    movl %eax, %cr3
    decl %ecx
    jnz 1b
    testl $1, 4(%esp)
    jz 9f
    xorl %edx, %eax
    movl %eax, %cr3
9:  movl 4(%esp), %eax
    ret

    .data
    .align 4
pf_handled:  .long 0
de_handled:  .long 0
ptemod_pte:  .long 0
ptemod_flip: .long 0
cr3_flip:    .long 0

/* ---- ring 3 ------------------------------------------------------------ */
    .section .utext, "ax"

    .globl uop_empty
uop_empty:
    loop_head
1:  decl %ecx
    jnz 1b
9:  xorl %eax, %eax
    ret

/* syscall: the null system call's round trip from ring 3 (INT 0x80 with
 * EAX = 0; the kernel's fast path IRETs straight back). */
    .globl uop_syscall
uop_syscall:
    loop_head
1:  xorl %eax, %eax
    int $T_SYSCALL
    decl %ecx
    jnz 1b
9:  movl 4(%esp), %eax
    ret

    .section .note.GNU-stack, "", @progbits
