/* testos: boot, kernel-mode self-tests, test bookkeeping and the end of
 * the run.  common_main (common/lib.c) has already loaded our GDT/TSS
 * and IDT (desc.c) and checked the multiboot magic. */
#include "testos/kernel.h"

char boot_cmdline[256];
static struct memrange avail[16];
static int navail;
static uint32_t n_tests, n_failed;
static int summary_done;

void test_result(const char *name, int ok, const char *fmt, ...)
{
    n_tests++;
    if (ok) {
        kprintf("ok   %s\n", name);
        return;
    }
    n_failed++;
    kprintf("FAIL %s: ", name);
    va_list ap;
    va_start(ap, fmt);
    vkprintf(fmt, ap);
    va_end(ap);
    kprintf("\n");
}

uint32_t tests_summary(void)
{
    kprintf("testos: %u ticks, %u context switches, %u forks, %u page faults "
            "(%u demand-zero, %u copy-on-write), %u IRQ14\n",
            ticks, ctx_switches, nforks, vmstats.page_faults, vmstats.demand_faults,
            vmstats.cow_faults, ide_irqs);
    kprintf("testos: %u tests, %u failed\n", n_tests, n_failed);
    summary_done = 1;
    return n_failed;
}

/* init (pid 1) exited: end the run. */
void kernel_finish(int init_status)
{
    if (init_status != 0)
        test_result("init", 0, "init exited with status %d", init_status);
    if (!summary_done || init_status != 0)
        tests_summary();
    if (n_failed)
        exit_failure(n_failed > 127 ? 127 : (uint8_t)n_failed);
    exit_success();
}

/* Copy what we need out of the boot information before the page
 * allocator may reuse the memory it lives in. */
static void save_boot_info(const struct mb_info *mbi)
{
    if (mbi->flags & MB_INFO_CMDLINE) {
        const char *s = (const char *)mbi->cmdline;
        size_t i = 0;
        for (; s[i] && i < sizeof(boot_cmdline) - 1; i++)
            boot_cmdline[i] = s[i];
        boot_cmdline[i] = 0;
    }
    if (mbi->flags & MB_INFO_MMAP) {
        uint32_t p = mbi->mmap_addr, end = p + mbi->mmap_length;
        while (p < end && navail < (int)ARRAY_SIZE(avail)) {
            const struct mb_mmap_entry *e = (const struct mb_mmap_entry *)p;
            p += e->size + 4;
            if (e->type != 1 || e->addr_hi || e->addr_lo >= KMAP_LIMIT)
                continue;
            uint32_t base = e->addr_lo, end2 = base + e->len_lo;
            if (e->len_hi || end2 < base || end2 > KMAP_LIMIT)
                end2 = KMAP_LIMIT;
            avail[navail].base = base;
            avail[navail].end = end2;
            navail++;
        }
    }
    if (!navail && (mbi->flags & MB_INFO_MEMORY)) {
        avail[0].base = 0x100000;
        avail[0].end = 0x100000 + mbi->mem_upper * 1024;
        navail = 1;
    }
    if (!navail)
        panic("no memory map and no mem_upper in the boot information");
}

/* ---- kernel-mode self-tests ---- */

static void test_gdt_tss(void)
{
    uint16_t cs, ds, ss;
    __asm__ volatile("mov %%cs, %0; mov %%ds, %1; mov %%ss, %2" : "=r"(cs), "=r"(ds), "=r"(ss));
    int ok = gdt_is_loaded() && read_tr() == SEL_TSS && cs == SEL_KCODE && ds == SEL_KDATA &&
             ss == SEL_KDATA;
    test_result("gdt_tss", ok, "sgdt ok %d, tr %x cs %x ds %x ss %x", gdt_is_loaded(), read_tr(),
                cs, ds, ss);
}

static void test_pmm(void)
{
    static uint32_t pages[64];
    uint32_t before = pages_free();
    int ok = 1;
    for (int i = 0; i < 64; i++) {
        pages[i] = page_alloc();
        if (!pages[i] || (pages[i] & 0xFFF) || pages[i] >= phys_top || pages[i] < 0x100000)
            ok = 0;
        for (int j = 0; j < i; j++)
            if (pages[j] == pages[i])
                ok = 0;
    }
    uint32_t mid = pages_free();
    for (int i = 0; i < 64; i++)
        if (pages[i])
            page_unref(pages[i]);
    test_result("page_alloc", ok && mid == before - 64 && pages_free() == before,
                "free %u -> %u -> %u, pages ok %d", before, mid, pages_free(), ok);
}

