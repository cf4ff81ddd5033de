/* Runtime shared by all guests. */
#include "lib.h"
#include "cpu.h"
#include "desc.h"

void common_main(uint32_t magic, struct multiboot_info *mbi);

void serial_putc(char c)
{
    while (!(inb(COM1_LSR) & LSR_THR_EMPTY))
        ;
    outb(COM1, (uint8_t)c);
}

void serial_puts(const char *s)
{
    while (*s)
        serial_putc(*s++);
}

/* Unsigned to text in the given base; 32-bit only so that no libgcc
 * helper (__udivdi3 and friends) is ever needed. */
static int utoa(uint32_t v, unsigned base, char *buf)
{
    char tmp[12];
    int n = 0;
    do {
        tmp[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    for (int i = 0; i < n; i++)
        buf[i] = tmp[n - 1 - i];
    return n;
}

static void emit_padded(const char *s, int len, int width, int left, char pad)
{
    if (!left)
        for (; width > len; width--)
            serial_putc(pad);
    for (int i = 0; i < len; i++)
        serial_putc(s[i]);
    if (left)
        for (; width > len; width--)
            serial_putc(' ');
}

/* Supports %s %c %d %i %u %x %p %% with optional '-', '0' and width. */
void vkprintf(const char *fmt, va_list ap)
{
    char buf[16];
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            serial_putc(*fmt);
            continue;
        }
        int left = 0, width = 0;
        char pad = ' ';
        fmt++;
        for (; *fmt == '-' || *fmt == '0'; fmt++) {
            if (*fmt == '-')
                left = 1;
            else
                pad = '0';
        }
        for (; *fmt >= '0' && *fmt <= '9'; fmt++)
            width = width * 10 + (*fmt - '0');
        if (*fmt == 'l')            /* long == int on i386 */
            fmt++;
        int len;
        switch (*fmt) {
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            emit_padded(s, (int)strlen(s), width, left, ' ');
            break;
        }
        case 'c':
            buf[0] = (char)va_arg(ap, int);
            emit_padded(buf, 1, width, left, ' ');
            break;
        case 'd':
        case 'i': {
            int32_t v = va_arg(ap, int32_t);
            len = 0;
            if (v < 0) {
                buf[len++] = '-';
                len += utoa(-(uint32_t)v, 10, buf + 1);
            } else {
                len = utoa((uint32_t)v, 10, buf);
            }
            emit_padded(buf, len, width, left, pad);
            break;
        }
        case 'u':
            len = utoa(va_arg(ap, uint32_t), 10, buf);
            emit_padded(buf, len, width, left, pad);
            break;
        case 'x':
        case 'p':
            len = utoa(va_arg(ap, uint32_t), 16, buf);
            emit_padded(buf, len, width, left, pad);
            break;
        case '%':
            serial_putc('%');
            break;
        case '\0':
            return;
        default:            /* unknown conversion: show it verbatim */
            serial_putc('%');
            serial_putc(*fmt);
            break;
        }
    }
}

void kprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vkprintf(fmt, ap);
    va_end(ap);
}

void exit_success(void)
{
    outw(ACPI_PM1A_CNT, ACPI_SLP_EN);
    /* Fallback if nothing answers the ACPI port: a HLT with interrupts
     * disabled can never resume, which the monitor treats as a clean stop. */
    for (;;)
        __asm__ volatile("cli; hlt");
}

void exit_failure(uint8_t code)
{
    outb(DEBUG_EXIT_PORT, code);
    /* No debug-exit device.  Do NOT fall back to cli;hlt (that would read
     * as success): spin so that the run times out instead. */
    serial_puts("exit_failure: no debug-exit device, spinning\n");
    for (;;)
        __asm__ volatile("pause");
}

static unsigned n_checks, n_failed;

void check(int ok, const char *name, const char *fail_fmt, ...)
{
    n_checks++;
    if (ok) {
        kprintf("ok   %s\n", name);
        return;
    }
    n_failed++;
    kprintf("FAIL %s: ", name);
    va_list ap;
    va_start(ap, fail_fmt);
    vkprintf(fail_fmt, ap);
    va_end(ap);
    serial_putc('\n');
}

void checks_finish(const char *prog)
{
    kprintf("%s: %u checks, %u failed\n", prog, n_checks, n_failed);
    if (n_failed)
        exit_failure(n_failed > 127 ? 127 : (uint8_t)n_failed);
    exit_success();
}

/* The string functions must not be turned back into calls to themselves:
 * the Makefile passes -fno-tree-loop-distribute-patterns for that. */
void *memset(void *d, int c, size_t n)
{
    uint8_t *p = d;
    while (n--)
        *p++ = (uint8_t)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    uint8_t *p = d;
    const uint8_t *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

void *memmove(void *d, const void *s, size_t n)
{
    uint8_t *p = d;
    const uint8_t *q = s;
    if (p < q) {
        while (n--)
            *p++ = *q++;
    } else {
        while (n--)
            p[n] = q[n];
    }
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *p = a, *q = b;
    for (; n; n--, p++, q++)
        if (*p != *q)
            return *p - *q;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

/* Under QEMU the BIOS leaves the 8259 PICs initialised with the timer
 * unmasked and IRQ0 on vector 8 (#DF's vector), so the guests' brief STI
 * windows could take a timer interrupt.  Masking every line keeps the
 * guests interrupt-free on a full PC too; a monitor without a PIC simply
 * sees two writes to unclaimed ports. */
static void pic_mask_all(void)
{
    outb(0x21, 0xFF);
    outb(0xA1, 0xFF);
}

void common_main(uint32_t magic, struct multiboot_info *mbi)
{
    gdt_init();
    idt_init();
    pic_mask_all();
    if (magic != MB_BOOTLOADER_MAGIC) {
        kprintf("bad multiboot magic %08x (expected %08x)\n", magic, MB_BOOTLOADER_MAGIC);
        exit_failure(EXIT_CODE_BAD_MAGIC);
    }
    kmain(mbi);
    exit_success();
}
