/* testos: the INT 0x80 system calls (numbers and conventions: syscall.h). */
#include "testos/kernel.h"

static uint8_t disk_buf[8 * 512];

static int sys_write(int fd, uint32_t ubuf, uint32_t n)
{
    char buf[128];
    if (fd != 1 && fd != 2)
        return -EBADF;
    if (!user_range_ok(ubuf, n))
        return -EFAULT;
    for (uint32_t done = 0; done < n;) {
        uint32_t k = n - done < sizeof(buf) ? n - done : sizeof(buf);
        if (copyin(buf, ubuf + done, k) < 0)
            return done ? (int)done : -EFAULT;
        for (uint32_t i = 0; i < k; i++)
            serial_putc(buf[i]);
        done += k;
    }
    return (int)n;
}

static int sys_read(int fd, uint32_t ubuf, uint32_t n)
{
    char buf[64];
    if (fd != 0)
        return -EBADF;
    if (!user_range_ok(ubuf, n))
        return -EFAULT;
    if (n == 0)
        return 0;
    int k;
    while ((k = cons_read(buf, n < sizeof(buf) ? (int)n : (int)sizeof(buf))) == 0) {
        if (curproc->killed)
            return -EINTR;
        sleep_on(&cons_chan);
    }
    return copyout(ubuf, buf, (uint32_t)k) < 0 ? -EFAULT : k;
}

static int sys_sbrk(int32_t incr)
{
    struct proc *p = curproc;
    uint32_t old = p->brk, new = old + (uint32_t)incr;
    if ((incr > 0 && (new < old || new > HEAP_LIMIT)) || (incr < 0 && (new > old || new < p->heap_start)))
        return -ENOMEM;
    if (incr < 0)
        vm_unmap_range(p, PAGE_UP(new), PAGE_UP(old));
    p->brk = new;
    return (int)old;
}

static int page_range(uint32_t addr, uint32_t len, uint32_t *end)
{
    if (addr & (PAGE_SIZE - 1) || !user_range_ok(addr, len))
        return -EINVAL;
    *end = PAGE_UP(addr + len);
    if (*end < addr || *end > USER_TOP)
        return -EINVAL;
    return 0;
}

static int sys_sleep(uint32_t n)
{
    uint32_t deadline = ticks + n;
    while (ticks < deadline) {
        if (curproc->killed)
            return -EINTR;
        sleep_until((void *)&ticks, deadline);
    }
    return 0;
}

static int sys_disk(uint32_t lba, uint32_t ubuf, uint32_t count, int write)
{
    if (!disk_present)
        return -ENODEV;
    if (count < 1 || count > 8 || lba >= disk_sectors || count > disk_sectors - lba)
        return -EINVAL;
    if (!user_range_ok(ubuf, count * 512))
        return -EFAULT;
    /* disk_buf is shared, so take it while holding the drive: ide_rw
     * sleeps, and another process may want the disk meanwhile. */
    static int buf_busy, buf_chan;
    while (buf_busy)
        sleep_on(&buf_chan);
    buf_busy = 1;
    int r = 0;
    if (write && copyin(disk_buf, ubuf, count * 512) < 0)
        r = -EFAULT;
    if (!r)
        r = ide_rw(lba, count, disk_buf, write);
    if (!r && !write && copyout(ubuf, disk_buf, count * 512) < 0)
        r = -EFAULT;
    buf_busy = 0;
    wakeup(&buf_chan);
    return r;
}

static int sys_diskinfo(uint32_t uptr)
{
    struct sys_diskinfo di;
    if (!disk_present)
        return -ENODEV;
    memset(&di, 0, sizeof(di));
    di.sectors = disk_sectors;
    memcpy(di.model, disk_model, sizeof(di.model));
    return copyout(uptr, &di, sizeof(di));
}

static int sys_procinfo(uint32_t slot, uint32_t uptr)
{
    struct sys_procinfo pi;
    if (slot >= NPROC)
        return -EINVAL;
    if (procs[slot].state == PROC_UNUSED)
        return -ESRCH;
    proc_info(&procs[slot], &pi);
    return copyout(uptr, &pi, sizeof(pi));
}

