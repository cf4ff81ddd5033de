/* GDT and IDT setup plus the C side of trap dispatch. */
#include "desc.h"
#include "lib.h"

/* Build a segment descriptor (Intel SDM Vol. 3A, "Segment Descriptors").
 * access: P|DPL|S|type byte; flags: G|D/B|L|AVL nibble. */
#define SEGDESC(base, limit, access, flags)                                     \
    (((uint64_t)(limit) & 0xFFFF) | (((uint64_t)(base) & 0xFFFFFF) << 16) |      \
     ((uint64_t)(access) << 40) | ((((uint64_t)(limit) >> 16) & 0xF) << 48) |    \
     ((uint64_t)(flags) << 52) | (((uint64_t)(base) >> 24) << 56))

/* The type fields have the "accessed" bit already set (0x9B/0x93) so the
 * CPU never has to write it back into the table when a selector is loaded,
 * and so LAR reports a value that does not depend on load history. */
uint64_t gdt[GDT_ENTRIES] __attribute__((aligned(8))) = {
    [SEL_NULL / 8]      = 0,
    [SEL_KERNEL_CS / 8] = SEGDESC(0, 0xFFFFF, 0x9B, 0xC),
    [SEL_KERNEL_DS / 8] = SEGDESC(0, 0xFFFFF, 0x93, 0xC),
    [SEL_ALT_CS / 8]    = SEGDESC(0, 0xFFFFF, 0x9B, 0xC),
    [SEL_ALT_DS / 8]    = SEGDESC(0, 0xFFFFF, 0x93, 0xC),
    [SEL_SMALL_DS / 8]  = SEGDESC(0, 0x0FFFF, 0x93, 0x4),
};

uint64_t idt[256] __attribute__((aligned(8)));
static trap_handler_t handlers[256];
extern const uint32_t isr_stub_table[256];   /* isr.S */

void gdt_init(void)
{
    struct dtr d = { sizeof(gdt) - 1, (uint32_t)gdt };
    /* The loader's GDT is undefined (Multiboot 0.6.96, 3.2 "Machine state"),
     * so every segment register is reloaded: CS by a far jump, the rest by
     * MOV/SS.  GS is left alone on purpose: the monitor reserves it. */
    __asm__ volatile("lgdt %0\n\t"
                     "ljmp %1, $1f\n"
                     "1:\n\t"
                     "movw %w2, %%ds\n\t"
                     "movw %w2, %%es\n\t"
                     "movw %w2, %%fs\n\t"
                     "movw %w2, %%ss"
                     :: "m"(d), "i"(SEL_KERNEL_CS), "r"(SEL_KERNEL_DS) : "memory");
}

static void set_gate(int vector, uint32_t off, uint8_t type)
{
    idt[vector] = (off & 0xFFFF) | ((uint64_t)SEL_KERNEL_CS << 16) |
                  ((uint64_t)type << 40) | ((uint64_t)(off >> 16) << 48);
}

void idt_set_type(int vector, uint8_t type)
{
    set_gate(vector, isr_stub_table[vector], type);
}

void idt_init(void)
{
    for (int v = 0; v < 256; v++)
        set_gate(v, isr_stub_table[v], IDT_INTR_GATE);
    struct dtr d = { sizeof(idt) - 1, (uint32_t)idt };
    __asm__ volatile("lidt %0" :: "m"(d) : "memory");
}

void trap_set_handler(int vector, trap_handler_t h)
{
    handlers[vector] = h;
}

void trap_dispatch(struct trapframe *tf)
{
    if (handlers[tf->vector]) {
        handlers[tf->vector](tf);
        return;
    }
    kprintf("\nunexpected trap: vector %u err %08x eip %08x cs %04x eflags %08x\n",
            tf->vector, tf->err, tf->eip, tf->cs, tf->eflags);
    kprintf("eax %08x ebx %08x ecx %08x edx %08x esi %08x edi %08x ebp %08x\n",
            tf->eax, tf->ebx, tf->ecx, tf->edx, tf->esi, tf->edi, tf->ebp);
    exit_failure(EXIT_CODE_TRAP);
}
