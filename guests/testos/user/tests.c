/* testos user-mode self-tests, run by init at ring 3.  Each one reports
 * through SYS_TESTREPORT, which prints "ok   name" or "FAIL name: ...". */
#include "testos/user/ulib.h"

/* Run fn in a child named name; return its exit status (or -1000 - err). */
static int in_child(void (*fn)(void), const char *name)
{
    int pid = fork();
    if (pid < 0)
        return -1000 + pid;
    if (pid == 0) {
        setname(name);
        fn();
        exit(0);
    }
    int st = -1;
    if (wait(&st) != pid)
        return -2000;
    return st;
}

static void t_user_mode(void)
{
    uint16_t cs, ss, ds;
    uint32_t fl;
    __asm__ volatile("mov %%cs, %0; mov %%ss, %1; mov %%ds, %2; pushfl; popl %3"
                     : "=r"(cs), "=r"(ss), "=r"(ds), "=r"(fl));
    int pid = getpid();
    int ok = (cs & 3) == 3 && (ss & 3) == 3 && (ds & 3) == 3 && (fl & 0x200) && !(fl & 0x3000) &&
             pid == 1;
    report("user_mode", ok, "cs %x ss %x ds %x eflags %x pid %d", cs, ss, ds, fl, pid);
}

static void t_syscall_args(void)
{
    static const char hello[] = "init: hello from ring 3\n";
    int r1 = write(1, hello, sizeof(hello) - 1);
    int r2 = write(5, "x", 1);
    int r3 = write(1, (const void *)0x00100000, 16);        /* kernel memory */
    int r4 = getargs((char *)0x00100000, 64);
    int r5 = write(1, (const void *)0x7FFFFFF0, 32);        /* runs past user space */
    int r6 = write(1, (const void *)0x60000000, 4);         /* user, but never mapped */
    int r7 = syscall0(999);
    int ok = r1 == (int)sizeof(hello) - 1 && r2 == -EBADF && r3 == -EFAULT && r4 == -EFAULT &&
             r5 == -EFAULT && r6 == -EFAULT && r7 == -ENOSYS;
    report("syscall_args", ok, "results %d %d %d %d %d %d %d", r1, r2, r3, r4, r5, r6, r7);
}

#define HEAP_PAGES 256

static void t_demand_heap(void)
{
    struct sys_stats s0, s1, s2;
    char *base = sbrk(0);
    uint32_t q0 = vmquery(base);
    stats(&s0);
    char *p = sbrk(HEAP_PAGES * 4096);
    int bad = 0;
    if (p != base) {
        report("demand_heap", 0, "sbrk returned %p, break was %p", p, base);
        return;
    }
    for (int i = 0; i < HEAP_PAGES; i++)
        p[i * 4096 + (i & 0xFFF)] = (char)(i + 1);
    stats(&s1);
    for (int i = 0; i < HEAP_PAGES; i++)
        if (p[i * 4096 + (i & 0xFFF)] != (char)(i + 1) || p[i * 4096 + ((i + 1) & 0xFFF)] != 0)
            bad++;
    uint32_t q1 = vmquery(p + 5 * 4096);
    sbrk(-(HEAP_PAGES * 4096));
    uint32_t q2 = vmquery(p + 5 * 4096);
    stats(&s2);
    uint32_t faults = s1.demand_faults - s0.demand_faults;
    int ok = q0 == 0 && faults >= HEAP_PAGES && !bad && (q1 & 7) == 7 && q2 == 0 &&
             s2.free_pages >= s1.free_pages + HEAP_PAGES && sbrk(0) == base;
    report("demand_heap", ok, "pte before %x, %u faults for %d pages, %d bad, pte %x, after sbrk(-) %x, freed %u",
           q0, faults, HEAP_PAGES, bad, q1, q2, s2.free_pages - s1.free_pages);
}