static int sys_pidinfo(int pid, uint32_t uptr)
{
    for (int i = 0; i < NPROC; i++)
        if (procs[i].state != PROC_UNUSED && procs[i].pid == pid)
            return sys_procinfo((uint32_t)i, uptr);
    return -ESRCH;
}

static int sys_stats(uint32_t uptr)
{
    struct sys_stats s;
    s.ticks = ticks;
    s.free_pages = pages_free();
    s.total_pages = pages_total();
    s.page_faults = vmstats.page_faults;
    s.demand_faults = vmstats.demand_faults;
    s.cow_faults = vmstats.cow_faults;
    s.cow_copies = vmstats.cow_copies;
    s.ctx_switches = ctx_switches;
    s.nprocs = (uint32_t)proc_count();
    s.forks = nforks;
    return copyout(uptr, &s, sizeof(s));
}

static int sys_testreport(uint32_t uname, int ok, uint32_t umsg)
{
    char name[32], msg[160];
    if (copyinstr(name, uname, sizeof(name)) < 0)
        return -EFAULT;
    if (!ok && umsg) {
        if (copyinstr(msg, umsg, sizeof(msg)) < 0)
            return -EFAULT;
    } else {
        msg[0] = 0;
    }
    test_result(name, ok, "%s", msg);
    return 0;
}

static int sys_getargs(uint32_t ubuf, uint32_t n)
{
    uint32_t len = strlen(boot_cmdline) + 1;
    if (n < len)
        return -EINVAL;
    return copyout(ubuf, boot_cmdline, len);
}

static int sys_setname(uint32_t uname)
{
    char name[16];
    if (copyinstr(name, uname, sizeof(name)) < 0)
        return -EFAULT;
    proc_set_name(curproc, name);
    return 0;
}

void syscall(struct trapframe *tf)
{
    uint32_t a = tf->ebx, b = tf->ecx, c = tf->edx, end;
    struct proc *p = curproc;
    int r;
    switch (tf->eax) {
    case SYS_EXIT:      proc_exit((int)a);
    case SYS_FORK:      r = proc_fork(); break;
    case SYS_WAIT:      r = proc_wait(a); break;
    case SYS_GETPID:    r = p->pid; break;
    case SYS_YIELD:     yield(); r = 0; break;
    case SYS_SLEEP:     r = sys_sleep(a); break;
    case SYS_WRITE:     r = sys_write((int)a, b, c); break;
    case SYS_READ:      r = sys_read((int)a, b, c); break;
    case SYS_SBRK:      r = sys_sbrk((int32_t)a); break;
    case SYS_MPROTECT:
        r = page_range(a, b, &end);
        if (!r)
            r = vm_protect_range(p, a, end, (c & PROT_WRITE) != 0);
        break;
    case SYS_MUNMAP:
        r = page_range(a, b, &end);
        if (!r)
            r = vm_unmap_range(p, a, end);
        break;
    case SYS_TICKS:     r = (int)ticks; break;
    case SYS_DISKINFO:  r = sys_diskinfo(a); break;
    case SYS_DISKREAD:  r = sys_disk(a, b, c, 0); break;
    case SYS_DISKWRITE: r = sys_disk(a, b, c, 1); break;
    case SYS_KILL:      r = proc_kill((int)a); break;
    case SYS_PROCINFO:  r = sys_procinfo(a, b); break;
    case SYS_PIDINFO:   r = sys_pidinfo((int)a, b); break;
    case SYS_VMQUERY:   r = user_range_ok(a, 1) ? (int)vm_query(p, a) : -EFAULT; break;
    case SYS_STATS:     r = sys_stats(a); break;
    case SYS_TESTREPORT: r = sys_testreport(a, (int)b, c); break;
    case SYS_TESTDONE:  r = (int)tests_summary(); break;
    case SYS_GETARGS:   r = sys_getargs(a, b); break;
    case SYS_SETNAME:   r = sys_setname(a); break;
    default:            r = -ENOSYS; break;
    }
    tf->eax = (uint32_t)r;
}
