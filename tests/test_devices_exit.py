"""The ways a guest ends a run through devices: isa-debug-exit and ACPI soft-off."""

from __future__ import annotations

import pytest

from bt_vmm.devices import acpi_pm
from bt_vmm.devices.acpi_pm import AcpiPm
from bt_vmm.devices.bus import PortBus
from bt_vmm.devices.debug_exit import DebugExit
from bt_vmm.errors import EXIT_OK, GuestExit

# --- isa-debug-exit. ---


@pytest.fixture
def exit_bus() -> PortBus:
    bus = PortBus()
    bus.register(0xF4, 4, DebugExit(0xF4))
    return bus


@pytest.mark.parametrize("value, status", [(0, 1), (1, 3), (0x7F, 0xFF), (0x80, 0x01), (0xFF, 0xFF)])
def test_debug_exit_status_is_v_shl_1_or_1(exit_bus: PortBus, value: int, status: int) -> None:
    with pytest.raises(GuestExit) as info:
        exit_bus.write(0xF4, 1, value)
    assert info.value.status == status
    assert info.value.reason == f"guest wrote {value:#x} to the debug-exit port"


def test_debug_exit_uses_the_whole_written_value(exit_bus: PortBus) -> None:
    with pytest.raises(GuestExit) as info:
        exit_bus.write(0xF4, 4, 0x12345678)
    assert info.value.status == (0x12345678 << 1 | 1) & 0xFF
    assert "0x12345678" in info.value.reason


def test_debug_exit_status_is_never_zero() -> None:
    dev = DebugExit()
    for value in range(0x200):
        with pytest.raises(GuestExit) as info:
            dev.io_write(0xF4, 2, value)
        assert info.value.status & 1


def test_debug_exit_reads_float_high(exit_bus: PortBus) -> None:
    assert exit_bus.read(0xF4, 1) == 0xFF
    assert exit_bus.read(0xF4, 2) == 0xFFFF
    assert exit_bus.read(0xF4, 4) == 0xFFFFFFFF


# --- ACPI PM1a block. ---


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def pm(clock: FakeClock) -> AcpiPm:
    return AcpiPm(0x600, clock=clock)


@pytest.fixture
def pm_bus(pm: AcpiPm) -> PortBus:
    bus = PortBus()
    bus.register(0x600, acpi_pm.PORT_COUNT, pm)
    return bus


def test_s5_powers_off_with_status_ok(pm_bus: PortBus) -> None:
    # Linux's acpi_hw_legacy_sleep: write SLP_TYP first, then SLP_TYP | SLP_EN.
    pm_bus.write(0x604, 2, acpi_pm.CNT_SCI_EN)
    with pytest.raises(GuestExit) as info:
        pm_bus.write(0x604, 2, acpi_pm.CNT_SCI_EN | acpi_pm.CNT_SLP_EN)
    assert info.value.status == EXIT_OK
    assert info.value.reason == "guest powered off (ACPI S5)"


def test_s5_through_a_byte_write_of_the_high_half(pm_bus: PortBus) -> None:
    with pytest.raises(GuestExit):
        pm_bus.write(0x605, 1, acpi_pm.CNT_SLP_EN >> 8)


def test_other_sleep_types_are_recorded_and_ignored(pm_bus: PortBus, pm: AcpiPm) -> None:
    pm_bus.write(0x604, 2, 1 << 10 | acpi_pm.CNT_SLP_EN | acpi_pm.CNT_SCI_EN)  # S3 on PIIX4
    pm_bus.write(0x604, 2, 1 << 10 | acpi_pm.CNT_SLP_EN | acpi_pm.CNT_SCI_EN)
    pm_bus.write(0x604, 2, 2 << 10 | acpi_pm.CNT_SLP_EN | acpi_pm.CNT_SCI_EN)
    assert pm.sleep_requests == {1: 2, 2: 1}
    assert pm.last_sleep_type == 2
    # SLP_EN is write-only; SLP_TYP and SCI_EN read back.
    assert pm_bus.read(0x604, 2) == 2 << 10 | acpi_pm.CNT_SCI_EN


def test_setting_slp_typ_without_slp_en_does_nothing(pm_bus: PortBus, pm: AcpiPm) -> None:
    pm_bus.write(0x604, 2, 5 << 10)
    assert pm_bus.read(0x604, 2) == 5 << 10
    assert not pm.sleep_requests


