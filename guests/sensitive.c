/* sensitive: executes each class of sensitive or privileged instruction
 * that a binary translator must handle specially, and checks the results
 * itself.  One line per check, then a summary; the exit status says
 * whether everything passed (power-off) or how many checks failed
 * (debug-exit). */
#include "common/cpu.h"
#include "common/desc.h"
#include "common/lib.h"

#define UNCLAIMED_PORT 0x2F0    /* nothing decodes it on a PC: reads float high */
#define MSR_SYSENTER_CS 0x174

/* ---- sites in sensitive_asm.S ------------------------------------------ */
extern char site_div0_fault[], site_div0_resume[];
extern char site_ud2_fault[], site_ud2_resume[];
extern char site_load_fs_fault[], site_load_fs_resume[];
extern char site_int3_after[], site_into_after[], site_int40_after[];
extern char site_int41_fault[], site_int41_after[];
uint32_t site_div0(void);
void site_ud2(void);
void site_load_fs(uint32_t sel);
void site_int3(void);
void site_into(int32_t a, int32_t b);
uint32_t site_int40(uint32_t x);
uint32_t site_int41(uint32_t x);
void far_jmp_probe(uint32_t out[3]);
uint32_t far_call_probe(void);
uint32_t iret_probe(void);
void seg_reload_probe(const uint32_t *p, uint32_t out[4]);

/* ---- trap recording ------------------------------------------------------ */

/* What the last trap looked like, filled in by record_trap(). */
static volatile struct {
    uint32_t count, vector, err, eip, cs, eflags;
    uint32_t handler_eflags;    /* EFLAGS while the handler ran */
    uint32_t resume;            /* if nonzero, continue here instead of tf->eip */
    uint32_t new_eax;           /* if resume is set, handed back in EAX */
} rec;

static void record_trap(struct trapframe *tf)
{
    rec.count++;
    rec.vector = tf->vector;
    rec.err = tf->err;
    rec.eip = tf->eip;
    rec.cs = tf->cs & 0xFFFF;
    rec.eflags = tf->eflags;
    rec.handler_eflags = read_eflags();
    if (rec.resume) {
        tf->eip = rec.resume;
        tf->eax = rec.new_eax;
    }
}

/* INT 0x40/0x41 act as a tiny system call: EAX -> 2*EAX + 1. */
static void syscall_trap(struct trapframe *tf)
{
    record_trap(tf);
    tf->eax = tf->eax * 2 + 1;
}

static void expect_trap(uint32_t resume, uint32_t new_eax)
{
    rec.count = 0;
    rec.vector = rec.err = rec.eip = rec.cs = rec.eflags = ~0u;
    rec.resume = resume;
    rec.new_eax = new_eax;
}

/* ---- flags ---------------------------------------------------------------- */

