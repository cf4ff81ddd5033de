"""The 8254 PIT and port B, driven the way Linux's i8253 clockevent and TSC calibration drive them."""

from __future__ import annotations

import pytest

from bt_vmm.devices.bus import PortBus
from bt_vmm.devices.pit8254 import (
    MAX_PENDING_TICKS,
    PIT_HZ,
    PORTS,
    Pit8254,
)

CH0, CH1, CH2, MODE, PORT_B = 0x40, 0x41, 0x42, 0x43, 0x61
LATCH_100HZ = (PIT_HZ + 50) // 100  # Linux's PIT_LATCH for HZ=100: 11932


class FakeClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Machine:
    def __init__(self, start: float = 0.0) -> None:
        self.clock = FakeClock(start)
        self.irq_events: list[tuple[float, bool]] = []
        self.pit = Pit8254(self.clock, lambda level: self.irq_events.append((self.clock.t, level)))
        self.bus = PortBus()
        for first, count in PORTS:
            self.bus.register(first, count, self.pit)

    def inb(self, port: int) -> int:
        return self.bus.read(port, 1)

    def outb(self, port: int, value: int) -> None:
        self.bus.write(port, 1, value)

    def rising_edges(self) -> list[float]:
        return [t for t, level in self.irq_events if level]

    def run_until(self, end: float) -> None:
        """The monitor's loop: take control at each deadline and tick."""
        while True:
            deadline = self.pit.next_deadline()
            if deadline is None or deadline > end:
                break
            self.clock.t = max(self.clock.t, deadline)
            self.pit.tick(self.clock.t)
        self.clock.t = end

    def program(self, channel: int, control: int, count: int) -> None:
        self.outb(MODE, control)
        self.outb(CH0 + channel, count & 0xFF)
        self.outb(CH0 + channel, count >> 8)

    def read_count(self, channel: int) -> int:
        lo = self.inb(CH0 + channel)
        return lo | self.inb(CH0 + channel) << 8


def clk(n: int) -> float:
    return n / PIT_HZ


def test_ports() -> None:
    assert set(PORTS) == {(0x40, 4), (0x61, 1)}


def test_reset_runs_the_bios_tick() -> None:
    m = Machine()
    # Channel 0 in mode 3 with 65536: 18.2 Hz, loaded on CLK pulse 1.
    assert m.pit.next_deadline() == pytest.approx(clk(1 + 65536))
    m.run_until(1.0)
    assert len(m.rising_edges()) == 18


def test_mode2_100hz_ticks_at_the_right_times() -> None:
    m = Machine(start=5.0)
    start = m.clock.t
    m.program(0, 0x34, LATCH_100HZ)  # Linux's periodic setup: channel 0, lo/hi, mode 2
    m.irq_events.clear()
    t0 = int(start * PIT_HZ + 1e-6)
    m.run_until(clk(t0 + 1 + 10 * LATCH_100HZ))
    edges = m.rising_edges()
    assert len(edges) == 10
    for k, t in enumerate(edges, start=1):
        assert t == pytest.approx(clk(t0 + 1 + k * LATCH_100HZ), abs=1e-9)
    # Each tick is a dip and a rise of the line: one edge per period for the PIC.
    assert [level for _, level in m.irq_events] == [False, True] * 10
    assert m.pit.lost_ticks == 0


def test_mode0_one_shot_on_irq0() -> None:
    m = Machine()
    m.outb(MODE, 0x30)  # channel 0, lo/hi, mode 0
    assert m.irq_events[-1] == (0.0, False)  # OUT goes low with the control word
    m.clock.t = clk(100) + 1e-9
    m.outb(CH0, 1000 & 0xFF)
    m.outb(CH0, 1000 >> 8)
    assert m.pit.next_deadline() == pytest.approx(clk(100 + 1 + 1000))
    m.run_until(1.0)
    assert m.rising_edges() == [pytest.approx(clk(1101))]
    assert m.pit.next_deadline() is None  # OUT stays high: no more events
    # A new count restarts it: OUT low again, one more edge.
    m.outb(CH0, 10)
    m.outb(CH0, 0)
    assert m.irq_events[-1][1] is False
    m.run_until(2.0)
    assert len(m.rising_edges()) == 2


def test_mode4_oneshot_like_linux_clockevent() -> None:
    m = Machine()
    m.outb(MODE, 0x38)  # Linux's pit_set_oneshot: mode 4
    m.irq_events.clear()
    m.outb(CH0, 200)
    m.outb(CH0, 0)
    # OUT pulses low at terminal count and rises one CLK later.
    assert m.pit.next_deadline() == pytest.approx(clk(1 + 200 + 1))
    m.run_until(0.01)
    assert m.rising_edges() == [pytest.approx(clk(202))]
    # pit_next_event just writes a new count: the strobe is re-armed.
    m.outb(CH0, 100)
    m.outb(CH0, 0)
    m.run_until(0.02)
    assert len(m.rising_edges()) == 2


