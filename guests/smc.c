/* smc: self-modifying and runtime-generated code.  Every modification is
 * followed by a call or jump into the modified code (see smc_asm.S). */
#include "common/cpu.h"
#include "common/lib.h"

#define ITERATIONS 1000

extern uint8_t smc_imm_value[], smc_call_rel[], smc_jmp_rel[], smc_straddle_value[];
uint32_t smc_imm(void);
uint32_t smc_call_site(void);
uint32_t smc_jmp_site(void);
uint32_t smc_self(uint32_t v);
uint32_t smc_straddle(void);

/* First code byte of a function: its opcode, for the layout check. */
static uint8_t opcode(uint32_t (*f)(void)) { return *(const volatile uint8_t *)(uintptr_t)f; }

/* Unaligned, never-elided stores into code bytes. */
typedef uint32_t u32_unaligned __attribute__((aligned(1), may_alias));
typedef uint16_t u16_unaligned __attribute__((aligned(1), may_alias));
static void poke32(void *p, uint32_t v) { *(volatile u32_unaligned *)p = v; }
static void poke16(void *p, uint16_t v) { *(volatile u16_unaligned *)p = v; }

/* Runtime code buffer: a page of its own, so only generated code lives there. */
static uint8_t codebuf[4096] __attribute__((aligned(4096)));
typedef uint32_t (*gen_fn)(void);

static uint32_t target_a(void) { return 0xAAAA0001; }
static uint32_t target_b(void) { return 0xBBBB0002; }
static uint32_t target_c(void) { return 0xCCCC0003; }
static uint32_t target_d(void) { return 0xDDDD0004; }
static uint32_t (*const targets[4])(void) = { target_a, target_b, target_c, target_d };
static const uint32_t target_values[4] = { 0xAAAA0001, 0xBBBB0002, 0xCCCC0003, 0xDDDD0004 };

/* First mismatch of a 1000-iteration run, reported by one check line. */
struct run {
    unsigned bad_iter;
    uint32_t want, got;
};
#define RUN_INIT { ITERATIONS, 0, 0 }

static void note(struct run *r, unsigned i, uint32_t want, uint32_t got)
{
    if (want != got && r->bad_iter == ITERATIONS) {
        r->bad_iter = i;
        r->want = want;
        r->got = got;
    }
}

static void report(const char *name, const struct run *r)
{
    check(r->bad_iter == ITERATIONS, name, "iteration %u: want %08x got %08x",
          r->bad_iter, r->want, r->got);
}

static uint32_t value_for(unsigned i) { return i * 0x9E3779B9u + 1; }

static void test_patch_immediate(void)
{
    struct run r = RUN_INIT;
    smc_imm();              /* get the original version translated first */
    for (unsigned i = 0; i < ITERATIONS; i++) {
        poke32(smc_imm_value, value_for(i));
        note(&r, i, value_for(i), smc_imm());
    }
    report("patched mov imm32, 1000 calls", &r);
}

static void test_generated_code(void)
{
    struct run r = RUN_INIT;
    gen_fn fn = (gen_fn)(uintptr_t)codebuf;
    for (unsigned i = 0; i < ITERATIONS; i++) {
        uint32_t n = value_for(i), k = ~i, want = n;
        uint8_t *p = codebuf;
        *p++ = 0xB8;                    /* mov $n, %eax */
        poke32(p, n);
        p += 4;
        if (i & 1) {                    /* odd rounds are longer */
            *p++ = 0x35;                /* xor $k, %eax */
            poke32(p, k);
            p += 4;
            want ^= k;
        }
        *p = 0xC3;                      /* ret */
        __asm__ volatile("" ::: "memory");
        note(&r, i, want, fn());
    }
    report("generated mov/xor/ret, 1000 rebuilds", &r);

    /* A generated loop: the translator sees a backward branch in a buffer
     * that changes under it.  Sum 1..n with LOOP. */
    static const uint8_t sum_code[] = {
        0x31, 0xC0,                     /* 0: xor %eax, %eax */
        0xB9, 0, 0, 0, 0,               /* 2: mov $n, %ecx */
        0x01, 0xC8,                     /* 7: add %ecx, %eax */
        0xE2, 0xFC,                     /* 9: loop 7 (rel8 = 7 - 11) */
        0xC3,                           /* 11: ret */
    };
    struct run s = RUN_INIT;
    memcpy(codebuf, sum_code, sizeof(sum_code));
    for (unsigned i = 0; i < ITERATIONS; i++) {
        uint32_t n = 1 + i % 97;
        poke32(codebuf + 3, n);
        __asm__ volatile("" ::: "memory");
        note(&s, i, n * (n + 1) / 2, fn());
    }
    report("generated summing loop, 1000 rebuilds", &s);
}

static void test_patch_branches(void)
{
    struct run c = RUN_INIT, j = RUN_INIT;
    for (unsigned i = 0; i < ITERATIONS; i++) {
        unsigned t = (i * 7 + i / 3) % 4;   /* not a simple rotation */
        uint32_t dest = (uint32_t)(uintptr_t)targets[t];
        poke32(smc_call_rel, dest - ((uint32_t)(uintptr_t)smc_call_rel + 4));
        note(&c, i, target_values[t], smc_call_site());
        poke32(smc_jmp_rel, dest - ((uint32_t)(uintptr_t)smc_jmp_rel + 4));
        note(&j, i, target_values[t], smc_jmp_site());
    }
    report("patched call rel32, 1000 calls", &c);
    report("patched jmp rel32, 1000 calls", &j);
}

static void test_self_patch(void)
{
    struct run r = RUN_INIT;
    for (unsigned i = 0; i < ITERATIONS; i++)
        note(&r, i, value_for(i), smc_self(value_for(i)));
    report("function patches itself then jumps, 1000 calls", &r);
}

static void test_page_straddle(void)
{
    struct run r = RUN_INIT;
    uint32_t cur = 0;
    poke32(smc_straddle_value, cur);
    smc_straddle();
    for (unsigned i = 0; i < ITERATIONS; i++) {
        if (i & 1) {        /* touch only the half in the second page */
            cur = (cur & 0xFFFF) | (i << 16);
            poke16(smc_straddle_value + 2, (uint16_t)i);
        } else {            /* one store spanning both pages */
            cur = value_for(i);
            poke32(smc_straddle_value, cur);
        }
        note(&r, i, cur, smc_straddle());
    }
    report("imm32 straddling a page boundary, 1000 calls", &r);
}

void kmain(struct multiboot_info *mbi)
{
    (void)mbi;
    kprintf("smc: self-modifying and generated code checks\n");
    int enc_ok = opcode(smc_imm) == 0xB8 && opcode(smc_call_site) == 0xE8 &&
                 opcode(smc_jmp_site) == 0xE9 && opcode(smc_straddle) == 0xB8 &&
                 (((uint32_t)(uintptr_t)smc_straddle_value + 2) & 0xFFF) == 0;
    check(enc_ok, "patch sites have the expected layout", "opcodes %02x %02x %02x %02x at %p",
          opcode(smc_imm), opcode(smc_call_site), opcode(smc_jmp_site), opcode(smc_straddle),
          smc_straddle);
    if (!enc_ok)
        checks_finish("smc");   /* patching wrong bytes would only crash */
    test_patch_immediate();
    test_generated_code();
    test_patch_branches();
    test_self_patch();
    test_page_straddle();
    checks_finish("smc");
}