static void test_flags(void)
{
    uint32_t f;

    cli();
    f = read_eflags();
    check(!(f & EFLAGS_IF), "pushf after cli shows IF=0", "eflags=%08x", f);
    sti();
    f = read_eflags();
    cli();
    check(f & EFLAGS_IF, "pushf after sti shows IF=1", "eflags=%08x", f);

    /* At CPL 0 POPF may change IF and IOPL (Intel SDM, POPF). */
    f = read_eflags();
    write_eflags(f | EFLAGS_IF);
    uint32_t g = read_eflags();
    cli();
    check(g & EFLAGS_IF, "popf sets IF", "eflags=%08x", g);
    sti();
    write_eflags(read_eflags() & ~EFLAGS_IF);
    g = read_eflags();
    cli();
    check(!(g & EFLAGS_IF), "popf clears IF", "eflags=%08x", g);

    /* Arithmetic flags and DF must survive a POPF/PUSHF round trip, both
     * all set and all clear.  CLD at once: C code relies on DF=0. */
    const uint32_t arith = 0xCD5;   /* CF PF AF ZF SF DF OF */
    uint32_t in[2] = { 0x2 | arith, 0x2 }, out[2];
    for (int i = 0; i < 2; i++)
        __asm__ volatile("pushl %1; popfl; pushfl; popl %0; cld"
                         : "=r"(out[i]) : "r"(in[i]) : "cc", "memory");
    check((out[0] & arith) == arith, "popf sets CF PF AF ZF SF DF OF",
          "wrote %08x, read %08x", in[0], out[0]);
    check((out[1] & arith) == 0, "popf clears CF PF AF ZF SF DF OF",
          "wrote %08x, read %08x", in[1], out[1]);

    /* CLI/STI touch IF only: a carry set before them is still there. */
    uint8_t cf_after;
    __asm__ volatile("stc; sti; cli; setc %0" : "=q"(cf_after) :: "cc");
    check(cf_after == 1, "cli/sti preserve CF", "CF=%u", cf_after);

    f = read_eflags();
    write_eflags(f | EFLAGS_IOPL);
    g = read_eflags();
    write_eflags(f & ~EFLAGS_IOPL);
    uint32_t h = read_eflags();
    check((g & EFLAGS_IOPL) == EFLAGS_IOPL && (h & EFLAGS_IOPL) == 0,
          "popf writes IOPL, pushf reads it", "IOPL=3 gave %08x, IOPL=0 gave %08x", g, h);

    /* AC (486+) and ID (CPUID present) are the classic toggle probes. */
    write_eflags(f | EFLAGS_AC);
    g = read_eflags();
    write_eflags(f & ~EFLAGS_AC);
    h = read_eflags();
    check((g & EFLAGS_AC) && !(h & EFLAGS_AC), "eflags.AC toggles", "set %08x clear %08x", g, h);
    write_eflags(f | EFLAGS_ID);
    g = read_eflags();
    write_eflags(f & ~EFLAGS_ID);
    h = read_eflags();
    check((g & EFLAGS_ID) && !(h & EFLAGS_ID), "eflags.ID toggles", "set %08x clear %08x", g, h);
    write_eflags(f);
}

/* ---- control registers ---------------------------------------------------- */

static void test_control_registers(void)
{
    uint32_t cr0 = read_cr0();
    check((cr0 & CR0_PE) && !(cr0 & CR0_PG), "cr0: PE=1 PG=0", "cr0=%08x", cr0);

    write_cr0(cr0 | CR0_TS);
    uint32_t a = read_cr0();
    __asm__ volatile("clts");
    uint32_t b = read_cr0();
    check((a & CR0_TS) && !(b & CR0_TS) && (a & ~CR0_TS) == (cr0 & ~CR0_TS),
          "mov cr0 sets TS, clts clears it", "after mov %08x, after clts %08x", a, b);

    uint16_t msw_mem;
    uint32_t msw_reg;
    __asm__ volatile("smsw %0" : "=m"(msw_mem));
    __asm__ volatile("smsw %0" : "=r"(msw_reg));
    check(msw_mem == (cr0 & 0xFFFF) && (msw_reg & 0xFFFF) == (cr0 & 0xFFFF),
          "smsw = low word of cr0", "mem %04x reg %08x cr0 %08x", msw_mem, msw_reg, cr0);

    /* LMSW loads PE/MP/EM/TS but can never clear PE (Intel SDM, LMSW). */
    uint16_t msw = (uint16_t)((cr0 & ~CR0_PE) | CR0_TS);
    __asm__ volatile("lmsw %0" :: "r"(msw) : "memory");
    a = read_cr0();
    __asm__ volatile("clts");
    check((a & CR0_TS) && (a & CR0_PE) && (a >> 16) == (cr0 >> 16),
          "lmsw sets TS and cannot clear PE", "lmsw %04x gave cr0 %08x", msw, a);
    write_cr0(cr0);

    write_cr2(0xDEADBEEF);
    a = read_cr2();
    write_cr2(0x00C0FFEE);
    b = read_cr2();
    check(a == 0xDEADBEEF && b == 0x00C0FFEE, "cr2 write/read", "read %08x, %08x", a, b);

    /* With CR0.PG=0 CR3 is just a register: a directory base plus PWT/PCD. */
    uint32_t cr3 = read_cr3();
    write_cr3(0x12345018);
    a = read_cr3();
    write_cr3(cr3);
    b = read_cr3();
    check(a == 0x12345018 && b == cr3, "cr3 write/read", "read %08x, restored %08x (was %08x)",
          a, b, cr3);

    /* Only set a CR4 bit the CPU claims to support (else MOV to CR4 #GPs). */
    uint32_t r[4];
    cpuid(1, r);
    uint32_t cr4 = read_cr4();
    uint32_t bit = (r[3] & (1u << 3)) ? CR4_PSE : 0;   /* CPUID.1:EDX.PSE */
    write_cr4(cr4 | bit);
    a = read_cr4();
    write_cr4(cr4 & ~bit);
    b = read_cr4();
    write_cr4(cr4);
    check(a == (cr4 | bit) && b == (cr4 & ~bit), "cr4 write/read",
          "cr4 %08x, set %08x gave %08x, clear gave %08x", cr4, bit, a, b);
}