def test_counter_latch_command() -> None:
    m = Machine()
    m.program(0, 0x34, 1000)  # loaded on CLK 1
    m.clock.t = clk(301)
    m.outb(MODE, 0x00)  # latch channel 0
    m.clock.t = clk(500)
    m.outb(MODE, 0x00)  # a second latch before the read is ignored
    assert m.read_count(0) == 700
    assert m.read_count(0) == 1000 - 499  # unlatched: the live count


def test_read_back_status_and_count() -> None:
    m = Machine()
    m.outb(MODE, 0x34)
    m.outb(MODE, 0xE2)  # read-back status of channel 0 (count not latched)
    assert m.inb(CH0) == 0x40 | 0x80 | 0x34  # null count, OUT high, lo/hi mode 2
    m.outb(CH0, 0xE8)
    m.outb(CH0, 0x03)  # 1000
    m.clock.t = clk(11)
    m.outb(MODE, 0xC2)  # read-back count and status of channel 0
    assert m.inb(CH0) == 0x80 | 0x34  # status first: count loaded, OUT high
    assert m.read_count(0) == 990
    # Mode 2 OUT is low for the one CLK when the count is 1.
    m.clock.t = clk(1 + 999)
    m.outb(MODE, 0xE2)
    assert m.inb(CH0) & 0x80 == 0
    m.clock.t = clk(1 + 1000)
    m.outb(MODE, 0xE2)
    assert m.inb(CH0) & 0x80


def test_lo_hi_byte_ordering_and_access_modes() -> None:
    m = Machine()
    m.program(2, 0xB4, 0x1234)  # channel 2, lo/hi, mode 2 (gate low: loaded, not counting)
    m.clock.t = clk(10)
    assert m.inb(CH2) == 0x34
    assert m.inb(CH2) == 0x12
    m.outb(MODE, 0x94)  # channel 2, LSB only
    m.outb(CH2, 0x56)
    m.clock.t = clk(20)
    assert m.inb(CH2) == 0x56 and m.inb(CH2) == 0x56
    m.outb(MODE, 0xA4)  # channel 2, MSB only
    m.outb(CH2, 0x20)
    m.clock.t = clk(30)
    assert m.inb(CH2) == 0x20  # count 0x2000, high byte
    # Reads and writes have separate flip-flops: read LSB, write LSB, read MSB, write MSB.
    m.outb(MODE, 0xB4)
    m.outb(CH2, 0x00)
    m.outb(CH2, 0x10)
    m.clock.t = clk(40)
    assert m.inb(CH2) == 0x00
    m.outb(CH2, 0x00)
    assert m.inb(CH2) == 0x10
    m.outb(CH2, 0x20)
    m.clock.t = clk(50)
    assert m.read_count(2) == 0x1000  # mode 2, GATE low: the new count waits for a trigger
    m.outb(PORT_B, 0x01)  # GATE rising edge at CLK 50: reload on CLK 51
    m.clock.t = clk(51 + 6)
    assert m.read_count(2) == 0x2000 - 6


def test_count_zero_means_65536() -> None:
    m = Machine()
    m.program(0, 0x34, 0)
    assert m.pit.next_deadline() == pytest.approx(clk(1 + 65536))
    m.clock.t = clk(1)
    assert m.read_count(0) == 0  # 65536 reads as 0
    m.clock.t = clk(2)
    assert m.read_count(0) == 65535


def test_linux_pit_calibrate_tsc_polls_out2() -> None:
    m = Machine(start=1.25)
    latch = PIT_HZ // 20  # CAL_LATCH for 50 ms
    # Set the gate high, disable the speaker.
    m.outb(PORT_B, (m.inb(PORT_B) & ~0x02) | 0x01)
    # Channel 2, mode 0, binary, LSB then MSB.
    m.outb(MODE, 0xB0)
    write_tick = int(m.clock.t * PIT_HZ + 1e-6)
    m.outb(CH2, latch & 0xFF)
    m.outb(CH2, latch >> 8)
    terminal = clk(write_tick + 1 + latch)
    polls = 0
    while m.inb(PORT_B) & 0x20 == 0:
        polls += 1
        m.clock.t += 5e-6
        assert m.clock.t < 2.0
    assert m.clock.t == pytest.approx(terminal, abs=5e-6)
    assert m.clock.t - 1.25 == pytest.approx(0.05, abs=7e-6)
    assert polls > 9000
    # Exactly at the edge: one CLK before, OUT2 is low.
    m.clock.t = terminal - clk(1)
    assert m.inb(PORT_B) & 0x20 == 0
    m.clock.t = terminal
    assert m.inb(PORT_B) & 0x20


