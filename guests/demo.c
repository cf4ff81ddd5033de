/* demo: the guest `bt-vmm run` boots when no kernel is given.  A few small,
 * visibly computed results that keep the translator busy (loops, calls,
 * flag and port instructions) for well under a second natively.  Each
 * result is also checked, so a wrong answer ends the run as a failure. */
#include "common/cpu.h"
#include "common/lib.h"

static unsigned wrong;

static void expect(uint32_t got, uint32_t want)
{
    if (got != want) {
        kprintf("  ^ wrong: expected %u (0x%x)\n", want, want);
        wrong++;
    }
}

static void primes(void)
{
    static uint8_t composite[80];
    unsigned found = 0, last = 0;
    kprintf("  first 20 primes:");
    for (unsigned n = 2; n < sizeof(composite) && found < 20; n++) {
        if (composite[n])
            continue;
        kprintf(" %u", n);
        found++;
        last = n;
        for (unsigned m = n * n; m < sizeof(composite); m += n)
            composite[m] = 1;
    }
    kprintf("\n");
    expect(found, 20);
    expect(last, 71);
}

/* Bitwise CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320). */
static uint32_t crc32(const char *s)
{
    uint32_t crc = ~0u;
    for (; *s; s++) {
        crc ^= (uint8_t)*s;
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0xEDB88320u & -(crc & 1));
    }
    return ~crc;
}

static unsigned fib_calls;

__attribute__((noinline, noipa)) static uint32_t fib(uint32_t n)
{
    fib_calls++;
    return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

/* Toggle IF with CLI/STI and observe it through PUSHF, then put the whole
 * EFLAGS back with POPF: all of these are sensitive instructions. */
static unsigned interrupt_flag_loop(unsigned rounds)
{
    unsigned seen_set = 0;
    uint32_t saved = read_eflags();
    for (unsigned i = 0; i < rounds; i++) {
        if (i & 1)
            cli();
        else
            sti();
        if (read_eflags() & EFLAGS_IF)
            seen_set++;
        write_eflags(saved);
    }
    return seen_set;
}

static uint32_t scratch_loop(void)
{
    uint32_t sum = 0;
    for (unsigned i = 0; i < 256; i++) {
        outb(COM1_SCRATCH, (uint8_t)i);
        sum += inb(COM1_SCRATCH);
    }
    return sum;
}

void kmain(struct multiboot_info *mbi)
{
    (void)mbi;
    kprintf("bt_vmm demo guest: binary-translated kernel code\n");

    primes();

    static const char fox[] = "The quick brown fox jumps over the lazy dog";
    uint32_t crc = crc32(fox);
    kprintf("  crc32(\"%s\") = %08x\n", fox, crc);
    expect(crc, 0x414FA339);

    uint32_t f = fib(20);
    kprintf("  fib(20) = %u (%u calls)\n", f, fib_calls);
    expect(f, 6765);

    unsigned set = interrupt_flag_loop(1000);
    kprintf("  cli/sti/pushf/popf: IF seen set %u of 1000 times\n", set);
    expect(set, 500);

    uint32_t sum = scratch_loop();
    kprintf("  uart scratch register: 256 out/in round trips, checksum %u\n", sum);
    expect(sum, 255 * 256 / 2);

    if (wrong) {
        kprintf("demo: %u wrong results\n", wrong);
        exit_failure((uint8_t)wrong);
    }
    kprintf("demo: done\n");
}
