"""The IDE channel, driven the way a PIO driver drives it (Linux's legacy IDE
and ata_piix in PIO mode, or a hobby OS's ATA driver): probe, reset, IDENTIFY,
then sector transfers with an interrupt per DRQ block."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bt_vmm.devices import ide
from bt_vmm.devices.bus import PortBus
from bt_vmm.devices.ide import (
    DC_HOB,
    DC_NIEN,
    DC_SRST,
    ER_ABRT,
    ER_IDNF,
    ER_UNC,
    PRIMARY,
    SECONDARY,
    ST_BSY,
    ST_DF,
    ST_DRDY,
    ST_DRQ,
    ST_DSC,
    ST_ERR,
    IdeChannel,
)
from bt_vmm.hosted.disk import DiskImage, open_disk

BASE, CTRL = PRIMARY.base, PRIMARY.ctrl
DATA = BASE + 0
ERROR = FEATURES = BASE + 1
NSECT = BASE + 2
LBAL = BASE + 3
LBAM = BASE + 4
LBAH = BASE + 5
DEVICE = BASE + 6
STATUS = COMMAND = BASE + 7
ALTSTATUS = DEVCTL = CTRL

READY = ST_DRDY | ST_DSC  # 0x50
SECTORS = 4096  # a 2 MiB disk: 4 cylinders of 16 heads x 63 sectors, and some left over


def make_image(path: Path, sectors: int = SECTORS, seed: int = 1) -> bytes:
    data = random.Random(seed).randbytes(sectors * 512)
    path.write_bytes(data)
    return data


class Pc:
    """A port bus with one IDE channel on it, and the IRQ line's history."""

    def __init__(self, master: DiskImage | None, slave: DiskImage | None = None,
                 ports: ide.ChannelPorts = PRIMARY) -> None:
        self.levels: list[bool] = []
        self.line = False
        self.channel = IdeChannel(ports.base, ports.ctrl, self._irq, master, slave)
        self.bus = PortBus()
        for first, count in ports.ranges():
            self.bus.register(first, count, self.channel)
        self.base = ports.base
        self.ctrl = ports.ctrl

    def _irq(self, level: bool) -> None:
        assert level != self.line, "irq is only called on changes"
        self.line = level
        self.levels.append(level)

    @property
    def interrupts(self) -> int:
        """Rising edges so far: what an edge-triggered 8259 would have seen."""
        return self.levels.count(True)

    def inb(self, port: int) -> int:
        return self.bus.read(port, 1)

    def outb(self, port: int, value: int) -> None:
        self.bus.write(port, 1, value)

    def inw(self, port: int) -> int:
        return self.bus.read(port, 2)

    def outw(self, port: int, value: int) -> None:
        self.bus.write(port, 2, value)

    def inl(self, port: int) -> int:
        return self.bus.read(port, 4)

    def outl(self, port: int, value: int) -> None:
        self.bus.write(port, 4, value)

    # --- Driver routines. ---

    def select(self, dev: int, extra: int = 0) -> None:
        """Device select, then the 400 ns delay: four reads of Alternate Status."""
        self.outb(DEVICE, 0xA0 | dev << 4 | extra)
        for _ in range(4):
            self.inb(ALTSTATUS)

    def wait_not_busy(self) -> int:
        for _ in range(100):
            status = self.inb(ALTSTATUS)
            if not status & ST_BSY:
                return status
        raise AssertionError("BSY stuck")

    def issue_lba28(self, command: int, lba: int, count: int, dev: int = 0) -> None:
        self.wait_not_busy()
        self.outb(DEVICE, 0xE0 | dev << 4 | lba >> 24 & 0x0F)
        self.outb(NSECT, count & 0xFF)
        self.outb(LBAL, lba & 0xFF)
        self.outb(LBAM, lba >> 8 & 0xFF)
        self.outb(LBAH, lba >> 16 & 0xFF)
        self.outb(COMMAND, command)

    def issue_lba48(self, command: int, lba: int, count: int) -> None:
        self.wait_not_busy()
        self.outb(DEVICE, 0x40)
        for port, value in ((NSECT, count >> 8), (LBAL, lba >> 24), (LBAM, lba >> 32), (LBAH, lba >> 40),
                            (NSECT, count), (LBAL, lba), (LBAM, lba >> 8), (LBAH, lba >> 16)):
            self.outb(port, value & 0xFF)
        self.outb(COMMAND, command)

    def issue_chs(self, command: int, cyl: int, head: int, sector: int, count: int) -> None:
        self.wait_not_busy()
        self.outb(DEVICE, 0xA0 | head)
        self.outb(NSECT, count & 0xFF)
        self.outb(LBAL, sector)
        self.outb(LBAM, cyl & 0xFF)
        self.outb(LBAH, cyl >> 8)
        self.outb(COMMAND, command)

    def read_block(self, words: int = 256) -> bytes:
        return b"".join(self.inw(DATA).to_bytes(2, "little") for _ in range(words))

    def write_block(self, data: bytes) -> None:
        for i in range(0, len(data), 2):
            self.outw(DATA, int.from_bytes(data[i : i + 2], "little"))

    def ack(self) -> int:
        """The interrupt handler: read Status, which drops INTRQ."""
        assert self.line, "expected the IRQ line up"
        status = self.inb(STATUS)
        assert not self.line
        return status

    def pio_in(self, sectors: int, per_block: int = 1) -> bytes:
        """Interrupt-driven PIO data-in: one interrupt per DRQ block."""
        out = []
        left = sectors
        while left:
            status = self.ack()
            assert status & (ST_DRQ | ST_ERR | ST_BSY) == ST_DRQ, hex(status)
            n = min(per_block, left)
            out.append(self.read_block(256 * n))
            left -= n
        assert not self.line  # no interrupt at the end of a data-in command
        assert self.inb(ALTSTATUS) == READY
        return b"".join(out)

    def pio_out(self, data: bytes, per_block: int = 1) -> None:
        """PIO data-out: the first block without an interrupt, then one per block."""
        assert not self.line
        status = self.wait_not_busy()
        for i in range(0, len(data), per_block * 512):
            assert status & (ST_DRQ | ST_ERR) == ST_DRQ, hex(status)
            self.write_block(data[i : i + per_block * 512])
            status = self.ack()
        assert status == READY, hex(status)

    def identify(self, dev: int = 0) -> list[int]:
        self.select(dev)
        self.outb(COMMAND, ide.CMD_IDENTIFY)
        raw = self.pio_in(1)
        return [int.from_bytes(raw[i : i + 2], "little") for i in range(0, 512, 2)]


