/* bench: the ring-3 programs.  The linker script puts everything in this
 * file (code, data, bss) in the user pages, which are the only pages with
 * the U bit; it calls nothing outside this file.  compute() also runs
 * without any monitor: the harness's native column calls it in a bare
 * unicorn, so it must not depend on anything but its argument. */
#include "bench/bench.h"

uint8_t user_stack[USER_STACK_SIZE] __attribute__((aligned(16)));

/* compute: one iteration mixes a 16-word state array (multiply, xor,
 * rotate, loads and stores, a data-dependent branch).  The state starts
 * from the same values every call, so the result depends only on n. */
static uint32_t state[16];

uint32_t compute(uint32_t n)
{
    uint32_t h = 0x811C9DC5u;
    for (int j = 0; j < 16; j++)
        state[j] = 0x01010101u * (uint32_t)j + 7;
    for (uint32_t i = 0; i < n; i++) {
        for (int j = 0; j < 16; j++) {
            uint32_t x = (state[j] + i) * 0x9E3779B1u;
            h ^= x;
            h = (h << 5) | (h >> 27);
            if (h & 1)
                h += x >> 3;
            else
                h -= j;
            state[j] = h;
        }
    }
    return h;
}

static inline uint32_t syscall2(uint32_t nr, uint32_t a, uint32_t b)
{
    uint32_t r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(nr), "b"(a), "c"(b) : "memory");
    return r;
}

/* sysheavy: a program that mostly lives in the kernel.  One iteration
 * fills a 64-byte buffer, hands it to the kernel (SYS_PUT copies it in
 * and sums it), gets the kernel's copy back reversed (SYS_GET) and asks
 * for its pid (SYS_GETPID): three system calls that do some work. */
static uint8_t ubuf[64];

uint32_t sysheavy(uint32_t n)
{
    uint32_t acc = 0;
    for (uint32_t i = 0; i < n; i++) {
        for (uint32_t j = 0; j < sizeof(ubuf); j++)
            ubuf[j] = (uint8_t)(i * 7 + j + acc);
        acc += syscall2(SYS_PUT, (uint32_t)ubuf, sizeof(ubuf));
        acc = (acc << 1 | acc >> 31) ^ syscall2(SYS_GET, (uint32_t)ubuf, sizeof(ubuf));
        acc += ubuf[0] + syscall2(SYS_GETPID, 0, 0);
    }
    return acc;
}
