/* testos: physical page allocator, kernel page tables, per-process
 * address spaces, demand paging and copy-on-write. */
#include "testos/kernel.h"

extern char __load_start[], __ro_end[], _end[];   /* kernel.ld */

uint32_t *kernel_pgdir;
uint32_t phys_top;              /* end of the highest usable RAM below KMAP_LIMIT */
uint32_t kmap_limit;            /* the identity map covers [4 KiB, kmap_limit) */
struct vmstats vmstats;

/* ---- physical pages ----
 * Free memory is a few ranges handed out from the bottom (so boot does
 * not have to touch every page) plus a list of pages given back, linked
 * through their first word.  Every allocated page has a reference count:
 * a user page shared copy-on-write by N address spaces has count N. */
#define MAX_RANGES 16
static struct memrange ranges[MAX_RANGES];
static int nranges;
static uint32_t freelist;
static uint32_t nfree, ntotal;
static uint16_t *refcnt;        /* indexed by page frame number */
static uint32_t max_pfn;

void pmm_init(const struct memrange *avail, int n)
{
    for (int i = 0; i < n; i++)
        if (avail[i].end > phys_top)
            phys_top = avail[i].end;
    max_pfn = phys_top >> 12;

    /* The reference counts live right after the kernel image, which must
     * be usable RAM. */
    uint32_t ref_start = PAGE_UP(_end);
    uint32_t ref_end = PAGE_UP(ref_start + max_pfn * sizeof(uint16_t));
    int ok = 0;
    for (int i = 0; i < n; i++)
        if (avail[i].base <= ref_start && ref_end <= avail[i].end)
            ok = 1;
    if (!ok)
        panic("no usable RAM for page reference counts at %x-%x", ref_start, ref_end);
    refcnt = (uint16_t *)ref_start;
    memset(refcnt, 0, ref_end - ref_start);

    for (int i = 0; i < n && nranges < MAX_RANGES; i++) {
        uint32_t lo = PAGE_UP(avail[i].base), hi = PAGE_DOWN(avail[i].end);
        if (lo < ref_end)
            lo = ref_end;       /* nothing below the kernel: BIOS, boot data */
        if (lo >= hi)
            continue;
        ranges[nranges].base = lo;
        ranges[nranges].end = hi;
        nranges++;
        ntotal += (hi - lo) >> 12;
    }
    nfree = ntotal;
}

uint32_t page_alloc(void)
{
    uint32_t pa = 0;
    if (freelist) {
        pa = freelist;
        freelist = *(uint32_t *)pa;
    } else {
        for (int i = 0; i < nranges; i++)
            if (ranges[i].base < ranges[i].end) {
                pa = ranges[i].base;
                ranges[i].base += PAGE_SIZE;
                break;
            }
    }
    if (!pa)
        return 0;
    nfree--;
    refcnt[pa >> 12] = 1;
    return pa;
}

static void zero_page(uint32_t pa)
{
    uint32_t d = pa, c = PAGE_SIZE / 4;
    __asm__ volatile("cld; rep stosl" : "+D"(d), "+c"(c) : "a"(0) : "memory");
}

static void copy_page(uint32_t dst, uint32_t src)
{
    uint32_t c = PAGE_SIZE / 4;
    __asm__ volatile("cld; rep movsl" : "+D"(dst), "+S"(src), "+c"(c) :: "memory");
}

uint32_t page_alloc_zeroed(void)
{
    uint32_t pa = page_alloc();
    if (pa)
        zero_page(pa);
    return pa;
}

void page_ref(uint32_t pa)
{
    refcnt[pa >> 12]++;
}

void page_unref(uint32_t pa)
{
    uint32_t pfn = pa >> 12;
    if (pfn >= max_pfn || refcnt[pfn] == 0)
        panic("page_unref: bad page %x", pa);
    if (--refcnt[pfn] == 0) {
        *(uint32_t *)pa = freelist;
        freelist = pa;
        nfree++;
    }
}