def ata_text(words: list[int]) -> str:
    """Undo ATA's byte order in IDENTIFY strings: high byte first in each word."""
    return b"".join(w.to_bytes(2, "big") for w in words).decode("ascii").rstrip()


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "disk.img"
    return path, make_image(path)


@pytest.fixture
def pc(image: tuple[Path, bytes]):
    disk = open_disk(str(image[0]))
    yield Pc(disk)
    disk.close()


# --- Probing. ---


def test_probe_finds_the_master_and_no_slave(pc: Pc) -> None:
    pc.select(0)
    assert pc.inb(STATUS) == READY
    assert pc.inb(ALTSTATUS) == READY
    # Linux's devchk: a pattern written to count/LBA low reads back.
    pc.outb(NSECT, 0x55)
    pc.outb(LBAL, 0xAA)
    assert (pc.inb(NSECT), pc.inb(LBAL)) == (0x55, 0xAA)
    pc.select(1)
    assert pc.inb(STATUS) == 0  # no slave: not busy, not ready
    assert pc.inb(ALTSTATUS) == 0
    assert pc.channel.selected == 1
    # Commands to the absent slave do nothing at all.
    pc.outb(COMMAND, ide.CMD_IDENTIFY)
    assert pc.inb(STATUS) == 0 and not pc.line
    assert pc.inw(DATA) == 0xFFFF
    assert pc.channel.ignored_commands == 1
    assert not pc.channel.commands
    # The master still answers.
    words = pc.identify(0)
    assert ata_text(words[27:47]) == "BT_VMM HARDDISK"


def test_empty_channel_floats_high() -> None:
    pc = Pc(None, None, ports=SECONDARY)
    for offset in range(1, 8):
        assert pc.inb(SECONDARY.base + offset) == 0xFF
    assert pc.inb(SECONDARY.ctrl) == 0xFF
    pc.outb(SECONDARY.base + 6, 0xA0)
    pc.outb(SECONDARY.base + 7, ide.CMD_IDENTIFY)
    assert pc.inb(SECONDARY.base + 7) == 0xFF
    assert pc.levels == []


def test_port_helpers() -> None:
    assert ide.PORTS == (PRIMARY, SECONDARY)
    assert (PRIMARY.base, PRIMARY.ctrl, PRIMARY.irq) == (0x1F0, 0x3F6, 14)
    assert (SECONDARY.base, SECONDARY.ctrl, SECONDARY.irq) == (0x170, 0x376, 15)
    assert PRIMARY.ranges() == ((0x1F0, 8), (0x3F6, 1))
    channel = IdeChannel(0x170, 0x376, None)
    assert channel.port_ranges == SECONDARY.ranges()
    with pytest.raises(ValueError):
        channel.io_read(0x1F0, 1)


def test_slave_only_on_the_secondary_channel(image: tuple[Path, bytes]) -> None:
    with open_disk(str(image[0])) as disk:
        pc = Pc(None, disk, ports=SECONDARY)
        status = SECONDARY.base + 7
        pc.outb(SECONDARY.base + 6, 0xA0)
        assert pc.inb(status) == 0
        pc.outb(SECONDARY.base + 6, 0xB0)
        assert pc.inb(status) == READY
        pc.outb(status, ide.CMD_CHECK_POWER_MODE)
        assert pc.line
        assert pc.inb(status) == READY
        assert pc.inb(SECONDARY.base + 2) == 0xFF


# --- Reset and signature. ---