static __attribute__((noinline)) int deep(int n)
{
    volatile char buf[1000];
    buf[0] = (char)n;
    buf[999] = 1;
    if (n == 0)
        return buf[999];
    return deep(n - 1) + buf[999];
}

static void t_demand_stack(void)
{
    struct sys_stats s0, s1;
    stats(&s0);
    int r = deep(100);
    stats(&s1);
    uint32_t faults = s1.demand_faults - s0.demand_faults;
    report("demand_stack", r == 101 && faults >= 20, "deep(100) = %d, %u demand faults", r, faults);
}

static volatile uintptr_t null_addr;     /* 0, but not a constant gcc can see */
static void bad_null(void) { (void)*(volatile int *)null_addr; }
__attribute__((noinline, used)) static void bad_gap(void) { (void)*(volatile int *)0x60000000; }
static void bad_kernel_write(void) { *(volatile int *)0x00100000 = 1; }
static void bad_text_write(void) { *(volatile uint8_t *)(uintptr_t)&bad_gap = 0x90; }
static void bad_kernel_call(void) { ((void (*)(void))0x00100000)(); }

static void t_bad_access(void)
{
    int s[5];
    s[0] = in_child(bad_null, "bad-null");
    s[1] = in_child(bad_gap, "bad-gap");
    s[2] = in_child(bad_kernel_write, "bad-kwrite");
    s[3] = in_child(bad_text_write, "bad-textwrite");
    s[4] = in_child(bad_kernel_call, "bad-kcall");
    int ok = 1;
    for (int i = 0; i < 5; i++)
        ok &= s[i] == STATUS_PF;
    report("bad_access_kills", ok, "child statuses %d %d %d %d %d (want %d)", s[0], s[1], s[2],
           s[3], s[4], STATUS_PF);
}

static volatile int cow_data = 111;

static void t_cow(void)
{
    struct sys_stats s0, s1;
    volatile int *h = sbrk(4096);
    *h = 222;
    stats(&s0);
    int pid = fork();
    if (pid == 0) {
        int ok = cow_data == 111 && *h == 222 && (vmquery(&cow_data) & (VM_COW | VM_W)) == VM_COW;
        cow_data = 333;
        *h = 444;
        ok = ok && cow_data == 333 && *h == 444 && (vmquery(&cow_data) & (VM_COW | VM_W)) == VM_W;
        exit(ok ? 0 : 1);
    }
    uint32_t qp = vmquery(&cow_data);
    int st = -1;
    int w = wait(&st);
    stats(&s1);
    int ok = pid > 0 && w == pid && st == 0 && cow_data == 111 && *h == 222 &&
             (qp & (VM_COW | VM_W)) == VM_COW && s1.cow_copies - s0.cow_copies >= 2;
    cow_data = 555;                 /* the last sharer: no copy needed */
    uint32_t q2 = vmquery(&cow_data);
    ok = ok && cow_data == 555 && (q2 & (VM_COW | VM_W)) == VM_W;
    report("cow_fork", ok, "child status %d, parent sees %d/%d, ptes %x %x, %u copies", st,
           cow_data, *h, qp, q2, s1.cow_copies - s0.cow_copies);
    sbrk(-4096);
}

static volatile int *mp_page;

static void mprotect_child(void)
{
    int r = mprotect((void *)mp_page, 4096, PROT_READ);
    uint32_t q = vmquery(mp_page);
    if (r != 0 || (q & VM_W) || !(q & VM_LOCKRO) || mp_page[0] != 7)
        exit(1);
    mp_page[0] = 8;                 /* must kill us */
    exit(2);
}