uint32_t page_refcount(uint32_t pa) { return refcnt[pa >> 12]; }
uint32_t pages_free(void) { return nfree; }
uint32_t pages_total(void) { return ntotal; }

/* ---- page tables ---- */

/* The PTE for va, creating the page table (with pde_flags) if asked.
 * NULL if there is none, or if va lies in a 4 MiB page. */
uint32_t *pte_walk(uint32_t *pd, uint32_t va, int create, uint32_t pde_flags)
{
    uint32_t *pde = &pd[va >> 22];
    if (!(*pde & PTE_P)) {
        if (!create)
            return 0;
        uint32_t pt = page_alloc_zeroed();
        if (!pt)
            return 0;
        *pde = pt | pde_flags;
    } else if (*pde & PTE_PS) {
        return 0;
    }
    return &((uint32_t *)PTE_ADDR(*pde))[(va >> 12) & 0x3FF];
}

/* Identity-map RAM (at least 4 MiB, at most KMAP_LIMIT) with supervisor
 * pages: kernel code and read-only data read-only, the rest read/write,
 * all global when the CPU has PGE.  Page 0 stays unmapped to catch NULL
 * pointers.  Then turn on paging with CR0.WP, so that the kernel's own
 * writes honour read-only (copy-on-write) user pages. */
void paging_init(void)
{
    kernel_pgdir = (uint32_t *)page_alloc_zeroed();
    if (!kernel_pgdir)
        panic("no memory for the page directory");
    uint32_t limit = (phys_top + 0x3FFFFF) & ~0x3FFFFFu;
    if (limit < 0x400000)
        limit = 0x400000;
    if (limit > KMAP_LIMIT || limit == 0)
        limit = KMAP_LIMIT;
    kmap_limit = limit;
    uint32_t g = cpu.pge ? PTE_G : 0;
    uint32_t ro_lo = PAGE_DOWN(__load_start), ro_hi = PAGE_UP(__ro_end);
    for (uint32_t va = PAGE_SIZE; va < limit; va += PAGE_SIZE) {
        uint32_t *pte = pte_walk(kernel_pgdir, va, 1, PTE_P | PTE_W);
        if (!pte)
            panic("no memory for kernel page tables");
        uint32_t flags = PTE_P | g;
        if (va < ro_lo || va >= ro_hi)
            flags |= PTE_W;
        *pte = va | flags;
    }
    /* The page table for the self-tests' scratch mappings, so that every
     * address space made later shares it. */
    if (!pte_walk(kernel_pgdir, SCRATCH_VA, 1, PTE_P | PTE_W))
        panic("no memory for the scratch page table");

    write_cr3((uint32_t)kernel_pgdir);
    if (cpu.pse)
        write_cr4(read_cr4() | CR4_PSE);
    write_cr0(read_cr0() | CR0_PG | CR0_WP);
    if (cpu.pge)
        write_cr4(read_cr4() | CR4_PGE);
}

/* ---- user address spaces ---- */
#define USER_PDE_LO (USER_BASE >> 22)
#define USER_PDE_HI (USER_TOP >> 22)
#define USER_PDE_FLAGS (PTE_P | PTE_W | PTE_U)

/* A new page directory sharing every kernel page table. */
uint32_t *vm_create(void)
{
    uint32_t *pd = (uint32_t *)page_alloc_zeroed();
    if (!pd)
        return 0;
    for (uint32_t i = 0; i < 1024; i++)
        if (i < USER_PDE_LO || i >= USER_PDE_HI)
            pd[i] = kernel_pgdir[i];
    return pd;
}

int vm_map(uint32_t *pd, uint32_t va, uint32_t pa, uint32_t flags)
{
    uint32_t *pte = pte_walk(pd, va, 1, USER_PDE_FLAGS);
    if (!pte)
        return -1;
    *pte = pa | flags;
    return 0;
}

