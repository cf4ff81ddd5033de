"""The Motorola MC146818 real-time clock and CMOS RAM, at the PC's ports 0x70/0x71.

The guest writes a register index to 0x70 (bit 7 of that write is the PC's NMI
mask, kept in `nmi_disabled`) and then reads or writes the register at 0x71.
The module follows the datasheet's register map: the time and alarm registers
0x00-0x09, registers A-D, then the CMOS RAM as the PC BIOS lays it out.

The clock is the host's: the time registers show `wallclock()` (UTC) plus an
offset, and the offset is what a guest changes when it sets the clock. Setting
works as on the chip: with register B's SET bit on, updates stop, the time
registers hold still and take the guest's writes; clearing SET starts the clock
from what was written (the host's fraction of a second is kept, so updates stay
on host second boundaries and the offset is a whole number of seconds). Writes
with SET off change the running time directly. Values are converted on every
read to the format register B selects (BCD or binary, 24- or 12-hour), so a
guest that changes DM or 24/12 sees its time in the new format at once.

The update cycle happens at every second boundary of the guest's time: UIP is
set for the UIP_WINDOW before it, UF (and AF when the alarm matches) after it.
The periodic interrupt runs on `clock()` at the rate register A selects. Flags
in register C are set whether or not their interrupts are enabled, as on the
chip; IRQ8 is IRQF, held until the guest reads register C. Because PF is a
single latch, a monitor that comes late delivers one periodic interrupt and
counts the other missed periods in `lost_ticks`.
"""

from __future__ import annotations

import calendar
import math
import time
from typing import Callable

from bt_vmm.devices.bus import BytePorts
from bt_vmm.devices.state import DeviceState

# --- Ports. ---
INDEX_PORT = 0x70  # write: register index (bits 6-0) and the NMI mask (bit 7)
DATA_PORT = 0x71  # read/write: the selected register
PORTS = ((INDEX_PORT, 2),)
INDEX_MASK = 0x7F
NMI_DISABLE = 0x80  # bit 7 of an index write: NMIs masked (the chipset's, not the RTC's)

# --- Time, alarm and control registers. ---
REG_SECONDS = 0x00
REG_SECONDS_ALARM = 0x01
REG_MINUTES = 0x02
REG_MINUTES_ALARM = 0x03
REG_HOURS = 0x04
REG_HOURS_ALARM = 0x05
REG_DAY_OF_WEEK = 0x06  # 1-7, Sunday = 1
REG_DAY_OF_MONTH = 0x07
REG_MONTH = 0x08
REG_YEAR = 0x09  # 00-99
REG_A = 0x0A
REG_B = 0x0B
REG_C = 0x0C
REG_D = 0x0D
REG_CENTURY = 0x32  # PC convention: the century, kept with the clock registers
TIME_REGISTERS = (REG_SECONDS, REG_MINUTES, REG_HOURS, REG_DAY_OF_WEEK,
                  REG_DAY_OF_MONTH, REG_MONTH, REG_YEAR, REG_CENTURY)
ALARM_REGISTERS = (REG_SECONDS_ALARM, REG_MINUTES_ALARM, REG_HOURS_ALARM)
ALARM_DONT_CARE = 0xC0  # an alarm byte of 0xC0-0xFF matches any value

# --- Register A. ---
A_UIP = 0x80  # update in progress (read only): the time registers are about to change
A_DV_MASK = 0x70  # divider select
A_DV_32KHZ = 0x20  # 010: a 32.768 kHz time base, running (the PC's)
A_DV_RESET = 0x60  # 11x: divider chain held in reset (updates and periodic stop)
A_RS_MASK = 0x0F  # periodic rate select
A_WRITABLE = 0x7F
UIP_WINDOW = 244e-6  # seconds before each update during which UIP reads 1

