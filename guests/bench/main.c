/* bench: the benchmark guest.  It sets up what the nanobenchmarks need
 * (paging with a page table of its own for the fault and PTE benchmarks,
 * a second page directory, ring 3 with a TSS, #DE/#PF/INT 0x80 handlers,
 * the local APIC), then runs the operations named on the command line as
 * tight loops between marker lines on COM1, which the harness (bt-vmm
 * bench) timestamps as they arrive:
 *
 *     BEGIN <op> <n>          printed just before the loop
 *     END                     printed just after it
 *     RESULT <op> <n> <hex>   what the loop returned
 *
 * after a warm-up pass that prints WARM/END/WARMED lines instead.
 * The guest never reads a clock; see README.md. */
#include "bench/bench.h"
#include "common/cpu.h"
#include "common/lib.h"

#define PTE_P   0x001
#define PTE_RW  0x002
#define PTE_U   0x004
#define PTE_PWT 0x008
#define PTE_PCD 0x010
#define CR0_WP  (1u << 16)
#define MSR_APIC_BASE 0x1B
#define APIC_GLOBAL_ENABLE (1u << 11)

struct op {
    const char *name;
    loop_fn fn;
    int user;       /* runs in ring 3 */
    int zero;       /* always 0 iterations (the marker-overhead baselines) */
};

/* Baselines first: null/unull (no iterations: what the markers and the
 * way into and out of the loop cost), empty/uempty (the bare loop). */
static const struct op ops[] = {
    { "null",      op_empty,     0, 1 },
    { "empty",     op_empty,     0, 0 },
    { "unull",     uop_empty,    1, 1 },
    { "uempty",    uop_empty,    1, 0 },
    { "syscall",   uop_syscall,  1, 0 },
    { "in",        op_in,        0, 0 },
    { "tprwr",     op_tprwr,     0, 0 },
    { "clisti",    op_clisti,    0, 0 },
    { "pushfpopf", op_pushfpopf, 0, 0 },
    { "callret",   op_callret,   0, 0 },
    { "pgfault",   op_pgfault,   0, 0 },
    { "divzero",   op_divzero,   0, 0 },
    { "ptemod",    op_ptemod,    0, 0 },
    { "cr3",       op_cr3,       0, 0 },
    { "compute",   compute,      1, 0 },
    { "sysheavy",  sysheavy,     1, 0 },
};
#define NOPS ((int)ARRAY_SIZE(ops))

/* For the harness's native column: the loops that need no monitor, found
 * by the magic string in the first entry (16-byte names, then the
 * function's address; an empty name ends the table). */
struct native_entry {
    char name[16];
    uint32_t fn;
};
__attribute__((used)) static const struct native_entry native_table[] = {
    { "BTVMM-BENCH-NAT", 1 },       /* magic; 1 = table version */
    { "empty",     (uint32_t)(uintptr_t)op_empty },
    { "callret",   (uint32_t)(uintptr_t)op_callret },
    { "pushfpopf", (uint32_t)(uintptr_t)op_pushfpopf },
    { "clisti",    (uint32_t)(uintptr_t)op_clisti },
    { "compute",   (uint32_t)(uintptr_t)compute },
    { "",          0 },
};

static uint32_t pd_a[1024] __attribute__((aligned(PAGE_SIZE)));
static uint32_t pd_b[1024] __attribute__((aligned(PAGE_SIZE)));
static uint32_t pt_id[IDMAP_LIMIT >> 22][1024] __attribute__((aligned(PAGE_SIZE)));
static uint32_t pt_scratch[1024] __attribute__((aligned(PAGE_SIZE)));
static uint32_t pt_lapic[1024] __attribute__((aligned(PAGE_SIZE)));
static uint8_t frame_a[PAGE_SIZE] __attribute__((aligned(PAGE_SIZE)));
static uint8_t frame_b[PAGE_SIZE] __attribute__((aligned(PAGE_SIZE)));
static uint8_t trap_stack[8192] __attribute__((aligned(16)));

static char cmdline[1024];
static int selected[64];
static uint32_t iters[64];
static int nselected;

/* ---- traps and system calls -------------------------------------------- */

static uint8_t kbuf[SYS_BUF];

static int user_range(uint32_t p, uint32_t n)
{
    return n <= SYS_BUF && p >= (uint32_t)__user_start && p + n <= (uint32_t)__user_end &&
           p + n >= p;
}