/* Copy an address space for fork: user pages are shared, and writable
 * ones become read-only + COW in both parent and child.  The caller
 * flushes the parent's TLB (it is the current address space). */
uint32_t *vm_fork(uint32_t *parent)
{
    uint32_t *pd = vm_create();
    if (!pd)
        return 0;
    for (uint32_t i = USER_PDE_LO; i < USER_PDE_HI; i++) {
        if (!(parent[i] & PTE_P))
            continue;
        uint32_t pt = page_alloc_zeroed();
        if (!pt) {
            vm_free(pd);
            return 0;
        }
        pd[i] = pt | USER_PDE_FLAGS;
        uint32_t *src = (uint32_t *)PTE_ADDR(parent[i]), *dst = (uint32_t *)pt;
        for (int j = 0; j < 1024; j++) {
            uint32_t e = src[j];
            if (!(e & PTE_P))
                continue;
            if (e & PTE_W) {
                e = (e & ~PTE_W) | PTE_COW;
                src[j] = e;
            }
            dst[j] = e;
            page_ref(PTE_ADDR(e));
        }
    }
    return pd;
}

/* Drop every user page and page table, then the directory itself. */
void vm_free(uint32_t *pd)
{
    for (uint32_t i = USER_PDE_LO; i < USER_PDE_HI; i++) {
        if (!(pd[i] & PTE_P))
            continue;
        uint32_t *pt = (uint32_t *)PTE_ADDR(pd[i]);
        for (int j = 0; j < 1024; j++)
            if (pt[j] & PTE_P)
                page_unref(PTE_ADDR(pt[j]));
        page_unref((uint32_t)pt);
        pd[i] = 0;
    }
    page_unref((uint32_t)pd);
}

uint32_t vm_count(uint32_t *pd)
{
    uint32_t n = 0;
    for (uint32_t i = USER_PDE_LO; i < USER_PDE_HI; i++) {
        if (!(pd[i] & PTE_P))
            continue;
        uint32_t *pt = (uint32_t *)PTE_ADDR(pd[i]);
        for (int j = 0; j < 1024; j++)
            n += pt[j] & PTE_P;
    }
    return n;
}

/* May a missing page at va be supplied as a fresh zero page?  True for
 * bss and heap up to the break, and for the stack region. */
static int demand_ok(struct proc *p, uint32_t va)
{
    if (va >= user_demand_lo && va < PAGE_UP(p->brk))
        return 1;
    return va >= USER_TOP - USTACK_MAX && va < USER_TOP;
}

/* Resolve a page fault at user address va (err: the CPU's error code).
 * 0 if resolved, -1 if the access is invalid, -ENOMEM if no page was
 * left to resolve it. */
int vm_fault(struct proc *p, uint32_t va, uint32_t err)
{
    if (!p || va < USER_BASE || va >= USER_TOP)
        return -1;
    vmstats.page_faults++;
    uint32_t page = PAGE_DOWN(va);
    uint32_t *pte = pte_walk(p->pgdir, page, 0, 0);
    if (!pte || !(*pte & PTE_P)) {
        if (!demand_ok(p, va))
            return -1;
        uint32_t pa = page_alloc_zeroed();
        if (!pa)
            return -ENOMEM;
        if (!(pte = pte_walk(p->pgdir, page, 1, USER_PDE_FLAGS))) {
            page_unref(pa);
            return -ENOMEM;
        }
        *pte = pa | PTE_P | PTE_W | PTE_U;
        invlpg(page);
        vmstats.demand_faults++;
        return 0;
    }
    uint32_t e = *pte;
    int write = (err & 2) != 0;
    if (!(e & PTE_U))
        return -1;
    if (!write || (e & PTE_W)) {
        /* The entry allows the access: a stale TLB entry.  Flush it. */
        invlpg(page);
        return 0;
    }
    if (!(e & PTE_COW) || (e & PTE_LOCKRO))
        return -1;              /* a write to a read-only page */
    uint32_t old = PTE_ADDR(e);
    vmstats.cow_faults++;
    if (page_refcount(old) == 1) {
        *pte = (e | PTE_W) & ~PTE_COW;     /* the last sharer keeps the page */
    } else {
        uint32_t pa = page_alloc();
        if (!pa)
            return -ENOMEM;
        copy_page(pa, old);
        *pte = pa | PTE_P | PTE_W | PTE_U;
        page_unref(old);
        vmstats.cow_copies++;
    }
    invlpg(page);
    return 0;
}

