/* forktest: fork N children, each writes a line and exits with its number;
 * the parent reaps them all and checks every status. A static i386 Linux
 * program with no libc (raw int 0x80 system calls), built by
 * guests/linux/debian.py with the same gcc flags as the project's guests. */

#define SYS_exit 1
#define SYS_fork 2
#define SYS_write 4
#define SYS_wait4 114
#define CHILDREN 8

static long sys3(long n, long a, long b, long c)
{
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(n), "b"(a), "c"(b), "d"(c) : "memory");
    return r;
}

static long sys4(long n, long a, long b, long c, long d)
{
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(n), "b"(a), "c"(b), "d"(c), "S"(d) : "memory");
    return r;
}

static void say(const char *s)
{
    long n = 0;
    while (s[n])
        n++;
    sys3(SYS_write, 1, (long)s, n);
}

static __attribute__((noreturn)) void leave(int code)
{
    for (;;)
        sys3(SYS_exit, code, 0, 0);
}

void _start(void)
{
    int seen[CHILDREN] = {0};
    for (int i = 0; i < CHILDREN; i++) {
        long pid = sys3(SYS_fork, 0, 0, 0);
        if (pid < 0) {
            say("forktest: fork failed\n");
            leave(2);
        }
        if (pid == 0) {
            char line[] = "forktest: child 0 running\n";
            line[16] = (char)('0' + i);
            say(line);
            leave(10 + i);
        }
    }
    for (int i = 0; i < CHILDREN; i++) {
        int status = 0;
        if (sys4(SYS_wait4, -1, (long)&status, 0, 0) <= 0) {
            say("forktest: wait4 failed\n");
            leave(3);
        }
        int code = (status >> 8) & 0xff;     /* WEXITSTATUS */
        if ((status & 0x7f) != 0 || code < 10 || code >= 10 + CHILDREN || seen[code - 10]++) {
            char line[] = "forktest: bad child status 0x0000\n";
            for (int k = 0; k < 4; k++)
                line[29 + k] = "0123456789abcdef"[(status >> (12 - 4 * k)) & 0xf];
            say(line);
            leave(4);
        }
    }
    say("forktest: 8 children forked and reaped, all statuses right\n");
    leave(0);
}