def test_quick_pit_calibrate_reads_msb_live() -> None:
    m = Machine()
    m.outb(PORT_B, 0x01)
    m.outb(MODE, 0xB0)
    m.outb(CH2, 0xFF)
    m.outb(CH2, 0xFF)
    m.clock.t = clk(1 + 256 * 3 + 10)
    m.inb(CH2)  # LSB
    assert m.inb(CH2) == 0xFF - 3  # MSB falls by one every 256 CLKs


def test_channel2_gate_pauses_mode0() -> None:
    m = Machine()
    m.outb(MODE, 0xB0)
    m.outb(CH2, 100)
    m.outb(CH2, 0)  # gate low: loaded on CLK 1 but not counting
    m.clock.t = clk(50)
    assert m.read_count(2) == 100
    m.outb(PORT_B, 0x01)  # gate high at CLK 50
    m.clock.t = clk(90)
    assert m.read_count(2) == 60
    m.outb(PORT_B, 0x00)
    m.clock.t = clk(500)
    assert m.read_count(2) == 60
    assert m.inb(PORT_B) & 0x20 == 0
    m.outb(PORT_B, 0x01)
    m.clock.t = clk(500 + 59)
    assert m.inb(PORT_B) & 0x20 == 0
    m.clock.t = clk(500 + 60)
    assert m.inb(PORT_B) & 0x20


def test_mode3_square_wave_on_out2() -> None:
    m = Machine()
    m.outb(PORT_B, 0x03)  # gate on, speaker on: a beep
    m.program(2, 0xB6, 1000)
    highs = []
    for n in range(1, 2001, 100):
        m.clock.t = clk(n)
        highs.append(bool(m.inb(PORT_B) & 0x20))
    assert highs == [True] * 5 + [False] * 5 + [True] * 5 + [False] * 5
    m.clock.t = clk(1 + 10)
    assert m.read_count(2) == 1000 - 20  # decrements by two


def test_mode2_new_count_takes_effect_at_period_end() -> None:
    m = Machine()
    m.program(0, 0x34, 1000)
    m.irq_events.clear()
    m.clock.t = clk(500)
    m.outb(CH0, 2000 & 0xFF)
    m.outb(CH0, 2000 >> 8)
    m.run_until(clk(4000))
    assert m.rising_edges() == [pytest.approx(clk(1001)), pytest.approx(clk(3001))]


def test_lost_ticks_are_capped_and_paid_back() -> None:
    m = Machine()
    m.program(0, 0x34, 1193)  # ~1 kHz
    period = clk(1193)
    m.irq_events.clear()
    # The monitor comes back 10 periods late.
    m.clock.t = clk(1) + 10.5 * period
    m.pit.tick(m.clock.t)
    assert len(m.rising_edges()) == 1
    assert m.pit.lost_ticks == 10 - MAX_PENDING_TICKS
    assert m.pit.pending_ticks == MAX_PENDING_TICKS - 1
    late = m.clock.t
    # The owed ticks come at four times the rate; the schedule stays in phase with
    # the counter, and a regular tick due meanwhile joins the queue.
    assert m.pit.next_deadline() == pytest.approx(late + period / 4)
    m.run_until(clk(1) + 12 * period)
    edges = m.rising_edges()
    assert edges[1:5] == [pytest.approx(late + k * period / 4) for k in (1, 2, 3, 4)]
    assert edges[5] == pytest.approx(clk(1) + 12 * period)
    assert len(edges) == 6
    assert m.pit.pending_ticks == 0
    assert m.pit.next_deadline() == pytest.approx(clk(1) + 13 * period)


def test_bcd_is_accepted_and_counted() -> None:
    m = Machine()
    m.outb(MODE, 0x35)
    assert m.pit.bcd_requests == 1
    m.outb(MODE, 0xE2)
    assert m.inb(CH0) & 0x3F == 0x35


def test_port_b_bits() -> None:
    m = Machine()
    m.outb(PORT_B, 0xFF)
    value = m.inb(PORT_B)
    assert value & 0x0F == 0x0F
    assert value & 0xC0 == 0  # no NMI sources
    toggles = {m.inb(PORT_B) & 0x10 for _ in range(4)}
    assert toggles == {0, 0x10}  # the refresh bit flips on reads
    m.outb(MODE, 0xFF)  # read-back with reserved bit 0 set: counted
    assert m.pit.reserved_readbacks == 1
    assert m.inb(MODE) == 0xFF and m.pit.control_reads == 1


def test_channel1_refresh_counts() -> None:
    m = Machine()
    m.clock.t = clk(1 + 5)
    assert m.inb(CH1) == 18 - 5  # LSB-only access from the firmware's control word
