/* Instruction sites for the sensitive guest whose exact addresses matter.
 * Each *_fault label marks a faulting instruction (the CPU pushes its own
 * address: faults are precise), each *_after label the instruction after a
 * trap (int3, INTO, INT n push the address of the next instruction), and
 * each *_resume label is where a fault handler continues.  Intel SDM
 * Vol. 3A, "Exception Classifications". */
#include "common/desc.h"

#define GLOBAL(name) .globl name; name:

    .text

/* uint32_t site_div0(void): DIV by zero; the #DE handler supplies EAX. */
GLOBAL(site_div0)
    xorl %ecx, %ecx
    xorl %edx, %edx
    movl $1234, %eax
GLOBAL(site_div0_fault)
    divl %ecx
GLOBAL(site_div0_resume)
    ret

/* void site_ud2(void) */
GLOBAL(site_ud2)
GLOBAL(site_ud2_fault)
    ud2
GLOBAL(site_ud2_resume)
    ret

/* void site_load_fs(uint32_t sel): MOV to FS, which may #GP. */
GLOBAL(site_load_fs)
    movl 4(%esp), %eax
GLOBAL(site_load_fs_fault)
    movw %ax, %fs
GLOBAL(site_load_fs_resume)
    ret

/* void site_int3(void) */
GLOBAL(site_int3)
    int3                    /* the one-byte 0xCC form */
GLOBAL(site_int3_after)
    ret

/* void site_into(int32_t a, int32_t b): a + b, then INTO (#OF iff it overflowed). */
GLOBAL(site_into)
    movl 4(%esp), %eax
    addl 8(%esp), %eax
    into
GLOBAL(site_into_after)
    ret

/* uint32_t site_int40(uint32_t x): software interrupt with EAX as argument
 * and result, like a system call. */
GLOBAL(site_int40)
    movl 4(%esp), %eax
    int $0x40
GLOBAL(site_int40_after)
    ret

/* uint32_t site_int41(uint32_t x): as above on vector 0x41; also used when
 * vector 0x41 lies beyond the IDT limit and so raises #GP. */
GLOBAL(site_int41)
    movl 4(%esp), %eax
GLOBAL(site_int41_fault)
    int $0x41
GLOBAL(site_int41_after)
    ret

/* void far_jmp_probe(uint32_t out[3]): far jump to SEL_ALT_CS and record
 * MOV from CS, the value of PUSH CS, then the CS after jumping back. */
GLOBAL(far_jmp_probe)
    movl 4(%esp), %ecx
    ljmp $SEL_ALT_CS, $1f
1:  xorl %eax, %eax
    movw %cs, %ax
    movl %eax, 0(%ecx)
    pushl %cs
    popl %eax
    movl %eax, 4(%ecx)
    ljmp $SEL_KERNEL_CS, $2f
2:  xorl %eax, %eax
    movw %cs, %ax
    movl %eax, 8(%ecx)
    ret

/* uint32_t far_call_probe(void): LCALL into SEL_ALT_CS, returns the CS the
 * callee saw; the callee comes back with LRET. */
GLOBAL(far_call_probe)
    lcall $SEL_ALT_CS, $far_callee
    ret
far_callee:
    xorl %eax, %eax
    movw %cs, %ax
    lret

/* uint32_t iret_probe(void): IRET to SEL_ALT_CS (same privilege level,
 * so only EIP, CS and EFLAGS are popped), record CS, then LRET back. */
GLOBAL(iret_probe)
    pushfl
    pushl $SEL_ALT_CS
    pushl $1f
    iret
1:  xorl %eax, %eax
    movw %cs, %ax
    pushl $SEL_KERNEL_CS
    pushl $2f
    lret
2:  ret

/* void seg_reload_probe(const uint32_t *p, uint32_t out[4]): run with
 * SEL_ALT_DS in DS and then in SS.  out = {DS read back, *p read through
 * the new DS, a value pushed and popped through the new SS, SS read back}. */
GLOBAL(seg_reload_probe)
    pushl %ebx
    movl 8(%esp), %edx
    movl 12(%esp), %ecx
    movw $SEL_ALT_DS, %ax
    movw %ax, %ds
    movl (%edx), %ebx
    xorl %eax, %eax
    movw %ds, %ax
    movl %eax, 0(%ecx)
    movl %ebx, 4(%ecx)
    movw $SEL_ALT_DS, %ax
    movw %ax, %ss
    pushl $0x5a5a1234
    popl %ebx
    movl %ebx, 8(%ecx)
    xorl %eax, %eax
    movw %ss, %ax
    movl %eax, 12(%ecx)
    movw $SEL_KERNEL_DS, %ax
    movw %ax, %ss
    movw %ax, %ds
    popl %ebx
    ret

    .section .note.GNU-stack, "", @progbits
