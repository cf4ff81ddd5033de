/* testos user runtime: system call wrappers and a few libc-style helpers.
 * User programs run at ring 3 and talk to the kernel only via INT 0x80. */
#ifndef TESTOS_ULIB_H
#define TESTOS_ULIB_H
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include "testos/syscall.h"

static inline int syscall3(int n, uint32_t a, uint32_t b, uint32_t c)
{
    int r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(n), "b"(a), "c"(b), "d"(c) : "memory");
    return r;
}
#define syscall0(n)          syscall3((n), 0, 0, 0)
#define syscall1(n, a)       syscall3((n), (uint32_t)(a), 0, 0)
#define syscall2(n, a, b)    syscall3((n), (uint32_t)(a), (uint32_t)(b), 0)

__attribute__((noreturn)) void exit(int status);
static inline int fork(void) { return syscall0(SYS_FORK); }
static inline int wait(int *status) { return syscall1(SYS_WAIT, status); }
static inline int getpid(void) { return syscall0(SYS_GETPID); }
static inline int yield(void) { return syscall0(SYS_YIELD); }
static inline int sleep(uint32_t t) { return syscall1(SYS_SLEEP, t); }
static inline int write(int fd, const void *b, uint32_t n) { return syscall3(SYS_WRITE, (uint32_t)fd, (uint32_t)b, n); }
static inline int read(int fd, void *b, uint32_t n) { return syscall3(SYS_READ, (uint32_t)fd, (uint32_t)b, n); }
static inline void *sbrk(int32_t incr) { return (void *)syscall1(SYS_SBRK, incr); }
static inline int mprotect(void *a, uint32_t len, int prot) { return syscall3(SYS_MPROTECT, (uint32_t)a, len, (uint32_t)prot); }
static inline int munmap(void *a, uint32_t len) { return syscall2(SYS_MUNMAP, a, len); }
static inline uint32_t ticks(void) { return (uint32_t)syscall0(SYS_TICKS); }
static inline int diskinfo(struct sys_diskinfo *d) { return syscall1(SYS_DISKINFO, d); }
static inline int diskread(uint32_t lba, void *b, uint32_t n) { return syscall3(SYS_DISKREAD, lba, (uint32_t)b, n); }
static inline int diskwrite(uint32_t lba, const void *b, uint32_t n) { return syscall3(SYS_DISKWRITE, lba, (uint32_t)b, n); }
static inline int kill(int pid) { return syscall1(SYS_KILL, pid); }
static inline int procinfo(int slot, struct sys_procinfo *pi) { return syscall2(SYS_PROCINFO, slot, pi); }
static inline int pidinfo(int pid, struct sys_procinfo *pi) { return syscall2(SYS_PIDINFO, pid, pi); }
static inline uint32_t vmquery(const volatile void *a) { return (uint32_t)syscall1(SYS_VMQUERY, a); }
static inline int stats(struct sys_stats *s) { return syscall1(SYS_STATS, s); }
static inline int testreport(const char *name, int ok, const char *msg) { return syscall3(SYS_TESTREPORT, (uint32_t)name, (uint32_t)ok, (uint32_t)msg); }
static inline int testdone(void) { return syscall0(SYS_TESTDONE); }
static inline int getargs(char *b, uint32_t n) { return syscall2(SYS_GETARGS, b, n); }
static inline int setname(const char *s) { return syscall1(SYS_SETNAME, s); }

int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int snprintf(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int vsnprintf(char *buf, size_t n, const char *fmt, va_list ap);
void puts(const char *s);          /* no newline added */
void report(const char *name, int ok, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
int atoi(const char *s);

/* forkwait.c */
int forkwait(int n, char *msg, size_t msglen);
void forkwait_touch(void);

/* shell.c, tests.c */
void shell(void);
void run_tests(int forkwait_n);
#endif
