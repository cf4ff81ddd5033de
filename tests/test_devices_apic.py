"""The local APIC and the I/O APIC, driven the way Linux's apic and io_apic code drives them."""

from __future__ import annotations

import pytest

from bt_vmm.devices import ioapic as io
from bt_vmm.devices import lapic as la
from bt_vmm.devices.ioapic import IoApic
from bt_vmm.devices.lapic import LocalApic

LOCAL_TIMER_VECTOR = 0xEC  # Linux's vector for the local APIC timer
SPURIOUS_VECTOR = 0xFF
ERROR_VECTOR = 0xFE


class Clock:
    """A host clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def apic(clock: Clock) -> LocalApic:
    return LocalApic(clock, apic_id=0, bus_hz=100e6)


def rd(apic: LocalApic, offset: int) -> int:
    return apic.mmio_read(offset, 4)


def wr(apic: LocalApic, offset: int, value: int) -> None:
    apic.mmio_write(offset, 4, value)


def linux_setup(apic: LocalApic) -> None:
    """setup_local_APIC(), roughly: flat logical mode, TPR 0, enable, error vector, LINT0 virtual wire."""
    wr(apic, la.DFR, 0xFFFFFFFF)
    wr(apic, la.LDR, 1 << 24)
    wr(apic, la.TPR, 0)
    wr(apic, la.SVR, la.SVR_ENABLE | SPURIOUS_VECTOR)
    wr(apic, la.LVT_LINT0, la.DELIVERY_EXTINT << 8)
    wr(apic, la.LVT_LINT1, la.DELIVERY_NMI << 8)
    wr(apic, la.LVT_ERROR, ERROR_VECTOR)
    wr(apic, la.ESR, 0)
    wr(apic, la.ESR, 0)


def take(apic: LocalApic) -> int:
    """The CPU takes the interrupt; its handler runs and writes EOI later."""
    assert apic.has_interrupt()
    return apic.acknowledge()


# --- Local APIC: power-up state. ---


def test_power_up_registers(apic: LocalApic) -> None:
    assert la.BASE == 0xFEE00000
    assert rd(apic, la.VERSION) == 0x00050014
    assert rd(apic, la.ID) == 0
    assert rd(apic, la.TPR) == 0
    assert rd(apic, la.APR) == 0
    assert rd(apic, la.PPR) == 0
    assert rd(apic, la.DFR) == 0xFFFFFFFF
    assert rd(apic, la.SVR) == 0xFF
    for reg in (la.LVT_CMCI, la.LVT_TIMER, la.LVT_THERMAL, la.LVT_PERF, la.LVT_LINT0, la.LVT_LINT1, la.LVT_ERROR):
        assert rd(apic, reg) == la.LVT_MASKED
    assert rd(apic, la.TIMER_CURRENT) == 0
    assert apic.apic_base_msr == 0xFEE00000 | la.MSR_ENABLE | la.MSR_BSP
    assert apic.next_deadline() is None


def test_apic_id_comes_from_the_constructor(clock: Clock) -> None:
    apic = LocalApic(clock, apic_id=3)
    assert rd(apic, la.ID) == 3 << 24
    assert apic.matches_destination(3, logical=False)
    assert not apic.matches_destination(0, logical=False)


def test_nothing_is_delivered_until_software_enable(apic: LocalApic) -> None:
    apic.accept(0x40)
    assert not apic.has_interrupt()
    assert apic.acknowledge() == SPURIOUS_VECTOR  # nothing deliverable: the spurious vector
    assert apic.spurious_acks == 1
    wr(apic, la.SVR, la.SVR_ENABLE | SPURIOUS_VECTOR)
    assert take(apic) == 0x40  # held in IRR while disabled


def test_software_disable_masks_the_lvt_and_keeps_it_masked(apic: LocalApic) -> None:
    linux_setup(apic)
    wr(apic, la.LVT_TIMER, LOCAL_TIMER_VECTOR)
    assert rd(apic, la.LVT_TIMER) == LOCAL_TIMER_VECTOR
    wr(apic, la.SVR, SPURIOUS_VECTOR)  # software disable
    assert rd(apic, la.LVT_TIMER) == LOCAL_TIMER_VECTOR | la.LVT_MASKED
    wr(apic, la.LVT_TIMER, LOCAL_TIMER_VECTOR)  # cannot unmask while disabled
    assert rd(apic, la.LVT_TIMER) & la.LVT_MASKED


# --- Local APIC: the timer. ---


def test_periodic_timer_divide_16_interrupts_on_time(apic: LocalApic, clock: Clock) -> None:
    linux_setup(apic)
    wr(apic, la.TIMER_DIVIDE, 0x3)  # APIC_TDR_DIV_16
    wr(apic, la.LVT_TIMER, la.TIMER_PERIODIC | LOCAL_TIMER_VECTOR)
    wr(apic, la.TIMER_INITIAL, 100_000)
    period = 100_000 * 16 / 100e6  # 16 ms
    assert apic.next_deadline() == pytest.approx(period)
    assert rd(apic, la.TIMER_CURRENT) == 100_000

    # A quarter of the way through, the count is three quarters of the way down.
    clock.advance(period / 4)
    assert rd(apic, la.TIMER_CURRENT) == pytest.approx(75_000, abs=1)
    apic.tick(clock.now)
    assert not apic.has_interrupt()

    for n in range(1, 6):
        clock.now = n * period + 1e-9
        assert apic.next_deadline() <= clock.now
        apic.tick(clock.now)
        assert take(apic) == LOCAL_TIMER_VECTOR
        assert apic.ppr == LOCAL_TIMER_VECTOR & 0xF0  # the timer's class is in service
        assert rd(apic, la.ISR_BASE + 0x10 * (LOCAL_TIMER_VECTOR // 32)) == 1 << (LOCAL_TIMER_VECTOR % 32)
        wr(apic, la.EOI, 0)
        assert apic.ppr == 0
        assert apic.next_deadline() == pytest.approx((n + 1) * period)
        assert rd(apic, la.TIMER_CURRENT) == pytest.approx(100_000, abs=1)  # reloaded
    assert apic.timer_fires == 5
    assert apic.lost_ticks == 0


def test_late_periodic_ticks_coalesce_then_resynchronise(apic: LocalApic, clock: Clock) -> None:
    linux_setup(apic)
    wr(apic, la.TIMER_DIVIDE, 0x3)
    wr(apic, la.LVT_TIMER, la.TIMER_PERIODIC | LOCAL_TIMER_VECTOR)
    wr(apic, la.TIMER_INITIAL, 100_000)
    period = 0.016
    clock.now = 10.5 * period  # ten expiries are due
    apic.tick(clock.now)
    assert apic.timer_fires == la.MAX_LATE_TICKS
    assert apic.lost_ticks == 10 - la.MAX_LATE_TICKS
    assert apic.next_deadline() == pytest.approx(11 * period)  # still in phase
    assert take(apic) == LOCAL_TIMER_VECTOR
    assert not apic.has_interrupt()  # the late ones merged in IRR


def test_one_shot_timer_fires_once(apic: LocalApic, clock: Clock) -> None:
    linux_setup(apic)
    wr(apic, la.TIMER_DIVIDE, 0xB)  # divide by 1
    wr(apic, la.LVT_TIMER, la.TIMER_ONE_SHOT | LOCAL_TIMER_VECTOR)
    wr(apic, la.TIMER_INITIAL, 1000)  # 10 us
    clock.advance(5e-6)
    assert rd(apic, la.TIMER_CURRENT) == pytest.approx(500, abs=1)
    clock.advance(6e-6)
    assert rd(apic, la.TIMER_CURRENT) == 0  # expired, not yet processed
    apic.tick(clock.now)
    assert apic.next_deadline() is None
    assert take(apic) == LOCAL_TIMER_VECTOR
    wr(apic, la.EOI, 0)
    clock.advance(1.0)
    apic.tick(clock.now)
    assert not apic.has_interrupt()
    assert rd(apic, la.TIMER_CURRENT) == 0


def test_masked_timer_counts_but_does_not_interrupt(apic: LocalApic, clock: Clock) -> None:
    linux_setup(apic)
    wr(apic, la.LVT_TIMER, la.LVT_MASKED | la.TIMER_PERIODIC | LOCAL_TIMER_VECTOR)
    wr(apic, la.TIMER_INITIAL, 1000)
    clock.advance(1000 * 2 / 100e6 * 1.5)
    apic.tick(clock.now)
    assert not apic.has_interrupt()
    assert apic.masked_expiries == 1


def test_writing_zero_initial_count_stops_the_timer(apic: LocalApic, clock: Clock) -> None:
    linux_setup(apic)
    wr(apic, la.LVT_TIMER, la.TIMER_PERIODIC | LOCAL_TIMER_VECTOR)
    wr(apic, la.TIMER_INITIAL, 1000)
    assert apic.next_deadline() is not None
    wr(apic, la.TIMER_INITIAL, 0)
    assert apic.next_deadline() is None
    assert rd(apic, la.TIMER_CURRENT) == 0


def test_changing_the_divider_mid_count_keeps_the_count(apic: LocalApic, clock: Clock) -> None:
    linux_setup(apic)
    wr(apic, la.TIMER_DIVIDE, 0xB)  # divide by 1: 10 ns per count
    wr(apic, la.LVT_TIMER, la.TIMER_ONE_SHOT | LOCAL_TIMER_VECTOR)
    wr(apic, la.TIMER_INITIAL, 1000)
    clock.advance(4e-6)  # 400 counts gone
    wr(apic, la.TIMER_DIVIDE, 0x3)  # divide by 16: 160 ns per count
    assert rd(apic, la.TIMER_DIVIDE) == 0x3
    assert rd(apic, la.TIMER_CURRENT) == pytest.approx(600, abs=1)
    assert apic.next_deadline() == pytest.approx(4e-6 + 600 * 160e-9)


def test_divide_configuration_values(apic: LocalApic, clock: Clock) -> None:
    linux_setup(apic)
    wr(apic, la.LVT_TIMER, la.TIMER_ONE_SHOT | LOCAL_TIMER_VECTOR)
    for code, divider in [(0x0, 2), (0x1, 4), (0x2, 8), (0x3, 16), (0x8, 32), (0x9, 64), (0xA, 128), (0xB, 1)]:
        wr(apic, la.TIMER_DIVIDE, code)
        wr(apic, la.TIMER_INITIAL, 100)
        assert apic.next_deadline() - clock.now == pytest.approx(100 * divider / 100e6)


def test_tsc_deadline_mode_is_not_offered(apic: LocalApic) -> None:
    linux_setup(apic)
    wr(apic, la.LVT_TIMER, la.TIMER_TSC_DEADLINE | LOCAL_TIMER_VECTOR)
    wr(apic, la.TIMER_INITIAL, 1000)
    assert apic.next_deadline() is None
    assert apic.tsc_deadline_requests == 1


# --- Local APIC: priorities, acknowledge and EOI. ---


def test_tpr_blocks_lower_priority_classes(apic: LocalApic) -> None:
    linux_setup(apic)
    apic.accept(0x41)
    wr(apic, la.TPR, 0x50)
    assert not apic.has_interrupt()
    wr(apic, la.TPR, 0x40)  # same class: still blocked
    assert not apic.has_interrupt()
    wr(apic, la.TPR, 0x3F)
    assert rd(apic, la.TPR) == 0x3F
    assert take(apic) == 0x41


def test_tpr_fast_path_round_trips(apic: LocalApic) -> None:
    for value in range(0, 0x100, 0x11):
        apic.mmio_write(la.TPR, 4, value | 0xFFFFFF00)
        assert apic.mmio_read(la.TPR, 4) == value
        assert apic.tpr == value


def test_ppr_follows_sdm_10_8_3_1(apic: LocalApic) -> None:
    linux_setup(apic)
    apic.accept(0x61)
    assert take(apic) == 0x61
    for tpr, ppr in [(0x00, 0x60), (0x20, 0x60), (0x65, 0x65), (0x6F, 0x6F), (0x75, 0x75), (0x5F, 0x60)]:
        wr(apic, la.TPR, tpr)
        assert rd(apic, la.PPR) == ppr, hex(tpr)


def test_higher_class_nests_lower_waits(apic: LocalApic) -> None:
    linux_setup(apic)
    apic.accept(0x61)
    assert take(apic) == 0x61
    apic.accept(0x51)
    apic.accept(0x65)  # same class as the one in service
    assert not apic.has_interrupt()
    apic.accept(0x71)
    assert take(apic) == 0x71  # nests
    wr(apic, la.EOI, 0)  # EOI for 0x71
    assert not apic.has_interrupt()
    wr(apic, la.EOI, 0)  # EOI for 0x61
    assert take(apic) == 0x65
    wr(apic, la.EOI, 0)
    assert take(apic) == 0x51
    wr(apic, la.EOI, 0)
    assert apic.isr == 0 and apic.irr == 0
    wr(apic, la.EOI, 0)
    assert apic.spurious_eois == 1


def test_irr_isr_tmr_registers(apic: LocalApic) -> None:
    linux_setup(apic)
    apic.accept(0x31, level=True)
    apic.accept(0x92)
    assert rd(apic, la.IRR_BASE + 0x10) == 1 << 0x11
    assert rd(apic, la.IRR_BASE + 0x40) == 1 << 0x12
    assert rd(apic, la.TMR_BASE + 0x10) == 1 << 0x11
    assert rd(apic, la.TMR_BASE + 0x40) == 0
    assert take(apic) == 0x92
    assert rd(apic, la.IRR_BASE + 0x40) == 0
    assert rd(apic, la.ISR_BASE + 0x40) == 1 << 0x12


def test_eoi_of_a_level_vector_calls_on_eoi(apic: LocalApic) -> None:
    linux_setup(apic)
    seen: list[int] = []
    apic.on_eoi = seen.append
    apic.accept(0x52)
    assert take(apic) == 0x52
    wr(apic, la.EOI, 0)
    assert seen == []  # edge: no EOI message
    apic.accept(0x53, level=True)
    assert take(apic) == 0x53
    wr(apic, la.EOI, 0)
    assert seen == [0x53]


def test_illegal_vectors_are_refused(apic: LocalApic) -> None:
    linux_setup(apic)
    apic.accept(0x05)
    assert apic.irr == 1 << ERROR_VECTOR  # only the error interrupt
    wr(apic, la.ESR, 0)
    assert rd(apic, la.ESR) == la.ESR_RECEIVE_ILLEGAL_VECTOR
    wr(apic, la.ESR, 0)
    assert rd(apic, la.ESR) == 0


# --- Local APIC: IPIs. ---


def test_self_ipi_by_shorthand(apic: LocalApic) -> None:
    linux_setup(apic)
    wr(apic, la.ICR_HIGH, 0)
    wr(apic, la.ICR_LOW, la.SHORTHAND_SELF << la.SHORTHAND_SHIFT | 0x40)
    assert not rd(apic, la.ICR_LOW) & la.ICR_DELIVERY_STATUS
    assert take(apic) == 0x40
    assert apic.self_ipis == 1


def test_fixed_ipi_to_own_id_is_delivered(apic: LocalApic) -> None:
    linux_setup(apic)
    wr(apic, la.ICR_HIGH, 0 << 24)
    wr(apic, la.ICR_LOW, la.ICR_ASSERT | 0x41)  # physical, fixed, edge
    assert take(apic) == 0x41
    wr(apic, la.EOI, 0)
    wr(apic, la.ICR_HIGH, 1 << 24)
    wr(apic, la.ICR_LOW, la.ICR_LOGICAL | la.ICR_ASSERT | 0x42)  # logical, flat: LDR bit 0
    assert take(apic) == 0x42


def test_ipis_to_other_cpus_and_init_sipi_are_ignored(apic: LocalApic) -> None:
    linux_setup(apic)
    wr(apic, la.ICR_HIGH, 5 << 24)
    wr(apic, la.ICR_LOW, la.ICR_ASSERT | 0x43)  # to APIC 5: nobody
    wr(apic, la.ICR_HIGH, 0)
    wr(apic, la.ICR_LOW, la.SHORTHAND_OTHERS << la.SHORTHAND_SHIFT | 0x44)
    wr(apic, la.ICR_HIGH, 1 << 24)
    wr(apic, la.ICR_LOW, la.ICR_LEVEL | la.ICR_ASSERT | la.DELIVERY_INIT << 8)
    wr(apic, la.ICR_LOW, la.DELIVERY_STARTUP << 8 | 0x9F)
    assert not apic.has_interrupt()
    assert apic.irr == 0
    assert apic.ipis_ignored == {"fixed": 2, "INIT": 1, "SIPI": 1}


def test_ipi_with_illegal_vector_sets_esr(apic: LocalApic) -> None:
    linux_setup(apic)
    wr(apic, la.ICR_LOW, la.SHORTHAND_SELF << la.SHORTHAND_SHIFT | 0x03)
    wr(apic, la.ESR, 0)
    assert rd(apic, la.ESR) == la.ESR_SEND_ILLEGAL_VECTOR | la.ESR_RECEIVE_ILLEGAL_VECTOR
    assert take(apic) == ERROR_VECTOR


# --- Local APIC: LINT0 and the enables. ---


def test_lint0_virtual_wire(apic: LocalApic) -> None:
    assert apic.lint0_extint()  # software disabled: the PIC reaches the CPU
    wr(apic, la.SVR, la.SVR_ENABLE | SPURIOUS_VECTOR)
    assert not apic.lint0_extint()  # LINT0 masked
    wr(apic, la.LVT_LINT0, la.DELIVERY_EXTINT << 8)
    assert apic.lint0_extint()
    wr(apic, la.LVT_LINT0, la.LVT_MASKED | la.DELIVERY_EXTINT << 8)  # Linux switching to the IOAPIC
    assert not apic.lint0_extint()
    apic.apic_base_msr = la.BASE | la.MSR_BSP  # globally disabled
    assert apic.lint0_extint()
    assert not apic.enabled


def test_global_disable_then_enable_is_power_up_state(apic: LocalApic) -> None:
    linux_setup(apic)
    wr(apic, la.TPR, 0x20)
    apic.accept(0x50)
    apic.apic_base_msr = la.BASE | la.MSR_BSP
    apic.accept(0x60)  # nobody is there
    assert apic.apic_base_msr == la.BASE | la.MSR_BSP
    apic.apic_base_msr = la.BASE | la.MSR_ENABLE
    assert apic.apic_base_msr == la.BASE | la.MSR_ENABLE | la.MSR_BSP
    assert rd(apic, la.SVR) == 0xFF
    assert rd(apic, la.TPR) == 0
    assert apic.irr == 0
    assert apic.dropped_while_disabled == 1


# --- Local APIC: access widths and reserved registers. ---


def test_narrow_and_wide_accesses(apic: LocalApic) -> None:
    assert apic.mmio_read(la.VERSION, 1) == 0x14
    assert apic.mmio_read(la.VERSION + 2, 1) == 0x05
    assert apic.mmio_read(la.VERSION, 2) == 0x0014
    assert apic.mmio_read(la.VERSION, 8) == 0x00050014  # the upper dword is reserved
    assert apic.mmio_read(la.VERSION + 4, 4) == 0
    apic.mmio_write(la.SVR, 8, 0x1FF)
    assert rd(apic, la.SVR) == 0x1FF
    apic.mmio_write(la.LDR + 3, 1, 0x80)
    assert rd(apic, la.LDR) == 0x80000000
    apic.mmio_write(la.TPR, 1, 0x30)
    assert rd(apic, la.TPR) == 0x30


def test_reserved_registers_read_zero_and_count(apic: LocalApic) -> None:
    assert rd(apic, 0x40) == 0
    wr(apic, 0x3F0, 1)
    assert apic.reserved_accesses == 2
    wr(apic, la.VERSION, 0)
    assert apic.readonly_writes == 1
    assert rd(apic, la.VERSION) == 0x00050014


def test_reset_restores_power_up(apic: LocalApic, clock: Clock) -> None:
    linux_setup(apic)
    wr(apic, la.LVT_TIMER, la.TIMER_PERIODIC | LOCAL_TIMER_VECTOR)
    wr(apic, la.TIMER_INITIAL, 1000)
    apic.accept(0x40)
    apic.reset()
    assert apic.next_deadline() is None
    assert apic.irr == 0
    assert rd(apic, la.SVR) == 0xFF
    assert rd(apic, la.LVT_TIMER) == la.LVT_MASKED


# --- I/O APIC. ---


@pytest.fixture
def pair(clock: Clock) -> tuple[LocalApic, IoApic]:
    apic = LocalApic(clock)
    ioapic = IoApic(apic)
    linux_setup(apic)
    return apic, ioapic


def io_rd(ioapic: IoApic, index: int) -> int:
    ioapic.mmio_write(io.IOREGSEL, 4, index)
    return ioapic.mmio_read(io.IOWIN, 4)


def io_wr(ioapic: IoApic, index: int, value: int) -> None:
    ioapic.mmio_write(io.IOREGSEL, 4, index)
    ioapic.mmio_write(io.IOWIN, 4, value)


def program(ioapic: IoApic, pin: int, low: int, destination: int = 0) -> None:
    """ioapic_write_entry(): high dword first, then low (Linux writes the mask last when masking)."""
    io_wr(ioapic, io.IOREDTBL + 2 * pin + 1, destination << 24)
    io_wr(ioapic, io.IOREDTBL + 2 * pin, low)


def test_ioapic_power_up(pair: tuple[LocalApic, IoApic]) -> None:
    _, ioapic = pair
    assert io.BASE == 0xFEC00000
    assert io_rd(ioapic, io.IOAPICVER) == 0x00170011
    assert io_rd(ioapic, io.IOAPICID) == 1 << 24
    assert io_rd(ioapic, io.IOAPICARB) == 1 << 24
    for pin in range(24):
        assert io_rd(ioapic, io.IOREDTBL + 2 * pin) == io.RTE_MASKED
        assert io_rd(ioapic, io.IOREDTBL + 2 * pin + 1) == 0
    assert ioapic.mmio_read(io.IOREGSEL, 4) == io.IOREDTBL + 47


def test_ioapic_registers_read_back(pair: tuple[LocalApic, IoApic]) -> None:
    _, ioapic = pair
    program(ioapic, 5, 0x35 | io.RTE_LEVEL | io.RTE_POLARITY_LOW | io.RTE_MASKED | io.RTE_DELIVERY_STATUS, 0xAB)
    assert io_rd(ioapic, io.IOREDTBL + 10) == 0x35 | io.RTE_LEVEL | io.RTE_POLARITY_LOW | io.RTE_MASKED
    assert io_rd(ioapic, io.IOREDTBL + 11) == 0xAB000000
    io_wr(ioapic, io.IOAPICID, 0x0F000000 | 0xFFFF)
    assert io_rd(ioapic, io.IOAPICID) == 0x0F000000
    io_wr(ioapic, io.IOAPICVER, 0)
    assert io_rd(ioapic, io.IOAPICVER) == 0x00170011
    assert io_rd(ioapic, 0x50) == 0
    assert ioapic.unknown_registers == 1


def test_edge_pin_delivers_on_rising_edges(pair: tuple[LocalApic, IoApic]) -> None:
    apic, ioapic = pair
    program(ioapic, 2, 0x30)  # the PIT: fixed, physical, edge, active high, to APIC 0
    ioapic.set_irq(2, True)
    assert take(apic) == 0x30
    wr(apic, la.EOI, 0)
    ioapic.set_irq(2, True)  # still high: no new edge
    assert not apic.has_interrupt()
    ioapic.set_irq(2, False)
    ioapic.set_irq(2, True)
    assert take(apic) == 0x30
    assert ioapic.delivered[2] == 2
    assert not apic.tmr & 1 << 0x30


def test_masked_edge_is_lost(pair: tuple[LocalApic, IoApic]) -> None:
    apic, ioapic = pair
    program(ioapic, 4, 0x34 | io.RTE_MASKED)
    ioapic.set_irq(4, True)
    ioapic.set_irq(4, False)
    program(ioapic, 4, 0x34)
    assert not apic.has_interrupt()
    assert ioapic.masked_edges == 1


def test_level_pin_remote_irr_and_eoi_redelivery(pair: tuple[LocalApic, IoApic]) -> None:
    apic, ioapic = pair
    program(ioapic, 9, 0x39 | io.RTE_LEVEL)
    ioapic.set_irq(9, True)
    assert io_rd(ioapic, io.IOREDTBL + 18) & io.RTE_REMOTE_IRR
    assert apic.tmr & 1 << 0x39
    assert take(apic) == 0x39
    ioapic.set_irq(9, True)  # still asserted, Remote IRR set: nothing new
    assert not apic.irr
    # The handler has not quietened the device: EOI re-delivers.
    wr(apic, la.EOI, 0)
    assert io_rd(ioapic, io.IOREDTBL + 18) & io.RTE_REMOTE_IRR
    assert take(apic) == 0x39
    # This time the handler deasserts the line first.
    ioapic.set_irq(9, False)
    wr(apic, la.EOI, 0)
    assert not io_rd(ioapic, io.IOREDTBL + 18) & io.RTE_REMOTE_IRR
    assert not apic.has_interrupt()
    assert ioapic.delivered[9] == 2


def test_masked_level_pin_delivers_when_unmasked(pair: tuple[LocalApic, IoApic]) -> None:
    apic, ioapic = pair
    program(ioapic, 10, 0x3A | io.RTE_LEVEL | io.RTE_MASKED)
    ioapic.set_irq(10, True)
    assert not apic.irr
    program(ioapic, 10, 0x3A | io.RTE_LEVEL)
    assert take(apic) == 0x3A


def test_active_low_pin_inverts_the_input(pair: tuple[LocalApic, IoApic]) -> None:
    apic, ioapic = pair
    ioapic.set_irq(11, True)  # the line idles high
    program(ioapic, 11, 0x3B | io.RTE_LEVEL | io.RTE_POLARITY_LOW)
    assert not apic.irr
    ioapic.set_irq(11, False)  # pulled low: asserted
    assert take(apic) == 0x3B
    ioapic.set_irq(11, True)
    wr(apic, la.EOI, 0)
    assert not apic.has_interrupt()


def test_destination_and_delivery_mode(pair: tuple[LocalApic, IoApic]) -> None:
    apic, ioapic = pair
    program(ioapic, 3, 0x33, destination=7)  # physical APIC 7: nobody
    ioapic.set_irq(3, True)
    assert ioapic.undeliverable == 1
    program(ioapic, 4, 0x34 | io.RTE_LOGICAL | io.DELIVERY_LOWEST << 8, destination=0x01)  # flat logical
    ioapic.set_irq(4, True)
    assert take(apic) == 0x34
    program(ioapic, 0, 0x00 | 7 << 8)  # ExtINT
    ioapic.set_irq(0, True)
    program(ioapic, 1, 0x00 | 4 << 8)  # NMI
    ioapic.set_irq(1, True)
    assert ioapic.unsupported_deliveries == {"ExtINT": 1, "NMI": 1}
    assert not apic.irr


def test_ioapic_byte_access_to_ioregsel(pair: tuple[LocalApic, IoApic]) -> None:
    _, ioapic = pair
    ioapic.mmio_write(io.IOREGSEL, 1, io.IOAPICVER)
    assert ioapic.mmio_read(io.IOWIN, 4) == 0x00170011
    assert ioapic.mmio_read(io.IOWIN + 2, 1) == 0x17
    ioapic.mmio_write(io.IOREGSEL, 1, io.IOREDTBL)
    ioapic.mmio_write(io.IOWIN, 1, 0x44)  # narrow write merges with the entry
    assert ioapic.mmio_read(io.IOWIN, 4) == io.RTE_MASKED | 0x44


def test_ioapic_reset_masks_everything(pair: tuple[LocalApic, IoApic]) -> None:
    _, ioapic = pair
    program(ioapic, 1, 0x31)
    ioapic.reset()
    assert io_rd(ioapic, io.IOREDTBL + 2) == io.RTE_MASKED