/* ---- descriptor tables ---------------------------------------------------- */

#define SEL_EXTRA 0x30          /* only exists in gdt_big below */

static uint64_t gdt_big[GDT_ENTRIES + 1] __attribute__((aligned(8)));

static struct dtr sgdt(void) { struct dtr d; __asm__ volatile("sgdt %0" : "=m"(d)); return d; }
static struct dtr sidt(void) { struct dtr d; __asm__ volatile("sidt %0" : "=m"(d)); return d; }
static void lgdt(struct dtr d) { __asm__ volatile("lgdt %0" :: "m"(d) : "memory"); }
static void lidt(struct dtr d) { __asm__ volatile("lidt %0" :: "m"(d) : "memory"); }
static uint32_t get_fs(void) { uint16_t s; __asm__ volatile("movw %%fs, %0" : "=r"(s)); return s; }
static uint32_t get_cs(void) { uint16_t s; __asm__ volatile("movw %%cs, %0" : "=r"(s)); return s; }

/* LAR/LSL report success in ZF; the destination is only written on success. */
static int lar(uint32_t sel, uint32_t *ar)
{
    uint8_t zf;
    __asm__("lar %w2, %0; setz %1" : "+r"(*ar), "=q"(zf) : "r"(sel) : "cc");
    return zf;
}
static int lsl(uint32_t sel, uint32_t *limit)
{
    uint8_t zf;
    __asm__("lsl %w2, %0; setz %1" : "+r"(*limit), "=q"(zf) : "r"(sel) : "cc");
    return zf;
}