def test_software_reset_leaves_the_signature(tmp_path: Path) -> None:
    make_image(tmp_path / "a.img", 64)
    make_image(tmp_path / "b.img", 64, seed=2)
    with open_disk(str(tmp_path / "a.img")) as a, open_disk(str(tmp_path / "b.img")) as b:
        pc = Pc(a, b)
        pc.select(1)
        pc.outb(NSECT, 0x12)
        pc.outb(LBAH, 0x34)
        pc.outb(DEVCTL, DC_SRST | DC_NIEN)
        assert pc.inb(ALTSTATUS) & ST_BSY
        assert pc.inb(STATUS) == ST_BSY
        pc.outb(DEVCTL, DC_NIEN)
        assert pc.wait_not_busy() == READY
        assert pc.channel.resets == 1
        assert pc.levels == []  # no interrupt for a reset
        # Device 0 is selected afterwards (device register 00h); both have the ATA signature.
        assert pc.inb(DEVICE) == 0
        for dev in (0, 1):
            pc.select(dev)
            assert pc.inb(STATUS) == READY
            assert pc.inb(ERROR) == 0x01  # diagnostic code: passed
            assert (pc.inb(NSECT), pc.inb(LBAL), pc.inb(LBAM), pc.inb(LBAH)) == (1, 1, 0, 0)


def test_reset_aborts_a_transfer_and_commands_wait_for_it(pc: Pc) -> None:
    pc.issue_lba28(ide.CMD_READ_SECTORS, 0, 4)
    assert pc.line
    pc.outb(DEVCTL, DC_SRST)
    assert not pc.line
    pc.outb(COMMAND, ide.CMD_IDENTIFY)  # ignored: the device is in reset
    assert pc.channel.ignored_commands == 1
    pc.outb(DEVCTL, 0)
    assert pc.inb(STATUS) == READY
    assert pc.inw(DATA) == 0xFFFF
    assert pc.channel.stray_data_reads == 1


def test_execute_device_diagnostic(pc: Pc) -> None:
    pc.select(0)
    pc.outb(COMMAND, ide.CMD_EXECUTE_DIAGNOSTIC)
    assert pc.ack() == READY
    assert pc.inb(ERROR) == 0x01
    assert (pc.inb(NSECT), pc.inb(LBAL), pc.inb(LBAM), pc.inb(LBAH)) == (1, 1, 0, 0)


# --- IDENTIFY DEVICE. ---


