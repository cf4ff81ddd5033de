/* testos user image header and entry point. */
    .section .uhdr, "a"
    .long 0x474D4955        /* "UIMG" */
    .long _ustart           /* entry */
    .long __utext_end       /* end of the read-only part */
    .long __udata_end       /* end of initialised data */
    .long __ubss_end        /* end of bss: the heap starts on the next page */

    .text
    .globl _ustart
_ustart:
    /* The kernel enters here at ring 3 with ESP = 0x80000000 and the
     * stack not yet mapped: the first push is a demand-paging fault. */
    xorl %ebp, %ebp
    call umain
    pushl %eax
    call exit
1:  jmp 1b

    .section .note.GNU-stack, "", @progbits