static void test_descriptor_tables(void)
{
    struct dtr boot_gdt = { sizeof(gdt) - 1, (uint32_t)gdt };
    struct dtr boot_idt = { sizeof(idt) - 1, (uint32_t)idt };
    struct dtr d = sgdt();
    check(d.limit == boot_gdt.limit && d.base == boot_gdt.base, "sgdt returns loaded gdtr",
          "limit %04x base %08x, expected %04x %08x", d.limit, d.base, boot_gdt.limit, boot_gdt.base);
    d = sidt();
    check(d.limit == boot_idt.limit && d.base == boot_idt.base, "sidt returns loaded idtr",
          "limit %04x base %08x, expected %04x %08x", d.limit, d.base, boot_idt.limit, boot_idt.base);

    /* A second, larger GDT: the extra selector only loads if it is in use. */
    memcpy(gdt_big, gdt, sizeof(gdt));
    gdt_big[SEL_EXTRA / 8] = gdt[SEL_KERNEL_DS / 8];
    struct dtr big = { sizeof(gdt_big) - 1, (uint32_t)gdt_big };
    lgdt(big);
    d = sgdt();
    expect_trap((uint32_t)site_load_fs_resume, 0);   /* no trap expected */
    site_load_fs(SEL_EXTRA);
    uint32_t fs = get_fs();
    site_load_fs(SEL_KERNEL_DS);
    lgdt(boot_gdt);
    check(d.limit == big.limit && d.base == big.base, "lgdt then sgdt round trip",
          "loaded %04x %08x, sgdt %04x %08x", big.limit, big.base, d.limit, d.base);
    check(rec.count == 0 && fs == SEL_EXTRA, "new gdt is used for segment loads",
          "traps %u, fs %04x", rec.count, fs);

    /* The same selector is now beyond the GDT limit: #GP(selector). */
    expect_trap((uint32_t)site_load_fs_resume, 0);
    site_load_fs(SEL_EXTRA);
    fs = get_fs();
    check(rec.count == 1 && rec.vector == 13 && rec.err == SEL_EXTRA &&
              rec.eip == (uint32_t)site_load_fs_fault && fs == SEL_KERNEL_DS,
          "#GP on selector beyond gdt limit", "traps %u vector %u err %x eip %08x (want %08x) fs %04x",
          rec.count, rec.vector, rec.err, rec.eip, (uint32_t)site_load_fs_fault, fs);

    /* Shrink the IDT so 0x40 is the last gate: INT 0x40 still works, INT
     * 0x41 raises #GP with error code vector*8 + 2 (IDT bit, EXT clear for
     * a software interrupt; Intel SDM Vol. 3A, "Error Code"). */
    struct dtr small = { 0x40 * 8 + 7, (uint32_t)idt };
    lidt(small);
    d = sidt();
    expect_trap(0, 0);
    uint32_t r40 = site_int40(20);
    uint32_t n40 = rec.count;
    expect_trap((uint32_t)site_int41_after, 0x4141);
    uint32_t r41 = site_int41(20);
    lidt(boot_idt);
    struct dtr d2 = sidt();
    check(d.limit == small.limit && d.base == small.base && d2.limit == boot_idt.limit &&
              d2.base == boot_idt.base,
          "lidt then sidt round trip", "small: %04x %08x, restored: %04x %08x",
          d.limit, d.base, d2.limit, d2.base);
    check(n40 == 1 && r40 == 41, "int 0x40 within shortened idt", "traps %u result %u", n40, r40);
    check(rec.count == 1 && rec.vector == 13 && rec.err == 0x20A &&
              rec.eip == (uint32_t)site_int41_fault && r41 == 0x4141,
          "#GP on int beyond idt limit", "traps %u vector %u err %x eip %08x (want %08x) eax %x",
          rec.count, rec.vector, rec.err, rec.eip, (uint32_t)site_int41_fault, r41);

    uint32_t out[4];
    far_jmp_probe(out);
    /* PUSH of a segment register with 32-bit operand size may write only
     * the low 16 bits of the slot (Intel SDM, PUSH), so mask the value. */
    check(out[0] == SEL_ALT_CS && (out[1] & 0xFFFF) == SEL_ALT_CS && out[2] == SEL_KERNEL_CS,
          "far jmp reloads cs (mov/push cs)", "cs %04x, push cs %08x, back %04x",
          out[0], out[1], out[2]);
    uint32_t cs_callee = far_call_probe();
    uint32_t cs_now = get_cs();
    check(cs_callee == SEL_ALT_CS && cs_now == SEL_KERNEL_CS, "lcall/lret switch cs",
          "callee cs %04x, after lret %04x", cs_callee, cs_now);
    uint32_t cs_iret = iret_probe();
    cs_now = get_cs();
    check(cs_iret == SEL_ALT_CS && cs_now == SEL_KERNEL_CS, "iret to another code selector",
          "cs after iret %04x, after lret %04x", cs_iret, cs_now);

    static const uint32_t magic = 0xFEEDF00D;
    seg_reload_probe(&magic, out);
    uint16_t ds, ss;
    __asm__ volatile("movw %%ds, %0; movw %%ss, %1" : "=r"(ds), "=r"(ss));
    check(out[0] == SEL_ALT_DS && out[1] == magic && ds == SEL_KERNEL_DS,
          "ds reload with second data descriptor", "ds %04x read %08x, restored ds %04x",
          out[0], out[1], ds);
    check(out[2] == 0x5a5a1234 && out[3] == SEL_ALT_DS && ss == SEL_KERNEL_DS,
          "ss reload with second data descriptor", "popped %08x ss %04x, restored ss %04x",
          out[2], out[3], ss);

    /* LAR: bits 16-19 of the result are undefined (Intel SDM, LAR). */
    uint32_t ar_cs = 0, ar_ds = 0, ar_bad = 0x1234, lim_ds = 0, lim_small = 0, lim_null = 0x5678;
    int ok_cs = lar(SEL_KERNEL_CS, &ar_cs), ok_ds = lar(SEL_KERNEL_DS, &ar_ds);
    int ok_bad = lar(SEL_EXTRA, &ar_bad);
    check(ok_cs && ok_ds && !ok_bad && (ar_cs & 0x00F0FF00) == 0x00C09B00 &&
              (ar_ds & 0x00F0FF00) == 0x00C09300 && ar_bad == 0x1234,
          "lar", "cs: zf %d ar %08x; ds: zf %d ar %08x; beyond limit: zf %d", ok_cs, ar_cs,
          ok_ds, ar_ds, ok_bad);
    int ok_lds = lsl(SEL_KERNEL_DS, &lim_ds), ok_lsmall = lsl(SEL_SMALL_DS, &lim_small);
    int ok_lnull = lsl(SEL_NULL, &lim_null);
    check(ok_lds && ok_lsmall && !ok_lnull && lim_ds == 0xFFFFFFFF && lim_small == 0xFFFF &&
              lim_null == 0x5678,
          "lsl", "ds: zf %d %08x; small: zf %d %08x; null: zf %d", ok_lds, lim_ds, ok_lsmall,
          lim_small, ok_lnull);
}

