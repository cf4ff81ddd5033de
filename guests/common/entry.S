/* Multiboot header and the first instructions every guest executes. */
#include "multiboot.h"

/* Built twice: normally the loader takes addresses from the ELF program
 * headers; with -DAOUT_KLUDGE the header carries them (flags bit 16,
 * Multiboot 0.6.96 section 3.1.3 "The address fields of Multiboot header"),
 * which is all a loader has to go on for a flat binary image. */
#ifdef AOUT_KLUDGE
#define MB_FLAGS (MB_HDR_PAGE_ALIGN | MB_HDR_MEMORY_INFO | MB_HDR_AOUT_KLUDGE)
#else
#define MB_FLAGS (MB_HDR_PAGE_ALIGN | MB_HDR_MEMORY_INFO)
#endif

    /* The linker script puts this section first, so the header sits at
     * the start of the image: well inside the first 8 KiB of the file and
     * 32-bit aligned, as the spec (3.1.1) requires. */
    .section .multiboot, "a"
    .align 4
mb_header:
    .long MB_HEADER_MAGIC
    .long MB_FLAGS
    .long -(MB_HEADER_MAGIC + MB_FLAGS)     /* the three fields sum to 0 */
#ifdef AOUT_KLUDGE
    .long mb_header         /* header_addr: where this header ends up in memory */
    .long __load_start      /* load_addr: file offset 0 is loaded here */
    .long _edata            /* load_end_addr: end of text+data in the file */
    .long _end              /* bss_end_addr: the loader zeroes up to here */
    .long _start            /* entry_addr */
#endif

    .text
    .globl _start
_start:
    /* ESP is undefined at entry and EFLAGS only has VM and IF defined
     * (spec 3.2 "Machine state"), so set both before anything else. */
    movl $stack_top, %esp
    pushl $2                /* bit 1 is reserved and always 1 */
    popfl
    pushl %ebx              /* physical address of the multiboot info */
    pushl %eax              /* boot loader magic */
    call common_main        /* does not return */
1:  cli
    hlt
    jmp 1b

    .bss
    .align 16
stack_bottom:
    .skip 16384
stack_top:

    .section .note.GNU-stack, "", @progbits