static uint32_t *scratch_pte(uint32_t va)
{
    return pte_walk(kernel_pgdir, va, 0, 0);
}

/* Page-table edits on a kernel mapping: map, remap, unmap with INVLPG,
 * and a NULL access, checking each time what the CPU sees. */
static void test_paging_edit(void)
{
    uint32_t a = page_alloc_zeroed(), b = page_alloc_zeroed(), v = 0;
    uint32_t *pa = (uint32_t *)a, *pb = (uint32_t *)b;
    volatile uint32_t *w = (volatile uint32_t *)SCRATCH_VA;
    uint32_t *pte = scratch_pte(SCRATCH_VA);
    int step = 0;
    uint32_t cr0 = read_cr0();
    pa[5] = 0xA0A0A0A5;
    pb[5] = 0xB0B0B0B5;
    if (!(cr0 & CR0_PG) || !(cr0 & CR0_WP) || read_cr3() != (uint32_t)kernel_pgdir)
        goto out;
    step = 1;
    *pte = a | PTE_P | PTE_W;
    invlpg(SCRATCH_VA);
    if (w[5] != 0xA0A0A0A5)
        goto out;
    step = 2;
    w[6] = 0x12345678;
    if (pa[6] != 0x12345678)
        goto out;
    step = 3;
    *pte = b | PTE_P | PTE_W;       /* remap to another frame */
    invlpg(SCRATCH_VA);
    if (w[5] != 0xB0B0B0B5)
        goto out;
    step = 4;
    *pte = 0;                       /* unmap */
    invlpg(SCRATCH_VA);
    if (!probe_read(&w[7], &v) || probe_fault_va != SCRATCH_VA + 28 || (probe_fault_err & 7) != 0)
        goto out;
    step = 5;
    if (!probe_read((const volatile uint32_t *)16, &v) || probe_fault_va != 16)
        goto out;                   /* page 0 is not mapped */
    step = 6;
out:
    test_result("paging_edit", step == 6, "failed at step %d (cr0 %x, fault va %x err %x)", step,
                cr0, probe_fault_va, probe_fault_err);
    *pte = 0;
    invlpg(SCRATCH_VA);
    page_unref(a);
    page_unref(b);
}

/* CR0.WP: a supervisor write to a read-only page faults. */
static void test_wp(void)
{
    uint32_t a = page_alloc_zeroed(), v = 1;
    volatile uint32_t *w = (volatile uint32_t *)(SCRATCH_VA + PAGE_SIZE);
    uint32_t *pte = scratch_pte((uint32_t)w);
    *pte = a | PTE_P;
    invlpg((uint32_t)w);
    int rf = probe_read(w, &v);
    int wf = probe_write(w, 0xDEAD);
    int ok = !rf && v == 0 && wf && (probe_fault_err & 7) == 3 && probe_fault_va == (uint32_t)w &&
             *(uint32_t *)a == 0;
    test_result("cr0_wp", ok, "read fault %d, write fault %d err %x", rf, wf, probe_fault_err);
    *pte = 0;
    invlpg((uint32_t)w);
    page_unref(a);
}

/* The CPU sets PTE.A on an access and PTE.D on a write. */
static void test_accessed_dirty(void)
{
    uint32_t a = page_alloc_zeroed();
    volatile uint32_t *w = (volatile uint32_t *)(SCRATCH_VA + 2 * PAGE_SIZE);
    volatile uint32_t *pte = scratch_pte((uint32_t)w);
    *pte = a | PTE_P | PTE_W;
    invlpg((uint32_t)w);
    uint32_t e0 = *pte;
    (void)w[0];
    uint32_t e1 = *pte;
    w[0] = 1;
    uint32_t e2 = *pte;
    int ok = !(e0 & (PTE_A | PTE_D)) && (e1 & PTE_A) && !(e1 & PTE_D) && (e2 & PTE_D);
    test_result("accessed_dirty", ok, "pte %x -> read %x -> write %x", e0, e1, e2);
    *pte = 0;
    invlpg((uint32_t)w);
    page_unref(a);
}

/* A 4 MiB page (CR4.PSE) aliasing physical 0-4 MiB.  It stays mapped,
 * read-only, in every address space created afterwards. */
