/* testos: CPUID, 8259 PICs, 8254 PIT, 16550 UART input, CMOS RTC. */
#include "testos/kernel.h"

struct cpuinfo cpu;

void cpu_detect(void)
{
    /* CPUID exists if software can toggle EFLAGS.ID. */
    uint32_t f = read_eflags();
    write_eflags(f ^ EFLAGS_ID);
    uint32_t g = read_eflags();
    write_eflags(f);
    cpu.has_cpuid = ((f ^ g) & EFLAGS_ID) != 0;
    memcpy(cpu.vendor, "unknown", 8);
    if (!cpu.has_cpuid)
        return;
    uint32_t r[4];
    cpuid(0, r);
    uint32_t max = r[0];
    memcpy(cpu.vendor + 0, &r[1], 4);
    memcpy(cpu.vendor + 4, &r[3], 4);
    memcpy(cpu.vendor + 8, &r[2], 4);
    cpu.vendor[12] = 0;
    if (max < 1)
        return;
    cpuid(1, r);
    cpu.family = (r[0] >> 8) & 0xF;
    cpu.model = (r[0] >> 4) & 0xF;
    if (cpu.family == 0xF)
        cpu.family += (r[0] >> 20) & 0xFF;
    if (cpu.family >= 6)
        cpu.model |= ((r[0] >> 16) & 0xF) << 4;
    cpu.features_edx = r[3];
    cpu.pse = (r[3] >> 3) & 1;
    cpu.pge = (r[3] >> 13) & 1;
}

/* ---- 8259A pair: master 0x20/0x21, slave 0xA0/0xA1 ---- */
#define PIC1_CMD  0x20
#define PIC1_DATA 0x21
#define PIC2_CMD  0xA0
#define PIC2_DATA 0xA1

static uint16_t irq_mask = 0xFFFF;

static void pic_write_masks(void)
{
    outb(PIC1_DATA, (uint8_t)irq_mask);
    outb(PIC2_DATA, (uint8_t)(irq_mask >> 8));
}

void pic_init(void)
{
    outb(PIC1_CMD, 0x11);           /* ICW1: edge triggered, cascade, ICW4 follows */
    outb(PIC2_CMD, 0x11);
    outb(PIC1_DATA, IRQ_BASE);      /* ICW2: vector base */
    outb(PIC2_DATA, IRQ_BASE + 8);
    outb(PIC1_DATA, 0x04);          /* ICW3: slave on master's IR2 */
    outb(PIC2_DATA, 0x02);          /*       slave identity 2 */
    outb(PIC1_DATA, 0x01);          /* ICW4: 8086 mode, normal EOI */
    outb(PIC2_DATA, 0x01);
    irq_mask = 0xFFFF;
    pic_write_masks();
}

void irq_unmask(int irq)
{
    irq_mask &= ~(1u << irq);
    if (irq >= 8)
        irq_mask &= ~(1u << 2);     /* the cascade line */
    pic_write_masks();
}

void pic_eoi(int irq)
{
    if (irq >= 8)
        outb(PIC2_CMD, 0x20);       /* non-specific EOI to the slave ... */
    outb(PIC1_CMD, 0x20);           /* ... and to the master */
}

/* IRQ7/IRQ15 also arrive when a request vanished before the CPU's
 * acknowledge; the in-service register then has no bit for them and no
 * EOI may be sent (except the master's for a spurious IRQ15). */
int pic_spurious(int irq)
{
    uint16_t cmd = irq == 7 ? PIC1_CMD : PIC2_CMD;
    outb(cmd, 0x0B);                /* OCW3: read ISR */
    uint8_t isr = inb(cmd);
    if (isr & 0x80)
        return 0;
    if (irq == 15)
        outb(PIC1_CMD, 0x20);
    return 1;
}

/* ---- 8254 PIT channel 0, mode 2 (rate generator) ---- */
void pit_init(uint32_t hz)
{
    uint32_t div = (1193182 + hz / 2) / hz;
    outb(0x43, 0x34);               /* channel 0, lobyte/hibyte, mode 2, binary */
    outb(0x40, (uint8_t)div);
    outb(0x40, (uint8_t)(div >> 8));
}

/* ---- COM1 16550: polled output (common/lib.c), interrupt-driven input ---- */
#define COM_RBR (COM1 + 0)
#define COM_IER (COM1 + 1)
#define COM_IIR (COM1 + 2)
#define COM_FCR (COM1 + 2)
#define COM_LCR (COM1 + 3)
#define COM_MCR (COM1 + 4)
#define COM_LSR (COM1 + 5)
#define COM_MSR (COM1 + 6)

