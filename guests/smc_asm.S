/* Code that the smc guest rewrites while it runs.  It lives in its own
 * writable+executable section (.smc, page aligned by the linker script),
 * so the patching code in .text and the patched code never share a page. */

#define GLOBAL(name) .globl name; name:

    .section .smc, "awx", @progbits
    .balign 4096

/* uint32_t smc_imm(void): returns the imm32 of its MOV, which C rewrites.
 * Encoded by hand so the immediate is certainly at smc_imm + 1. */
GLOBAL(smc_imm)
    .byte 0xB8              /* mov $imm32, %eax */
GLOBAL(smc_imm_value)
    .long 0
    ret

/* uint32_t smc_call_site(void): CALL rel32 whose displacement C rewrites. */
GLOBAL(smc_call_site)
    .byte 0xE8
GLOBAL(smc_call_rel)
    .long 0                 /* rel32 = target - end of this instruction */
    ret

/* uint32_t smc_jmp_site(void): JMP rel32 (a tail call) likewise. */
GLOBAL(smc_jmp_site)
    .byte 0xE9
GLOBAL(smc_jmp_rel)
    .long 0

/* uint32_t smc_self(uint32_t v): stores v into the immediate of an
 * instruction further on in this same function, then jumps to it.  The
 * jump is what makes the new bytes visible by contract: a store into the
 * straight-line run that is executing need not be seen until the next
 * control transfer (as on a 486; Intel SDM Vol. 3A, "Handling Self- and
 * Cross-Modifying Code"). */
GLOBAL(smc_self)
    movl 4(%esp), %eax
    movl %eax, smc_self_imm + 1
    jmp smc_self_imm
smc_self_imm:
    .byte 0xB8
    .long 0
    ret

/* uint32_t smc_straddle(void): a MOV whose imm32 straddles the boundary
 * between the two pages of this section: bytes 0-1 of the immediate are in
 * the first page, bytes 2-3 in the second.  Writing only the second page
 * must still invalidate code that starts in the first. */
    .org 0x1000 - 3
GLOBAL(smc_straddle)
    .byte 0xB8
GLOBAL(smc_straddle_value)
    .long 0
    ret

    .section .note.GNU-stack, "", @progbits
