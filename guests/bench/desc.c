/* bench: GDT with kernel and user segments and a TSS; the IDT.
 * common_main (common/lib.c) calls gdt_init() and idt_init() first. */
#include "bench/bench.h"
#include "common/lib.h"

#define SEGDESC(base, limit, access, flags)                                     \
    (((uint64_t)(limit) & 0xFFFF) | (((uint64_t)(base) & 0xFFFFFF) << 16) |      \
     ((uint64_t)(access) << 40) | ((((uint64_t)(limit) >> 16) & 0xF) << 48) |    \
     ((uint64_t)(flags) << 52) | (((uint64_t)(base) >> 24) << 56))

/* 32-bit TSS: only SS0:ESP0 are used (the stack for traps from ring 3);
 * no I/O bitmap. */
struct tss {
    uint32_t link, esp0, ss0, esp1, ss1, esp2, ss2, cr3, eip, eflags;
    uint32_t eax, ecx, edx, ebx, esp, ebp, esi, edi;
    uint32_t es, cs, ss, ds, fs, gs, ldt;
    uint16_t trap, iomap_base;
};
_Static_assert(sizeof(struct tss) == 104, "TSS layout");

struct __attribute__((packed)) dtr {
    uint16_t limit;
    uint32_t base;
};

static uint64_t gdt[GDT_NENTRIES] __attribute__((aligned(8)));
static uint64_t idt[256] __attribute__((aligned(8)));
static struct tss tss __attribute__((aligned(128)));
extern const uint32_t isr_stub_table[256];     /* isr.S */

void gdt_init(void)
{
    gdt[0] = 0;
    gdt[SEL_KCODE >> 3] = SEGDESC(0, 0xFFFFF, 0x9B, 0xC);
    gdt[SEL_KDATA >> 3] = SEGDESC(0, 0xFFFFF, 0x93, 0xC);
    gdt[SEL_UCODE >> 3] = SEGDESC(0, 0xFFFFF, 0xFB, 0xC);
    gdt[SEL_UDATA >> 3] = SEGDESC(0, 0xFFFFF, 0xF3, 0xC);
    memset(&tss, 0, sizeof(tss));
    tss.ss0 = SEL_KDATA;
    tss.iomap_base = sizeof(tss);
    gdt[SEL_TSS >> 3] = SEGDESC((uint32_t)&tss, sizeof(tss) - 1, 0x89, 0x0);

    struct dtr d = { sizeof(gdt) - 1, (uint32_t)gdt };
    __asm__ volatile("lgdt %0\n\t"
                     "ljmp %1, $1f\n"
                     "1:\n\t"
                     "movw %w2, %%ds\n\t"
                     "movw %w2, %%es\n\t"
                     "movw %w2, %%fs\n\t"
                     "movw %w2, %%ss\n\t"
                     "ltr %w3"
                     :: "m"(d), "i"(SEL_KCODE), "r"(SEL_KDATA), "r"(SEL_TSS) : "memory");
}

static void set_gate(int vector, uint8_t type)
{
    uint32_t off = isr_stub_table[vector];
    idt[vector] = (off & 0xFFFF) | ((uint64_t)SEL_KCODE << 16) |
                  ((uint64_t)type << 40) | ((uint64_t)(off >> 16) << 48);
}

/* Interrupt gates everywhere (the kernel always runs with IF = 0); only
 * INT 0x80 is reachable from ring 3 (DPL 3). */
void idt_init(void)
{
    for (int v = 0; v < 256; v++)
        set_gate(v, 0x8E);
    set_gate(T_SYSCALL, 0xEE);
    struct dtr d = { sizeof(idt) - 1, (uint32_t)idt };
    __asm__ volatile("lidt %0" :: "m"(d) : "memory");
}

void tss_set_esp0(uint32_t esp0)
{
    tss.esp0 = esp0;
}