int cons_chan;
static char cons_buf[256];
static uint32_t cons_r, cons_w;     /* free-running indices */
static int rx_paused;

/* Move bytes from the receive FIFO into the ring.  When the ring is full
 * the receive interrupt is switched off and the bytes stay in the UART
 * (whose sender then waits) until a reader makes room. */
static void uart_drain(void)
{
    uint8_t lsr;
    while (((lsr = inb(COM_LSR)) & 0x01) && lsr != 0xFF) {     /* 0xFF: no UART */
        if (cons_w - cons_r == sizeof(cons_buf)) {
            outb(COM_IER, 0x00);
            rx_paused = 1;
            break;
        }
        cons_buf[cons_w++ % sizeof(cons_buf)] = (char)inb(COM_RBR);
    }
    wakeup(&cons_chan);
}

/* Bytes already waiting (typed or piped before boot) are kept: they are
 * moved to the ring before the FIFO is (re)enabled, which clears the
 * receiver if the FIFO was off, and none is read while DLAB is set (RBR
 * is then the divisor latch). */
void uart_init(void)
{
    outb(COM_IER, 0x00);            /* no interrupts while programming */
    uart_drain();
    outb(COM_LCR, 0x80);            /* DLAB */
    outb(COM1 + 0, 0x01);           /* divisor 1: 115200 baud */
    outb(COM1 + 1, 0x00);
    outb(COM_LCR, 0x03);            /* 8N1 */
    uart_drain();
    /* FIFOs on, RX trigger level 1 byte, transmit FIFO cleared.  The
     * receive FIFO is not cleared on purpose (if the firmware already
     * enabled the FIFOs, bytes waiting in it survive). */
    outb(COM_FCR, 0x05);
    outb(COM_MCR, 0x0B);            /* DTR, RTS, OUT2 (gates the IRQ line) */
    (void)inb(COM_IIR);
    (void)inb(COM_MSR);
    uart_drain();
    if (!rx_paused)
        outb(COM_IER, 0x01);        /* received-data-available interrupt */
}

void uart_intr(void)
{
    for (int i = 0; i < 16; i++) {
        uint8_t iir = inb(COM_IIR);
        if (iir & 0x01)
            break;                  /* nothing (more) pending */
        switch (iir & 0x0E) {
        case 0x06: (void)inb(COM_LSR); break;   /* line status */
        case 0x04:                              /* data available */
        case 0x0C: uart_drain(); break;         /* character timeout */
        case 0x00: (void)inb(COM_MSR); break;   /* modem status */
        default: break;                         /* THR empty: not enabled */
        }
        if (rx_paused)
            break;
    }
}

int cons_read(char *buf, int n)
{
    int k = 0;
    while (k < n && cons_r != cons_w)
        buf[k++] = cons_buf[cons_r++ % sizeof(cons_buf)];
    if (k && rx_paused) {
        rx_paused = 0;
        outb(COM_IER, 0x01);        /* the UART re-raises IRQ4 if data waits */
    }
    return k;
}

/* ---- CMOS RTC ---- */
static uint8_t cmos_read(uint8_t reg)
{
    outb(0x70, reg);
    return inb(0x71);
}

static uint32_t bcd(uint32_t v)
{
    return (v & 0x0F) + (v >> 4) * 10;
}

static void rtc_raw(uint8_t r[6])
{
    static const uint8_t regs[6] = { 0x09, 0x08, 0x07, 0x04, 0x02, 0x00 };
    for (int spin = 0; spin < 100000 && (cmos_read(0x0A) & 0x80); spin++)
        ;                           /* update in progress */
    for (int i = 0; i < 6; i++)
        r[i] = cmos_read(regs[i]);
}

void rtc_read(struct rtc_time *t)
{
    uint8_t a[6], b[6];
    rtc_raw(a);
    for (int tries = 0; tries < 5; tries++) {   /* until two reads agree */
        rtc_raw(b);
        if (!memcmp(a, b, sizeof(a)))
            break;
        memcpy(a, b, sizeof(a));
    }
    uint8_t stb = cmos_read(0x0B);
    uint32_t v[6];
    int pm = a[3] & 0x80;
    a[3] &= 0x7F;
    for (int i = 0; i < 6; i++)
        v[i] = (stb & 0x04) ? a[i] : bcd(a[i]);     /* bit 2: binary mode */
    if (!(stb & 0x02)) {                            /* bit 1: 24-hour mode */
        v[3] %= 12;
        if (pm)
            v[3] += 12;
    }
    t->year = v[0] + (v[0] < 70 ? 2000 : 1900);
    t->month = v[1];
    t->day = v[2];
    t->hour = v[3];
    t->min = v[4];
    t->sec = v[5];
}
