/* hello: the smallest useful guest.  Prints a banner, the multiboot
 * command line and memory size, then powers off. */
#include "common/lib.h"

#ifdef AOUT_KLUDGE
#define BANNER "Hello from a bt_vmm guest (a.out kludge)!\n"
#else
#define BANNER "Hello from a bt_vmm guest!\n"
#endif

void kmain(struct multiboot_info *mbi)
{
    serial_puts(BANNER);
    if (mbi->flags & MB_INFO_CMDLINE)
        kprintf("cmdline: %s\n", (const char *)mbi->cmdline);
    else
        kprintf("cmdline: (none)\n");
    if (mbi->flags & MB_INFO_MEMORY)
        kprintf("mem_upper: %u KiB\n", mbi->mem_upper);
    else
        kprintf("mem_upper: (none)\n");
}
