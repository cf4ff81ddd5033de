/* testos: interrupt entry stubs, the common trap path, the context switch
 * and the fault-tolerant memory accessors.
 *
 * Every vector has a stub that pushes a dummy error code where the CPU
 * does not push one, then the vector number, and jumps to isr_common,
 * which completes a struct trapframe (kernel.h) and calls trap(). */
#include "testos/layout.h"

/* Vectors with a CPU-pushed error code: #DF 8, #TS 10, #NP 11, #SS 12,
 * #GP 13, #PF 14, #AC 17. */
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
    /* From ring 3 the data segment registers hold user selectors; the
     * kernel wants its own and DF=0.  GS is never used by testos. */
    cld
    movw $SEL_KDATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    pushl %esp              /* struct trapframe * */
    call trap
    addl $4, %esp
    /* A new process starts here too: its first context "returns" to
     * trapret with ESP at a prepared trap frame (proc.c). */
    .globl trapret
trapret:
    popl %fs
    popl %es
    popl %ds
    popal
    addl $8, %esp           /* vector and error code */
    iret

/* void swtch(struct context **save, struct context *load)
 * Save the callee-saved registers on the current stack, store the stack
 * pointer in *save, switch to load and pop its registers. */
    .globl swtch
swtch:
    movl 4(%esp), %eax
    movl 8(%esp), %edx
    pushl %ebp
    pushl %ebx
    pushl %esi
    pushl %edi
    movl %esp, (%eax)
    movl %edx, %esp
    popl %edi
    popl %esi
    popl %ebx
    popl %ebp
    ret

/* int uaccess_copy(void *dst, const void *src, uint32_t n)
 * Copy to or from user memory.  A page fault on the REP MOVSB that the
 * kernel can resolve (demand paging, copy-on-write) simply restarts it
 * with the registers the CPU left; one it cannot resolve resumes at
 * uaccess_fixup, which returns -1 (trap.c). */
    .globl uaccess_copy, uaccess_insn, uaccess_fixup
uaccess_copy:
    pushl %esi
    pushl %edi
    movl 12(%esp), %edi
    movl 16(%esp), %esi
    movl 20(%esp), %ecx
    cld
uaccess_insn:
    rep movsb
    xorl %eax, %eax
    popl %edi
    popl %esi
    ret
uaccess_fixup:
    movl $-1, %eax
    popl %edi
    popl %esi
    ret

/* int probe_read(const volatile uint32_t *p, uint32_t *out)
 * int probe_write(volatile uint32_t *p, uint32_t v)
 * Return 0, or 1 if the access faulted (the kernel self-tests use these
 * to check that a page-table edit really removed or restricted access). */
    .globl probe_read, probe_write, probe_read_insn, probe_write_insn, probe_fixup
probe_read:
    movl 4(%esp), %edx
probe_read_insn:
    movl (%edx), %eax
    movl 8(%esp), %edx
    movl %eax, (%edx)
    xorl %eax, %eax
    ret
probe_write:
    movl 4(%esp), %edx
    movl 8(%esp), %eax
probe_write_insn:
    movl %eax, (%edx)
    xorl %eax, %eax
    ret
probe_fixup:
    movl $1, %eax
    ret

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