/* ---- I/O ------------------------------------------------------------------ */

static void test_io(void)
{
    outb(COM1_SCRATCH, 0x5A);
    uint8_t a = inb(COM1_SCRATCH);
    outb(COM1_SCRATCH, 0xA5);
    uint8_t b = inb(COM1_SCRATCH);
    check(a == 0x5A && b == 0xA5, "uart scratch register out/in", "read %02x, %02x", a, b);

    /* String output straight to THR: short enough for the UART to keep up
     * without polling, so this line appears verbatim in the log. */
    static const char msg[] = "rep outsb: direct to the UART\n";
    const char *p = msg;
    uint32_t n = sizeof(msg) - 1;
    while (!(inb(COM1_LSR) & LSR_THR_EMPTY))
        ;
    __asm__ volatile("rep outsb" : "+S"(p), "+c"(n) : "d"(COM1) : "memory");
    check(n == 0 && p == msg + sizeof(msg) - 1, "rep outsb registers", "ecx %u esi %p (want %p)",
          n, p, msg + sizeof(msg) - 1);

    uint8_t buf[8] = { 0 };
    uint8_t *q = buf;
    n = sizeof(buf);
    __asm__ volatile("rep insb" : "+D"(q), "+c"(n) : "d"(UNCLAIMED_PORT) : "memory");
    int all_ff = 1;
    for (unsigned i = 0; i < sizeof(buf); i++)
        all_ff &= buf[i] == 0xFF;
    check(all_ff && n == 0 && q == buf + sizeof(buf), "rep insb from unclaimed port",
          "buf %02x%02x%02x%02x%02x%02x%02x%02x ecx %u", buf[0], buf[1], buf[2], buf[3],
          buf[4], buf[5], buf[6], buf[7], n);

    uint8_t vb = inb(UNCLAIMED_PORT);
    uint16_t vw = inw(UNCLAIMED_PORT);
    uint32_t vl = inl(UNCLAIMED_PORT);
    check(vb == 0xFF && vw == 0xFFFF && vl == 0xFFFFFFFF, "inb/inw/inl unclaimed port widths",
          "%02x %04x %08x", vb, vw, vl);
}

/* ---- interrupts and exceptions ------------------------------------------- */

