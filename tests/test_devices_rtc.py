"""The MC146818 RTC and CMOS RAM, driven the way Linux's mc146818 and rtc-cmos code drive them."""

from __future__ import annotations

import calendar

import pytest

from bt_vmm.devices.bus import PortBus
from bt_vmm.devices.rtc import PORTS, UIP_WINDOW, Rtc

INDEX, DATA = 0x70, 0x71
SECONDS, MINUTES, HOURS, DOW, DAY, MONTH, YEAR = 0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09
REG_A, REG_B, REG_C, REG_D, CENTURY = 0x0A, 0x0B, 0x0C, 0x0D, 0x32
# 2024-03-15 13:45:30 UTC, a Friday.
EPOCH = calendar.timegm((2024, 3, 15, 13, 45, 30, 0, 0, 0))


class FakeTime:
    """One source for both clocks: monotonic t, and wall time EPOCH + t."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def mono(self) -> float:
        return self.t

    def wall(self) -> float:
        return EPOCH + self.t


class Machine:
    def __init__(self, t: float = 0.0) -> None:
        self.time = FakeTime(t)
        self.irq_levels: list[bool] = []
        self.rtc = Rtc(self.time.mono, self.time.wall, self.irq_levels.append)
        self.bus = PortBus()
        for first, count in PORTS:
            self.bus.register(first, count, self.rtc)

    def read(self, index: int) -> int:
        self.bus.write(INDEX, 1, index)
        return self.bus.read(DATA, 1)

    def write(self, index: int, value: int) -> None:
        self.bus.write(INDEX, 1, index)
        self.bus.write(DATA, 1, value)

    def run_until(self, end: float) -> int:
        """The monitor loop with an interrupt handler that reads register C; returns interrupts."""
        handled = 0
        while True:
            deadline = self.rtc.next_deadline()
            if deadline is None or deadline > end:
                break
            self.time.t = max(self.time.t, deadline)
            self.rtc.tick(self.time.t)
            if self.rtc.irq_level:
                handled += 1
                self.read(REG_C)
        self.time.t = end
        return handled


def test_ports() -> None:
    assert PORTS == ((0x70, 2),)


def test_bcd_24h_by_default() -> None:
    m = Machine()
    assert [m.read(i) for i in (SECONDS, MINUTES, HOURS, DOW, DAY, MONTH, YEAR, CENTURY)] == [
        0x30, 0x45, 0x13, 6, 0x15, 0x03, 0x24, 0x20]
    assert m.read(REG_B) == 0x02
    assert m.read(REG_D) == 0x80  # VRT: the battery is fine


def test_binary_mode() -> None:
    m = Machine()
    m.write(REG_B, 0x06)  # DM binary, 24 h
    assert [m.read(i) for i in (SECONDS, MINUTES, HOURS, DAY, MONTH, YEAR, CENTURY)] == [
        30, 45, 13, 15, 3, 24, 20]


@pytest.mark.parametrize("hour, bcd, binary", [(13, 0x81, 0x81), (0, 0x12, 12), (12, 0x92, 0x8C), (11, 0x11, 11)])
def test_12_hour_mode(hour: int, bcd: int, binary: int) -> None:
    m = Machine(t=(hour - 13) * 3600)
    m.write(REG_B, 0x00)  # BCD, 12 h
    assert m.read(HOURS) == bcd
    m.write(REG_B, 0x04)  # binary, 12 h
    assert m.read(HOURS) == binary


def test_uip_window() -> None:
    m = Machine(t=0.5)
    assert not m.read(REG_A) & 0x80
    m.time.t = 1.0 - UIP_WINDOW + 1e-6
    assert m.read(REG_A) & 0x80
    assert m.read(REG_A) & 0x7F == 0x26  # 32.768 kHz, 1024 Hz
    m.time.t = 1.0 - UIP_WINDOW - 1e-5
    assert not m.read(REG_A) & 0x80
    m.write(REG_B, 0x82)  # SET: no updates, so no UIP
    m.time.t = 1.0 - 1e-6
    assert not m.read(REG_A) & 0x80


def test_linux_set_time_moves_the_clock() -> None:
    m = Machine(t=0.25)
    # mc146818_set_time(): SET on, divider reset, write the time, restore both.
    control = m.read(REG_B)
    m.write(REG_B, control | 0x80)
    freq = m.read(REG_A)
    m.write(REG_A, freq | 0x70)
    for index, value in ((YEAR, 0x99), (MONTH, 0x12), (DAY, 0x31), (HOURS, 0x23), (MINUTES, 0x59),
                         (SECONDS, 0x58), (CENTURY, 0x19)):
        m.write(index, value)
    m.time.t = 5.0  # the time holds while SET is on
    assert m.read(SECONDS) == 0x58 and m.read(YEAR) == 0x99
    m.write(REG_B, control)
    m.write(REG_A, freq)
    assert m.rtc.unsupported_dividers == 0
    assert m.read(SECONDS) == 0x58
    m.time.t = 8.0  # three seconds later: the new century
    assert [m.read(i) for i in (SECONDS, MINUTES, HOURS, DAY, MONTH, YEAR, CENTURY)] == [
        0x01, 0x00, 0x00, 0x01, 0x01, 0x00, 0x20]
    assert m.rtc.offset == calendar.timegm((1999, 12, 31, 23, 59, 58, 0, 0, 0)) - (EPOCH + 5)


def test_write_without_set_changes_running_time() -> None:
    m = Machine()
    m.write(MINUTES, 0x10)
    assert m.read(MINUTES) == 0x10 and m.read(SECONDS) == 0x30
    m.time.t = 60.0
    assert m.read(MINUTES) == 0x11


def test_12_hour_write() -> None:
    m = Machine()
    m.write(REG_B, 0x80)  # SET, BCD, 12 h
    m.write(HOURS, 0x80 | 0x07)  # 7 PM
    m.write(REG_B, 0x02)  # 24 h again, running
    assert m.read(HOURS) == 0x19


def test_register_c_read_clears_and_lowers_irq8() -> None:
    m = Machine(t=0.1)
    m.write(REG_A, 0x20)  # no periodic rate: PF stays clear
    m.write(REG_B, 0x12)  # UIE
    assert m.rtc.next_deadline() == pytest.approx(1.0)
    m.time.t = 1.0
    m.rtc.tick(1.0)
    assert m.irq_levels == [True]
    assert m.rtc.next_deadline() is None  # IRQ8 is up until register C is read
    assert m.read(REG_C) == 0x80 | 0x10  # IRQF, UF
    assert m.irq_levels == [True, False]
    assert m.read(REG_C) == 0x00
    assert m.rtc.next_deadline() == pytest.approx(2.0)


def test_set_clears_uie() -> None:
    m = Machine()
    m.write(REG_B, 0x12)
    m.write(REG_B, 0x92)
    assert m.read(REG_B) == 0x82


def test_flags_set_without_enables_and_enable_raises() -> None:
    m = Machine(t=0.1)
    m.time.t = 1.5
    m.rtc.tick(1.5)
    assert m.irq_levels == []
    m.write(REG_B, 0x12)  # enabling UIE with UF already set asserts IRQ8
    assert m.irq_levels == [True]
    assert m.read(REG_C) & 0x50 == 0x50  # UF and PF (1024 Hz runs regardless of PIE)


@pytest.mark.parametrize("rate_select, hz", [(0x06, 1024), (0x0F, 2), (0x03, 8192), (0x01, 256)])
def test_periodic_interrupt_rate(rate_select: int, hz: int) -> None:
    m = Machine()
    m.write(REG_A, 0x20 | rate_select)
    m.write(REG_B, 0x42)  # PIE
    assert m.run_until(1.0 + 1e-9) == hz
    assert m.rtc.lost_ticks == 0


def test_periodic_late_monitor_counts_lost_ticks() -> None:
    m = Machine()
    m.write(REG_B, 0x42)  # PIE at 1024 Hz
    m.time.t = 10.5 / 1024
    m.rtc.tick(m.time.t)
    assert m.irq_levels == [True]
    assert m.rtc.lost_ticks == 9
    assert m.read(REG_C) == 0xC0


def test_alarm_interrupt() -> None:
    m = Machine(t=0.2)
    m.write(0x01, 0x33)  # seconds alarm :33
    m.write(0x03, 0xFF)  # any minute
    m.write(0x05, 0xFF)  # any hour
    m.write(REG_B, 0x22)  # AIE
    m.run_until(2.5)
    assert m.irq_levels == []
    assert m.run_until(3.5) == 1
    assert m.rtc.next_deadline() is not None


def test_nmi_bit_and_index() -> None:
    m = Machine()
    m.bus.write(INDEX, 1, 0x8F)
    assert m.rtc.nmi_disabled and m.rtc.index == 0x0F
    m.bus.write(INDEX, 1, 0x0F)
    assert not m.rtc.nmi_disabled
    assert m.bus.read(INDEX, 1) == 0xFF


def test_cmos_ram_read_write() -> None:
    m = Machine()
    m.write(0x40, 0x5A)
    assert m.read(0x40) == 0x5A
    m.write(REG_C, 0xFF)
    assert m.rtc.readonly_writes == 1


@pytest.mark.parametrize("mem, ext, high", [
    (128 * 1024 * 1024, 0xFFFF, 0x0700),
    (8 * 1024 * 1024, 0x1C00, 0),
    (32 * 1024 * 1024, 31 * 1024, 0x0100),
])
def test_memory_size_fields_and_checksum(mem: int, ext: int, high: int) -> None:
    m = Machine()
    m.rtc.set_cmos(0x10, 0x40)  # a floppy type, to make the checksum non-trivial
    m.rtc.set_memory_size(mem)
    assert m.read(0x15) | m.read(0x16) << 8 == 640
    assert m.read(0x17) | m.read(0x18) << 8 == ext
    assert m.read(0x30) | m.read(0x31) << 8 == ext
    assert m.read(0x34) | m.read(0x35) << 8 == high
    checksum = sum(m.read(i) for i in range(0x10, 0x2E)) & 0xFFFF
    assert m.read(0x2E) << 8 | m.read(0x2F) == checksum
    assert checksum == 0x40 + 0x80 + 0x02 + (ext & 0xFF) + (ext >> 8)


def test_set_cmos_rejects_clock_registers() -> None:
    rtc = Rtc()
    with pytest.raises(ValueError):
        rtc.set_cmos(REG_B, 0)
    with pytest.raises(ValueError):
        rtc.set_cmos(CENTURY, 0x20)


def test_reset_disables_interrupts_keeps_time_and_ram() -> None:
    m = Machine()
    m.write(0x40, 0x11)
    m.write(REG_B, 0x76)  # PIE, AIE, UIE, binary, 24 h
    m.rtc.reset()
    assert m.read(REG_B) == 0x06
    assert m.read(0x40) == 0x11
    assert m.read(SECONDS) == 30