static void t_mprotect(void)
{
    mp_page = sbrk(4096);
    mp_page[0] = 7;
    int st = in_child(mprotect_child, "mprotect");
    int r1 = mprotect((void *)mp_page, 4096, PROT_READ);
    uint32_t q1 = vmquery(mp_page);
    int r2 = mprotect((void *)mp_page, 4096, PROT_READ | PROT_WRITE);
    mp_page[0] = 9;
    uint32_t q2 = vmquery(mp_page);
    int r3 = mprotect((void *)((uintptr_t)mp_page + 1), 4096, PROT_READ);
    int ok = st == STATUS_PF && r1 == 0 && !(q1 & VM_W) && r2 == 0 && mp_page[0] == 9 &&
             (q2 & VM_W) && r3 == -EINVAL;
    report("mprotect_ro", ok, "child status %d (want %d), mprotect %d %d %d, ptes %x %x", st,
           STATUS_PF, r1, r2, r3, q1, q2);
    sbrk(-4096);
}

static void t_munmap(void)
{
    volatile int *pg = sbrk(4096);
    pg[0] = 0x1234;
    uint32_t q0 = vmquery(pg);
    int r = munmap((void *)pg, 4096);
    uint32_t q1 = vmquery(pg);
    int v = pg[0];                  /* a fresh zero page, not the stale one */
    uint32_t q2 = vmquery(pg);
    int ok = (q0 & VM_P) && r == 0 && q1 == 0 && v == 0 && (q2 & VM_P);
    report("munmap", ok, "pte %x, munmap %d, pte %x, reads %x, pte %x", q0, r, q1, v, q2);
    sbrk(-4096);
}

static void do_cli(void) { __asm__ volatile("cli"); }
static void do_hlt(void) { __asm__ volatile("hlt"); }
static void do_in(void) { uint8_t v; __asm__ volatile("inb $0x60, %0" : "=a"(v)); }
static void do_out(void) { __asm__ volatile("outb %0, $0x80" :: "a"((uint8_t)0)); }

static void t_privileged(void)
{
    int s = in_child(do_cli, "cli");
    report("user_cli_gp", s == STATUS_GP, "child status %d (want %d)", s, STATUS_GP);
    int s1 = in_child(do_in, "in"), s2 = in_child(do_out, "out");
    report("user_io_gp", s1 == STATUS_GP && s2 == STATUS_GP, "child statuses %d %d (want %d)", s1,
           s2, STATUS_GP);
    s = in_child(do_hlt, "hlt");
    report("user_hlt_gp", s == STATUS_GP, "child status %d (want %d)", s, STATUS_GP);
}

static void spin(void)
{
    volatile uint32_t n = 0;
    for (;;)
        n++;
}

/* Two CPU-bound children that never enter the kernel; only timer
 * preemption lets them, and the sleeping parent, run. */
static void t_preempt(void)
{
    int a = fork();
    if (a == 0) {
        setname("spin-a");
        spin();
    }
    int b = fork();
    if (b == 0) {
        setname("spin-b");
        spin();
    }
    uint32_t t0 = ticks();
    sleep(40);
    uint32_t t1 = ticks();
    struct sys_procinfo pa, pb;
    int ra = pidinfo(a, &pa), rb = pidinfo(b, &pb);
    kill(a);
    kill(b);
    int st1 = -1, st2 = -1;
    wait(&st1);
    wait(&st2);
    int ok = a > 0 && b > 0 && ra == 0 && rb == 0 && pa.uticks >= 5 && pb.uticks >= 5 &&
             t1 - t0 >= 40 && st1 == STATUS_KILLED && st2 == STATUS_KILLED;
    report("preempt_rr", ok, "in 40 ticks: spin-a ran %u ticks, spin-b %u; slept %u; statuses %d %d",
           pa.uticks, pb.uticks, t1 - t0, st1, st2);
}

static void t_sleep(void)
{
    uint32_t t0 = ticks();
    int r = sleep(10);
    uint32_t d = ticks() - t0;
    report("sleep_ticks", r == 0 && d >= 10 && d < 50, "sleep(10) = %d took %u ticks", r, d);
}

static void long_sleep(void)
{
    sleep(100000);
    exit(1);
}