static void test_traps(void)
{
    /* Vector 0x40 is a trap gate (IF unchanged), 0x41 an interrupt gate
     * (IF cleared on entry); IRET restores the caller's IF either way. */
    idt_set_type(0x40, IDT_TRAP_GATE);
    trap_set_handler(0x40, syscall_trap);
    trap_set_handler(0x41, syscall_trap);

    expect_trap(0, 0);
    sti();
    uint32_t r = site_int40(0x1234);
    uint32_t f = read_eflags();
    cli();
    check(rec.count == 1 && rec.vector == 0x40 && r == 0x2469 && rec.err == 0 &&
              rec.eip == (uint32_t)site_int40_after && rec.cs == SEL_KERNEL_CS,
          "int 0x40 handler and iret", "traps %u vector %x result %x eip %08x (want %08x) cs %x",
          rec.count, rec.vector, r, rec.eip, (uint32_t)site_int40_after, rec.cs);
    check((rec.eflags & EFLAGS_IF) && (rec.handler_eflags & EFLAGS_IF) && (f & EFLAGS_IF),
          "trap gate keeps IF", "saved %08x, in handler %08x, after iret %08x",
          rec.eflags, rec.handler_eflags, f);

    expect_trap(0, 0);
    sti();
    r = site_int41(7);
    f = read_eflags();
    cli();
    check(rec.count == 1 && r == 15 && (rec.eflags & EFLAGS_IF) &&
              !(rec.handler_eflags & EFLAGS_IF) && (f & EFLAGS_IF),
          "interrupt gate clears IF, iret restores it",
          "traps %u result %u saved %08x, in handler %08x, after iret %08x",
          rec.count, r, rec.eflags, rec.handler_eflags, f);

    trap_set_handler(3, record_trap);
    expect_trap(0, 0);
    site_int3();
    check(rec.count == 1 && rec.vector == 3 && rec.eip == (uint32_t)site_int3_after, "int3",
          "traps %u vector %u eip %08x (want %08x)", rec.count, rec.vector, rec.eip,
          (uint32_t)site_int3_after);

    trap_set_handler(4, record_trap);
    expect_trap(0, 0);
    site_into(0x7FFFFFFF, 1);
    uint32_t n_of = rec.count, eip_of = rec.eip, vec_of = rec.vector;
    expect_trap(0, 0);
    site_into(5, 1);
    check(n_of == 1 && vec_of == 4 && eip_of == (uint32_t)site_into_after && rec.count == 0,
          "into traps only with OF set", "with OF: traps %u vector %u eip %08x (want %08x); "
          "without: traps %u", n_of, vec_of, eip_of, (uint32_t)site_into_after, rec.count);

    trap_set_handler(0, record_trap);
    expect_trap((uint32_t)site_div0_resume, 0xDE00DE00);
    r = site_div0();
    check(rec.count == 1 && rec.vector == 0 && rec.eip == (uint32_t)site_div0_fault &&
              r == 0xDE00DE00,
          "#DE precise eip and resume", "traps %u vector %u eip %08x (want %08x) eax %08x",
          rec.count, rec.vector, rec.eip, (uint32_t)site_div0_fault, r);

    trap_set_handler(6, record_trap);
    expect_trap((uint32_t)site_ud2_resume, 0);
    site_ud2();
    check(rec.count == 1 && rec.vector == 6 && rec.eip == (uint32_t)site_ud2_fault,
          "ud2 raises #UD at its own eip", "traps %u vector %u eip %08x (want %08x)",
          rec.count, rec.vector, rec.eip, (uint32_t)site_ud2_fault);
}

/* ---- cpuid, msr, tsc ------------------------------------------------------- */

static void test_cpuid_msr_tsc(void)
{
    uint32_t r[4];
    char vendor[13];
    cpuid(0, r);
    memcpy(vendor, &r[1], 4);       /* EBX, EDX, ECX spell the vendor */
    memcpy(vendor + 4, &r[3], 4);
    memcpy(vendor + 8, &r[2], 4);
    vendor[12] = 0;
    kprintf("     cpuid: vendor \"%s\", max leaf %u\n", vendor, r[0]);
    int printable = 1;
    for (int i = 0; i < 12; i++)
        printable &= vendor[i] >= 0x20 && vendor[i] < 0x7F;
    check(r[0] >= 1 && printable, "cpuid leaf 0", "max leaf %u", r[0]);
    cpuid(1, r);
    check((r[3] & 1) && (r[3] & (1u << 4)), "cpuid leaf 1: FPU and TSC", "edx %08x", r[3]);

    uint64_t orig = rdmsr(MSR_SYSENTER_CS);
    wrmsr(MSR_SYSENTER_CS, SEL_KERNEL_CS);
    uint64_t a = rdmsr(MSR_SYSENTER_CS);
    wrmsr(MSR_SYSENTER_CS, SEL_ALT_CS);
    uint64_t b = rdmsr(MSR_SYSENTER_CS);
    wrmsr(MSR_SYSENTER_CS, orig);
    check(a == SEL_KERNEL_CS && b == SEL_ALT_CS, "wrmsr/rdmsr IA32_SYSENTER_CS",
          "read %08x:%08x, %08x:%08x", (uint32_t)(a >> 32), (uint32_t)a,
          (uint32_t)(b >> 32), (uint32_t)b);

    uint64_t t0 = rdtsc(), prev = t0;
    int monotonic = 1;
    for (volatile int i = 0; i < 1000; i++) {
        uint64_t t = rdtsc();
        monotonic &= t >= prev;
        prev = t;
    }
    check(monotonic && prev > t0, "rdtsc increases", "first %08x%08x last %08x%08x",
          (uint32_t)(t0 >> 32), (uint32_t)t0, (uint32_t)(prev >> 32), (uint32_t)prev);
}

/* ---- control flow: calls, returns, indirect calls, jump tables ---------- */

static unsigned fib_calls;