def test_identify_words(pc: Pc) -> None:
    words = pc.identify()
    assert pc.interrupts == 1
    assert words[0] & 0x8000 == 0  # ATA, not ATAPI
    assert ata_text(words[27:47]) == "BT_VMM HARDDISK"
    assert ata_text(words[10:20]) == "BTVMM-1F0-0"
    assert ata_text(words[23:27]) == "1.0"
    # The raw bytes of the model field are swapped pairs, as ATA specifies.
    raw = b"".join(w.to_bytes(2, "little") for w in words[27:30])
    assert raw == b"TBV_MM"  # "BT_VMM" with each pair swapped
    assert words[49] & 0x0200  # LBA
    assert words[49] & 0x0100 == 0  # no DMA
    assert words[60] | words[61] << 16 == SECTORS
    assert (words[1], words[3], words[6]) == (SECTORS // (16 * 63), 16, 63)
    assert words[53] & 1
    assert (words[54], words[55], words[56]) == (4, 16, 63)
    assert words[57] | words[58] << 16 == 4 * 16 * 63
    assert words[47] == 0x8010  # up to 16 sectors per READ/WRITE MULTIPLE block
    assert words[59] == 0  # multiple mode not yet set
    assert words[83] & 0x0400 and words[86] & 0x0400  # LBA48
    assert sum(words[100 + i] << (16 * i) for i in range(4)) == SECTORS
    assert words[83] & 0x1000  # FLUSH CACHE
    assert words[255] & 0xFF == 0xA5
    assert sum(b"".join(w.to_bytes(2, "little") for w in words)) & 0xFF == 0  # checksum


def test_identify_with_32_bit_reads(pc: Pc) -> None:
    pc.select(0)
    pc.outb(COMMAND, ide.CMD_IDENTIFY)
    pc.ack()
    dwords = b"".join(pc.inl(DATA).to_bytes(4, "little") for _ in range(128))
    assert pc.inb(ALTSTATUS) == READY
    assert dwords == pc.channel.devices[0].identify()


def test_identify_packet_is_aborted(pc: Pc) -> None:
    pc.select(0)
    pc.outb(COMMAND, ide.CMD_IDENTIFY_PACKET)
    assert pc.ack() == READY | ST_ERR
    assert pc.inb(ERROR) == ER_ABRT
    # The signature still says ATA.
    assert (pc.inb(LBAM), pc.inb(LBAH)) == (0, 0)


def test_tiny_disk_geometry(tmp_path: Path) -> None:
    make_image(tmp_path / "t.img", 128)
    with open_disk(str(tmp_path / "t.img")) as disk:
        words = Pc(disk).identify()
    assert (words[1], words[3], words[6]) == (1, 2, 63)
    assert words[60] == 128


# --- Reading. ---


def test_read_one_sector_lba28(pc: Pc, image: tuple[Path, bytes]) -> None:
    data = image[1]
    pc.issue_lba28(ide.CMD_READ_SECTORS, 1234, 1)
    assert pc.pio_in(1) == data[1234 * 512 : 1235 * 512]
    assert pc.interrupts == 1
    assert pc.channel.commands[ide.CMD_READ_SECTORS] == 1
    # The taskfile is left on the last sector read, count exhausted.
    assert (pc.inb(LBAL), pc.inb(LBAM), pc.inb(NSECT)) == (1234 & 0xFF, 1234 >> 8, 0)


def test_read_many_sectors_interrupts_per_sector(pc: Pc, image: tuple[Path, bytes]) -> None:
    data = image[1]
    pc.issue_lba28(ide.CMD_READ_SECTORS, 4000, 96)  # up to the last sector
    assert pc.pio_in(96) == data[4000 * 512 :]
    assert pc.interrupts == 96


def test_sector_count_zero_means_256(pc: Pc, image: tuple[Path, bytes]) -> None:
    pc.issue_lba28(ide.CMD_READ_SECTORS, 10, 0)
    assert pc.pio_in(256) == image[1][10 * 512 : 266 * 512]


def test_polled_read_with_interrupts_disabled(pc: Pc, image: tuple[Path, bytes]) -> None:
    pc.outb(DEVCTL, DC_NIEN)
    pc.issue_lba28(ide.CMD_READ_SECTORS, 7, 3)
    got = b""
    for _ in range(3):
        status = pc.wait_not_busy()
        assert status & ST_DRQ
        got += pc.read_block()
    assert got == image[1][7 * 512 : 10 * 512]
    assert pc.levels == []  # nIEN: the line never moved
    assert pc.channel.devices[0].interrupt_pending  # but the device did interrupt
    pc.outb(DEVCTL, 0)
    assert pc.line  # unmasking shows the pending interrupt (level)
    pc.ack()


def test_read_chs(pc: Pc, image: tuple[Path, bytes]) -> None:
    cyl, head, sector = 2, 5, 17
    lba = (cyl * 16 + head) * 63 + sector - 1
    pc.issue_chs(ide.CMD_READ_SECTORS, cyl, head, sector, 50)  # crosses a track boundary
    assert pc.pio_in(50) == image[1][lba * 512 : (lba + 50) * 512]
    last = lba + 49
    assert (pc.inb(LBAL), pc.inb(LBAM) | pc.inb(LBAH) << 8, pc.inb(DEVICE) & 0x0F) == (
        last % 63 + 1, last // (16 * 63), last // 63 % 16)


def test_chs_addresses_outside_the_translation_are_idnf(pc: Pc) -> None:
    for cyl, head, sector in ((4, 0, 1), (0, 0, 0), (0, 0, 64)):
        pc.issue_chs(ide.CMD_READ_SECTORS, cyl, head, sector, 1)
        assert pc.ack() == READY | ST_ERR
        assert pc.inb(ERROR) == ER_IDNF
    # The last CHS sector exists; one more runs off the translation.
    pc.issue_chs(ide.CMD_READ_SECTORS, 3, 15, 63, 2)
    assert pc.ack() & ST_ERR


def test_initialize_device_parameters_changes_the_translation(pc: Pc, image: tuple[Path, bytes]) -> None:
    pc.outb(NSECT, 32)
    pc.select(0, extra=7)  # 8 heads
    pc.outb(COMMAND, ide.CMD_INITIALIZE_PARAMETERS)
    assert pc.ack() == READY
    cyl, head, sector = 3, 6, 9
    lba = (cyl * 8 + head) * 32 + sector - 1
    pc.issue_chs(ide.CMD_READ_SECTORS, cyl, head, sector, 2)
    assert pc.pio_in(2) == image[1][lba * 512 : (lba + 2) * 512]
    words = pc.identify()
    assert (words[54], words[55], words[56]) == (SECTORS // (8 * 32), 8, 32)
    assert (words[1], words[3], words[6]) == (4, 16, 63)  # the default is unchanged
    # A translation with no sectors is refused, and CHS stops working until fixed.
    pc.outb(NSECT, 0)
    pc.outb(COMMAND, ide.CMD_INITIALIZE_PARAMETERS)
    assert pc.ack() & ST_ERR and pc.inb(ERROR) == ER_ABRT
    pc.issue_chs(ide.CMD_READ_SECTORS, 0, 0, 1, 1)
    assert pc.ack() & ST_ERR and pc.inb(ERROR) == ER_IDNF


def test_read_multiple_interrupts_per_block(pc: Pc, image: tuple[Path, bytes]) -> None:
    pc.issue_lba28(ide.CMD_READ_MULTIPLE, 0, 1)
    assert pc.ack() & ST_ERR and pc.inb(ERROR) == ER_ABRT  # SET MULTIPLE first
    pc.outb(NSECT, 3)
    pc.outb(COMMAND, ide.CMD_SET_MULTIPLE)
    assert pc.ack() & ST_ERR  # not a power of two
    pc.outb(NSECT, 4)
    pc.outb(COMMAND, ide.CMD_SET_MULTIPLE)
    assert pc.ack() == READY
    assert pc.identify()[59] == 0x0104
    before = pc.interrupts
    pc.issue_lba28(ide.CMD_READ_MULTIPLE, 100, 10)
    assert pc.pio_in(10, per_block=4) == image[1][100 * 512 : 110 * 512]
    assert pc.interrupts - before == 3  # blocks of 4, 4 and 2


def test_read_verify(pc: Pc) -> None:
    pc.issue_lba28(ide.CMD_READ_VERIFY, 0, 0)
    assert pc.ack() == READY  # no data, one interrupt at completion
    reads = pc.channel.devices[0].disk.sectors_read
    assert reads == 256
    pc.issue_lba28(ide.CMD_READ_VERIFY, SECTORS - 1, 2)
    assert pc.ack() == READY | ST_ERR and pc.inb(ERROR) == ER_IDNF


def test_lba48_read_and_hob(pc: Pc, image: tuple[Path, bytes]) -> None:
    pc.issue_lba48(ide.CMD_READ_SECTORS_EXT, 3000, 300)  # more than 256 sectors
    assert pc.pio_in(300) == image[1][3000 * 512 : 3300 * 512]
    last = 3299
    assert (pc.inb(LBAL), pc.inb(LBAM), pc.inb(LBAH)) == (last & 0xFF, last >> 8, 0)
    pc.outb(DEVCTL, DC_HOB)
    assert (pc.inb(NSECT), pc.inb(LBAL), pc.inb(LBAM), pc.inb(LBAH)) == (0, 0, 0, 0)
    pc.outb(DEVCTL, 0)
    # An LBA beyond 28 bits is just another sector past the end of this disk.
    pc.issue_lba48(ide.CMD_READ_SECTORS_EXT, 1 << 30, 1)
    assert pc.ack() & ST_ERR and pc.inb(ERROR) == ER_IDNF


def test_hob_shows_the_previous_register_values(pc: Pc) -> None:
    pc.outb(LBAL, 0x11)
    pc.outb(LBAL, 0x22)
    assert pc.inb(LBAL) == 0x22
    pc.outb(DEVCTL, DC_HOB)
    assert pc.inb(LBAL) == 0x11
    pc.outb(NSECT, 1)  # any command block write clears HOB
    assert pc.inb(LBAL) == 0x22


# --- Writing. ---


def test_write_sectors_changes_exactly_those_bytes(pc: Pc, image: tuple[Path, bytes]) -> None:
    path, before = image
    new = random.Random(9).randbytes(3 * 512)
    seen_at_interrupt: list[bytes] = []
    disk = pc.channel.devices[0].disk
    real_irq = pc.channel._irq

    def irq(level: bool) -> None:
        if level:  # durability: the sector is in the file before the guest hears of it
            seen_at_interrupt.append(path.read_bytes()[500 * 512 : 503 * 512])
        real_irq(level)

    pc.channel._irq = irq
    pc.issue_lba28(ide.CMD_WRITE_SECTORS, 500, 3)
    assert pc.inb(ALTSTATUS) == READY | ST_DRQ and not pc.line  # first block: no interrupt
    pc.pio_out(new)
    assert pc.interrupts == 3
    assert seen_at_interrupt[0][:512] == new[:512]
    assert seen_at_interrupt[2] == new
    after = path.read_bytes()
    assert after[: 500 * 512] == before[: 500 * 512]
    assert after[500 * 512 : 503 * 512] == new
    assert after[503 * 512 :] == before[503 * 512 :]
    assert disk.sectors_written == 3
    assert (pc.inb(LBAL), pc.inb(LBAM), pc.inb(NSECT)) == (502 & 0xFF, 502 >> 8, 0)


def test_write_with_32_bit_accesses_and_chs(pc: Pc, image: tuple[Path, bytes]) -> None:
    path, before = image
    new = bytes(range(256)) * 2
    pc.issue_chs(ide.CMD_WRITE_SECTORS, 1, 0, 1, 1)  # LBA 1008
    for i in range(0, 512, 4):
        pc.outl(DATA, int.from_bytes(new[i : i + 4], "little"))
    assert pc.ack() == READY
    after = path.read_bytes()
    assert after == before[: 1008 * 512] + new + before[1009 * 512 :]


def test_write_multiple(pc: Pc, image: tuple[Path, bytes]) -> None:
    path, before = image
    pc.outb(NSECT, 8)
    pc.outb(COMMAND, ide.CMD_SET_MULTIPLE)
    pc.ack()
    new = random.Random(5).randbytes(20 * 512)
    first = pc.interrupts
    pc.issue_lba28(ide.CMD_WRITE_MULTIPLE, 2000, 20)
    # A block reaches the image in one request when its last word is in,
    # before the interrupt that tells the guest it is done; not sector by sector.
    pc.write_block(new[:512])
    assert path.read_bytes()[2000 * 512 : 2001 * 512] == before[2000 * 512 : 2001 * 512]
    assert not pc.line and pc.inb(ALTSTATUS) & ST_DRQ
    pc.write_block(new[512 : 8 * 512])
    assert path.read_bytes()[2000 * 512 : 2008 * 512] == new[: 8 * 512]
    assert pc.line
    pc.ack()
    pc.pio_out(new[8 * 512 :], per_block=8)
    assert pc.interrupts - first == 3  # blocks of 8, 8, 4
    after = path.read_bytes()
    assert after == before[: 2000 * 512] + new + before[2020 * 512 :]


def test_lba48_write(pc: Pc, image: tuple[Path, bytes]) -> None:
    path, before = image
    new = b"\x5A" * 512 * 2
    pc.issue_lba48(ide.CMD_WRITE_SECTORS_EXT, SECTORS - 2, 2)
    pc.pio_out(new)
    assert path.read_bytes() == before[:-1024] + new


def test_write_buffer_and_read_buffer(pc: Pc) -> None:
    pattern = bytes(range(256)) * 2
    pc.outb(COMMAND, ide.CMD_WRITE_BUFFER)
    pc.pio_out(pattern)
    pc.outb(COMMAND, ide.CMD_READ_BUFFER)
    assert pc.pio_in(1) == pattern


def test_flush_cache_fsyncs(pc: Pc) -> None:
    disk = pc.channel.devices[0].disk
    for command in (ide.CMD_FLUSH_CACHE, ide.CMD_FLUSH_CACHE_EXT):
        pc.outb(COMMAND, command)
        assert pc.ack() == READY
    assert disk.flushes == 2


def test_write_cache_off_flushes_every_write(pc: Pc) -> None:
    disk = pc.channel.devices[0].disk
    pc.outb(FEATURES, ide.SF_DISABLE_WRITE_CACHE)
    pc.outb(COMMAND, ide.CMD_SET_FEATURES)
    assert pc.ack() == READY
    assert pc.identify()[85] & 0x0020 == 0
    flushes = disk.flushes
    pc.issue_lba28(ide.CMD_WRITE_SECTORS, 0, 2)
    pc.pio_out(b"\0" * 1024)
    assert disk.flushes == flushes + 1


# --- Errors. ---


def test_read_beyond_the_end_is_idnf(pc: Pc) -> None:
    pc.issue_lba28(ide.CMD_READ_SECTORS, SECTORS - 1, 2)
    status = pc.ack()
    assert status == READY | ST_ERR
    assert pc.inb(ERROR) == ER_IDNF
    assert pc.inw(DATA) == 0xFFFF  # no data block
    assert pc.channel.errors == 1
    assert pc.channel.devices[0].disk.sectors_read == 0


def test_write_beyond_the_end_is_idnf_and_writes_nothing(pc: Pc, image: tuple[Path, bytes]) -> None:
    pc.issue_lba28(ide.CMD_WRITE_SECTORS, SECTORS, 1)
    assert pc.ack() == READY | ST_ERR
    assert pc.inb(ERROR) == ER_IDNF
    pc.write_block(b"\xff" * 512)
    assert pc.channel.stray_data_writes == 256
    assert image[0].read_bytes() == image[1]


def test_unknown_command_is_aborted(pc: Pc) -> None:
    for opcode in (0x00, 0xB0, 0xF8, 0xFF):
        pc.outb(COMMAND, opcode)
        assert pc.ack() == READY | ST_ERR
        assert pc.inb(ERROR) == ER_ABRT
    assert set(pc.channel.unsupported) == {0x00, 0xB0, 0xF8, 0xFF}
    assert pc.channel.errors == 4
    # The next good command clears ERR.
    pc.outb(COMMAND, ide.CMD_IDLE_IMMEDIATE)
    assert pc.ack() == READY
    assert pc.inb(ERROR) == 0


def test_write_to_read_only_image_is_aborted(image: tuple[Path, bytes]) -> None:
    path, before = image
    mtime = path.stat().st_mtime_ns
    with open_disk(f"{path},ro") as disk:
        pc = Pc(disk)
        for command in (ide.CMD_WRITE_SECTORS, ide.CMD_WRITE_MULTIPLE):
            pc.issue_lba28(command, 0, 1)
            assert pc.ack() == READY | ST_ERR
            assert pc.inb(ERROR) == ER_ABRT
            pc.write_block(b"\x00" * 512)  # the guest pushes anyway: nowhere to go
        pc.issue_lba48(ide.CMD_WRITE_SECTORS_EXT, 0, 1)
        assert pc.ack() & ST_ERR
        # Reading still works.
        pc.issue_lba28(ide.CMD_READ_SECTORS, 0, 1)
        assert pc.pio_in(1) == before[:512]
        pc.outb(COMMAND, ide.CMD_FLUSH_CACHE)
        assert pc.ack() == READY
    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == mtime


def test_set_features(pc: Pc) -> None:
    for mode in (0x00, 0x01, 0x08, 0x0C):
        pc.outb(FEATURES, ide.SF_SET_TRANSFER_MODE)
        pc.outb(NSECT, mode)
        pc.outb(COMMAND, ide.CMD_SET_FEATURES)
        assert pc.ack() == READY, hex(mode)
    for mode in (0x0D, 0x22, 0x45):  # PIO 5, MWDMA 2, UDMA 5: not offered
        pc.outb(FEATURES, ide.SF_SET_TRANSFER_MODE)
        pc.outb(NSECT, mode)
        pc.outb(COMMAND, ide.CMD_SET_FEATURES)
        assert pc.ack() == READY | ST_ERR and pc.inb(ERROR) == ER_ABRT
    pc.outb(FEATURES, 0x31)  # no such subcommand here
    pc.outb(COMMAND, ide.CMD_SET_FEATURES)
    assert pc.ack() & ST_ERR
    assert pc.channel.unsupported[0xEF31] == 1


def test_power_commands(pc: Pc) -> None:
    for opcode in (ide.CMD_STANDBY_IMMEDIATE, ide.CMD_IDLE_IMMEDIATE, ide.CMD_STANDBY, ide.CMD_IDLE,
                   ide.CMD_SLEEP, ide.CMD_RECALIBRATE):
        pc.outb(COMMAND, opcode)
        assert pc.ack() == READY
    pc.outb(COMMAND, ide.CMD_CHECK_POWER_MODE)
    assert pc.ack() == READY
    assert pc.inb(NSECT) == 0xFF


class FailingDisk:
    """A backend whose host file has gone bad: reads and writes move nothing."""

    sectors = 64
    read_only = False
    buffer = memoryview(bytearray(ide.BUFFER_SECTORS * 512))

    def read_to_buffer(self, lba: int, count: int) -> int:
        return 0

    def write_from_buffer(self, lba: int, count: int) -> int:
        return 0

    def flush(self) -> None:
        raise OSError(5, "Input/output error")


class RecordingDisk(DiskImage):
    """An image that logs each host request, and can fail from a given sector on."""

    def __init__(self, path: str, fail_from: int | None = None) -> None:
        super().__init__(path)
        self.requests: list[tuple[str, int, int]] = []
        self.fail_from = fail_from

    def read_to_buffer(self, lba: int, count: int) -> int:
        self.requests.append(("read", lba, count))
        if self.fail_from is not None and lba + count > self.fail_from:
            return max(0, self.fail_from - lba) and super().read_to_buffer(lba, self.fail_from - lba)
        return super().read_to_buffer(lba, count)

    def write_from_buffer(self, lba: int, count: int) -> int:
        self.requests.append(("write", lba, count))
        return super().write_from_buffer(lba, count)


def test_reads_are_batched_and_writes_go_out_a_block_at_a_time(image: tuple[Path, bytes]) -> None:
    path, before = image
    disk = RecordingDisk(str(path))
    pc = Pc(disk)
    pc.issue_lba28(ide.CMD_READ_SECTORS, 10, 0)  # 256 sectors, 256 DRQ blocks, 256 interrupts
    assert pc.pio_in(256) == before[10 * 512 : 266 * 512]
    assert disk.requests == [("read", 10, 256)]  # one request to the host for all of them
    disk.requests.clear()
    pc.issue_lba28(ide.CMD_WRITE_SECTORS, 40, 3)
    pc.pio_out(b"\x11" * 3 * 512)
    assert disk.requests == [("write", 40, 1), ("write", 41, 1), ("write", 42, 1)]
    disk.close()


def test_a_host_read_error_inside_a_batch_fails_the_block_that_holds_it(image: tuple[Path, bytes]) -> None:
    path, before = image
    disk = RecordingDisk(str(path), fail_from=21)
    pc = Pc(disk)
    pc.outb(NSECT, 4)
    pc.outb(COMMAND, ide.CMD_SET_MULTIPLE)
    pc.ack()
    pc.issue_lba28(ide.CMD_READ_MULTIPLE, 12, 16)  # blocks 12-15, 16-19, 20-23 (fails at 21), 24-27
    for block in (12, 16):  # the good blocks arrive
        assert pc.ack() == READY | ST_DRQ
        assert pc.read_block(4 * 256) == before[block * 512 : (block + 4) * 512]
    assert pc.ack() == READY | ST_ERR
    assert pc.inb(ERROR) == ER_UNC
    assert pc.inb(LBAL) == 20  # the failing block's first sector
    assert disk.requests == [("read", 12, 16)]  # one request; it came back 9 sectors short
    disk.close()


def test_host_io_errors_become_ata_errors() -> None:
    pc = Pc(FailingDisk())  # type: ignore[arg-type]
    pc.issue_lba28(ide.CMD_READ_SECTORS, 9, 1)
    assert pc.ack() == READY | ST_ERR
    assert pc.inb(ERROR) == ER_UNC
    assert pc.inb(LBAL) == 9  # the failing sector
    pc.issue_lba28(ide.CMD_WRITE_SECTORS, 3, 1)
    pc.write_block(b"\0" * 512)
    assert pc.ack() == READY | ST_ERR | ST_DF
    assert pc.inb(ERROR) == ER_ABRT
    pc.outb(COMMAND, ide.CMD_FLUSH_CACHE)
    assert pc.ack() == READY | ST_ERR | ST_DF
    assert pc.channel.host_errors == 3
    pc.outb(COMMAND, ide.CMD_IDLE)
    assert pc.ack() == READY  # DF clears with the next command


# --- Interrupt delivery. ---


def test_status_read_clears_the_interrupt_alt_status_does_not(pc: Pc) -> None:
    pc.outb(COMMAND, ide.CMD_IDLE_IMMEDIATE)
    assert pc.line
    assert pc.inb(ALTSTATUS) == READY
    assert pc.line
    assert pc.inb(STATUS) == READY
    assert not pc.line
    assert pc.levels == [True, False]


def test_a_new_command_clears_the_pending_interrupt(pc: Pc) -> None:
    pc.outb(COMMAND, ide.CMD_IDLE)
    assert pc.line
    pc.outb(COMMAND, ide.CMD_IDLE)  # unacknowledged; the line drops and rises again
    assert pc.levels == [True, False, True]


def test_nien_masks_the_line(pc: Pc) -> None:
    pc.outb(DEVCTL, DC_NIEN)
    pc.outb(COMMAND, ide.CMD_IDLE)
    assert not pc.line and pc.levels == []
    assert pc.inb(STATUS) == READY  # acknowledged while masked
    pc.outb(DEVCTL, 0)
    assert pc.levels == []
    pc.outb(COMMAND, ide.CMD_IDLE)
    assert pc.line
    pc.outb(DEVCTL, DC_NIEN)
    assert not pc.line  # masking an asserted interrupt drops the line
    pc.outb(DEVCTL, 0)
    assert pc.line
    pc.ack()


def test_only_the_selected_device_drives_intrq(tmp_path: Path) -> None:
    make_image(tmp_path / "a.img", 64)
    make_image(tmp_path / "b.img", 64)
    with open_disk(str(tmp_path / "a.img")) as a, open_disk(str(tmp_path / "b.img")) as b:
        pc = Pc(a, b)
        pc.select(0)
        pc.outb(COMMAND, ide.CMD_IDLE)
        assert pc.line
        pc.select(1)
        assert not pc.line  # device 0's INTRQ is released while device 1 is selected
        assert pc.inb(STATUS) == READY  # device 1's status: does not touch device 0
        pc.select(0)
        assert pc.line
        pc.ack()
        words = pc.identify(1)
        assert ata_text(words[10:20]) == "BTVMM-1F0-1"


def test_a_new_command_abandons_a_transfer(pc: Pc, image: tuple[Path, bytes]) -> None:
    pc.issue_lba28(ide.CMD_READ_SECTORS, 0, 4)
    pc.ack()
    pc.read_block(100)
    pc.issue_lba28(ide.CMD_READ_SECTORS, 8, 1)
    assert pc.pio_in(1) == image[1][8 * 512 : 9 * 512]


def test_hardware_reset_restores_power_on_settings(pc: Pc) -> None:
    pc.outb(NSECT, 16)
    pc.outb(COMMAND, ide.CMD_SET_MULTIPLE)
    pc.ack()
    pc.outb(DEVCTL, DC_SRST)
    pc.outb(DEVCTL, 0)
    assert pc.channel.devices[0].multiple == 16  # kept across SRST (no reverting)
    pc.outb(DEVCTL, DC_NIEN)
    pc.channel.reset()
    assert pc.channel.devices[0].multiple == 0
    assert pc.inb(STATUS) == READY
    assert pc.channel.device_control == 0
    assert (pc.inb(NSECT), pc.inb(LBAL), pc.inb(LBAM), pc.inb(LBAH)) == (1, 1, 0, 0)


def test_byte_access_to_the_data_port_moves_a_word(pc: Pc) -> None:
    pc.outb(COMMAND, ide.CMD_IDENTIFY)
    pc.ack()
    expected = pc.channel.devices[0].identify()
    assert pc.inb(DATA) == expected[0]
    assert pc.inw(DATA) == int.from_bytes(expected[2:4], "little")
    assert pc.channel.byte_data_accesses == 1


def test_a_transfer_in_flight_survives_state_and_restore(tmp_path: Path) -> None:
    """Snapshots: a block in flight lives in the drive's buffer; state() saves
    its bytes, restore() puts them back there, and the read-ahead is read
    again -- a data-in and a data-out transfer go on as if nothing happened."""
    import json
    before = make_image(tmp_path / "a.img", 64)
    with open_disk(str(tmp_path / "a.img")) as disk:
        pc = Pc(disk)
        pc.issue_lba28(ide.CMD_READ_SECTORS, 3, 4)
        assert pc.ack() == READY | ST_DRQ
        first = pc.read_block(100)                              # part of the first sector
        saved = json.loads(json.dumps(pc.channel.devices[0].state()))
        disk.buffer[:] = bytes(len(disk.buffer))                # the buffer is reused meanwhile
        pc.channel.devices[0].restore(saved)
        rest = pc.read_block(156)
        assert first + rest == before[3 * 512:4 * 512]
        assert pc.pio_in(3) == before[4 * 512:7 * 512]          # read again from the image
        pc.issue_lba28(ide.CMD_WRITE_SECTORS, 10, 1)
        pc.wait_not_busy()
        pc.write_block(b"\x5A" * 200)
        saved = json.loads(json.dumps(pc.channel.devices[0].state()))
        disk.buffer[:] = bytes(len(disk.buffer))
        pc.channel.devices[0].restore(saved)
        pc.write_block(b"\x5A" * 312)
        assert pc.ack() == READY
    assert (tmp_path / "a.img").read_bytes()[10 * 512:11 * 512] == b"\x5A" * 512