static void t_kill_sleeper(void)
{
    int pid = fork();
    if (pid == 0) {
        setname("sleeper");
        long_sleep();
    }
    sleep(2);
    uint32_t t0 = ticks();
    int r = kill(pid);
    int st = -1, w = wait(&st);
    uint32_t d = ticks() - t0;
    int r2 = kill(pid);
    report("kill_sleeper", r == 0 && w == pid && st == STATUS_KILLED && d < 10 && r2 == -ESRCH,
           "kill %d, wait %d status %d after %u ticks, kill again %d", r, w, st, d, r2);
}

static void t_wait_nochild(void)
{
    int st, r = wait(&st);
    report("wait_nochild", r == -ECHILD, "wait() = %d", r);
}

static void touch_stack(void)
{
    volatile char buf[8192];
    for (int i = 0; i < (int)sizeof(buf); i += 512)
        buf[i] = 1;
}

static void t_forkwait(int n)
{
    char msg[160];
    struct sys_stats s0, s1;
    forkwait_touch();
    touch_stack();
    stats(&s0);
    int r = forkwait(n, msg, sizeof(msg));
    stats(&s1);
    printf("forkwait: %s\n", msg);
    report("forkwait", r == n, "%s", msg);
    report("forkwait_no_leak", s1.free_pages == s0.free_pages && s1.nprocs == s0.nprocs,
           "free pages %u before, %u after; %u processes before, %u after", s0.free_pages,
           s1.free_pages, s0.nprocs, s1.nprocs);
}

static uint8_t d_s0[512], d_s0b[512], d_save[1024], d_pat[1024], d_back[1024];

static void t_disk(void)
{
    struct sys_diskinfo di;
    if (diskinfo(&di) < 0) {
        printf("disk: none (skipping disk_rw)\n");
        return;
    }
    /* The last two sectors (or the last one), restored afterwards. */
    uint32_t n = di.sectors >= 3 ? 2 : 1, lba = di.sectors - n;
    int stage = 0, r;
    if ((r = diskread(0, d_s0, 1)) < 0)
        goto out;
    stage = 1;
    if ((r = diskread(lba, d_save, n)) < 0)
        goto out;
    stage = 2;
    for (uint32_t i = 0; i < 512 * n; i++)
        d_pat[i] = (uint8_t)((i * 7 + (i >> 9) * 13 + lba) ^ 0x5A);
    memcpy(d_pat, "testos disk pattern", 19);
    if ((r = diskwrite(lba, d_pat, n)) < 0)
        goto out;
    stage = 3;
    memset(d_back, 0, sizeof(d_back));
    if ((r = diskread(lba, d_back, n)) < 0 || (r = memcmp(d_back, d_pat, 512 * n)) != 0)
        goto out;
    stage = 4;
    if ((r = diskwrite(lba, d_save, n)) < 0)
        goto out;
    stage = 5;
    memset(d_back, 0, sizeof(d_back));
    if ((r = diskread(lba, d_back, n)) < 0 || (r = memcmp(d_back, d_save, 512 * n)) != 0)
        goto out;
    stage = 6;
    if ((r = diskread(0, d_s0b, 1)) < 0 || (r = memcmp(d_s0, d_s0b, 512)) != 0)
        goto out;
    stage = 7;
    r = diskread(di.sectors - 1, d_back, 2);     /* past the end */
    if (r != -EINVAL)
        goto out;
    stage = 8;
out:
    report("disk_rw", stage == 8,
           "stage %d (read 0, save, write, verify, restore, verify, reread 0, bounds) result %d", stage, r);
    if (stage == 8)
        printf("disk: read sector 0, wrote/verified/restored sectors %u-%u of %u\n", lba,
               lba + n - 1, di.sectors);
}

void run_tests(int forkwait_n)
{
    t_user_mode();
    t_syscall_args();
    t_demand_heap();
    t_demand_stack();
    t_bad_access();
    t_cow();
    t_mprotect();
    t_munmap();
    t_privileged();
    t_preempt();
    t_sleep();
    t_kill_sleeper();
    t_wait_nochild();
    t_forkwait(forkwait_n);
    t_disk();
}