/* munmap and a shrinking sbrk: clear the PTEs of [va, end) in the
 * current address space, invalidating each TLB entry. */
int vm_unmap_range(struct proc *p, uint32_t va, uint32_t end)
{
    for (; va < end; va += PAGE_SIZE) {
        uint32_t *pte = pte_walk(p->pgdir, va, 0, 0);
        if (!pte || !(*pte & PTE_P))
            continue;
        uint32_t pa = PTE_ADDR(*pte);
        *pte = 0;
        invlpg(va);
        page_unref(pa);
    }
    return 0;
}

/* mprotect: make [va, end) read-only or writable again.  Missing pages
 * that demand paging would supply are mapped first; others are ENOMEM.
 * A page that is still shared becomes copy-on-write, not writable. */
int vm_protect_range(struct proc *p, uint32_t va, uint32_t end, int writable)
{
    for (uint32_t a = va; a < end; a += PAGE_SIZE) {
        uint32_t *pte = pte_walk(p->pgdir, a, 0, 0);
        if ((!pte || !(*pte & PTE_P)) && !demand_ok(p, a))
            return -ENOMEM;
    }
    for (; va < end; va += PAGE_SIZE) {
        uint32_t *pte = pte_walk(p->pgdir, va, 0, 0);
        if (!pte || !(*pte & PTE_P)) {
            if (vm_fault(p, va, 0) < 0 || !(pte = pte_walk(p->pgdir, va, 0, 0)))
                return -ENOMEM;
        }
        uint32_t e = *pte;
        if (writable) {
            e &= ~PTE_LOCKRO;
            if (e & PTE_COW)
                ;                       /* the next write copies */
            else if (page_refcount(PTE_ADDR(e)) > 1)
                e |= PTE_COW;           /* e.g. shared code: copy privately */
            else
                e |= PTE_W;
        } else {
            e = (e & ~PTE_W) | PTE_LOCKRO;
        }
        *pte = e;
        invlpg(va);
    }
    return 0;
}

uint32_t vm_query(struct proc *p, uint32_t va)
{
    uint32_t *pte = pte_walk(p->pgdir, va, 0, 0);
    return pte && (*pte & PTE_P) ? *pte & 0xFFF : 0;
}

/* ---- user memory access from system calls ---- */
int user_range_ok(uint32_t va, uint32_t n)
{
    return va >= USER_BASE && va <= USER_TOP && n <= USER_TOP - va;
}

int copyout(uint32_t uva, const void *src, uint32_t n)
{
    if (!user_range_ok(uva, n))
        return -EFAULT;
    return uaccess_copy((void *)uva, src, n) ? -EFAULT : 0;
}

int copyin(void *dst, uint32_t uva, uint32_t n)
{
    if (!user_range_ok(uva, n))
        return -EFAULT;
    return uaccess_copy(dst, (const void *)uva, n) ? -EFAULT : 0;
}

/* A NUL-terminated string of at most max-1 characters (longer ones are
 * cut). */
int copyinstr(char *dst, uint32_t uva, uint32_t max)
{
    for (uint32_t i = 0; i < max; i++) {
        if (copyin(dst + i, uva + i, 1) < 0)
            return -EFAULT;
        if (!dst[i])
            return 0;
    }
    dst[max - 1] = 0;
    return 0;
}
