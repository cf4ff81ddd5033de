/* bench: interrupt entry stubs, the trap path, the system-call fast path
 * and the way into and out of ring 3. */
#include "bench/bench.h"

/* Vectors with a CPU-pushed error code: 8, 10-14, 17. */
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
    .if \n == T_SYSCALL
    .long isr_syscall
    .else
    .long isr_\n
    .endif
.endm

    .text
    .altmacro
    .set vec, 0
    .rept 256
    isr_stub %vec
    .set vec, vec + 1
    .endr

/* INT 0x80: the null system call returns at once (what the syscall
 * nanobenchmark times is the round trip ring 3 -> ring 0 -> ring 3);
 * everything else takes the general path into C. */
isr_syscall:
    testl %eax, %eax
    jnz 1f
    iret
1:  pushl $0
    pushl $T_SYSCALL
    jmp isr_common

isr_common:
    pushal
    pushl %ds
    pushl %es
    pushl %fs
    cld
    movw $SEL_KDATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    pushl %esp              /* struct trapframe * */
    call trap
    addl $4, %esp
    popl %fs
    popl %es
    popl %ds
    popal
    addl $8, %esp           /* vector and error code */
    iret

/* uint32_t enter_user(loop_fn fn, uint32_t n)
 * Run fn(n) in ring 3 on the user stack; it returns to user_exit, whose
 * SYS_EXIT system call ends in leave_user(), which makes this call return
 * fn's result.  Traps from ring 3 use the trap stack (TSS.ESP0), so the
 * frame saved here survives. */
    .globl enter_user, leave_user
enter_user:
    pushl %ebp
    pushl %ebx
    pushl %esi
    pushl %edi
    movl %esp, kernel_saved_esp
    movl 20(%esp), %eax     /* fn */
    movl 24(%esp), %edx     /* n */
    movl $user_stack + USER_STACK_SIZE - 16, %ecx
    movl $user_exit, (%ecx) /* fn's return address */
    movl %edx, 4(%ecx)      /* its argument */
    pushl $SEL_UDATA        /* SS */
    pushl %ecx              /* ESP */
    pushl $0x202            /* EFLAGS: IF = 1, IOPL = 0 */
    pushl $SEL_UCODE        /* CS */
    pushl %eax              /* EIP */
    movw $SEL_UDATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    iret

/* void leave_user(uint32_t value): called by the SYS_EXIT handler. */
leave_user:
    movl 4(%esp), %eax
    movl kernel_saved_esp, %esp
    popl %edi
    popl %esi
    popl %ebx
    popl %ebp
    ret

    .section .utext, "ax"
user_exit:
    movl %eax, %ebx
    movl $SYS_EXIT, %eax
    int $0x80
1:  jmp 1b

    .bss
    .align 4
kernel_saved_esp:
    .long 0

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