# --- Register B. ---
B_SET = 0x80  # updates inhibited: the guest is setting the clock
B_PIE = 0x40  # periodic interrupt enable
B_AIE = 0x20  # alarm interrupt enable
B_UIE = 0x10  # update-ended interrupt enable
B_SQWE = 0x08  # square-wave output enable (no SQW pin here)
B_DM = 0x04  # data mode: 1 = binary, 0 = BCD
B_24H = 0x02  # 1 = 24-hour mode, 0 = 12-hour mode with bit 7 of the hours = PM
B_DSE = 0x01  # daylight saving enable (never applied: the time is UTC)
HOUR_PM = 0x80  # 12-hour mode: the PM bit of the hours registers

# --- Register C (read only, cleared by reading). ---
C_IRQF = 0x80  # IRQ asserted: PF&PIE | AF&AIE | UF&UIE
C_PF = 0x40  # periodic interrupt flag
C_AF = 0x20  # alarm flag
C_UF = 0x10  # update-ended flag

# --- Register D (read only). ---
D_VRT = 0x80  # valid RAM and time: the battery is good

# --- CMOS RAM as the PC BIOS uses it. ---
CMOS_SIZE = 128
CMOS_RAM_START = 0x0E  # bytes below this are the clock's registers
CMOS_BASE_MEMORY = 0x15  # 0x15/0x16: base memory in KiB (640)
CMOS_EXTENDED_MEMORY = 0x17  # 0x17/0x18: KiB above 1 MiB, at most 65535
CMOS_CHECKSUM_FIRST = 0x10  # the checksum covers 0x10-0x2D
CMOS_CHECKSUM_LAST = 0x2D
CMOS_CHECKSUM = 0x2E  # 0x2E high byte, 0x2F low byte of the 16-bit sum
CMOS_POST_EXTENDED_MEMORY = 0x30  # 0x30/0x31: KiB above 1 MiB found by POST
CMOS_HIGH_MEMORY = 0x34  # 0x34/0x35: memory above 16 MiB in 64 KiB units
BASE_MEMORY_KIB = 640
KIB = 1024
MIB = 1024 * 1024

# --- Power-on register values. ---
POWER_ON_A = A_DV_32KHZ | 0x06  # 32.768 kHz, 1024 Hz periodic rate
POWER_ON_B = B_24H  # BCD, 24-hour: what PC firmware programs
PERIODIC_EPSILON = 1e-9  # periods: absorbs float rounding when a deadline is converted back


def to_bcd(value: int) -> int:
    return (value // 10) << 4 | value % 10


def from_bcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0x0F)


