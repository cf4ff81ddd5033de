/* bench: constants shared by the benchmark guest's C and assembly sources. */
#ifndef BENCH_H
#define BENCH_H

/* GDT selectors (user ones with RPL 3). */
#define SEL_KCODE    0x08
#define SEL_KDATA    0x10
#define SEL_UCODE    0x1B
#define SEL_UDATA    0x23
#define SEL_TSS      0x28
#define GDT_NENTRIES 6

#define T_DE      0
#define T_PF      14
#define T_SYSCALL 0x80

/* System calls: number in EAX, arguments in EBX, ECX; result in EAX. */
#define SYS_NULL   0    /* the fast path in isr.S: straight back with IRET */
#define SYS_EXIT   1    /* leave ring 3: enter_user() returns EBX */
#define SYS_GETPID 2
#define SYS_PUT    3    /* copy EBX[0..ECX) into the kernel buffer, return its byte sum */
#define SYS_GET    4    /* copy the kernel buffer (reversed) to EBX[0..ECX), return its byte sum */
#define SYS_BUF    256  /* the kernel buffer's size */

/* Addresses the benchmarks use (see README.md). */
#define PAGE_SIZE   4096
#define IDMAP_LIMIT 0x01000000u  /* RAM identity-mapped (supervisor) below 16 MiB */
#define SCRATCH_VA  0x40000000u  /* a page table of its own:                       */
#define PF_ADDR     0x40000000u  /*   PTE 0 never present: pgfault reads it         */
#define PTEMOD_VA   0x40001000u  /*   PTE 1 toggled between two frames by ptemod    */
#define LAPIC_BASE  0xFEE00000u
#define LAPIC_TPR   0x080
#define LAPIC_SVR   0x0F0
#define IN_PORT     0x61         /* PIT / port B: a device every PC monitor emulates */
#define USER_STACK_SIZE 16384    /* user.c: user_stack[] */

#ifndef __ASSEMBLER__
#include <stdint.h>

/* Built by isr.S, lowest address first. */
struct trapframe {
    uint32_t fs, es, ds;
    uint32_t edi, esi, ebp, esp_unused, ebx, edx, ecx, eax;   /* PUSHA order */
    uint32_t vector, err;
    uint32_t eip, cs, eflags;
    uint32_t user_esp, user_ss;     /* only when the trap came from ring 3 */
};

/* An operation's loop: runs its body n times (n may be 0), returns a value
 * the harness can check (a checksum, or the number of faults handled). */
typedef uint32_t (*loop_fn)(uint32_t n);

/* ops.S: kernel-mode loops */
uint32_t op_empty(uint32_t n);
uint32_t op_callret(uint32_t n);
uint32_t op_pushfpopf(uint32_t n);
uint32_t op_clisti(uint32_t n);
uint32_t op_in(uint32_t n);
uint32_t op_tprwr(uint32_t n);
uint32_t op_pgfault(uint32_t n);
uint32_t op_divzero(uint32_t n);
uint32_t op_ptemod(uint32_t n);
uint32_t op_cr3(uint32_t n);
extern char pf_insn[], pf_resume[], de_insn[], de_resume[];
extern volatile uint32_t pf_handled, de_handled;
extern uint32_t ptemod_pte, ptemod_flip;     /* ptemod's PTE address, frame A ^ frame B */
extern uint32_t cr3_flip;                    /* pd_a ^ pd_b */

/* ops.S: ring-3 loops (section .utext) */
uint32_t uop_empty(uint32_t n);
uint32_t uop_syscall(uint32_t n);

/* user.c: ring-3 programs (linked into the user pages) */
uint32_t compute(uint32_t n);
uint32_t sysheavy(uint32_t n);
extern uint8_t user_stack[];

/* isr.S */
uint32_t enter_user(loop_fn fn, uint32_t n);
__attribute__((noreturn)) void leave_user(uint32_t value);

/* desc.c */
void tss_set_esp0(uint32_t esp0);

/* the linker script */
extern char __user_start[], __user_end[], __user_text_end[];
#endif
#endif
