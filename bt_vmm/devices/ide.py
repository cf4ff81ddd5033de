"""An IDE (parallel ATA) channel as the PIIX decodes it in legacy mode, with up
to two ATA hard disks on it, programmed through PIO only.

The module follows ATA/ATAPI-6: the register map, the status and error bits,
the device signature, IDENTIFY DEVICE's words, then the commands. Each channel
is eight command-block ports and one control-block port:

    primary    0x1F0-0x1F7 + 0x3F6   IRQ 14
    secondary  0x170-0x177 + 0x376   IRQ 15

(0x3F7/0x377 are not decoded here: on a PC bit 7 of 0x3F7 is the floppy
controller's disk-change line.)

Both devices on a cable see every register write (they keep identical copies
of the taskfile, so one copy lives here); only the device the DEV bit selects
answers reads and executes commands. A selected device that is absent next to
a present one reads Status and Alternate Status as 0, which is how drivers
learn it is not there (the present device answers the other registers, as
ATA-6 lets device 0 do for a missing device 1); with neither device present
nothing drives the bus and every register reads 0xFF.

Transfers are instantaneous: a command has finished its "busy" phase by the
time the OUT that wrote it returns, and the next DRQ data block is ready the
moment the previous one is drained, so a polling guest never observes BSY set
(except while it holds SRST). DRQ is set while a data block is pending.

Interrupts follow the PIO protocols: for data-in commands (READ SECTORS,
IDENTIFY DEVICE, ...) INTRQ is asserted when each data block is ready and not
at the end; for data-out commands (WRITE SECTORS, ...) the first block is
requested without an interrupt and INTRQ is asserted after each block has been
written to the image; non-data commands assert it at completion. Reading
Status (not Alternate Status) or writing Command clears the pending interrupt.
The line is a level: `irq(True)` when the selected device has an interrupt
pending and nIEN is clear, `irq(False)` as soon as that stops being true
(Status read, new command, nIEN set, SRST, the other device selected); `irq`
is called only when the level changes. An interrupt that is never acknowledged
keeps the line high, so the next one makes no new edge for an edge-triggered
8259 -- as with a real drive.

Data moves through the drive's data buffer, which the disk backend owns (in
the memory the two worlds share, when the host world is its own process):
reads fill it a batch of up to 256 sectors at a time (one request to the host
for a whole READ SECTORS of up to 256 sectors, however many DRQ blocks the
guest pulls it in), and each data-out block goes to the host image in one
request when its last word arrives -- before the interrupt that completes the
block, so every sector write the guest has seen finish is in the host file.
FLUSH CACHE fsyncs it. If the guest turns the write cache
off (SET FEATURES 82h), every write command is fsynced before it completes.
Host I/O errors become ATA errors: UNC for a failed read, DF+ABRT for a failed
write or flush, and are counted.

Addressing: CHS (default translation of 16 heads and 63 sectors per track,
changeable with INITIALIZE DEVICE PARAMETERS), LBA28, and LBA48 through the
EXT commands. A sector count of 0 means 256 (65536 for EXT commands). A range
that does not fit on the disk fails with IDNF before any sector moves; a write
to a read-only image fails with ABRT before any data is requested.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Protocol

from bt_vmm.devices.state import DeviceState

SECTOR_SIZE = 512  # bytes per sector, and per DRQ block of the single-sector commands

# --- Command block register offsets from the base port (0x1F0 / 0x170). ---
DATA = 0  # 16-bit PIO data; a 32-bit access moves two words, low word first
ERROR = 1  # read: why ERR is set; the diagnostic code after reset/diagnostics
FEATURES = 1  # write: command parameter (SET FEATURES subcommand)
SECTOR_COUNT = 2  # sectors to transfer (0 = 256); command results
LBA_LOW = 3  # LBA bits 7:0; CHS: sector number (1-based)
LBA_MID = 4  # LBA bits 15:8; CHS: cylinder bits 7:0
LBA_HIGH = 5  # LBA bits 23:16; CHS: cylinder bits 15:8
DEVICE = 6  # device/head: DEV, LBA, and head number or LBA bits 27:24
STATUS = 7  # read: device status; clears the pending interrupt
COMMAND = 7  # write: the command to execute
COMMAND_BLOCK_PORTS = 8  # base .. base+7

# --- Control block register, at the ctrl port (0x3F6 / 0x376). ---
ALT_STATUS = 0  # read: status without clearing the pending interrupt
DEVICE_CONTROL = 0  # write: nIEN, SRST, HOB
CONTROL_BLOCK_PORTS = 1  # only ctrl itself; ctrl+1 is the floppy's DIR on a PC

# --- Status register bits. ---
ST_BSY = 0x80  # busy: the device owns the registers (seen only while SRST is held)
ST_DRDY = 0x40  # device ready to accept commands
ST_DF = 0x20  # device fault (here: the host image failed a write or flush)
ST_DSC = 0x10  # device seek complete (obsolete; set as every disk sets it)
ST_DRQ = 0x08  # data request: a data block is waiting on the data port
ST_CORR = 0x04  # corrected data (obsolete; never)
ST_IDX = 0x02  # index (obsolete; never)
ST_ERR = 0x01  # the last command failed: see the error register
ST_IDLE = ST_DRDY | ST_DSC  # 0x50: ready, nothing pending

# --- Error register bits. ---
ER_ICRC = 0x80  # interface CRC error (UDMA only; never)
ER_UNC = 0x40  # uncorrectable data: the host image failed a read
ER_MC = 0x20  # media changed (removable media; never)
ER_IDNF = 0x10  # ID not found: the address is beyond the disk (or bad CHS)
ER_MCR = 0x08  # media change request (never)
ER_ABRT = 0x04  # command aborted: unsupported, bad parameter, or read-only image
ER_TK0NF = 0x02  # track 0 not found (never)
ER_AMNF = 0x01  # address mark not found (never)
DIAG_PASSED = 0x01  # error register after reset or EXECUTE DEVICE DIAGNOSTIC: no error

# --- Device/head register bits. ---
DEV_OBSOLETE = 0xA0  # bits 7 and 5: drivers write them as ones (old "512-byte sectors")
DEV_LBA = 0x40  # address is an LBA (else CHS)
DEV_DEV = 0x10  # selects device 1 (slave); clear selects device 0 (master)
DEV_HEAD = 0x0F  # CHS head number, or LBA bits 27:24

# --- Device control register bits. ---
DC_NIEN = 0x02  # interrupt disable: the device releases INTRQ
DC_SRST = 0x04  # software reset of both devices while set
DC_HOB = 0x80  # high-order byte: reads return the previous (LBA48 upper) values

# --- Commands. ---
CMD_RECALIBRATE = 0x10  # 10h-1Fh, obsolete: accepted, nothing to do
CMD_READ_SECTORS = 0x20
CMD_READ_SECTORS_NORETRY = 0x21  # obsolete alias of 20h
CMD_READ_SECTORS_EXT = 0x24  # LBA48
CMD_READ_MULTIPLE_EXT = 0x29  # LBA48
CMD_WRITE_SECTORS = 0x30
CMD_WRITE_SECTORS_NORETRY = 0x31  # obsolete alias of 30h
CMD_WRITE_SECTORS_EXT = 0x34  # LBA48
CMD_WRITE_MULTIPLE_EXT = 0x39  # LBA48
CMD_READ_VERIFY = 0x40
CMD_READ_VERIFY_NORETRY = 0x41  # obsolete alias of 40h
CMD_READ_VERIFY_EXT = 0x42  # LBA48
CMD_SEEK = 0x70  # 70h-7Fh, obsolete: the address is checked, nothing moves
CMD_EXECUTE_DIAGNOSTIC = 0x90  # both devices run diagnostics, whichever is selected
CMD_INITIALIZE_PARAMETERS = 0x91  # set the CHS translation (heads, sectors per track)
CMD_IDENTIFY_PACKET = 0xA1  # ATAPI only: an ATA disk aborts it
CMD_READ_MULTIPLE = 0xC4
CMD_WRITE_MULTIPLE = 0xC5
CMD_SET_MULTIPLE = 0xC6  # sectors per DRQ block for READ/WRITE MULTIPLE
CMD_STANDBY_IMMEDIATE = 0xE0
CMD_IDLE_IMMEDIATE = 0xE1
CMD_STANDBY = 0xE2
CMD_IDLE = 0xE3
CMD_READ_BUFFER = 0xE4  # reads back the 512-byte buffer WRITE BUFFER filled
CMD_CHECK_POWER_MODE = 0xE5  # answers "active or idle" in the sector count
CMD_SLEEP = 0xE6  # accepted; a disk with no platters wakes at once
CMD_FLUSH_CACHE = 0xE7
CMD_WRITE_BUFFER = 0xE8
CMD_FLUSH_CACHE_EXT = 0xEA
CMD_IDENTIFY = 0xEC
CMD_SET_FEATURES = 0xEF

# --- SET FEATURES subcommands (features register). ---
SF_ENABLE_WRITE_CACHE = 0x02
SF_SET_TRANSFER_MODE = 0x03  # mode in the sector count
SF_DISABLE_READ_LOOKAHEAD = 0x55
SF_DISABLE_REVERT = 0x66  # keep settings across a software reset
SF_DISABLE_WRITE_CACHE = 0x82
SF_ENABLE_READ_LOOKAHEAD = 0xAA
SF_ENABLE_REVERT = 0xCC  # software reset restores power-on settings
XFER_PIO_DEFAULT = 0x00  # transfer mode values: PIO default mode
XFER_PIO_DEFAULT_NO_IORDY = 0x01  # PIO default, IORDY disabled
XFER_PIO_FLOW = 0x08  # 08h + n: PIO flow-control mode n (0-4); DMA modes are not offered
MAX_PIO_MODE = 4  # PIO modes 3 and 4 advertised in word 64

CHECK_POWER_ACTIVE = 0xFF  # CHECK POWER MODE's sector count: active or idle

# --- Geometry and limits. ---
DEFAULT_HEADS = 16  # the standard default translation
DEFAULT_SECTORS_PER_TRACK = 63
MAX_DEFAULT_CYLINDERS = 16383  # word 1 caps at 16383 (8.4 GB of CHS)
MAX_CHS_SECTORS = MAX_DEFAULT_CYLINDERS * DEFAULT_HEADS * DEFAULT_SECTORS_PER_TRACK
LBA28_MAX_SECTORS = 0x0FFFFFFF  # words 60-61 cap; LBA28 reaches sectors below it
MAX_MULTIPLE = 16  # the largest READ/WRITE MULTIPLE block, in sectors (word 47)
BUFFER_SECTORS = 256  # sectors read from the host per request (a multiple of every block size)

# --- IDENTIFY DEVICE identity strings (ASCII, padded with spaces). ---
MODEL = "BT_VMM HARDDISK"  # words 27-46, 40 characters
FIRMWARE = "1.0"  # words 23-26, 8 characters
SERIAL_PREFIX = "BTVMM"  # words 10-19: "BTVMM-1F0-0", by channel and position


class DiskBackend(Protocol):
    """What the device needs from a disk (hosted.disk.DiskImage is one; so is
    the VMM world's proxy for an image the host world holds)."""

    sectors: int
    read_only: bool
    buffer: memoryview  # the drive's data buffer: at least BUFFER_SECTORS sectors

    def read_to_buffer(self, lba: int, count: int) -> int:
        """Sectors into the buffer's start; how many were read (fewer: a host error)."""
    def write_from_buffer(self, lba: int, count: int) -> int:
        """Sectors from the buffer's start to the image; how many were written."""
    def flush(self) -> None: ...


@dataclass(frozen=True)
class ChannelPorts:
    """Where a legacy-mode PIIX channel lives: command block, control port, IRQ."""

    base: int  # command block: base .. base+7
    ctrl: int  # alternate status / device control
    irq: int  # ISA IRQ line in legacy mode

    def ranges(self) -> tuple[tuple[int, int], ...]:
        """(first port, count) pairs to register on the port bus."""
        return ((self.base, COMMAND_BLOCK_PORTS), (self.ctrl, CONTROL_BLOCK_PORTS))


PRIMARY = ChannelPorts(base=0x1F0, ctrl=0x3F6, irq=14)
SECONDARY = ChannelPorts(base=0x170, ctrl=0x376, irq=15)
PORTS = (PRIMARY, SECONDARY)  # both legacy channels, primary first


def default_geometry(sectors: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track) of the default CHS translation:
    16 heads of 63 sectors, at most 16383 cylinders; disks smaller than one
    such cylinder get fewer heads (and tracks) so that they have one."""
    spt = min(DEFAULT_SECTORS_PER_TRACK, sectors)
    heads = max(1, min(DEFAULT_HEADS, sectors // spt))
    cylinders = max(1, min(MAX_DEFAULT_CYLINDERS, sectors // (heads * spt)))
    return cylinders, heads, spt


def ata_string(text: str, words: int) -> list[int]:
    """An IDENTIFY string field: ASCII padded with spaces, the first character
    of each pair in the high byte (so the bytes look swapped in memory)."""
    raw = text.encode("ascii")[: 2 * words].ljust(2 * words, b" ")
    return [raw[i] << 8 | raw[i + 1] for i in range(0, len(raw), 2)]


@dataclass
class Transfer:
    """A PIO command with data blocks still to move."""

    command: int
    writing: bool  # data-out (host to device)
    lba: int | None  # next sector to move; None for IDENTIFY and the buffer commands
    remaining: int  # sectors not yet moved (0 for the non-media transfers)
    per_block: int  # sectors per DRQ block
    mode: str  # "chs", "lba28" or "lba48": how the address is reported back
    block_sectors: int = 0  # sectors in the block now in the buffer
    batch_lba: int = 0  # data-in: the first sector the drive buffer holds ...
    batch_sectors: int = 0  # ... and how many it holds, read ahead of the guest


class AtaDevice(DeviceState):
    """One device position on a channel: its disk (or None), status and settings."""

    # Snapshot state (devices/state.py): status, settings and the data block in flight
    # (the transfer it belongs to is saved by state() below).
    STATE = ("status", "error", "interrupt_pending", "buffer", "pos", "sector_buffer", "heads",
             "spt", "multiple", "write_cache", "read_lookahead", "revert_on_reset", "pio_mode")

    def __init__(self, disk: DiskBackend | None, serial: str) -> None:
        self.disk = disk
        self.serial = serial
        self.status = ST_IDLE if disk is not None else 0
        self.error = DIAG_PASSED
        self.interrupt_pending = False  # INTRQ, before nIEN and selection gate it
        self.buffer = bytearray()  # the DRQ block being transferred
        self.pos = 0  # bytes of `buffer` already transferred
        self.transfer: Transfer | None = None
        self.sector_buffer = bytearray(SECTOR_SIZE)  # WRITE BUFFER / READ BUFFER
        self.power_on_settings()

    @property
    def present(self) -> bool:
        return self.disk is not None

    def power_on_settings(self) -> None:
        """The settings a hardware reset (and, if reverting is on, SRST) restores."""
        sectors = self.disk.sectors if self.disk is not None else 0
        cyl, heads, spt = default_geometry(sectors) if sectors else (0, 0, 0)
        self.default_cylinders, self.default_heads, self.default_spt = cyl, heads, spt
        self.heads = heads  # current CHS translation (INITIALIZE DEVICE PARAMETERS)
        self.spt = spt
        self.multiple = 0  # sectors per READ/WRITE MULTIPLE block; 0 = disabled
        self.write_cache = True  # host page cache, fsynced at FLUSH CACHE
        self.read_lookahead = True  # no effect: nothing to read ahead of
        self.revert_on_reset = False  # SET FEATURES CCh/66h
        self.pio_mode = MAX_PIO_MODE  # the mode SET FEATURES 03h last selected

    @property
    def cylinders(self) -> int:
        """Cylinders of the current CHS translation (0 if it is invalid)."""
        if not self.heads or not self.spt or self.disk is None:
            return 0
        chs_sectors = min(self.disk.sectors, MAX_CHS_SECTORS)
        return min(chs_sectors // (self.heads * self.spt), 0xFFFF)

    def end_transfer(self) -> None:
        self.transfer = None
        self.buffer = bytearray()
        self.pos = 0

    def state(self) -> dict:
        # A media block in flight is a view of the drive's buffer: saved as its
        # bytes. Sectors read ahead of it are not saved; they are read again.
        block = self.buffer
        self.buffer = bytearray(block)
        try:
            saved = super().state()
        finally:
            self.buffer = block
        saved["transfer"] = None if self.transfer is None else dict(
            vars(self.transfer), batch_lba=0, batch_sectors=0)
        return saved

    def restore(self, state: dict) -> None:
        super().restore(state)
        t = state["transfer"]
        self.transfer = xfer = None if t is None else Transfer(**t)
        if xfer is not None and xfer.lba is not None and self.disk is not None:
            # The block goes back into the drive's buffer, where the disk moves it.
            n = len(self.buffer)
            self.disk.buffer[:n] = self.buffer
            self.buffer = self.disk.buffer[:n]
            if not xfer.writing:
                xfer.batch_lba, xfer.batch_sectors = xfer.lba, xfer.block_sectors

    def identify(self) -> bytes:
        """IDENTIFY DEVICE's 256 words, as they cross the data port (little-endian)."""
        assert self.disk is not None
        sectors = self.disk.sectors
        words = [0] * 256
        words[0] = 0x0040  # ATA device, not removable
        words[1] = self.default_cylinders
        words[3] = self.default_heads
        words[6] = self.default_spt
        words[10:20] = ata_string(self.serial, 10)
        words[23:27] = ata_string(FIRMWARE, 4)
        words[27:47] = ata_string(MODEL, 20)
        words[47] = 0x8000 | MAX_MULTIPLE  # bits 15:8 are 80h by definition
        # LBA, IORDY supported and may be disabled, standard standby timer; no DMA.
        words[49] = 0x2000 | 0x0800 | 0x0400 | 0x0200
        words[50] = 0x4000
        words[51] = 0x0200  # obsolete PIO timing mode: 2
        words[53] = 0x0003  # words 54-58 and 64-70 are valid
        cylinders = self.cylinders
        words[54] = cylinders
        words[55] = self.heads
        words[56] = self.spt
        capacity = cylinders * self.heads * self.spt
        words[57], words[58] = capacity & 0xFFFF, capacity >> 16
        words[59] = (0x0100 | self.multiple) if self.multiple else 0
        lba28 = min(sectors, LBA28_MAX_SECTORS)
        words[60], words[61] = lba28 & 0xFFFF, lba28 >> 16
        words[64] = 0x0003  # advanced PIO modes 3 and 4
        words[67] = 120  # minimum PIO cycle time without flow control (ns)
        words[68] = 120  # minimum PIO cycle time with IORDY (ns)
        words[80] = 0x007E  # ATA-1 through ATA/ATAPI-6
        # Supported: READ BUFFER, WRITE BUFFER, write cache, look-ahead, power management.
        words[82] = 0x2000 | 0x1000 | 0x0040 | 0x0020 | 0x0008
        words[83] = 0x4000 | 0x2000 | 0x1000 | 0x0400  # FLUSH CACHE (EXT), 48-bit address
        words[84] = 0x4000
        enabled = 0x2000 | 0x1000 | 0x0008
        if self.write_cache:
            enabled |= 0x0020
        if self.read_lookahead:
            enabled |= 0x0040
        words[85] = enabled
        words[86] = 0x2000 | 0x1000 | 0x0400
        words[87] = 0x4000
        for i in range(4):  # words 100-103: sectors reachable with LBA48
            words[100 + i] = sectors >> (16 * i) & 0xFFFF
        words[255] = 0x00A5  # integrity word: signature A5h, checksum below
        data = bytearray(b"".join(w.to_bytes(2, "little") for w in words))
        data[511] = -sum(data[:511]) & 0xFF
        return bytes(data)


class IdeChannel(DeviceState):
    """One IDE channel: two device positions behind eight ports, a control port and an IRQ."""

    # Snapshot state (devices/state.py): the taskfile and the line; each device's below.
    STATE = ("taskfile", "previous", "device_reg", "device_control", "irq_level")

    def __init__(
        self,
        base: int,
        ctrl: int,
        irq: Callable[[bool], None] | None,
        master: DiskBackend | None = None,
        slave: DiskBackend | None = None,
    ) -> None:
        self.base = base
        self.ctrl = ctrl
        self._irq = irq
        self.devices = (
            AtaDevice(master, f"{SERIAL_PREFIX}-{base:03X}-0"),
            AtaDevice(slave, f"{SERIAL_PREFIX}-{base:03X}-1"),
        )

        # The taskfile, latched by both devices. `previous` holds the value each
        # register had before its last write: the upper bytes of an LBA48
        # address and count, read back with HOB set.
        self.taskfile = [0] * COMMAND_BLOCK_PORTS  # indexed by offset; FEATURES..LBA_HIGH used
        self.previous = [0] * COMMAND_BLOCK_PORTS
        self.device_reg = 0  # device/head register
        self.device_control = 0  # nIEN, SRST, HOB
        self.irq_level = False  # the line as last reported to `irq`

        # Counters.
        self.commands: Counter[int] = Counter()  # opcodes executed, by opcode
        self.unsupported: Counter[int] = Counter()  # opcodes aborted as not implemented
        self.errors = 0  # commands that ended with ERR set
        self.host_errors = 0  # host I/O errors on the image (reported as UNC or DF)
        self.resets = 0  # software resets (SRST pulses)
        self.ignored_commands = 0  # commands to an absent device, or while SRST is held
        self.stray_data_reads = 0  # data port reads with no data-in block pending
        self.stray_data_writes = 0  # data port writes with no data-out block pending
        self.byte_data_accesses = 0  # 8-bit data port accesses (served as one word each)
        self.wide_accesses = 0  # 16/32-bit accesses to 8-bit registers (served as bytes)

        self.reset()

    @property
    def port_ranges(self) -> tuple[tuple[int, int], ...]:
        """(first port, count) pairs to register on the port bus."""
        return ((self.base, COMMAND_BLOCK_PORTS), (self.ctrl, CONTROL_BLOCK_PORTS))

    def state(self) -> dict:
        saved = super().state()
        saved["devices"] = [dev.state() for dev in self.devices]
        return saved

    def restore(self, state: dict) -> None:
        super().restore(state)
        for dev, saved in zip(self.devices, state["devices"]):
            dev.restore(saved)

    @property
    def selected(self) -> int:
        """The device (0 or 1) that the DEV bit selects."""
        return 1 if self.device_reg & DEV_DEV else 0

    # --- Guest side. ---

    def io_read(self, port: int, size: int) -> int:
        if port == self.ctrl:
            # Polling without disturbing the interrupt (and the 400 ns delay idiom).
            return self._status(acknowledge=False)
        offset = self._offset(port)
        if offset == DATA:
            # PIO data-in: the driver pulls a block, usually with `rep insw`.
            return self._read_data(size)
        if size != 1:
            self.wide_accesses += 1
        if not any(d.present for d in self.devices):
            return 0xFF  # nothing drives the bus
        if offset == STATUS:
            # The interrupt handler's acknowledgement, or a polling loop.
            return self._status(acknowledge=True)
        if offset == DEVICE:
            return self.device_reg
        if offset == ERROR:
            # Why the last command failed, or the diagnostic code after reset.
            return self._responder().error
        # Sector count / LBA: command results, signatures, or the devchk probe's pattern.
        if self.device_control & DC_HOB:
            return self.previous[offset]
        return self.taskfile[offset]

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == self.ctrl:
            # Interrupt enable/disable, software reset, or HOB for reading LBA48 results.
            self._write_device_control(value & 0xFF)
            return
        offset = self._offset(port)
        if offset == DATA:
            # PIO data-out: the driver pushes a block, usually with `rep outsw`.
            self._write_data(size, value)
            return
        if size != 1:
            self.wide_accesses += 1
        value &= 0xFF
        if not any(d.present for d in self.devices):
            return  # nobody latches anything
        self.device_control &= ~DC_HOB  # any command block write clears HOB
        if offset == COMMAND:
            self._command(value)
        elif offset == DEVICE:
            # Device selection (probing, or before a command) plus head / LBA 27:24.
            self.device_reg = value
            self._update_irq()
        else:
            # Command parameters; the two-deep FIFO keeps the LBA48 upper bytes.
            self.previous[offset] = self.taskfile[offset]
            self.taskfile[offset] = value

    def reset(self) -> None:
        """Hardware reset (RESET-): both devices return to their power-on state."""
        self.device_control = 0
        for dev in self.devices:
            dev.power_on_settings()
        self._reset_devices()
        self._update_irq()

    # --- Registers. ---

    def _offset(self, port: int) -> int:
        offset = port - self.base
        if not 0 <= offset < COMMAND_BLOCK_PORTS:
            raise ValueError(f"port {port:#x} is not an IDE port (base {self.base:#x}, ctrl {self.ctrl:#x})")
        return offset

    def _responder(self) -> AtaDevice:
        """The device that answers register reads: the selected one, or the
        present one when the selected device is absent."""
        dev = self.devices[self.selected]
        return dev if dev.present else self.devices[1 - self.selected]

    def _status(self, acknowledge: bool) -> int:
        if not any(d.present for d in self.devices):
            return 0xFF
        dev = self.devices[self.selected]
        if not dev.present:
            return 0  # no drive: not busy, not ready, nothing
        if self.device_control & DC_SRST:
            return ST_BSY
        if acknowledge and dev.interrupt_pending:
            dev.interrupt_pending = False
            self._update_irq()
        return dev.status

    def _write_device_control(self, value: int) -> None:
        was_reset = self.device_control & DC_SRST
        self.device_control = value
        if value & DC_SRST and not was_reset:
            # SRST asserted: both devices stop whatever they were doing and stay busy.
            self.resets += 1
            for dev in self.devices:
                dev.end_transfer()
                dev.interrupt_pending = False
        elif was_reset and not value & DC_SRST:
            # SRST released: reset completes at once, leaving the signature.
            for dev in self.devices:
                if dev.revert_on_reset:
                    dev.power_on_settings()
            self._reset_devices()
        self._update_irq()

    def _reset_devices(self) -> None:
        """The end of any reset or diagnostics: idle devices and the ATA signature."""
        for dev in self.devices:
            dev.end_transfer()
            dev.interrupt_pending = False
            dev.status = ST_IDLE if dev.present else 0
            dev.error = DIAG_PASSED
        self._set_signature()

    def _set_signature(self) -> None:
        # ATA device signature: count 01h, LBA low 01h, mid 00h, high 00h, device 00h.
        for offset, value in ((SECTOR_COUNT, 1), (LBA_LOW, 1), (LBA_MID, 0), (LBA_HIGH, 0)):
            self.taskfile[offset] = value
            self.previous[offset] = 0
        self.device_reg = 0

    def _update_irq(self) -> None:
        """Recompute INTRQ (selected device pending, nIEN clear) and report changes."""
        dev = self.devices[self.selected]
        level = dev.present and dev.interrupt_pending and not self.device_control & (DC_NIEN | DC_SRST)
        if level != self.irq_level:
            self.irq_level = level
            if self._irq is not None:
                self._irq(level)

    # --- The data port. ---

    def _read_data(self, size: int) -> int:
        if size == 4:
            low = self._read_word()
            return low | self._read_word() << 16
        if size == 1:
            self.byte_data_accesses += 1
            return self._read_word() & 0xFF
        return self._read_word()

    def _write_data(self, size: int, value: int) -> None:
        if size == 4:
            self._write_word(value & 0xFFFF)
            self._write_word(value >> 16 & 0xFFFF)
            return
        if size == 1:
            self.byte_data_accesses += 1
        self._write_word(value & 0xFFFF)

    def _read_word(self) -> int:
        dev = self.devices[self.selected]
        xfer = dev.transfer
        if self.device_control & DC_SRST or xfer is None or xfer.writing or not dev.status & ST_DRQ:
            self.stray_data_reads += 1
            return 0xFFFF
        word = dev.buffer[dev.pos] | dev.buffer[dev.pos + 1] << 8
        dev.pos += 2
        if dev.pos == len(dev.buffer):
            self._block_read(dev, xfer)
        return word

    def _write_word(self, word: int) -> None:
        dev = self.devices[self.selected]
        xfer = dev.transfer
        if self.device_control & DC_SRST or xfer is None or not xfer.writing or not dev.status & ST_DRQ:
            self.stray_data_writes += 1
            return
        dev.buffer[dev.pos] = word & 0xFF
        dev.buffer[dev.pos + 1] = word >> 8
        dev.pos += 2
        if dev.pos == len(dev.buffer):
            if xfer.lba is not None and not self._block_stored(dev, xfer):
                return
            self._block_written(dev, xfer)

    # --- Commands. ---

    def _command(self, opcode: int) -> None:
        dev = self.devices[self.selected]
        if self.device_control & DC_SRST:
            self.ignored_commands += 1
            return
        if opcode == CMD_EXECUTE_DIAGNOSTIC:
            # Both devices run it, whichever is selected: a probe for what is on the cable.
            self.commands[opcode] += 1
            self._execute_diagnostic()
            return
        if not dev.present:
            self.ignored_commands += 1  # an absent device executes nothing
            return
        self.commands[opcode] += 1
        # Writing Command clears the pending interrupt (the line drops now, so the
        # command's own interrupt is a fresh edge) and any half-done transfer.
        dev.interrupt_pending = False
        self._update_irq()
        dev.end_transfer()
        dev.status = ST_IDLE
        dev.error = 0
        handler = _COMMANDS.get(opcode)
        if handler is None:
            self.unsupported[opcode] += 1
            self._fail(dev, ER_ABRT)
        else:
            handler(self, dev, opcode)
        self._update_irq()

    def _complete(self, dev: AtaDevice) -> None:
        """Command done: ready, no DRQ, interrupt."""
        dev.end_transfer()
        dev.status = ST_IDLE
        dev.interrupt_pending = True

    def _fail(self, dev: AtaDevice, error: int, fault: bool = False, lba: int | None = None,
              xfer: Transfer | None = None) -> None:
        """Command failed: ERR (and DF for a host write failure), the error bits,
        the failing address in the taskfile when there is one, interrupt."""
        if lba is not None and xfer is not None:
            self._report_address(dev, xfer, lba)
        dev.end_transfer()
        dev.error = error
        dev.status = ST_IDLE | ST_ERR | (ST_DF if fault else 0)
        dev.interrupt_pending = True
        self.errors += 1

    # Non-data commands.

    def _cmd_nop_success(self, dev: AtaDevice, opcode: int) -> None:
        # IDLE/STANDBY (timer values accepted), SLEEP, RECALIBRATE: nothing to do.
        self._complete(dev)

    def _cmd_check_power_mode(self, dev: AtaDevice, opcode: int) -> None:
        self.taskfile[SECTOR_COUNT] = CHECK_POWER_ACTIVE
        self._complete(dev)

    def _cmd_abort(self, dev: AtaDevice, opcode: int) -> None:
        # IDENTIFY PACKET DEVICE: this is not an ATAPI device.
        self._fail(dev, ER_ABRT)

    def _cmd_seek(self, dev: AtaDevice, opcode: int) -> None:
        decoded = self._decode(dev, opcode, lba48=False)
        if decoded is None or decoded[0] >= decoded[3]:
            self._fail(dev, ER_IDNF)
        else:
            self._complete(dev)

    def _cmd_initialize_parameters(self, dev: AtaDevice, opcode: int) -> None:
        # The BIOS-era translation: sectors per track in the count, heads-1 in the device register.
        spt = self.taskfile[SECTOR_COUNT]
        heads = (self.device_reg & DEV_HEAD) + 1
        dev.heads = heads
        dev.spt = spt
        if spt == 0:
            # Unusable translation: CHS commands fail with IDNF until a valid one is set.
            self._fail(dev, ER_ABRT)
        else:
            self._complete(dev)

    def _cmd_set_multiple(self, dev: AtaDevice, opcode: int) -> None:
        count = self.taskfile[SECTOR_COUNT]
        if count > MAX_MULTIPLE or count & (count - 1):
            self._fail(dev, ER_ABRT)  # not a power of two up to word 47's maximum
            return
        dev.multiple = count  # 0 disables READ/WRITE MULTIPLE
        self._complete(dev)

    def _cmd_set_features(self, dev: AtaDevice, opcode: int) -> None:
        sub = self.taskfile[FEATURES]
        if sub == SF_SET_TRANSFER_MODE:
            mode = self.taskfile[SECTOR_COUNT]
            if mode in (XFER_PIO_DEFAULT, XFER_PIO_DEFAULT_NO_IORDY):
                dev.pio_mode = 0 if mode == XFER_PIO_DEFAULT_NO_IORDY else MAX_PIO_MODE
            elif XFER_PIO_FLOW <= mode <= XFER_PIO_FLOW + MAX_PIO_MODE:
                dev.pio_mode = mode - XFER_PIO_FLOW
            else:
                self._fail(dev, ER_ABRT)  # DMA modes: no bus master here, none advertised
                return
        elif sub in (SF_ENABLE_WRITE_CACHE, SF_DISABLE_WRITE_CACHE):
            if sub == SF_DISABLE_WRITE_CACHE and dev.write_cache and not self._flush(dev):
                return  # what the cache held must be durable before it goes away
            dev.write_cache = sub == SF_ENABLE_WRITE_CACHE
        elif sub in (SF_ENABLE_READ_LOOKAHEAD, SF_DISABLE_READ_LOOKAHEAD):
            dev.read_lookahead = sub == SF_ENABLE_READ_LOOKAHEAD
        elif sub in (SF_ENABLE_REVERT, SF_DISABLE_REVERT):
            dev.revert_on_reset = sub == SF_ENABLE_REVERT
        else:
            self.unsupported[opcode << 8 | sub] += 1  # keyed EFxx by subcommand
            self._fail(dev, ER_ABRT)
            return
        self._complete(dev)

    def _cmd_flush_cache(self, dev: AtaDevice, opcode: int) -> None:
        if self._flush(dev):
            self._complete(dev)

    def _flush(self, dev: AtaDevice) -> bool:
        assert dev.disk is not None
        try:
            dev.disk.flush()
        except OSError:
            self.host_errors += 1
            self._fail(dev, ER_ABRT, fault=True)
            return False
        return True

    def _cmd_read_verify(self, dev: AtaDevice, opcode: int) -> None:
        xfer = self._media_transfer(dev, opcode, writing=False, per_block=1)
        if xfer is None:
            return
        assert dev.disk is not None and xfer.lba is not None
        # No data crosses the interface, but the sectors must be readable.
        while xfer.remaining:
            count = min(xfer.remaining, BUFFER_SECTORS)
            done = dev.disk.read_to_buffer(xfer.lba, count)
            xfer.lba += done
            xfer.remaining -= done
            if done < count:
                self.host_errors += 1
                self._fail(dev, ER_UNC, lba=xfer.lba, xfer=xfer)
                return
        self._report_address(dev, xfer, xfer.lba - 1)
        self._complete(dev)

    def _execute_diagnostic(self) -> None:
        for dev in self.devices:
            dev.interrupt_pending = False
        self._reset_devices()
        # Device 0 reports for both (device 1 passed, or is absent) and interrupts.
        reporter = self.devices[0] if self.devices[0].present else self.devices[1]
        reporter.interrupt_pending = True
        self._update_irq()

    # PIO data-in commands.

    def _cmd_identify(self, dev: AtaDevice, opcode: int) -> None:
        xfer = Transfer(opcode, writing=False, lba=None, remaining=0, per_block=1, mode="lba28")
        self._start_buffer_in(dev, xfer, dev.identify())

    def _cmd_read_buffer(self, dev: AtaDevice, opcode: int) -> None:
        xfer = Transfer(opcode, writing=False, lba=None, remaining=0, per_block=1, mode="lba28")
        self._start_buffer_in(dev, xfer, bytes(dev.sector_buffer))

    def _start_buffer_in(self, dev: AtaDevice, xfer: Transfer, data: bytes) -> None:
        dev.transfer = xfer
        dev.buffer = bytearray(data)
        dev.pos = 0
        dev.status = ST_IDLE | ST_DRQ
        dev.interrupt_pending = True  # data-in: interrupt when the block is ready

    def _cmd_read(self, dev: AtaDevice, opcode: int) -> None:
        per_block = 1
        if opcode in (CMD_READ_MULTIPLE, CMD_READ_MULTIPLE_EXT):
            if not dev.multiple:
                self._fail(dev, ER_ABRT)  # multiple mode not enabled by SET MULTIPLE
                return
            per_block = dev.multiple
        xfer = self._media_transfer(dev, opcode, writing=False, per_block=per_block)
        if xfer is not None:
            self._next_block_in(dev, xfer)

    def _next_block_in(self, dev: AtaDevice, xfer: Transfer) -> None:
        assert dev.disk is not None and xfer.lba is not None
        count = min(xfer.per_block, xfer.remaining)
        start = xfer.lba - xfer.batch_lba
        if start >= xfer.batch_sectors:
            # The buffer is used up: read the next batch (it starts at a block boundary).
            xfer.batch_lba, start = xfer.lba, 0
            xfer.batch_sectors = dev.disk.read_to_buffer(xfer.lba, min(xfer.remaining, BUFFER_SECTORS))
        if start + count > xfer.batch_sectors:
            # The host failed inside this block: the error is reported at its first sector.
            self.host_errors += 1
            self._fail(dev, ER_UNC, lba=xfer.lba, xfer=xfer)
            return
        xfer.block_sectors = count
        dev.transfer = xfer
        dev.buffer = dev.disk.buffer[start * SECTOR_SIZE:(start + count) * SECTOR_SIZE]
        dev.pos = 0
        dev.status = ST_IDLE | ST_DRQ
        dev.interrupt_pending = True  # one interrupt per DRQ block

    def _block_read(self, dev: AtaDevice, xfer: Transfer) -> None:
        """The guest drained a data-in block: the next one, or the end (no interrupt)."""
        if xfer.lba is None:
            dev.end_transfer()
            dev.status = ST_IDLE
            return
        xfer.lba += xfer.block_sectors
        xfer.remaining -= xfer.block_sectors
        if xfer.remaining:
            self._next_block_in(dev, xfer)
            self._update_irq()
        else:
            self._report_address(dev, xfer, xfer.lba - 1)
            dev.end_transfer()
            dev.status = ST_IDLE

    # PIO data-out commands.

    def _cmd_write_buffer(self, dev: AtaDevice, opcode: int) -> None:
        dev.transfer = Transfer(opcode, writing=True, lba=None, remaining=0, per_block=1, mode="lba28")
        dev.buffer = bytearray(SECTOR_SIZE)
        dev.pos = 0
        dev.status = ST_IDLE | ST_DRQ  # data-out: the first block is requested without an interrupt

    def _cmd_write(self, dev: AtaDevice, opcode: int) -> None:
        assert dev.disk is not None
        per_block = 1
        if opcode in (CMD_WRITE_MULTIPLE, CMD_WRITE_MULTIPLE_EXT):
            if not dev.multiple:
                self._fail(dev, ER_ABRT)
                return
            per_block = dev.multiple
        if dev.disk.read_only:
            self._fail(dev, ER_ABRT)  # refused before any data is requested
            return
        xfer = self._media_transfer(dev, opcode, writing=True, per_block=per_block)
        if xfer is not None:
            self._next_block_out(dev, xfer)

    def _next_block_out(self, dev: AtaDevice, xfer: Transfer) -> None:
        assert dev.disk is not None
        count = min(xfer.per_block, xfer.remaining)
        xfer.block_sectors = count
        dev.transfer = xfer
        dev.buffer = dev.disk.buffer[:count * SECTOR_SIZE]
        dev.pos = 0
        dev.status = ST_IDLE | ST_DRQ

    def _block_stored(self, dev: AtaDevice, xfer: Transfer) -> bool:
        """A data-out block is in the buffer: it goes to the image now, in one
        request, before any interrupt can tell the guest it is done. False
        (and DF, ABRT at the first sector not stored) if the host failed."""
        assert dev.disk is not None and xfer.lba is not None
        done = dev.disk.write_from_buffer(xfer.lba, xfer.block_sectors)
        xfer.lba += done
        xfer.remaining -= done
        if done < xfer.block_sectors:
            self.host_errors += 1
            self._fail(dev, ER_ABRT, fault=True, lba=xfer.lba, xfer=xfer)
            self._update_irq()
            return False
        return True

    def _block_written(self, dev: AtaDevice, xfer: Transfer) -> None:
        """A data-out block is complete (and stored): interrupt for the next block, or completion."""
        if xfer.lba is None:
            dev.sector_buffer[:] = dev.buffer  # WRITE BUFFER
            self._complete(dev)
        elif xfer.remaining:
            self._next_block_out(dev, xfer)
            dev.interrupt_pending = True
        else:
            self._report_address(dev, xfer, xfer.lba - 1)
            if dev.write_cache or self._flush(dev):
                self._complete(dev)
        self._update_irq()

    # Addressing.

    def _media_transfer(self, dev: AtaDevice, opcode: int, writing: bool, per_block: int) -> Transfer | None:
        """Decode and range-check the command's address; IDNF (and None) if it does not fit."""
        lba48 = opcode in _LBA48_COMMANDS
        decoded = self._decode(dev, opcode, lba48)
        if decoded is None:
            self._fail(dev, ER_IDNF)
            return None
        lba, count, mode, limit = decoded
        if lba + count > limit:
            self._fail(dev, ER_IDNF)
            return None
        return Transfer(opcode, writing, lba, count, per_block, mode)

    def _decode(self, dev: AtaDevice, opcode: int, lba48: bool) -> tuple[int, int, str, int] | None:
        """(first LBA, sector count, mode, sectors reachable in that mode), or None
        for a CHS address outside the current translation."""
        assert dev.disk is not None
        tf, prev = self.taskfile, self.previous
        if lba48:
            lba = 0
            for shift, offset in ((0, LBA_LOW), (8, LBA_MID), (16, LBA_HIGH)):
                lba |= tf[offset] << shift | prev[offset] << (shift + 24)
            count = prev[SECTOR_COUNT] << 8 | tf[SECTOR_COUNT] or 65536
            return lba, count, "lba48", dev.disk.sectors
        count = tf[SECTOR_COUNT] or 256
        if self.device_reg & DEV_LBA:
            lba = (self.device_reg & DEV_HEAD) << 24 | tf[LBA_HIGH] << 16 | tf[LBA_MID] << 8 | tf[LBA_LOW]
            return lba, count, "lba28", min(dev.disk.sectors, LBA28_MAX_SECTORS)
        cylinder = tf[LBA_HIGH] << 8 | tf[LBA_MID]
        head = self.device_reg & DEV_HEAD
        sector = tf[LBA_LOW]
        cylinders = dev.cylinders
        if not cylinders or cylinder >= cylinders or head >= dev.heads or not 1 <= sector <= dev.spt:
            return None
        lba = (cylinder * dev.heads + head) * dev.spt + sector - 1
        return lba, count, "chs", cylinders * dev.heads * dev.spt

    def _report_address(self, dev: AtaDevice, xfer: Transfer, lba: int) -> None:
        """Leave an address in the taskfile as drives do: the last sector moved
        at completion, the failing sector on an error; the count is what remains."""
        tf, prev = self.taskfile, self.previous
        if xfer.mode == "lba48":
            for shift, offset in ((0, LBA_LOW), (8, LBA_MID), (16, LBA_HIGH)):
                tf[offset] = lba >> shift & 0xFF
                prev[offset] = lba >> (shift + 24) & 0xFF
            tf[SECTOR_COUNT] = xfer.remaining & 0xFF
            prev[SECTOR_COUNT] = xfer.remaining >> 8 & 0xFF
        elif xfer.mode == "lba28":
            tf[LBA_LOW] = lba & 0xFF
            tf[LBA_MID] = lba >> 8 & 0xFF
            tf[LBA_HIGH] = lba >> 16 & 0xFF
            self.device_reg = self.device_reg & ~DEV_HEAD | lba >> 24 & DEV_HEAD
            tf[SECTOR_COUNT] = xfer.remaining & 0xFF
        else:
            track, sector = divmod(lba, dev.spt)
            cylinder, head = divmod(track, dev.heads)
            tf[LBA_LOW] = sector + 1
            tf[LBA_MID] = cylinder & 0xFF
            tf[LBA_HIGH] = cylinder >> 8 & 0xFF
            self.device_reg = self.device_reg & ~DEV_HEAD | head
            tf[SECTOR_COUNT] = xfer.remaining & 0xFF


_LBA48_COMMANDS = frozenset({
    CMD_READ_SECTORS_EXT, CMD_READ_MULTIPLE_EXT, CMD_WRITE_SECTORS_EXT,
    CMD_WRITE_MULTIPLE_EXT, CMD_READ_VERIFY_EXT,
})

# Opcode -> handler(channel, device, opcode). Anything else is aborted (ABRT).
_COMMANDS: dict[int, Callable[[IdeChannel, AtaDevice, int], None]] = {
    **{op: IdeChannel._cmd_nop_success for op in range(CMD_RECALIBRATE, CMD_RECALIBRATE + 16)},
    **{op: IdeChannel._cmd_seek for op in range(CMD_SEEK, CMD_SEEK + 16)},
    CMD_READ_SECTORS: IdeChannel._cmd_read,
    CMD_READ_SECTORS_NORETRY: IdeChannel._cmd_read,
    CMD_READ_SECTORS_EXT: IdeChannel._cmd_read,
    CMD_READ_MULTIPLE: IdeChannel._cmd_read,
    CMD_READ_MULTIPLE_EXT: IdeChannel._cmd_read,
    CMD_WRITE_SECTORS: IdeChannel._cmd_write,
    CMD_WRITE_SECTORS_NORETRY: IdeChannel._cmd_write,
    CMD_WRITE_SECTORS_EXT: IdeChannel._cmd_write,
    CMD_WRITE_MULTIPLE: IdeChannel._cmd_write,
    CMD_WRITE_MULTIPLE_EXT: IdeChannel._cmd_write,
    CMD_READ_VERIFY: IdeChannel._cmd_read_verify,
    CMD_READ_VERIFY_NORETRY: IdeChannel._cmd_read_verify,
    CMD_READ_VERIFY_EXT: IdeChannel._cmd_read_verify,
    CMD_INITIALIZE_PARAMETERS: IdeChannel._cmd_initialize_parameters,
    CMD_IDENTIFY_PACKET: IdeChannel._cmd_abort,
    CMD_SET_MULTIPLE: IdeChannel._cmd_set_multiple,
    CMD_STANDBY_IMMEDIATE: IdeChannel._cmd_nop_success,
    CMD_IDLE_IMMEDIATE: IdeChannel._cmd_nop_success,
    CMD_STANDBY: IdeChannel._cmd_nop_success,
    CMD_IDLE: IdeChannel._cmd_nop_success,
    CMD_READ_BUFFER: IdeChannel._cmd_read_buffer,
    CMD_CHECK_POWER_MODE: IdeChannel._cmd_check_power_mode,
    CMD_SLEEP: IdeChannel._cmd_nop_success,
    CMD_FLUSH_CACHE: IdeChannel._cmd_flush_cache,
    CMD_WRITE_BUFFER: IdeChannel._cmd_write_buffer,
    CMD_FLUSH_CACHE_EXT: IdeChannel._cmd_flush_cache,
    CMD_IDENTIFY: IdeChannel._cmd_identify,
    CMD_SET_FEATURES: IdeChannel._cmd_set_features,
}
