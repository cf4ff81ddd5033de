/* testos: the user programs (user/, linked at USER_BASE and flattened
 * by objcopy) embedded in the kernel's read-only data.  userinit() copies
 * them into the first process's pages. */
    .section .rodata
    .balign 4096
    .globl user_image_start, user_image_end
user_image_start:
    .incbin USER_BIN
user_image_end:

    .section .note.GNU-stack, "", @progbits