static volatile uint32_t bigpage_probe = 0xCAFEF00D;

static void test_bigpage(void)
{
    if (!cpu.pse) {
        kprintf("skip pse_4m_page: the CPU has no PSE\n");
        return;
    }
    uint32_t *pde = &kernel_pgdir[BIGPAGE_VA >> 22];
    volatile uint32_t *alias = (volatile uint32_t *)(BIGPAGE_VA + (uint32_t)&bigpage_probe);
    int step = 0;
    uint32_t v = 0;
    *pde = 0 | PTE_P | PTE_W | PTE_PS | (cpu.pge ? PTE_G : 0);
    invlpg(BIGPAGE_VA);
    if (*alias != 0xCAFEF00D)
        goto out;
    step = 1;
    *alias = 0x600DB16;
    if (bigpage_probe != 0x600DB16)
        goto out;
    step = 2;
    /* The last page of the big page reads like its identity mapping. */
    if (*(volatile uint32_t *)(BIGPAGE_VA + 0x3FF000) != *(volatile uint32_t *)0x3FF000)
        goto out;
    step = 3;
    *pde &= ~PTE_W;                 /* edit the PDE: now read-only */
    invlpg(BIGPAGE_VA + 0x1000);
    if (probe_read(alias, &v) || v != 0x600DB16 || !probe_write(alias, 1) ||
        (probe_fault_err & 7) != 3)
        goto out;
    step = 4;
out:
    test_result("pse_4m_page", step == 4, "failed at step %d (pde %x)", step, *pde);
}

static void test_timer(void)
{
    int tsc = (cpu.features_edx >> 4) & 1;
    uint32_t t0 = ticks;
    uint64_t c0 = tsc ? rdtsc() : 0;
    for (int i = 0; i < 100000 && ticks < t0 + 5; i++)
        __asm__ volatile("sti; hlt; cli" ::: "memory");
    uint32_t t1 = ticks;
    uint64_t c1 = tsc ? rdtsc() : 0;
    test_result("pit_irq0", t1 >= t0 + 5, "ticks %u -> %u", t0, t1);
    uint32_t dt = t1 - t0 ? t1 - t0 : 1;
    uint32_t mhz = (uint32_t)((c1 - c0) >> 4) / (dt * 625);    /* cycles / (dt * 10000 us) */
    kprintf("testos: timer 100 Hz, %u ticks since boot", t1);
    if (tsc)
        kprintf(" (TSC ~%u MHz)", mhz);
    kprintf("\n");
}

static void test_rtc(void)
{
    struct rtc_time t;
    rtc_read(&t);
    kprintf("testos: rtc %u-%02u-%02u %02u:%02u:%02u\n", t.year, t.month, t.day, t.hour, t.min,
            t.sec);
    int ok = t.month >= 1 && t.month <= 12 && t.day >= 1 && t.day <= 31 && t.hour < 24 &&
             t.min < 60 && t.sec < 60 && t.year >= 1970 && t.year < 2170;
    test_result("rtc", ok, "implausible date");
}

void kmain(struct multiboot_info *mbi0)
{
    const struct mb_info *mbi = (const struct mb_info *)mbi0;
    kprintf("testos: booting\n");
    save_boot_info(mbi);
    cpu_detect();
    kprintf("testos: cmdline \"%s\"\n", boot_cmdline);
    kprintf("testos: cpu %s family %u model %u, pse %d, pge %d\n", cpu.vendor, cpu.family,
            cpu.model, cpu.pse, cpu.pge);
    pmm_init(avail, navail);
    paging_init();
    kprintf("testos: memory %u KiB, %u pages free, identity map 0-%x, paging on (cr0 %x cr4 %x)\n",
            phys_top >> 10, pages_free(), kmap_limit, read_cr0(), read_cr4());
    pic_init();
    pit_init(100);
    uart_init();
    irq_unmask(0);
    irq_unmask(4);
    if (ide_init()) {
        irq_unmask(14);
        kprintf("testos: disk ata0 master: %u sectors (%u KiB), \"%s\"\n", disk_sectors,
                disk_sectors / 2, disk_model);
    } else {
        kprintf("testos: disk: none\n");
    }

    test_gdt_tss();
    test_pmm();
    test_paging_edit();
    test_wp();
    test_accessed_dirty();
    test_bigpage();
    test_timer();
    test_rtc();

    userinit("init");
    scheduler();
}
