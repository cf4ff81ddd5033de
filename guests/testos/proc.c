/* testos: processes, the round-robin scheduler, sleep/wakeup,
 * fork/exit/wait/kill. */
#include "testos/kernel.h"

struct proc procs[NPROC];
struct proc *curproc, *initproc;
volatile uint32_t ticks;
uint32_t ctx_switches, nforks;
uint32_t user_demand_lo;

static struct context *sched_ctx;
static int next_pid = 1;

/* The user image built from user/ and embedded by userimg.S: a flat
 * binary linked at USER_BASE that starts with this header. */
struct uimg_hdr {
    uint32_t magic, entry, text_end, data_end, bss_end;
};
#define UIMG_MAGIC 0x474D4955u     /* "UIMG" */
extern const char user_image_start[], user_image_end[];

static struct proc *proc_alloc(void)
{
    for (int i = 0; i < NPROC; i++) {
        struct proc *p = &procs[i];
        if (p->state != PROC_UNUSED)
            continue;
        memset(p, 0, sizeof(*p));
        p->kstack = (uint8_t *)page_alloc();
        if (!p->kstack)
            return 0;
        p->pid = next_pid++;
        p->state = PROC_EMBRYO;
        return p;
    }
    return 0;
}

/* Lay out a new kernel stack: the user trap frame at the top, below it a
 * context whose return address is trapret, so that the first switch to
 * the process "returns" to user mode with IRET. */
static void proc_setup_stack(struct proc *p, const struct trapframe *tf)
{
    struct trapframe *ntf = (struct trapframe *)(p->kstack + KSTACK_SIZE) - 1;
    *ntf = *tf;
    p->tf = ntf;
    struct context *c = (struct context *)ntf - 1;
    memset(c, 0, sizeof(*c));
    c->eip = (uint32_t)trapret;
    p->ctx = c;
}

static void proc_free(struct proc *p)
{
    if (p->pgdir)
        vm_free(p->pgdir);
    page_unref((uint32_t)p->kstack);
    p->state = PROC_UNUSED;
    p->pid = 0;
}

static void set_name(struct proc *p, const char *name)
{
    size_t n = strlen(name);
    if (n > sizeof(p->name) - 1)
        n = sizeof(p->name) - 1;
    memcpy(p->name, name, n);
    p->name[n] = 0;
}

/* The first process: a fresh address space holding a copy of the user
 * image (code and read-only data read-only, data read/write; bss, heap
 * and stack are demand-zero), entered at ring 3 with IF=1 and IOPL=0. */
void userinit(const char *name)
{
    const struct uimg_hdr *h = (const struct uimg_hdr *)user_image_start;
    uint32_t fsize = (uint32_t)(user_image_end - user_image_start);
    if (h->magic != UIMG_MAGIC || h->text_end > h->data_end || h->data_end > h->bss_end ||
        h->text_end < USER_BASE || h->bss_end > HEAP_LIMIT || fsize > h->data_end - USER_BASE)
        panic("bad user image header");
    struct proc *p = proc_alloc();
    if (!p || !(p->pgdir = vm_create()))
        panic("no memory for init");
    for (uint32_t va = USER_BASE; va < PAGE_UP(h->data_end); va += PAGE_SIZE) {
        uint32_t pa = page_alloc_zeroed();
        if (!pa)
            panic("no memory for the user image");
        uint32_t off = va - USER_BASE;
        if (off < fsize)
            memcpy((void *)pa, user_image_start + off, fsize - off < PAGE_SIZE ? fsize - off : PAGE_SIZE);
        uint32_t flags = PTE_P | PTE_U | (va < h->text_end ? 0 : PTE_W);
        if (vm_map(p->pgdir, va, pa, flags) < 0)
            panic("no memory for user page tables");
    }
    user_demand_lo = PAGE_UP(h->data_end);
    p->heap_start = p->brk = PAGE_UP(h->bss_end);

    struct trapframe tf;
    memset(&tf, 0, sizeof(tf));
    tf.cs = SEL_UCODE;
    tf.ds = tf.es = tf.fs = tf.ss = SEL_UDATA;
    tf.eflags = EFLAGS_IF | 2;
    tf.eip = h->entry;
    tf.esp = USER_TOP;
    proc_setup_stack(p, &tf);
    set_name(p, name);
    initproc = p;
    p->state = PROC_RUNNABLE;
}

/* Runs on the boot stack forever: pick the next runnable process after
 * the last one (round robin), switch TSS.esp0, CR3 and stacks to it; when
 * nothing can run, wait for an interrupt with STI;HLT. */
void scheduler(void)
{
    int last = NPROC - 1;
    for (;;) {
        struct proc *p = 0;
        for (int i = 1; i <= NPROC; i++) {
            struct proc *q = &procs[(last + i) % NPROC];
            if (q->state == PROC_RUNNABLE) {
                p = q;
                break;
            }
        }
        if (!p) {
            __asm__ volatile("sti; hlt; cli" ::: "memory");
            continue;
        }
        last = (int)(p - procs);
        curproc = p;
        p->state = PROC_RUNNING;
        tss_set_esp0((uint32_t)p->kstack + KSTACK_SIZE);
        write_cr3((uint32_t)p->pgdir);
        ctx_switches++;
        swtch(&sched_ctx, p->ctx);
        write_cr3((uint32_t)kernel_pgdir);
        curproc = 0;
    }
}