def test_sci_enable_hook(pm_bus: PortBus, pm: AcpiPm) -> None:
    assert pm_bus.read(0x604, 2) & acpi_pm.CNT_SCI_EN == 0
    pm.sci_enable()
    assert pm_bus.read(0x604, 2) & acpi_pm.CNT_SCI_EN


def test_status_bits_are_write_one_to_clear(pm_bus: PortBus, pm: AcpiPm) -> None:
    pm.pm1_sts = acpi_pm.STS_PWRBTN | acpi_pm.STS_WAK
    pm_bus.write(0x600, 2, 0)  # writing zeros changes nothing
    assert pm_bus.read(0x600, 2) == acpi_pm.STS_PWRBTN | acpi_pm.STS_WAK
    pm_bus.write(0x600, 2, acpi_pm.STS_PWRBTN)
    assert pm_bus.read(0x600, 2) == acpi_pm.STS_WAK
    pm_bus.write(0x601, 1, acpi_pm.STS_WAK >> 8)
    assert pm_bus.read(0x600, 2) == 0


def test_enable_register_reads_back_and_counts(pm_bus: PortBus, pm: AcpiPm) -> None:
    pm_bus.write(0x602, 2, 0xFFFF)
    assert pm_bus.read(0x602, 2) == acpi_pm.EN_MASK
    assert pm.unsignalled_enables == 1
    # A 32-bit read of the event block: status in the low half, enable in the high half.
    assert pm_bus.read(0x600, 4) == acpi_pm.EN_MASK << 16


def test_pm_timer_counts_at_3_579545_mhz(pm_bus: PortBus, clock: FakeClock) -> None:
    assert pm_bus.read(0x608, 4) == 0
    clock.now += 1.0
    assert pm_bus.read(0x608, 4) == 3_579_545
    clock.now += 2.0
    assert pm_bus.read(0x608, 4) == 3 * 3_579_545  # < 2**24: no wrap yet


def test_pm_timer_is_monotonic_and_24_bits(pm_bus: PortBus, clock: FakeClock) -> None:
    last = pm_bus.read(0x608, 4)
    for _ in range(400):
        clock.now += 0.01
        value = pm_bus.read(0x608, 4)
        assert value < 1 << 24
        assert (value - last) & 0xFFFFFF == pytest.approx(35_795, abs=2)  # forward, modulo 2**24
        if value < last:
            assert last > 0xF00000  # only a wrap goes backwards
        last = value


def test_pm_timer_bytes_and_writes(pm_bus: PortBus, pm: AcpiPm, clock: FakeClock) -> None:
    clock.now += 1.0
    assert pm_bus.read(0x60B, 1) == 0  # the top byte of a 24-bit timer
    assert pm_bus.read(0x608, 2) == 3_579_545 & 0xFFFF
    pm_bus.write(0x608, 4, 0)
    assert pm.timer_writes == 1
    assert pm_bus.read(0x608, 4) == 3_579_545


def test_timer_status_latches_on_bit_23_change(pm_bus: PortBus, clock: FakeClock) -> None:
    assert pm_bus.read(0x600, 2) & acpi_pm.STS_TMR == 0
    clock.now += (1 << 23) / 3_579_545 + 0.001
    assert pm_bus.read(0x600, 2) & acpi_pm.STS_TMR
    pm_bus.write(0x600, 2, acpi_pm.STS_TMR)
    assert pm_bus.read(0x600, 2) & acpi_pm.STS_TMR == 0
    clock.now += 1.0  # bit 23 still set: no new event
    assert pm_bus.read(0x600, 2) & acpi_pm.STS_TMR == 0


def test_reserved_and_out_of_block_bytes(pm_bus: PortBus, pm: AcpiPm) -> None:
    assert pm_bus.read(0x606, 2) == 0xFFFF
    assert pm_bus.read(0x60A, 4) == 0xFFFF0000  # bytes past +11 float high
    assert pm.reserved_accesses == 3


def test_reset_restarts_the_timer_and_clears_registers(pm_bus: PortBus, pm: AcpiPm, clock: FakeClock) -> None:
    pm_bus.write(0x602, 2, acpi_pm.EN_PWRBTN)
    pm_bus.write(0x604, 2, acpi_pm.CNT_SCI_EN)
    clock.now += 5.0
    pm.reset()
    assert pm_bus.read(0x602, 2) == 0
    assert pm_bus.read(0x604, 2) == 0
    assert pm_bus.read(0x608, 4) == 0
