/* Multiboot 0.6.96 definitions used by the guests (spec sections 3.1 and 3.3). */
#ifndef GUEST_MULTIBOOT_H
#define GUEST_MULTIBOOT_H

#define MB_HEADER_MAGIC     0x1BADB002u
#define MB_BOOTLOADER_MAGIC 0x2BADB002u   /* in EAX at entry */

#define MB_HDR_PAGE_ALIGN   (1u << 0)     /* page-align boot modules */
#define MB_HDR_MEMORY_INFO  (1u << 1)     /* ask for mem_lower/mem_upper */
#define MB_HDR_AOUT_KLUDGE  (1u << 16)    /* load/entry addresses are in the header */

#ifndef __ASSEMBLER__
#include <stdint.h>

#define MB_INFO_MEMORY      (1u << 0)     /* mem_lower/mem_upper are valid */
#define MB_INFO_CMDLINE     (1u << 2)     /* cmdline is valid */

/* Only the leading fields of the boot information structure (spec 3.3). */
struct multiboot_info {
    uint32_t flags;
    uint32_t mem_lower;     /* KiB below 1 MiB */
    uint32_t mem_upper;     /* KiB from 1 MiB up to the first hole */
    uint32_t boot_device;
    uint32_t cmdline;       /* physical address of a NUL-terminated string */
    uint32_t mods_count;
    uint32_t mods_addr;
};
#endif
#endif
