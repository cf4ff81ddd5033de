/* Exception/interrupt entry stubs: one per vector, all funnelling into
 * isr_common, which builds a struct trapframe (desc.h) for trap_dispatch(). */
#include "desc.h"

/* Vectors for which the CPU pushes an error code (Intel SDM Vol. 3A,
 * "Exception and Interrupt Reference"): #DF 8, #TS 10, #NP 11, #SS 12,
 * #GP 13, #PF 14, #AC 17.  The others get a dummy 0 so the frame is uniform. */
.macro isr_stub n
isr_\n:
    .if (\n == 8) || (\n >= 10 && \n <= 14) || (\n == 17)
    .else
    pushl $0
    .endif
    pushl $\n
    jmp isr_common
.endm

.macro isr_addr n
    .long isr_\n
.endm

    .text
    .altmacro
    .set vec, 0
    .rept 256
    isr_stub %vec
    .set vec, vec + 1
    .endr

isr_common:
    pushal
    pushl %ds
    pushl %es
    pushl %fs
    /* The interrupted code may have had DF=1 or another data selector
     * loaded; the C handler assumes the kernel data segment and DF=0.
     * IRET restores both. */
    cld
    movw $SEL_KERNEL_DS, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    pushl %esp              /* struct trapframe * */
    call trap_dispatch
    addl $4, %esp
    popl %fs
    popl %es
    popl %ds
    popal
    addl $8, %esp           /* vector and error code */
    iret

    .section .rodata
    .globl isr_stub_table
    .align 4
isr_stub_table:
    .set vec, 0
    .rept 256
    isr_addr %vec
    .set vec, vec + 1
    .endr

    .section .note.GNU-stack, "", @progbits
