/* testos: constants shared by the kernel's C and assembly sources. */
#ifndef TESTOS_LAYOUT_H
#define TESTOS_LAYOUT_H

/* GDT selectors.  The user selectors carry RPL 3. */
#define SEL_KCODE   0x08    /* flat 32-bit code, DPL 0 */
#define SEL_KDATA   0x10    /* flat 32-bit data, DPL 0 */
#define SEL_UCODE   0x1B    /* flat 32-bit code, DPL 3 (GDT index 3) */
#define SEL_UDATA   0x23    /* flat 32-bit data, DPL 3 (GDT index 4) */
#define SEL_TSS     0x28    /* 32-bit available TSS (GDT index 5) */
#define GDT_NENTRIES 6

/* Interrupt vectors. */
#define T_PF        14
#define IRQ_BASE    0x20    /* 8259 master at 0x20-0x27, slave at 0x28-0x2F */
#define T_SYSCALL   0x80

/* Virtual memory layout (see README.md). */
#define PAGE_SIZE   4096
#define KMAP_LIMIT  0x40000000u /* the kernel identity map covers at most 1 GiB */
#define USER_BASE   0x40000000u /* user image: code, rodata, data, bss, heap */
#define USER_TOP    0x80000000u /* user stack grows down from here */
#define USTACK_MAX  0x00100000u /* 1 MiB of demand-paged stack */
#define HEAP_LIMIT  0x70000000u /* brk may not pass this */
#define SCRATCH_VA  0xC0000000u /* one kernel page-table's worth of test mappings */
#define BIGPAGE_VA  0xC0400000u /* a 4 MiB (PSE) alias of physical 0..4 MiB */

#define KSTACK_SIZE 4096        /* one page per process */
#define NPROC       256
#endif
