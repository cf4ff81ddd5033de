/* testos: ATA PIO driver for the primary master, LBA28.
 *
 * IDENTIFY runs once at boot by polling with the device's interrupt
 * disabled (nIEN).  Reads and writes run in process context and sleep
 * until IRQ14; the interrupt handler acknowledges the device by reading
 * the status register. */
#include "testos/kernel.h"

#define ATA_DATA    0x1F0
#define ATA_ERROR   0x1F1
#define ATA_COUNT   0x1F2
#define ATA_LBA0    0x1F3
#define ATA_LBA1    0x1F4
#define ATA_LBA2    0x1F5
#define ATA_DRIVE   0x1F6
#define ATA_STATUS  0x1F7   /* read: status (acknowledges the interrupt) */
#define ATA_CMD     0x1F7   /* write: command */
#define ATA_ALT     0x3F6   /* read: alternate status (no side effect) */
#define ATA_DEVCTL  0x3F6   /* write: device control (bit 1 nIEN) */

#define ST_ERR  0x01
#define ST_DRQ  0x08
#define ST_DF   0x20
#define ST_BSY  0x80

#define CMD_READ_SECTORS    0x20
#define CMD_WRITE_SECTORS   0x30
#define CMD_FLUSH_CACHE     0xE7
#define CMD_IDENTIFY        0xEC

int disk_present;
uint32_t disk_sectors;
char disk_model[41];
uint32_t ide_irqs;

static volatile int ide_irq_seen;
static volatile uint8_t ide_irq_status;
static int ide_busy;
static int ide_chan;

static void ata_delay(void)
{
    for (int i = 0; i < 4; i++)     /* ~400 ns after selecting a drive */
        (void)inb(ATA_ALT);
}

/* Poll the alternate status until (status & mask) == want; -1 on timeout. */
static int ata_poll(uint8_t mask, uint8_t want)
{
    for (uint32_t i = 0; i < 2000000; i++) {
        uint8_t st = inb(ATA_ALT);
        if ((st & mask) == want)
            return st;
        if ((st & (ST_BSY | ST_ERR)) == ST_ERR)
            return st;
    }
    return -1;
}

static void ata_insw(void *buf, uint32_t words)
{
    __asm__ volatile("cld; rep insw" : "+D"(buf), "+c"(words) : "d"(ATA_DATA) : "memory");
}

static void ata_outsw(const void *buf, uint32_t words)
{
    __asm__ volatile("cld; rep outsw" : "+S"(buf), "+c"(words) : "d"(ATA_DATA) : "memory");
}

int ide_init(void)
{
    static uint16_t id[256];
    if (inb(ATA_STATUS) == 0xFF)
        return 0;                   /* floating bus: no controller */
    outb(ATA_DEVCTL, 0x02);         /* nIEN while we poll */
    outb(ATA_DRIVE, 0xA0);          /* master */
    ata_delay();
    outb(ATA_COUNT, 0x55);
    outb(ATA_LBA0, 0xAA);
    if (inb(ATA_COUNT) != 0x55 || inb(ATA_LBA0) != 0xAA)
        return 0;                   /* registers do not stick: no drive */
    outb(ATA_COUNT, 0);
    outb(ATA_LBA0, 0);
    outb(ATA_LBA1, 0);
    outb(ATA_LBA2, 0);
    outb(ATA_CMD, CMD_IDENTIFY);
    ata_delay();
    if (inb(ATA_STATUS) == 0)
        return 0;
    if (ata_poll(ST_BSY, 0) < 0)
        return 0;
    if (inb(ATA_LBA1) || inb(ATA_LBA2))
        return 0;                   /* ATAPI or SATA signature: not ours */
    int st = ata_poll(ST_BSY | ST_DRQ, ST_DRQ);
    if (st < 0 || (st & ST_ERR))
        return 0;
    ata_insw(id, 256);
    (void)inb(ATA_STATUS);
    if (!(id[49] & (1u << 9)))
        return 0;                   /* no LBA */
    disk_sectors = id[60] | ((uint32_t)id[61] << 16);
    for (int i = 0; i < 20; i++) {  /* words 27-46, high byte first */
        disk_model[2 * i] = (char)(id[27 + i] >> 8);
        disk_model[2 * i + 1] = (char)id[27 + i];
    }
    disk_model[40] = 0;
    for (int i = 39; i >= 0 && disk_model[i] == ' '; i--)
        disk_model[i] = 0;
    outb(ATA_DEVCTL, 0x00);         /* interrupts on */
    (void)inb(ATA_STATUS);
    disk_present = disk_sectors != 0;
    return disk_present;
}

void ide_intr(void)
{
    ide_irq_status = inb(ATA_STATUS);   /* also deasserts INTRQ */
    ide_irq_seen = 1;
    ide_irqs++;
    wakeup(&ide_chan);
}

/* Sleep until IRQ14; its status, or -1 after two seconds without one. */
static int ide_wait_irq(void)
{
    uint32_t deadline = ticks + 200;
    while (!ide_irq_seen) {
        if (ticks >= deadline)
            return -1;
        sleep_until(&ide_chan, deadline);
    }
    ide_irq_seen = 0;
    return ide_irq_status;
}

/* Transfer count (1..255) sectors.  0 or -EIO. */
int ide_rw(uint32_t lba, uint32_t count, void *buf, int write)
{
    int r = 0;
    while (ide_busy)
        sleep_on(&ide_busy);
    ide_busy = 1;
    if (ata_poll(ST_BSY, 0) < 0) {
        r = -EIO;
        goto out;
    }
    outb(ATA_DRIVE, 0xE0 | ((lba >> 24) & 0x0F));   /* LBA, master */
    ata_delay();
    outb(ATA_COUNT, (uint8_t)count);
    outb(ATA_LBA0, (uint8_t)lba);
    outb(ATA_LBA1, (uint8_t)(lba >> 8));
    outb(ATA_LBA2, (uint8_t)(lba >> 16));
    ide_irq_seen = 0;
    outb(ATA_CMD, write ? CMD_WRITE_SECTORS : CMD_READ_SECTORS);
    for (uint32_t s = 0; s < count; s++) {
        uint8_t *p = (uint8_t *)buf + 512 * s;
        int st;
        if (!write) {
            /* One interrupt per sector: its data is ready. */
            st = ide_wait_irq();
            if (st < 0 || (st & (ST_ERR | ST_DF)) || !(st & ST_DRQ)) {
                r = -EIO;
                goto out;
            }
            ata_insw(p, 256);
        } else {
            /* The first sector goes out as soon as DRQ is up; after each
             * sector an interrupt says the drive took it. */
            st = ata_poll(ST_BSY | ST_DRQ, ST_DRQ);
            if (st < 0 || (st & (ST_ERR | ST_DF))) {
                r = -EIO;
                goto out;
            }
            ata_outsw(p, 256);
            st = ide_wait_irq();
            if (st < 0 || (st & (ST_ERR | ST_DF))) {
                r = -EIO;
                goto out;
            }
        }
    }
    if (write) {
        ide_irq_seen = 0;
        outb(ATA_CMD, CMD_FLUSH_CACHE);
        int st = ide_wait_irq();
        if (st < 0 || (st & (ST_ERR | ST_DF)))
            r = -EIO;
    }
out:
    ide_busy = 0;
    wakeup(&ide_busy);
    return r;
}
