/* GDT/IDT layout shared by all guests, and the trap (exception/interrupt) interface. */
#ifndef GUEST_DESC_H
#define GUEST_DESC_H

/* GDT selectors (all RPL 0).  All descriptors have base 0 and a 4 GiB
 * limit except SMALL_DS, which exists only to give LSL/LAR a distinctive
 * limit. */
#define SEL_NULL      0x00
#define SEL_KERNEL_CS 0x08   /* flat 32-bit code, used everywhere */
#define SEL_KERNEL_DS 0x10   /* flat 32-bit data: DS, ES, FS, SS */
#define SEL_ALT_CS    0x18   /* second flat code descriptor (far jmp/call/iret tests) */
#define SEL_ALT_DS    0x20   /* second flat data descriptor (segment reload tests) */
#define SEL_SMALL_DS  0x28   /* data, base 0, byte-granular limit 0xFFFF; never loaded */
#define GDT_ENTRIES   6

#ifndef __ASSEMBLER__
#include <stdint.h>

/* Descriptor-table register image as stored by SGDT/SIDT in 32-bit mode. */
struct __attribute__((packed)) dtr {
    uint16_t limit;
    uint32_t base;
};

/* Stack frame built by isr_common (see isr.S), lowest address first. */
struct trapframe {
    uint32_t fs, es, ds;
    uint32_t edi, esi, ebp, esp_unused, ebx, edx, ecx, eax;   /* PUSHA order */
    uint32_t vector, err;   /* err is 0 for vectors without an error code */
    uint32_t eip, cs, eflags;   /* pushed by the CPU (no privilege change) */
};

typedef void (*trap_handler_t)(struct trapframe *tf);

#define IDT_INTR_GATE 0x8E   /* present, DPL 0, 32-bit interrupt gate: clears IF */
#define IDT_TRAP_GATE 0x8F   /* present, DPL 0, 32-bit trap gate: leaves IF alone */

extern uint64_t gdt[GDT_ENTRIES];
extern uint64_t idt[256];

void gdt_init(void);
void idt_init(void);
void idt_set_type(int vector, uint8_t type);
void trap_set_handler(int vector, trap_handler_t h);
#endif
#endif
