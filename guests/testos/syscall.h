/* testos system call interface, shared by the kernel and the user programs.
 *
 * Calling convention: int $0x80 with the call number in EAX and up to
 * three arguments in EBX, ECX, EDX.  The result comes back in EAX; a
 * negative value is -errno.  All other registers are preserved. */
#ifndef TESTOS_SYSCALL_H
#define TESTOS_SYSCALL_H
#include <stdint.h>

#define SYS_EXIT        1   /* exit(status)                    never returns */
#define SYS_FORK        2   /* fork()                          child pid / 0 */
#define SYS_WAIT        3   /* wait(int *status)               pid of a reaped child */
#define SYS_GETPID      4   /* getpid() */
#define SYS_YIELD       5   /* yield() */
#define SYS_SLEEP       6   /* sleep(ticks) */
#define SYS_WRITE       7   /* write(fd 1|2, buf, n)           to COM1 */
#define SYS_READ        8   /* read(fd 0, buf, n)              from COM1, blocks until >= 1 byte */
#define SYS_SBRK        9   /* sbrk(increment)                 old break */
#define SYS_MPROTECT    10  /* mprotect(addr, len, prot)       page-aligned addr */
#define SYS_MUNMAP      11  /* munmap(addr, len)               page-aligned addr */
#define SYS_TICKS       12  /* ticks()                         timer ticks since boot (100 Hz) */
#define SYS_DISKINFO    13  /* diskinfo(struct sys_diskinfo *) */
#define SYS_DISKREAD    14  /* diskread(lba, buf, count)       count 1..8 sectors of 512 bytes */
#define SYS_DISKWRITE   15  /* diskwrite(lba, buf, count) */
#define SYS_KILL        16  /* kill(pid)                       the victim exits with status 137 */
#define SYS_PROCINFO    17  /* procinfo(slot, struct sys_procinfo *)  for ps */
#define SYS_PIDINFO     18  /* pidinfo(pid, struct sys_procinfo *) */
#define SYS_VMQUERY     19  /* vmquery(addr)                   PTE flag bits of addr, 0 if unmapped */
#define SYS_STATS       20  /* stats(struct sys_stats *) */
#define SYS_TESTREPORT  21  /* testreport(name, ok, details)   one self-test result */
#define SYS_TESTDONE    22  /* testdone()                      prints the summary; returns #failed */
#define SYS_GETARGS     23  /* getargs(buf, size)              the kernel command line */
#define SYS_SETNAME     24  /* setname(name)                   process name shown by ps */
#define NSYSCALLS       25

#define PROT_READ   1
#define PROT_WRITE  2

/* PTE bits reported by SYS_VMQUERY (the hardware bits plus two of the
 * three bits the CPU leaves to software). */
#define VM_P        0x001
#define VM_W        0x002
#define VM_U        0x004
#define VM_A        0x020
#define VM_D        0x040
#define VM_COW      0x200   /* shared copy-on-write after fork */
#define VM_LOCKRO   0x400   /* made read-only by mprotect */

/* Exit status of a process the kernel killed: 128 + exception vector
 * (141 = #GP, 142 = #PF), or 137 after kill(). */
#define STATUS_KILLED   137
#define STATUS_GP       141
#define STATUS_PF       142

#define ESRCH   3
#define EINTR   4
#define EIO     5
#define EBADF   9
#define ECHILD  10
#define EAGAIN  11
#define ENOMEM  12
#define EFAULT  14
#define ENODEV  19
#define EINVAL  22
#define ENOSYS  38

struct sys_stats {
    uint32_t ticks;
    uint32_t free_pages, total_pages;
    uint32_t page_faults;       /* #PF taken from user mode or on user addresses */
    uint32_t demand_faults;     /* ... that mapped a fresh zero page */
    uint32_t cow_faults;        /* ... that resolved a copy-on-write page */
    uint32_t cow_copies;        /* ... of which had to copy (page still shared) */
    uint32_t ctx_switches;
    uint32_t nprocs;
    uint32_t forks;
};

struct sys_procinfo {
    int pid, ppid;
    int state;                  /* PROC_* */
    uint32_t uticks;            /* timer ticks that hit it in user mode */
    uint32_t pages;             /* user pages mapped */
    uint32_t brk;
    char name[16];
};

#define PROC_UNUSED     0
#define PROC_EMBRYO     1
#define PROC_RUNNABLE   2
#define PROC_RUNNING    3
#define PROC_SLEEPING   4
#define PROC_ZOMBIE     5

struct sys_diskinfo {
    uint32_t sectors;           /* LBA28 capacity in 512-byte sectors */
    char model[41];
};
#endif
