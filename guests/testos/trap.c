/* testos: trap dispatch, page faults, exception reports. */
#include "testos/kernel.h"

static const char *const exc_names[32] = {
    "#DE divide error", "#DB debug", "NMI", "#BP breakpoint", "#OF overflow",
    "#BR bound range", "#UD invalid opcode", "#NM device not available",
    "#DF double fault", "coprocessor segment overrun", "#TS invalid TSS",
    "#NP segment not present", "#SS stack fault", "#GP general protection",
    "#PF page fault", "vector 15", "#MF x87 error", "#AC alignment check",
    "#MC machine check", "#XM SIMD error", "#VE virtualization", "#CP control protection",
};

static const char *exc_name(uint32_t v)
{
    return v < 32 && exc_names[v] ? exc_names[v] : "exception";
}

uint32_t probe_fault_va, probe_fault_err;
static uint32_t spurious_irqs, stray_irqs;

__attribute__((noreturn)) void panic(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    kprintf("\ntestos: PANIC: ");
    vkprintf(fmt, ap);
    va_end(ap);
    kprintf("\n");
    exit_failure(EXIT_CODE_TRAP);
}

__attribute__((noreturn)) static void kernel_fault(struct trapframe *tf, uint32_t cr2)
{
    int user = (tf->cs & 3) == 3;
    kprintf("\ntestos: PANIC: unexpected %s (vector %u) %s\n", exc_name(tf->vector),
            tf->vector, user ? "from user mode" : "in the kernel");
    kprintf("  eip %08x cs %04x eflags %08x err %08x cr2 %08x cr3 %08x pid %d\n",
            tf->eip, tf->cs & 0xFFFF, tf->eflags, tf->err, cr2, read_cr3(),
            curproc ? curproc->pid : 0);
    if (user)
        kprintf("  user esp %08x ss %04x\n", tf->esp, tf->ss & 0xFFFF);
    kprintf("  eax %08x ebx %08x ecx %08x edx %08x esi %08x edi %08x ebp %08x\n",
            tf->eax, tf->ebx, tf->ecx, tf->edx, tf->esi, tf->edi, tf->ebp);
    exit_failure(EXIT_CODE_TRAP);
}

/* An exception in user mode that the kernel cannot resolve: report it
 * and end the process with status 128 + vector. */
__attribute__((noreturn)) static void user_fault(struct trapframe *tf, uint32_t cr2, int oom)
{
    struct proc *p = curproc;
    kprintf("testos: pid %d (%s) killed: %s%s at eip %08x", p->pid, p->name,
            oom ? "out of memory on " : "", exc_name(tf->vector), tf->eip);
    if (tf->vector == T_PF)
        kprintf(" addr %08x", cr2);
    kprintf(" err %x\n", tf->err);
    proc_exit(128 + (int)tf->vector);
}

static void page_fault(struct trapframe *tf, int user)
{
    uint32_t va = read_cr2();
    if (user) {
        int r = vm_fault(curproc, va, tf->err);
        if (r == 0)
            return;
        user_fault(tf, va, r == -ENOMEM);
    }
    if (tf->eip == (uint32_t)uaccess_insn && curproc) {
        /* A system call touching user memory: demand-page or copy it
         * exactly as for the process itself, else fail the copy. */
        if (vm_fault(curproc, va, tf->err) == 0)
            return;
        tf->eip = (uint32_t)uaccess_fixup;
        return;
    }
    if (tf->eip == (uint32_t)probe_read_insn || tf->eip == (uint32_t)probe_write_insn) {
        probe_fault_va = va;
        probe_fault_err = tf->err;
        tf->eip = (uint32_t)probe_fixup;
        return;
    }
    kernel_fault(tf, va);
}

static void irq(int n, int user)
{
    switch (n) {
    case 0:
        ticks++;
        timer_tick();
        pic_eoi(0);
        if (user) {
            curproc->uticks++;
            yield();            /* preemption: round robin at every tick */
        }
        break;
    case 4:
        uart_intr();
        pic_eoi(4);
        break;
    case 14:
        ide_intr();
        pic_eoi(14);
        break;
    case 7:
    case 15:
        if (pic_spurious(n)) {
            spurious_irqs++;
            break;
        }
        /* fall through */
    default:
        stray_irqs++;
        pic_eoi(n);
        break;
    }
}

void trap(struct trapframe *tf)
{
    int user = (tf->cs & 3) == 3;
    uint32_t v = tf->vector;
    if (user)
        curproc->tf = tf;
    if (v == T_SYSCALL && user)
        syscall(tf);
    else if (v >= IRQ_BASE && v < IRQ_BASE + 16)
        irq((int)(v - IRQ_BASE), user);
    else if (v == T_PF)
        page_fault(tf, user);
    else if (user && v < 32 && v != 8 && v != 18)
        user_fault(tf, 0, 0);   /* #GP from CLI/IN/OUT/HLT, #UD, #DE, ... */
    else
        kernel_fault(tf, read_cr2());   /* includes #DF and #MC from ring 3: aborts */
    if (user && curproc->killed)
        proc_exit(STATUS_KILLED);
}