static void syscall(struct trapframe *tf)
{
    uint32_t sum = 0;
    switch (tf->eax) {
    case SYS_EXIT:
        leave_user(tf->ebx);
    case SYS_GETPID:
        tf->eax = 1;
        return;
    case SYS_PUT:
        if (!user_range(tf->ebx, tf->ecx))
            break;
        for (uint32_t i = 0; i < tf->ecx; i++) {
            kbuf[i] = ((const uint8_t *)tf->ebx)[i];
            sum += kbuf[i];
        }
        tf->eax = sum;
        return;
    case SYS_GET:
        if (!user_range(tf->ebx, tf->ecx))
            break;
        for (uint32_t i = 0; i < tf->ecx; i++) {
            uint8_t b = kbuf[tf->ecx - 1 - i];
            ((uint8_t *)tf->ebx)[i] = b;
            sum += b;
        }
        tf->eax = sum;
        return;
    }
    tf->eax = (uint32_t)-1;
}

void trap(struct trapframe *tf);
void trap(struct trapframe *tf)
{
    switch (tf->vector) {
    case T_PF:
        if (tf->eip == (uint32_t)pf_insn && (tf->cs & 3) == 0 && read_cr2() == PF_ADDR &&
            tf->err == 0) {
            pf_handled++;
            tf->eip = (uint32_t)pf_resume;
            return;
        }
        break;
    case T_DE:
        if (tf->eip == (uint32_t)de_insn && (tf->cs & 3) == 0) {
            de_handled++;
            tf->eip = (uint32_t)de_resume;
            return;
        }
        break;
    case T_SYSCALL:
        if ((tf->cs & 3) == 3) {
            syscall(tf);
            return;
        }
        break;
    }
    kprintf("\nbench: unexpected trap: vector %u err %x eip %x cs %x eflags %x cr2 %x\n",
            tf->vector, tf->err, tf->eip, tf->cs, tf->eflags, read_cr2());
    kprintf("eax %x ebx %x ecx %x edx %x esi %x edi %x ebp %x\n",
            tf->eax, tf->ebx, tf->ecx, tf->edx, tf->esi, tf->edi, tf->ebp);
    exit_failure(EXIT_CODE_TRAP);
}

/* ---- set-up ------------------------------------------------------------ */

static void paging_init(void)
{
    uint32_t ustart = (uint32_t)__user_start, uend = (uint32_t)__user_end;
    for (uint32_t t = 0; t < (IDMAP_LIMIT >> 22); t++) {
        for (uint32_t i = 0; i < 1024; i++) {
            uint32_t addr = (t << 22) | (i << 12);
            uint32_t pte = addr | PTE_P | PTE_RW;
            if (addr >= ustart && addr < uend)
                pte |= PTE_U;
            pt_id[t][i] = addr ? pte : 0;           /* page 0 stays unmapped */
        }
        pd_a[t] = (uint32_t)pt_id[t] | PTE_P | PTE_RW | PTE_U;
    }
    pt_scratch[(PTEMOD_VA >> 12) & 1023] = (uint32_t)frame_a | PTE_P | PTE_RW;
    pd_a[SCRATCH_VA >> 22] = (uint32_t)pt_scratch | PTE_P | PTE_RW;
    pt_lapic[(LAPIC_BASE >> 12) & 1023] = LAPIC_BASE | PTE_P | PTE_RW | PTE_PCD | PTE_PWT;
    pd_a[LAPIC_BASE >> 22] = (uint32_t)pt_lapic | PTE_P | PTE_RW;
    memcpy(pd_b, pd_a, sizeof(pd_a));
    cr3_flip = (uint32_t)pd_a ^ (uint32_t)pd_b;
    ptemod_pte = (uint32_t)&pt_scratch[(PTEMOD_VA >> 12) & 1023];
    ptemod_flip = (uint32_t)frame_a ^ (uint32_t)frame_b;
    frame_a[0] = 'A';
    frame_b[0] = 'B';
    write_cr3((uint32_t)pd_a);
    write_cr0(read_cr0() | CR0_PG | CR0_WP);
}

static int lapic_init(void)
{
    uint32_t r[4];
    cpuid(1, r);
    if (!(r[3] & (1u << 9)))
        return 0;
    uint64_t base = rdmsr(MSR_APIC_BASE);
    if ((base & 0xFFFFF000u) != LAPIC_BASE)
        return 0;
    if (!(base & APIC_GLOBAL_ENABLE))
        wrmsr(MSR_APIC_BASE, base | APIC_GLOBAL_ENABLE);
    volatile uint32_t *apic = (volatile uint32_t *)LAPIC_BASE;
    apic[LAPIC_SVR / 4] = 0x1FF;        /* software enable, spurious vector 0xFF */
    apic[LAPIC_TPR / 4] = 0;
    return 1;
}

/* ---- the command line -------------------------------------------------- */