__attribute__((noinline, noipa)) static uint32_t fib(uint32_t n)
{
    fib_calls++;
    return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

static uint32_t op_add(uint32_t a, uint32_t b) { return a + b; }
static uint32_t op_sub(uint32_t a, uint32_t b) { return a - b; }
static uint32_t op_mul(uint32_t a, uint32_t b) { return a * b; }
static uint32_t op_xor(uint32_t a, uint32_t b) { return a ^ b; }
static uint32_t op_rotl(uint32_t a, uint32_t b) { b &= 31; return b ? (a << b) | (a >> (32 - b)) : a; }
static uint32_t op_div(uint32_t a, uint32_t b) { return a / b; }
static uint32_t op_mod(uint32_t a, uint32_t b) { return a % b; }
static uint32_t op_max(uint32_t a, uint32_t b) { return a > b ? a : b; }

static uint32_t (*const op_table[])(uint32_t, uint32_t) = {
    op_add, op_sub, op_mul, op_xor, op_rotl, op_div, op_mod, op_max,
};

/* Twelve dense cases doing different work: gcc -O2 emits an indirect
 * jump through a table (switch conversion to a lookup table is not
 * possible because the cases compute rather than return constants). */
__attribute__((noinline, noipa)) static uint32_t jump_table(uint32_t op, uint32_t x)
{
    switch (op) {
    case 0: return x + 7;
    case 1: return x * 3;
    case 2: return x ^ 0x5A5A;
    case 3: return x << 3;
    case 4: return x >> 2;
    case 5: return ~x;
    case 6: return x - 100;
    case 7: return x * x;
    case 8: return (x << 16) | (x >> 16);
    case 9: return x & 0xFF00FF;
    case 10: return x | 0x80000001;
    case 11: return -x;
    default: return 0xDEADBEEF;
    }
}

static void test_control_flow(void)
{
    uint32_t a = 0, b = 1;
    for (int i = 0; i < 20; i++) {
        uint32_t t = a + b;
        a = b;
        b = t;
    }
    fib_calls = 0;
    uint32_t f = fib(20);
    /* Naive recursion makes 2*fib(n+1) - 1 calls; fib(21) = 10946. */
    check(f == a && f == 6765 && fib_calls == 21891, "recursive fib(20) (call/ret)",
          "fib %u loop %u calls %u", f, a, fib_calls);

    static const uint32_t want_ops[] = {
        0x89abce02, 0x89abcddc, 0x37c048bd, 0x89abcdfc,
        0x6f7c4d5e, 0x073eefe4, 0x00000003, 0x89abcdef,
    };
    unsigned bad = ARRAY_SIZE(op_table);
    for (unsigned i = 0; i < ARRAY_SIZE(op_table); i++) {
        uint32_t (*fn)(uint32_t, uint32_t) = op_table[i];
        __asm__("" : "+r"(fn));     /* hide the target: a real indirect call */
        if (fn(0x89abcdef, 0x13) != want_ops[i] && bad == ARRAY_SIZE(op_table))
            bad = i;
    }
    check(bad == ARRAY_SIZE(op_table), "indirect calls through a function table",
          "entry %u wrong", bad);

    static const uint32_t want_sw[] = {
        0x1234567f, 0x369d0368, 0x12340c22, 0x91a2b3c0, 0x048d159e, 0xedcba987, 0x12345614,
        0x1df4d840, 0x56781234, 0x00340078, 0x92345679, 0xedcba988, 0xdeadbeef,
    };
    bad = ARRAY_SIZE(want_sw);
    uint32_t got = 0;
    for (unsigned i = 0; i < ARRAY_SIZE(want_sw); i++) {
        uint32_t v = jump_table(i, 0x12345678);
        if (v != want_sw[i] && bad == ARRAY_SIZE(want_sw)) {
            bad = i;
            got = v;
        }
    }
    check(bad == ARRAY_SIZE(want_sw), "switch through a jump table", "case %u gave %08x", bad, got);
}

void kmain(struct multiboot_info *mbi)
{
    (void)mbi;
    kprintf("sensitive: privileged and sensitive instruction checks\n");
    test_flags();
    test_control_registers();
    test_traps();               /* installs the INT n, #BP, #OF, #DE, #UD handlers */
    trap_set_handler(13, record_trap);  /* #GP, for the descriptor-table tests */
    test_descriptor_tables();
    test_io();
    test_cpuid_msr_tsc();
    test_control_flow();
    checks_finish("sensitive");
}
