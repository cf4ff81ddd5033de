"""The PIIX4's ACPI PM1a event and control blocks and PM timer, at QEMU's `-M pc` ports.

A guest's ACPI driver uses this block to power the machine off: it writes
PM1a_CNT with SLP_EN set and SLP_TYP taken from the DSDT's \\_S5 package, which
on QEMU's PIIX4 is 0. That write ends the run with EXIT_OK. Other sleep states
(S1-S4) would need the machine to suspend and wake; they are recorded, counted
and otherwise ignored, as if the guest woke up at once.

There is no SCI line: events this block would signal are counted when the guest
enables them, so a guest waiting for one is visible. Each register may be
accessed with any width or alignment; accesses are split per register, so a
32-bit read of the PM timer samples the clock exactly once.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable, Iterator

from ..errors import EXIT_OK, GuestExit
from .state import DeviceState

# --- Register offsets from the base port. ---
PM1_STS = 0  # PM1a_EVT_BLK status, u16: event bits, write 1 to clear
PM1_EN = 2  # PM1a_EVT_BLK enable, u16: which events raise an SCI
PM1_CNT = 4  # PM1a_CNT_BLK, u16: SCI enable and the sleep request
RESERVED = 6  # u16 between PM1a_CNT and PM_TMR: nothing decodes it
PM_TMR = 8  # PM timer, u32 read-only, 24 significant bits
PORT_COUNT = 12  # ports base..base+11
_REGISTERS = ((PM1_STS, 2), (PM1_EN, 2), (PM1_CNT, 2), (RESERVED, 2), (PM_TMR, 4))
_OUTSIDE = -1  # stands for a byte past the end of the block

# --- PM1_STS bits. ---
STS_TMR = 0x0001  # the PM timer's bit 23 changed
STS_BM = 0x0010  # bus master activity
STS_GBL = 0x0020  # the BIOS released the global lock
STS_PWRBTN = 0x0100  # power button pressed
STS_SLPBTN = 0x0200  # sleep button pressed
STS_RTC = 0x0400  # RTC alarm
STS_WAK = 0x8000  # the machine woke from a sleep state
STS_MASK = STS_TMR | STS_BM | STS_GBL | STS_PWRBTN | STS_SLPBTN | STS_RTC | STS_WAK

# --- PM1_EN bits (an SCI is raised when STS & EN and SCI_EN). ---
EN_TMR = 0x0001  # PM timer overflow (bit 23) events
EN_GBL = 0x0020  # global lock release events
EN_PWRBTN = 0x0100  # power button events
EN_SLPBTN = 0x0200  # sleep button events
EN_RTC = 0x0400  # RTC alarm events
EN_MASK = EN_TMR | EN_GBL | EN_PWRBTN | EN_SLPBTN | EN_RTC

# --- PM1_CNT bits. ---
CNT_SCI_EN = 0x0001  # power management events go to the SCI rather than SMI
CNT_BM_RLD = 0x0002  # bus master requests wake the CPU from C3
CNT_GBL_RLS = 0x0004  # write-only: release the global lock to the BIOS (an SMI)
CNT_SLP_TYP = 0x1C00  # bits 10-12: which sleep state SLP_EN enters
CNT_SLP_TYP_SHIFT = 10
CNT_SLP_EN = 0x2000  # write-only: enter the sleep state in SLP_TYP now
CNT_STORED = CNT_SCI_EN | CNT_BM_RLD | CNT_SLP_TYP  # bits that read back
SLP_TYP_S5 = 0  # QEMU's PIIX4 DSDT: \_S5 = Package { 0, 0 }: soft-off

# --- PM timer. ---
PM_TIMER_HZ = 3_579_545  # the ACPI PM timer's fixed frequency
PM_TIMER_MASK = 0xFFFFFF  # 24 bits (FADT TMR_VAL_EXT clear)
PM_TIMER_STS_BIT = 23  # STS_TMR is set whenever this bit changes


class AcpiPm(DeviceState):
    """PM1a event/control registers and the PM timer, driven by a host clock."""

    # Snapshot state (devices/state.py): PM1 registers and the PM timer's origin (guest clock).
    STATE = ("pm1_sts", "pm1_en", "pm1_cnt", "_timer_origin", "_timer_epoch")

    def __init__(self, base: int = 0x600, clock: Callable[[], float] = time.monotonic) -> None:
        self.base = base
        self._clock = clock

        # Registers.
        self.pm1_sts = 0
        self.pm1_en = 0
        self.pm1_cnt = 0
        self._timer_origin = 0.0  # clock() when the timer read zero
        self._timer_epoch = 0  # ticks >> 23 when STS_TMR was last brought up to date

        # Counters.
        self.sleep_requests: Counter[int] = Counter()  # ignored sleep requests, by SLP_TYP
        self.last_sleep_type: int | None = None  # SLP_TYP of the latest ignored request
        self.unsignalled_enables = 0  # PM1_EN writes enabling events: no SCI line to raise
        self.bios_requests = 0  # GBL_RLS writes: there is no SMI handler to serve them
        self.timer_writes = 0  # writes to the read-only PM timer
        self.reserved_accesses = 0  # accesses to undecoded bytes: +6/+7, or past the block

        self.reset()

    def reset(self) -> None:
        """Power-on: events clear and disabled, SCI off, the timer restarts from 0."""
        self.pm1_sts = 0
        self.pm1_en = 0
        self.pm1_cnt = 0
        self._timer_origin = self._clock()
        self._timer_epoch = 0

    def sci_enable(self, enabled: bool = True) -> None:
        """Set or clear SCI_EN: what firmware does when the guest writes ACPI_ENABLE to SMI_CMD."""
        if enabled:
            self.pm1_cnt |= CNT_SCI_EN
        else:
            self.pm1_cnt &= ~CNT_SCI_EN

    def timer(self) -> int:
        """The PM timer's current 24-bit value."""
        return self._ticks() & PM_TIMER_MASK

    # --- Guest side. ---

    def io_read(self, port: int, size: int) -> int:
        value = 0
        for reg, shift, nbytes, pos in self._split(port, size):
            mask = (1 << (8 * nbytes)) - 1
            value |= ((self._read_register(reg) >> (8 * shift)) & mask) << (8 * pos)
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        for reg, shift, nbytes, pos in self._split(port, size):
            mask = ((1 << (8 * nbytes)) - 1) << (8 * shift)
            piece = ((value >> (8 * pos)) << (8 * shift)) & mask
            self._write_register(reg, piece, mask)

    # --- Register behaviour. ---

    def _read_register(self, reg: int) -> int:
        if reg == PM1_STS:
            # The ACPI driver's SCI handler looks for the event that fired.
            self._update_timer_status()
            return self.pm1_sts
        if reg == PM1_EN:
            return self.pm1_en
        if reg == PM1_CNT:
            # Drivers poll SCI_EN to learn whether ACPI mode is on; SLP_EN reads 0.
            return self.pm1_cnt
        if reg == PM_TMR:
            # Timekeeping: the guest calibrates its clocks against this counter.
            return self.timer()
        self.reserved_accesses += 1
        return 0xFFFF

    def _write_register(self, reg: int, value: int, mask: int) -> None:
        """Write the bytes of `value` selected by `mask` (both in register position)."""
        if reg == PM1_STS:
            # Acknowledging events: each 1 bit clears that status bit.
            self._update_timer_status()
            self.pm1_sts &= ~(value & STS_MASK)
        elif reg == PM1_EN:
            # Choosing which events raise an SCI.
            self.pm1_en = (self.pm1_en & ~mask) | (value & mask & EN_MASK)
            if value & mask & EN_MASK:
                self.unsignalled_enables += 1
        elif reg == PM1_CNT:
            self._write_control((self.pm1_cnt & ~mask) | (value & mask), value & mask)
        elif reg == PM_TMR:
            self.timer_writes += 1
        else:
            self.reserved_accesses += 1

    def _write_control(self, merged: int, written: int) -> None:
        self.pm1_cnt = merged & CNT_STORED
        if written & CNT_GBL_RLS:
            self.bios_requests += 1
        if not written & CNT_SLP_EN:
            return
        # The guest asks to enter the sleep state in SLP_TYP.
        sleep_type = (merged & CNT_SLP_TYP) >> CNT_SLP_TYP_SHIFT
        if sleep_type == SLP_TYP_S5:
            raise GuestExit(EXIT_OK, "guest powered off (ACPI S5)")
        self.sleep_requests[sleep_type] += 1
        self.last_sleep_type = sleep_type

    # --- Internal state. ---

    def _ticks(self) -> int:
        """Timer ticks since reset, not yet truncated to 24 bits."""
        elapsed = self._clock() - self._timer_origin
        return max(0, int(elapsed * PM_TIMER_HZ))

    def _update_timer_status(self) -> None:
        """Latch STS_TMR if the timer's bit 23 changed since the last look."""
        epoch = self._ticks() >> PM_TIMER_STS_BIT
        if epoch != self._timer_epoch:
            self._timer_epoch = epoch
            self.pm1_sts |= STS_TMR

    def _split(self, port: int, size: int) -> Iterator[tuple[int, int, int, int]]:
        """Cut an access into per-register pieces: (register, byte in register, bytes, byte in access)."""
        offset = port - self.base
        if not 0 <= offset < PORT_COUNT:
            raise ValueError(f"port {port:#x} is outside the ACPI PM block at {self.base:#x}")
        pos = 0
        while pos < size:
            at = offset + pos
            if at >= PORT_COUNT:
                # A wide access running off the end of the block: nothing decodes those bytes.
                yield _OUTSIDE, 0, 1, pos
                pos += 1
                continue
            for reg, width in _REGISTERS:
                if reg <= at < reg + width:
                    nbytes = min(size - pos, reg + width - at)
                    yield reg, at - reg, nbytes, pos
                    pos += nbytes
                    break
