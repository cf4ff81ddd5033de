/* testos kernel: shared declarations. */
#ifndef TESTOS_KERNEL_H
#define TESTOS_KERNEL_H
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include "common/cpu.h"
#include "common/lib.h"
#include "testos/layout.h"
#include "testos/syscall.h"

#define CR0_WP  (1u << 16)
#define CR4_PGE (1u << 7)

/* Page-table entry bits (Intel SDM Vol. 3A, "32-Bit Paging"). */
#define PTE_P       0x001
#define PTE_W       0x002
#define PTE_U       0x004
#define PTE_A       0x020
#define PTE_D       0x040
#define PTE_PS      0x080   /* in a PDE: 4 MiB page */
#define PTE_G       0x100
#define PTE_COW     0x200   /* software: copy on write */
#define PTE_LOCKRO  0x400   /* software: read-only by mprotect */
#define PTE_ADDR(e) ((e) & ~0xFFFu)

#define PAGE_DOWN(a) ((uint32_t)(a) & ~(PAGE_SIZE - 1))
#define PAGE_UP(a)   (((uint32_t)(a) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))

/* Stack frame built by isr.S, lowest address first.  esp/ss exist only
 * when the CPU came from ring 3. */
struct trapframe {
    uint32_t fs, es, ds;
    uint32_t edi, esi, ebp, esp_pusha, ebx, edx, ecx, eax;
    uint32_t vector, err;
    uint32_t eip, cs, eflags;
    uint32_t esp, ss;
};

/* Callee-saved registers that swtch() leaves on a kernel stack. */
struct context {
    uint32_t edi, esi, ebx, ebp, eip;
};

/* Multiboot information, the fields testos reads (spec 0.6.96, 3.3). */
struct mb_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline;
    uint32_t mods_count, mods_addr, syms[4];
    uint32_t mmap_length, mmap_addr;
};
#define MB_INFO_MMAP (1u << 6)
struct __attribute__((packed)) mb_mmap_entry {
    uint32_t size;              /* of the rest of the entry */
    uint32_t addr_lo, addr_hi, len_lo, len_hi, type;
};

struct memrange { uint32_t base, end; };

/* ---- desc.c ---- */
void tss_set_esp0(uint32_t esp0);
uint16_t read_tr(void);
int gdt_is_loaded(void);    /* SGDT shows this GDT */

/* ---- isr.S ---- */
void trapret(void);
void swtch(struct context **save, struct context *load);
int uaccess_copy(void *dst, const void *src, uint32_t n);   /* 0 or -1 */
int probe_read(const volatile uint32_t *p, uint32_t *out);  /* 0 or 1 (faulted) */
int probe_write(volatile uint32_t *p, uint32_t v);          /* 0 or 1 (faulted) */
extern char uaccess_insn[], uaccess_fixup[];
extern char probe_read_insn[], probe_write_insn[], probe_fixup[];

/* ---- trap.c ---- */
extern uint32_t probe_fault_va, probe_fault_err;
void trap(struct trapframe *tf);
__attribute__((noreturn)) void panic(const char *fmt, ...);

/* ---- hw.c ---- */
struct cpuinfo {
    int has_cpuid;
    char vendor[13];
    uint32_t family, model, features_edx;
    int pse, pge;
};
extern struct cpuinfo cpu;
void cpu_detect(void);
void pic_init(void);
void irq_unmask(int irq);
void pic_eoi(int irq);
int pic_spurious(int irq);
void pit_init(uint32_t hz);
void uart_init(void);
void uart_intr(void);
int cons_read(char *buf, int n);    /* non-blocking: bytes taken from the input ring */
extern int cons_chan;               /* sleep channel of console readers */
struct rtc_time { uint32_t year, month, day, hour, min, sec; };
void rtc_read(struct rtc_time *t);

/* ---- ata.c ---- */
int ide_init(void);
void ide_intr(void);
int ide_rw(uint32_t lba, uint32_t count, void *buf, int write);
extern int disk_present;
extern uint32_t disk_sectors;
extern char disk_model[41];
extern uint32_t ide_irqs;

/* ---- mm.c ---- */
extern uint32_t *kernel_pgdir;
extern uint32_t phys_top, kmap_limit;
struct vmstats { uint32_t page_faults, demand_faults, cow_faults, cow_copies; };
extern struct vmstats vmstats;
void pmm_init(const struct memrange *avail, int n);
uint32_t page_alloc(void);
uint32_t page_alloc_zeroed(void);
void page_ref(uint32_t pa);
void page_unref(uint32_t pa);
uint32_t page_refcount(uint32_t pa);
uint32_t pages_free(void);
uint32_t pages_total(void);
void paging_init(void);
uint32_t *pte_walk(uint32_t *pd, uint32_t va, int create, uint32_t pde_flags);
static inline void invlpg(uint32_t va) { __asm__ volatile("invlpg (%0)" :: "r"(va) : "memory"); }
uint32_t *vm_create(void);
int vm_map(uint32_t *pd, uint32_t va, uint32_t pa, uint32_t flags);
uint32_t *vm_fork(uint32_t *parent);
void vm_free(uint32_t *pd);
uint32_t vm_count(uint32_t *pd);
struct proc;
int vm_fault(struct proc *p, uint32_t va, uint32_t err);
int vm_unmap_range(struct proc *p, uint32_t va, uint32_t end);
int vm_protect_range(struct proc *p, uint32_t va, uint32_t end, int writable);
uint32_t vm_query(struct proc *p, uint32_t va);
int user_range_ok(uint32_t va, uint32_t n);
int copyout(uint32_t uva, const void *src, uint32_t n);
int copyin(void *dst, uint32_t uva, uint32_t n);
int copyinstr(char *dst, uint32_t uva, uint32_t max);

/* ---- proc.c ---- */
struct proc {
    int state;                  /* PROC_* (syscall.h) */
    int pid;
    struct proc *parent;
    uint32_t *pgdir;
    uint8_t *kstack;            /* one page; the trap frame sits at its top */
    struct context *ctx;
    struct trapframe *tf;       /* the user registers on the kernel stack */
    void *chan;                 /* sleeping on */
    uint32_t wake_tick;         /* nonzero: also wake when ticks reaches it */
    int killed;
    int xstatus;
    uint32_t heap_start, brk;
    uint32_t uticks;
    char name[16];
};
extern struct proc procs[NPROC];
extern struct proc *curproc, *initproc;
extern volatile uint32_t ticks;
extern uint32_t ctx_switches, nforks;
extern uint32_t user_demand_lo;     /* user image: first demand-zero page (bss) */
void userinit(const char *name);
__attribute__((noreturn)) void scheduler(void);
void sched(void);
void yield(void);
void sleep_on(void *chan);
void sleep_until(void *chan, uint32_t deadline);
void wakeup(void *chan);
void timer_tick(void);
int proc_fork(void);
__attribute__((noreturn)) void proc_exit(int status);
int proc_wait(uint32_t ustatus);
int proc_kill(int pid);
int proc_count(void);
void proc_info(struct proc *p, struct sys_procinfo *pi);
void proc_set_name(struct proc *p, const char *name);

/* ---- syscall.c ---- */
void syscall(struct trapframe *tf);

/* ---- main.c ---- */
extern char boot_cmdline[256];
void test_result(const char *name, int ok, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
uint32_t tests_summary(void);
__attribute__((noreturn)) void kernel_finish(int init_status);
#endif