class Rtc(BytePorts, DeviceState):
    """The MC146818 with 128 bytes of CMOS RAM: the PC's clock and setup memory."""

    # Snapshot state (devices/state.py): registers, CMOS RAM, the guest's clock offset and
    # the periodic interrupt's schedule (guest-clock times).
    STATE = ("index", "nmi_disabled", "reg_a", "reg_b", "reg_c", "cmos", "offset", "held",
             "_dow_adjust", "irq_level", "_periodic_origin", "_periodic_done", "_last_update")

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
        irq8: Callable[[bool], None] | None = None,
    ) -> None:
        self._clock = clock
        self._wallclock = wallclock
        self._irq8 = irq8

        # Registers.
        self.index = 0  # the register 0x70 selects
        self.nmi_disabled = False  # bit 7 of the last index write
        self.reg_a = POWER_ON_A
        self.reg_b = POWER_ON_B
        self.reg_c = 0
        self.cmos = bytearray(CMOS_SIZE)  # RAM; the clock registers' slots are unused
        self.offset = 0  # guest time minus wall time, whole seconds
        self.held: list[int] | None = None  # time fields frozen while SET is on
        self._dow_adjust = 0  # the guest's day-of-week register minus the calendar's

        # Event state.
        self.irq_level = False  # IRQ8 as last reported
        self._periodic_origin = 0.0  # clock() where periodic interrupt 0 would be
        self._periodic_done = 0  # periods accounted for since the origin
        self._last_update = 0  # the guest second of the last update cycle

        # Counters.
        self.lost_ticks = 0  # periodic interrupts merged into one because the monitor came late
        self.unsupported_dividers = 0  # register A writes selecting a time base other than 32 kHz
        self.readonly_writes = 0  # writes to registers C and D
        self.index_reads = 0  # reads of the write-only index port
        self.wide_accesses = 0  # 16/32-bit accesses, split into byte accesses

        self._update_checksum()
        self.reset()

    # --- Machine side. ---

    def set_cmos(self, index: int, value: int) -> None:
        """Fill a CMOS RAM byte (setup data), keeping the 0x10-0x2D checksum valid."""
        if not CMOS_RAM_START <= index < CMOS_SIZE or index == REG_CENTURY:
            raise ValueError(f"CMOS index {index:#x} is a clock register, not RAM")
        self.cmos[index] = value & 0xFF
        if CMOS_CHECKSUM_FIRST <= index <= CMOS_CHECKSUM_LAST:
            self._update_checksum()

    def set_memory_size(self, mem_bytes: int) -> None:
        """Record the machine's RAM where the BIOS does: base, extended and above-16-MiB sizes."""
        base_kib = min(BASE_MEMORY_KIB, mem_bytes // KIB)
        extended_kib = min(0xFFFF, max(0, mem_bytes - MIB) // KIB)
        high_64k = min(0xFFFF, max(0, mem_bytes - 16 * MIB) // (64 * KIB))
        for index, value in ((CMOS_BASE_MEMORY, base_kib),
                             (CMOS_EXTENDED_MEMORY, extended_kib),
                             (CMOS_POST_EXTENDED_MEMORY, extended_kib),
                             (CMOS_HIGH_MEMORY, high_64k)):
            self.cmos[index] = value & 0xFF
            self.cmos[index + 1] = value >> 8
        self._update_checksum()

    def guest_time(self) -> float:
        """The guest's clock: seconds since the epoch, UTC."""
        return self._wallclock() + self.offset

    # --- Monitor side. ---

    def next_deadline(self) -> float | None:
        """The clock() time of the next periodic or update interrupt, or None."""
        if self.reg_c & C_IRQF or not self._divider_running():
            return None  # IRQ8 is already up: nothing changes it before register C is read
        candidates = []
        period = self._period()
        if self.reg_b & B_PIE and period is not None:
            candidates.append(self._periodic_origin + (self._periodic_done + 1) * period)
        if self.reg_b & (B_UIE | B_AIE) and not self.reg_b & B_SET:
            now = self._clock()
            guest = self.guest_time()
            candidates.append(now + (math.floor(guest) + 1 - guest))
        return min(candidates) if candidates else None

    def tick(self, now: float) -> None:
        """Set the flags of every event due by clock time `now`, raising IRQ8 if enabled."""
        self._advance(now)

    # --- Guest side. ---

    def reset(self) -> None:
        """The RESET pin: interrupts disabled and flags cleared; time, format and RAM survive."""
        self.index = 0
        self.nmi_disabled = False
        self.reg_b &= ~(B_PIE | B_AIE | B_UIE | B_SQWE)
        self.reg_c = 0
        self._restart_periodic()
        self._last_update = math.floor(self.guest_time())
        self._update_irq()

    def _read_byte(self, port: int) -> int:
        if port == INDEX_PORT:
            self.index_reads += 1
            return 0xFF  # the index register is write-only on the PC
        if port != DATA_PORT:
            return 0xFF  # a wide access ran past the registers: nothing decodes it
        index = self.index
        if index in TIME_REGISTERS:
            # The clock driver reads the time, usually between two looks at UIP.
            return self._read_time(index)
        if index == REG_A:
            # Drivers wait for UIP to be clear before reading the time.
            value = self.reg_a
            if self._update_in_progress():
                value |= A_UIP
            return value
        if index == REG_B:
            return self.reg_b
        if index == REG_C:
            # The interrupt handler learns which event fired; reading acknowledges all.
            self._advance(self._clock())
            value = self.reg_c
            self.reg_c = 0
            self._update_irq()
            return value
        if index == REG_D:
            return D_VRT
        # Alarm registers and CMOS RAM.
        return self.cmos[index]

    def _write_byte(self, port: int, value: int) -> None:
        if port == INDEX_PORT:
            # Select a register for the next data access; bit 7 masks NMIs.
            self.index = value & INDEX_MASK
            self.nmi_disabled = bool(value & NMI_DISABLE)
            return
        if port != DATA_PORT:
            return
        index = self.index
        if index in TIME_REGISTERS:
            # The guest sets its clock (normally with SET on, then off).
            self._write_time(index, value)
        elif index == REG_A:
            # Time base and periodic rate.
            self._write_a(value)
        elif index == REG_B:
            # SET, interrupt enables, data format.
            self._write_b(value)
        elif index in (REG_C, REG_D):
            self.readonly_writes += 1
        else:
            # Alarm registers and CMOS RAM: stored as written (the checksum is the guest's job).
            self.cmos[index] = value

    # --- Register behaviour. ---

    def _write_a(self, value: int) -> None:
        self._advance(self._clock())
        old = self.reg_a
        self.reg_a = value & A_WRITABLE
        divider = self.reg_a & A_DV_MASK
        if divider != A_DV_32KHZ and divider & A_DV_RESET != A_DV_RESET:
            self.unsupported_dividers += 1
        if (old ^ self.reg_a) & (A_DV_MASK | A_RS_MASK):
            self._restart_periodic()
            if not self._divider_running():
                self.reg_c &= ~C_PF

    def _write_b(self, value: int) -> None:
        self._advance(self._clock())
        old = self.reg_b
        if value & B_SET:
            value &= ~B_UIE  # SET going (or staying) high clears UIE
        self.reg_b = value
        if value & B_SET and not old & B_SET:
            # Updates stop: the time registers hold the current time for the guest to change.
            self.held = self._fields(self.guest_time())
        elif old & B_SET and not value & B_SET:
            # The clock starts again from whatever the guest wrote.
            assert self.held is not None
            self._set_guest_time(self.held)
            self.held = None
        self._update_irq()

    def _read_time(self, index: int) -> int:
        fields = self.held if self.reg_b & B_SET and self.held is not None else self._fields(self.guest_time())
        value = fields[TIME_REGISTERS.index(index)]
        if index == REG_HOURS:
            return self._encode_hours(value)
        return self._encode(value)

    def _write_time(self, index: int, value: int) -> None:
        if self.reg_b & B_SET and self.held is not None:
            fields = self.held
        else:
            fields = self._fields(self.guest_time())
        position = TIME_REGISTERS.index(index)
        fields[position] = self._decode_hours(value) if index == REG_HOURS else self._decode(value)
        if not self.reg_b & B_SET:
            self._set_guest_time(fields)

    def _encode(self, value: int) -> int:
        return value if self.reg_b & B_DM else to_bcd(value)

    def _decode(self, value: int) -> int:
        return value if self.reg_b & B_DM else from_bcd(value)

    def _encode_hours(self, hour: int) -> int:
        if self.reg_b & B_24H:
            return self._encode(hour)
        value = self._encode(hour % 12 or 12)
        return value | HOUR_PM if hour >= 12 else value

    def _decode_hours(self, value: int) -> int:
        if self.reg_b & B_24H:
            return self._decode(value)
        return self._decode(value & ~HOUR_PM) % 12 + (12 if value & HOUR_PM else 0)

    # --- Time keeping. ---

    def _fields(self, t: float) -> list[int]:
        """Binary values of the time registers, in TIME_REGISTERS order, at guest time t."""
        tm = time.gmtime(math.floor(t))
        day_of_week = ((tm.tm_wday + 1) % 7 + self._dow_adjust) % 7 + 1  # Sunday = 1
        return [tm.tm_sec, tm.tm_min, tm.tm_hour, day_of_week,
                tm.tm_mday, tm.tm_mon, tm.tm_year % 100, tm.tm_year // 100]

    def _set_guest_time(self, fields: list[int]) -> None:
        """Make the running clock show `fields` now (keeping the host's phase in the second)."""
        sec, minute, hour, dow, mday, month, year, century = fields
        full_year = min(9999, max(1, century * 100 + year))
        month = min(12, max(1, month))
        epoch = calendar.timegm((full_year, month, mday, hour, minute, sec, 0, 0, 0))
        self.offset = epoch - math.floor(self._wallclock())
        natural_dow = self._fields_without_adjust(epoch)
        self._dow_adjust = (dow - natural_dow) % 7
        self._last_update = math.floor(self.guest_time())

    def _fields_without_adjust(self, t: float) -> int:
        tm = time.gmtime(math.floor(t))
        return (tm.tm_wday + 1) % 7 + 1

    def _update_in_progress(self) -> bool:
        if self.reg_b & B_SET or not self._divider_running():
            return False
        guest = self.guest_time()
        return guest - math.floor(guest) >= 1.0 - UIP_WINDOW

    def _divider_running(self) -> bool:
        return self.reg_a & A_DV_RESET != A_DV_RESET

    def _period(self) -> float | None:
        """Seconds between periodic interrupts, from register A's rate select."""
        rs = self.reg_a & A_RS_MASK
        if rs == 0:
            return None
        if rs <= 2:
            rs += 7  # 0001 and 0010 repeat the rates of 1000 and 1001 (256 and 128 Hz)
        return (1 << rs) / 65536

    def _restart_periodic(self) -> None:
        self._periodic_origin = self._clock()
        self._periodic_done = 0

    def _advance(self, now: float) -> None:
        """Set PF, UF and AF for what happened by now; recompute IRQF."""
        if self._divider_running():
            period = self._period()
            if period is not None:
                done = math.floor((now - self._periodic_origin) / period + PERIODIC_EPSILON)
                if done > self._periodic_done:
                    if self.reg_b & B_PIE and not self.reg_c & C_PF:
                        self.lost_ticks += done - self._periodic_done - 1
                    self._periodic_done = done
                    self.reg_c |= C_PF
            if not self.reg_b & B_SET:
                second = math.floor(self.guest_time())
                if second > self._last_update:
                    self.reg_c |= C_UF
                    if self._alarm_between(self._last_update, second):
                        self.reg_c |= C_AF
                self._last_update = second
        self._update_irq()

    def _alarm_between(self, after: int, until: int) -> bool:
        """Whether the alarm registers match any guest second in (after, until]."""
        wanted = []
        for index, decode in ((REG_SECONDS_ALARM, self._decode), (REG_MINUTES_ALARM, self._decode),
                              (REG_HOURS_ALARM, self._decode_hours)):
            byte = self.cmos[index]
            wanted.append(None if byte & ALARM_DONT_CARE == ALARM_DONT_CARE else decode(byte))
        first = max(after + 1, until - 86399)  # a day covers every alarm time
        for second in range(first, until + 1):
            of_day = second % 86400
            actual = (of_day % 60, of_day // 60 % 60, of_day // 3600)
            if all(w is None or w == a for w, a in zip(wanted, actual)):
                return True
        return False

    def _update_irq(self) -> None:
        c = self.reg_c
        b = self.reg_b
        asserted = bool(c & C_PF and b & B_PIE or c & C_AF and b & B_AIE or c & C_UF and b & B_UIE)
        if asserted:
            self.reg_c |= C_IRQF
        else:
            self.reg_c &= ~C_IRQF
        if asserted != self.irq_level:
            self.irq_level = asserted
            if self._irq8 is not None:
                self._irq8(asserted)

    def _update_checksum(self) -> None:
        total = sum(self.cmos[CMOS_CHECKSUM_FIRST:CMOS_CHECKSUM_LAST + 1]) & 0xFFFF
        self.cmos[CMOS_CHECKSUM] = total >> 8
        self.cmos[CMOS_CHECKSUM + 1] = total & 0xFF