static int streqn(const char *a, const char *b, int n)
{
    for (int i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return b[n] == 0;
}

static int find_op(const char *s, int len)
{
    for (int i = 0; i < NOPS; i++)
        if (streqn(s, ops[i].name, len))
            return i;
    return -1;
}

static uint32_t parse_uint(const char *s, int len)
{
    uint32_t v = 0;
    for (int i = 0; i < len && s[i] >= '0' && s[i] <= '9'; i++)
        v = v * 10 + (uint32_t)(s[i] - '0');
    return v;
}

static int word_len(const char *s) { int n = 0; while (s[n] && s[n] != ' ') n++; return n; }
static int item_len(const char *s, int max) { int n = 0; while (n < max && s[n] != ',') n++; return n; }

/* bench=a,b,c  iters=N | iters=a:N,b:N  rounds=R  warm=W; other words are ignored. */
static void parse_cmdline(uint32_t *rounds, uint32_t *warm)
{
    uint32_t default_iters = 1000;
    uint32_t per_op[NOPS];
    for (int i = 0; i < NOPS; i++)
        per_op[i] = 0;
    for (const char *w = cmdline; *w;) {
        while (*w == ' ')
            w++;
        int len = word_len(w);
        if (len > 6 && !memcmp(w, "bench=", 6)) {
            for (int p = 6; p < len;) {
                int n = item_len(w + p, len - p);
                int k = find_op(w + p, n);
                if (k < 0) {
                    kprintf("bench: unknown operation '");
                    for (int i = 0; i < n; i++)
                        serial_putc(w[p + i]);
                    kprintf("'\n");
                    exit_failure(2);
                }
                if (nselected < (int)ARRAY_SIZE(selected))
                    selected[nselected++] = k;
                p += n + 1;
            }
        } else if (len > 6 && !memcmp(w, "iters=", 6)) {
            for (int p = 6; p < len;) {
                int n = item_len(w + p, len - p);
                int colon = 0;
                while (colon < n && w[p + colon] != ':')
                    colon++;
                if (colon == n) {
                    default_iters = parse_uint(w + p, n);
                } else {
                    int k = find_op(w + p, colon);
                    if (k >= 0)
                        per_op[k] = parse_uint(w + p + colon + 1, n - colon - 1);
                }
                p += n + 1;
            }
        } else if (len > 7 && !memcmp(w, "rounds=", 7)) {
            *rounds = parse_uint(w + 7, len - 7);
        } else if (len > 5 && !memcmp(w, "warm=", 5)) {
            *warm = parse_uint(w + 5, len - 5);
        }
        w += len;
    }
    if (!nselected)
        for (int i = 0; i < NOPS; i++)
            selected[nselected++] = i;
    for (int i = 0; i < nselected; i++) {
        int k = selected[i];
        iters[i] = ops[k].zero ? 0 : per_op[k] ? per_op[k] : default_iters;
    }
}

/* ---- running ----------------------------------------------------------- */

static uint32_t run_op(const struct op *op, uint32_t n)
{
    return op->user ? enter_user(op->fn, n) : op->fn(n);
}

void kmain(struct multiboot_info *mbi)
{
    uint32_t rounds = 1, warm = 16;
    if (mbi->flags & MB_INFO_CMDLINE) {
        const char *s = (const char *)mbi->cmdline;
        size_t i = 0;
        for (; s[i] && i < sizeof(cmdline) - 1; i++)
            cmdline[i] = s[i];
        cmdline[i] = 0;
    }
    parse_cmdline(&rounds, &warm);
    tss_set_esp0((uint32_t)trap_stack + sizeof(trap_stack));
    paging_init();
    int have_apic = lapic_init();
    for (int i = 0; i < nselected; i++) {
        if (ops[selected[i]].fn == op_tprwr && !have_apic) {
            kprintf("bench: tprwr needs a local APIC at %x\n", LAPIC_BASE);
            exit_failure(3);
        }
    }
    kprintf("bench: %d operations, %u rounds, warm-up %u\n", nselected, rounds, warm);

    /* Warm-up: run every loop (and the marker code) once, untimed, so that
     * translation and the filling of shadows and caches are not measured. */
    for (int i = 0; i < nselected; i++) {
        const struct op *op = &ops[selected[i]];
        uint32_t n = iters[i] < warm ? iters[i] : warm;
        kprintf("WARM %s %u\n", op->name, n);
        uint32_t v = run_op(op, n);
        serial_puts("END\n");
        kprintf("WARMED %s %u %x\n", op->name, n, v);
    }
    for (uint32_t r = 0; r < rounds; r++) {
        for (int i = 0; i < nselected; i++) {
            const struct op *op = &ops[selected[i]];
            kprintf("BEGIN %s %u\n", op->name, iters[i]);
            uint32_t v = run_op(op, iters[i]);
            serial_puts("END\n");
            kprintf("RESULT %s %u %x\n", op->name, iters[i], v);
        }
    }
    kprintf("bench: done\n");
}