void sched(void)
{
    swtch(&curproc->ctx, sched_ctx);
}

void yield(void)
{
    curproc->state = PROC_RUNNABLE;
    sched();
}

/* Interrupts are off whenever the kernel runs outside the idle loop, so
 * a wakeup can never slip in between a test and this sleep. */
void sleep_on(void *chan)
{
    curproc->chan = chan;
    curproc->state = PROC_SLEEPING;
    sched();
    curproc->chan = 0;
}

void sleep_until(void *chan, uint32_t deadline)
{
    curproc->wake_tick = deadline ? deadline : 1;
    sleep_on(chan);
    curproc->wake_tick = 0;
}

void wakeup(void *chan)
{
    for (int i = 0; i < NPROC; i++)
        if (procs[i].state == PROC_SLEEPING && procs[i].chan == chan)
            procs[i].state = PROC_RUNNABLE;
}

void timer_tick(void)
{
    for (int i = 0; i < NPROC; i++) {
        struct proc *p = &procs[i];
        if (p->state == PROC_SLEEPING && p->wake_tick && ticks >= p->wake_tick)
            p->state = PROC_RUNNABLE;
    }
}

/* fork refuses (ENOMEM) unless FORK_RESERVE pages plus FORK_PER_PROC per
 * existing process stay free: a forked child has not yet taken its
 * copy-on-write faults (its stack at least), and running out of pages
 * there would kill it instead of making fork fail. */
#define FORK_RESERVE  32
#define FORK_PER_PROC 4

int proc_fork(void)
{
    struct proc *p = curproc;
    if (pages_free() < FORK_RESERVE + FORK_PER_PROC * (uint32_t)proc_count())
        return -ENOMEM;
    struct proc *np = proc_alloc();
    if (!np)
        return -EAGAIN;
    np->pgdir = vm_fork(p->pgdir);
    /* Parent PTEs may have lost their write bit: flush its TLB. */
    write_cr3((uint32_t)p->pgdir);
    if (!np->pgdir) {
        proc_free(np);
        return -ENOMEM;
    }
    np->heap_start = p->heap_start;
    np->brk = p->brk;
    np->parent = p;
    memcpy(np->name, p->name, sizeof(np->name));
    proc_setup_stack(np, p->tf);
    np->tf->eax = 0;                /* fork() returns 0 in the child */
    np->state = PROC_RUNNABLE;
    nforks++;
    return np->pid;
}

void proc_exit(int status)
{
    struct proc *p = curproc;
    if (p == initproc)
        kernel_finish(status);
    int zombies = 0;
    for (int i = 0; i < NPROC; i++)
        if (procs[i].state != PROC_UNUSED && procs[i].parent == p) {
            procs[i].parent = initproc;
            zombies |= procs[i].state == PROC_ZOMBIE;
        }
    if (zombies)
        wakeup(initproc);
    p->xstatus = status;
    p->state = PROC_ZOMBIE;
    wakeup(p->parent);
    sched();
    panic("zombie %d ran", p->pid);
}

/* Reap one child; 0 children: -ECHILD.  The zombie's memory, page
 * tables and kernel stack are freed here, by the parent. */
int proc_wait(uint32_t ustatus)
{
    struct proc *p = curproc;
    for (;;) {
        int kids = 0;
        for (int i = 0; i < NPROC; i++) {
            struct proc *q = &procs[i];
            if (q->state == PROC_UNUSED || q->parent != p)
                continue;
            kids = 1;
            if (q->state != PROC_ZOMBIE)
                continue;
            int pid = q->pid, st = q->xstatus;
            proc_free(q);
            if (ustatus && copyout(ustatus, &st, sizeof(st)) < 0)
                return -EFAULT;
            return pid;
        }
        if (!kids)
            return -ECHILD;
        if (p->killed)
            return -EINTR;
        sleep_on(p);
    }
}

int proc_kill(int pid)
{
    for (int i = 0; i < NPROC; i++) {
        struct proc *q = &procs[i];
        if (q->pid != pid || q->state == PROC_UNUSED || q->state == PROC_ZOMBIE)
            continue;
        q->killed = 1;
        if (q->state == PROC_SLEEPING)
            q->state = PROC_RUNNABLE;   /* every sleep re-checks its condition */
        return 0;
    }
    return -ESRCH;
}

int proc_count(void)
{
    int n = 0;
    for (int i = 0; i < NPROC; i++)
        n += procs[i].state != PROC_UNUSED;
    return n;
}

void proc_info(struct proc *p, struct sys_procinfo *pi)
{
    memset(pi, 0, sizeof(*pi));
    pi->pid = p->pid;
    pi->ppid = p->parent ? p->parent->pid : 0;
    pi->state = p->state;
    pi->uticks = p->uticks;
    pi->pages = p->pgdir ? vm_count(p->pgdir) : 0;
    pi->brk = p->brk;
    memcpy(pi->name, p->name, sizeof(pi->name));
}

void proc_set_name(struct proc *p, const char *name)
{
    set_name(p, name);
}
