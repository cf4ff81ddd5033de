/* Small runtime shared by the guests: serial output, printf, exits, checks. */
#ifndef GUEST_LIB_H
#define GUEST_LIB_H
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include "multiboot.h"

#define COM1            0x3F8
#define COM1_LSR        (COM1 + 5)
#define COM1_SCRATCH    (COM1 + 7)
#define LSR_THR_EMPTY   0x20
#define DEBUG_EXIT_PORT 0xF4
#define ACPI_PM1A_CNT   0x604   /* QEMU -M pc (PIIX4) PM1a control */
#define ACPI_SLP_EN     0x2000  /* SLP_EN with SLP_TYP 0: soft-off */

/* Failure codes used by the runtime itself (guests use small counts). */
#define EXIT_CODE_BAD_MAGIC 0x7D
#define EXIT_CODE_TRAP      0x7E

/* Each guest provides this; returning from it means success. */
void kmain(struct multiboot_info *mbi);

void serial_putc(char c);
void serial_puts(const char *s);
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void vkprintf(const char *fmt, va_list ap);

__attribute__((noreturn)) void exit_success(void);
__attribute__((noreturn)) void exit_failure(uint8_t code);

/* Self-checking: one line per check, then a summary and the exit. */
void check(int ok, const char *name, const char *fail_fmt, ...)
    __attribute__((format(printf, 3, 4)));
__attribute__((noreturn)) void checks_finish(const char *prog);

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#endif
