"""The Intel 8254 programmable interval timer at 0x40-0x43, and port B (0x61) of the PC.

The three counters are clocked at 1.193182 MHz. Nothing here counts clock
pulses one by one: each counter remembers the CLK pulse at which its count was
loaded, and its count, its OUT pin and the times of its OUT edges are computed
from the host clock (`clock()` in seconds times the input frequency, so CLK
pulse k happens at clock time k / PIT_HZ). That makes the counters exactly as
precise as the host clock, which matters because guests calibrate their own
clocks against them: Linux runs channel 2 in mode 0 and polls OUT2 at port
0x61 bit 5 to measure the TSC.

The PC's wiring: channel 0's OUT is IRQ0 (the system timer), channel 1 used to
request DRAM refresh, channel 2 drives the speaker through port B. Channels 0
and 1 have GATE tied high; channel 2's GATE is port B bit 0.

IRQ0 follows the monitor's schedule, not the counter's: `next_deadline()` says
when channel 0's OUT next rises and `tick(now)` delivers what is due. In the
periodic modes (2, 3) each period is delivered as a pulse of the line (low,
then high), the rising edge an edge-triggered 8259 latches; the square wave's
low half is not reproduced on the line (it is, exactly, in the status byte).
A monitor that comes late by several periods owes the guest one tick per
missed period, up to MAX_PENDING_TICKS; those are paid back at
CATCHUP_DIVISOR times the programmed rate, the rest are dropped and counted in
`lost_ticks`, and the schedule stays in phase with the counter.
"""

from __future__ import annotations

import math
import time
from typing import Callable

from bt_vmm.devices.bus import BytePorts
from bt_vmm.devices.state import DeviceState, apply, capture

# --- Ports. ---
CHANNEL0 = 0x40  # counter 0: the system timer (IRQ0)
CHANNEL1 = 0x41  # counter 1: DRAM refresh (OUT not wired to anything here)
CHANNEL2 = 0x42  # counter 2: the speaker / calibration counter, GATE at port B bit 0
CONTROL = 0x43  # control word register (write only)
PORT_B = 0x61  # NMI status and control: channel 2 gate, speaker, OUT2 readback
PORTS = ((CHANNEL0, 4), (PORT_B, 1))

# --- Timing. ---
PIT_HZ = 1_193_182  # the input clock: 14.31818 MHz / 12
TICK_EPSILON = 1e-6  # CLK pulses: absorbs float rounding when a deadline is converted back
MAX_COUNT = 0x10000  # a count register of 0 means 65536 (binary)

# --- Control word (port 0x43). ---
CW_SC_SHIFT = 6  # bits 7-6: select counter 0-2, or 3 = read-back command
CW_RW_SHIFT = 4  # bits 5-4: read/write access, below
CW_MODE_SHIFT = 1  # bits 3-1: mode 0-5 (6 and 7 are modes 2 and 3)
CW_BCD = 0x01  # bit 0: BCD counting
CW_PROGRAM_MASK = 0x3F  # the bits the status byte reports back
SC_READ_BACK = 3
RW_LATCH = 0  # counter latch command: freeze the count for reading
RW_LSB = 1  # read/write the least significant byte only
RW_MSB = 2  # read/write the most significant byte only
RW_LSB_MSB = 3  # least significant byte first, then the most significant

# --- Modes. ---
MODE_INTERRUPT_ON_TC = 0  # OUT low, rises at terminal count and stays high (one-shot)
MODE_ONE_SHOT = 1  # hardware retriggerable one-shot: OUT low for N clocks after a GATE edge
MODE_RATE_GENERATOR = 2  # OUT low for one clock every N clocks (periodic IRQ0)
MODE_SQUARE_WAVE = 3  # OUT high for N/2, low for N/2 (the BIOS's 18.2 Hz tick)
MODE_SW_STROBE = 4  # OUT pulses low for one clock N clocks after the count is written
MODE_HW_STROBE = 5  # the same, started by a GATE rising edge
PERIODIC_MODES = (MODE_RATE_GENERATOR, MODE_SQUARE_WAVE)
GATE_TRIGGERED_MODES = (MODE_ONE_SHOT, MODE_HW_STROBE)

# --- Read-back command (0xC0-0xFF). ---
RB_NO_COUNT = 0x20  # bit 5 = 0: latch the count of each selected counter
RB_NO_STATUS = 0x10  # bit 4 = 0: latch the status of each selected counter
RB_COUNTER_SHIFT = 1  # bits 3-1: counters 2, 1, 0 selected
RB_RESERVED = 0x01  # bit 0 must be 0

# --- Status byte (read-back). ---
STATUS_OUT = 0x80  # the OUT pin
STATUS_NULL_COUNT = 0x40  # a count was written but is not yet in the counting element

# --- Port B (0x61). ---
PB_GATE2 = 0x01  # timer 2 gate
PB_SPEAKER = 0x02  # speaker data enable (ANDed with OUT2)
PB_PARITY_CHECK_OFF = 0x04  # disables the memory parity (SERR#) NMI
PB_IOCHK_OFF = 0x08  # disables the I/O channel check NMI
PB_REFRESH = 0x10  # refresh cycle toggle: here it flips on every read
PB_OUT2 = 0x20  # timer 2 OUT, read only
PB_IOCHK = 0x40  # I/O channel check status (never)
PB_PARITY_ERROR = 0x80  # parity error status (never)
PB_WRITABLE = PB_GATE2 | PB_SPEAKER | PB_PARITY_CHECK_OFF | PB_IOCHK_OFF

# --- IRQ0 delivery. ---
MAX_PENDING_TICKS = 4  # periods owed to a guest after the monitor came late
CATCHUP_DIVISOR = 4  # owed periods are paid back at this many times the rate

# --- What firmware leaves behind (reset state). ---
BIOS_TIMER_COUNT = 0x10000  # channel 0, mode 3: 18.2 Hz
BIOS_REFRESH_COUNT = 18  # channel 1, mode 2: 15 us refresh requests
BIOS_TIMER_CONTROL = (RW_LSB_MSB << CW_RW_SHIFT) | (MODE_SQUARE_WAVE << CW_MODE_SHIFT)  # counter 0
BIOS_REFRESH_CONTROL = (RW_LSB << CW_RW_SHIFT) | (MODE_RATE_GENERATOR << CW_MODE_SHIFT)  # counter 1


def clk_pulses(t: float) -> int:
    """The number of the last CLK pulse at or before clock time t."""
    return math.floor(t * PIT_HZ + TICK_EPSILON)


class PitChannel(DeviceState):
    """One counter: the count register (CR), the counting element (CE), OUT, and the latches."""

    # Snapshot state (devices/state.py): one counter (CLK pulses of the guest clock).
    STATE = ("control", "mode", "access", "bcd", "gate", "cr", "n", "armed", "triggered",
             "load_tick", "counted", "span_start", "reload_at", "frozen", "cr_pending", "loads_at",
             "lsb_written", "read_msb", "latched_count", "latched_msb", "latched_status")

    def __init__(self, index: int) -> None:
        self.index = index
        self.illegal_counts = 0  # a count of 1 in modes 2/3, run as 2
        self.reset()

    def reset(self) -> None:
        self.control = RW_LSB_MSB << CW_RW_SHIFT  # control word bits 5-0, as the status reports them
        self.mode = MODE_INTERRUPT_ON_TC
        self.access = RW_LSB_MSB
        self.bcd = False
        self.gate = self.index != 2  # channels 0 and 1: GATE tied high; 2: port B bit 0 (reset 0)
        self.cr = MAX_COUNT  # the count register: the last count written
        self.n = MAX_COUNT  # the count the current run was loaded with
        self.armed = False  # a complete count has been written since the control word
        self.triggered = False  # modes 1 and 5: a GATE rising edge started a run
        self.load_tick = 0  # the CLK pulse that loads CE (CE counts from the next one)
        self.counted = 0  # CLK pulses counted in earlier GATE-high spans of this run
        self.span_start: int | None = None  # CLK pulse where counting resumed, None while stopped
        self.reload_at: tuple[int, int] | None = None  # modes 2/3: (CLK pulse, count) of a new CR
        self.frozen = 0  # CE while no run is counting (it holds its value)
        self.cr_pending = True  # null count: CR written but not transferred to CE
        self.loads_at: int | None = None  # the CLK pulse that transfers CR, if known
        self.lsb_written: int | None = None  # the first byte of an LSB-then-MSB write
        self.read_msb = False  # the read flip-flop of LSB-then-MSB reads
        self.latched_count: int | None = None
        self.latched_msb = False
        self.latched_status: int | None = None

    # --- Programming. ---

    def program(self, control: int, t: int) -> None:
        """A control word: new mode and access, all control logic reset, OUT to its initial state."""
        self.frozen = self.count(t)
        self.control = control & CW_PROGRAM_MASK
        mode = (control >> CW_MODE_SHIFT) & 7
        self.mode = mode - 4 if mode >= 6 else mode
        self.access = (control >> CW_RW_SHIFT) & 3
        self.bcd = bool(control & CW_BCD)
        self.armed = False
        self.triggered = False
        self.span_start = None
        self.reload_at = None
        self.cr_pending = True
        self.loads_at = None
        self.lsb_written = None
        self.read_msb = False
        self.latched_count = None
        self.latched_msb = False
        self.latched_status = None

    def write(self, value: int, t: int) -> None:
        """A byte written to the counter's port: part or all of a new count."""
        if self.access == RW_LSB:
            self._write_count(value, t)
        elif self.access == RW_MSB:
            self._write_count(value << 8, t)
        elif self.lsb_written is None:
            self.lsb_written = value
            if self.mode == MODE_INTERRUPT_ON_TC:
                # Mode 0: writing the first byte stops counting and drives OUT low.
                self.frozen = self.count(t)
                self.armed = False
                self.span_start = None
        else:
            count = self.lsb_written | value << 8
            self.lsb_written = None
            self._write_count(count, t)

    def _write_count(self, count: int, t: int) -> None:
        self.sync(t)
        count = count or MAX_COUNT
        if count == 1 and self.mode in PERIODIC_MODES:
            self.illegal_counts += 1  # the datasheet forbids 1 in modes 2 and 3
            count = 2
        self.cr = count
        self.cr_pending = True
        if self.mode in (MODE_INTERRUPT_ON_TC, MODE_SW_STROBE):
            # Loaded on the next CLK pulse; a new count restarts the run.
            self.frozen = self.count(t)
            self._start(t + 1, count)
        elif self.mode in PERIODIC_MODES:
            if self.armed and self.span_start is not None and t >= self.load_tick:
                # Counting: the new count takes over at the end of the current period.
                self.reload_at = (self._next_period_end(t), count)
                self.loads_at = self.reload_at[0]
            elif self.armed and self.span_start is None:
                self.loads_at = None  # GATE is low: the next GATE rising edge loads it
            else:
                self.frozen = self.count(t)
                self._start(t + 1, count)
        else:
            # Modes 1 and 5 wait for a GATE rising edge to load the count.
            self.armed = True
            self.loads_at = None

    def _start(self, load_tick: int, count: int) -> None:
        self.n = count
        self.armed = True
        self.load_tick = load_tick
        self.loads_at = load_tick
        self.counted = 0
        self.reload_at = None
        counts_always = self.mode in GATE_TRIGGERED_MODES  # GATE only triggers these
        self.span_start = load_tick if self.gate or counts_always else None

    def set_gate(self, level: bool, t: int) -> None:
        if level == self.gate:
            return
        self.sync(t)
        self.gate = level
        if self.mode in GATE_TRIGGERED_MODES:
            if level and self.armed:
                # A trigger: CR is loaded on the next CLK pulse and the one-shot starts.
                self.triggered = True
                self._start(t + 1, self.cr)
        elif not level:
            # Modes 0, 4 (counting paused) and 2, 3 (stopped, OUT forced high).
            self.counted = self._progress(t)
            self.span_start = None
        elif self.armed:
            if self.mode in PERIODIC_MODES:
                # A trigger reloads the counter (with the latest CR) on the next CLK pulse.
                self._start(t + 1, self.cr)
            else:
                self.span_start = max(t, self.load_tick)

    # --- The counting element. ---

    def sync(self, t: int) -> None:
        """Carry out a pending periodic reload whose time has come."""
        if self.reload_at is not None and t >= self.reload_at[0]:
            boundary, count = self.reload_at
            self._start(boundary, count)

    def _progress(self, t: int) -> int:
        """CLK pulses counted since the load, GATE permitting."""
        counted = self.counted
        if self.span_start is not None and t > self.span_start:
            counted += t - self.span_start
        return counted

    def _running(self, t: int) -> bool:
        if not self.armed or t < self.load_tick:
            return False
        return self.triggered or self.mode not in GATE_TRIGGERED_MODES

    def count(self, t: int) -> int:
        """CE at CLK pulse t, as a 16-bit register (65536 reads as 0)."""
        self.sync(t)
        if not self._running(t):
            return self.frozen & 0xFFFF
        p = self._progress(t)
        n = self.n
        if self.mode == MODE_RATE_GENERATOR:
            value = n - p % n
        elif self.mode == MODE_SQUARE_WAVE:
            # Decrements by two, reloading at each half period.
            phase = p % n
            high = (n + 1) // 2
            value = n - 2 * (phase if phase < high else phase - high)
        else:
            value = n - p  # one-shots keep counting down through zero and wrap
        return value & 0xFFFF

    def out(self, t: int) -> bool:
        """The OUT pin at CLK pulse t."""
        self.sync(t)
        if not self.armed:
            return self.mode != MODE_INTERRUPT_ON_TC
        if self.mode in GATE_TRIGGERED_MODES and not self.triggered:
            return True
        if t < self.load_tick:
            return self.mode != MODE_INTERRUPT_ON_TC
        p = self._progress(t)
        n = self.n
        if self.mode in (MODE_INTERRUPT_ON_TC, MODE_ONE_SHOT):
            return p >= n
        if self.mode in PERIODIC_MODES and self.span_start is None:
            return True  # GATE low forces OUT high
        if self.mode == MODE_RATE_GENERATOR:
            return p % n != n - 1
        if self.mode == MODE_SQUARE_WAVE:
            return p % n < (n + 1) // 2
        return p != n  # strobes: low for the one CLK at terminal count

    def null_count(self, t: int) -> bool:
        self.sync(t)
        return self.cr_pending and (self.loads_at is None or t < self.loads_at)

    def period(self) -> int | None:
        return self.n if self.armed and self.mode in PERIODIC_MODES else None

    # --- OUT rising edges (what IRQ0 sees). ---

    def _base(self) -> int:
        assert self.span_start is not None
        return self.span_start - self.counted  # the CLK pulse where progress would be 0

    def _next_period_end(self, t: int) -> int:
        base = self._base()
        return base + ((max(t, self.span_start or t) - base) // self.n + 1) * self.n

    def _edge_progress(self) -> int | None:
        """Progress at which a one-shot's OUT rises, or None if it never does."""
        if self.mode in (MODE_INTERRUPT_ON_TC, MODE_ONE_SHOT):
            return self.n
        if self.mode in (MODE_SW_STROBE, MODE_HW_STROBE):
            return self.n + 1
        return None

    def rising_edges(self, after: int, until: int) -> tuple[int, int | None]:
        """OUT rising edges at CLK pulses in (after, until] of the current run: (how many, last)."""
        if not self.armed or self.span_start is None:
            return 0, None
        if self.mode in GATE_TRIGGERED_MODES and not self.triggered:
            return 0, None
        base = self._base()
        lo = max(after, self.span_start)
        if until <= lo:
            return 0, None
        if self.mode in PERIODIC_MODES:
            first = (lo - base) // self.n + 1
            last = (until - base) // self.n
            if last < first:
                return 0, None
            return last - first + 1, base + last * self.n
        edge = base + (self._edge_progress() or 0)
        if lo < edge <= until:
            return 1, edge
        return 0, None

    def next_rising_edge(self, after: int) -> int | None:
        """The first OUT rising edge after CLK pulse `after` in the current run."""
        if not self.armed or self.span_start is None:
            return None
        if self.mode in GATE_TRIGGERED_MODES and not self.triggered:
            return None
        base = self._base()
        lo = max(after, self.span_start)
        if self.mode in PERIODIC_MODES:
            return base + ((lo - base) // self.n + 1) * self.n
        edge = base + (self._edge_progress() or 0)
        return edge if edge > lo else None

    # --- Guest reads. ---

    def latch_count(self, t: int) -> None:
        if self.latched_count is None:  # a second latch before the read is ignored
            self.latched_count = self.count(t)
            self.latched_msb = False

    def latch_status(self, t: int) -> None:
        if self.latched_status is None:
            status = self.control
            if self.out(t):
                status |= STATUS_OUT
            if self.null_count(t):
                status |= STATUS_NULL_COUNT
            self.latched_status = status

    def read(self, t: int) -> int:
        if self.latched_status is not None:
            # After a read-back, the status byte comes first.
            value = self.latched_status
            self.latched_status = None
            return value
        if self.latched_count is not None:
            value, done = self._select_byte(self.latched_count, self.latched_msb)
            self.latched_msb = not self.latched_msb
            if done:
                self.latched_count = None
                self.latched_msb = False
            return value
        # An unlatched read samples the running counter (two samples for LSB, MSB).
        value, _ = self._select_byte(self.count(t), self.read_msb)
        if self.access == RW_LSB_MSB:
            self.read_msb = not self.read_msb
        return value

    def _select_byte(self, count: int, msb_next: bool) -> tuple[int, bool]:
        """The byte the access mode delivers now, and whether that completes the read."""
        if self.access == RW_LSB:
            return count & 0xFF, True
        if self.access == RW_MSB:
            return count >> 8 & 0xFF, True
        if msb_next:
            return count >> 8 & 0xFF, True
        return count & 0xFF, False


class Pit8254(BytePorts):
    """The 8254 and port B, clocked by the host: IRQ0 from channel 0, OUT2 readable at 0x61."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        irq0: Callable[[bool], None] | None = None,
    ) -> None:
        self._clock = clock
        self._irq0 = irq0
        self.channels = [PitChannel(i) for i in range(3)]

        # Port B.
        self.port_b = 0  # the writable bits 0-3
        self.refresh = False  # bit 4, toggled by reads

        # IRQ0.
        self.irq0_level = True  # the line as last driven (at rest high in modes 2-5)
        self._edges_done = 0  # CLK pulse up to which channel 0's edges are accounted for
        self.pending_ticks = 0  # IRQ0 edges owed to the guest
        self._next_catchup = 0.0  # clock time before which no owed edge is delivered

        # Counters.
        self.irq0_edges = 0  # rising edges delivered on IRQ0
        self.lost_ticks = 0  # periods dropped because the monitor came too late
        self.bcd_requests = 0  # control words asking for BCD counting (counted in binary)
        self.control_reads = 0  # reads of the write-only control register
        self.reserved_readbacks = 0  # read-back commands with bit 0 set
        self.wide_accesses = 0  # 16/32-bit accesses, split into byte accesses
        self.reset()

    @property
    def illegal_counts(self) -> int:
        """Counts of 1 written in modes 2/3 (the datasheet forbids them; they run as 2)."""
        return sum(ch.illegal_counts for ch in self.channels)

    # --- Monitor side. ---

    def next_deadline(self) -> float | None:
        """The clock time channel 0's OUT next needs attention, or None."""
        candidates = []
        ch = self.channels[0]
        edge = ch.next_rising_edge(self._edges_done)
        if edge is not None:
            candidates.append(edge / PIT_HZ)
        if self.pending_ticks:
            candidates.append(self._next_catchup)
        return min(candidates) if candidates else None

    def tick(self, now: float) -> None:
        """Deliver channel 0's OUT edges due by clock time `now` to IRQ0."""
        t = clk_pulses(now)
        ch = self.channels[0]
        due, _ = self._edges_between(ch, self._edges_done, t)
        self._edges_done = max(self._edges_done, t)
        if due and ch.mode in (MODE_INTERRUPT_ON_TC, MODE_ONE_SHOT):
            self._drive_irq0(True)  # OUT rose at terminal count and stays high
            return
        if due:
            self.pending_ticks += due
            if self.pending_ticks > MAX_PENDING_TICKS:
                self.lost_ticks += self.pending_ticks - MAX_PENDING_TICKS
                self.pending_ticks = MAX_PENDING_TICKS
        if self.pending_ticks and now >= self._next_catchup:
            self.pending_ticks -= 1
            self._pulse_irq0()
            period = ch.period()
            spacing = period / PIT_HZ / CATCHUP_DIVISOR if period else 0.0
            self._next_catchup = now + spacing

    # --- Snapshot (devices/state.py): counters in CLK pulses of the guest clock. ---

    STATE = ("port_b", "refresh", "irq0_level", "_edges_done", "pending_ticks", "_next_catchup")

    def state(self) -> dict:
        saved = capture(self, self.STATE)
        saved["channels"] = [ch.state() for ch in self.channels]
        return saved

    def restore(self, state: dict) -> None:
        apply(self, self.STATE, state)
        for ch, saved in zip(self.channels, state["channels"]):
            ch.restore(saved)

    # --- Guest side. ---

    def reset(self) -> None:
        """As firmware leaves it: channel 0 at 18.2 Hz (mode 3), channel 1 refreshing, gate 2 low."""
        t = self._now()
        for ch in self.channels:
            ch.reset()
        self.channels[0].program(BIOS_TIMER_CONTROL, t)
        self.channels[0].write(BIOS_TIMER_COUNT & 0xFF, t)
        self.channels[0].write(BIOS_TIMER_COUNT >> 8 & 0xFF, t)
        self.channels[1].program(BIOS_REFRESH_CONTROL, t)
        self.channels[1].write(BIOS_REFRESH_COUNT, t)
        self.port_b = 0
        self.refresh = False
        self._edges_done = t
        self.pending_ticks = 0
        self._next_catchup = 0.0
        self._drive_irq0(True)

    def _read_byte(self, port: int) -> int:
        t = self._now()
        if CHANNEL0 <= port <= CHANNEL2:
            # The guest reads a count: a latched one, a status byte, or the live counter.
            return self.channels[port - CHANNEL0].read(t)
        if port == CONTROL:
            self.control_reads += 1
            return 0xFF  # the control register is write-only: the bus floats
        if port == PORT_B:
            # Calibration loops poll OUT2; old delay loops watch the refresh toggle.
            self.refresh = not self.refresh
            value = self.port_b
            if self.refresh:
                value |= PB_REFRESH
            if self.channels[2].out(t):
                value |= PB_OUT2
            return value
        return 0xFF  # a wide access ran past the registers: nothing decodes it

    def _write_byte(self, port: int, value: int) -> None:
        t = self._now()
        if CHANNEL0 <= port <= CHANNEL2:
            # A count, or part of one, in the access mode the control word chose.
            index = port - CHANNEL0
            ch = self.channels[index]
            ch.write(value, t)
            if index == 0:
                self._count_written_0(t)
        elif port == CONTROL:
            self._write_control(value, t)
        elif port == PORT_B:
            # Gate channel 2 (calibration, beeps) and switch the speaker.
            self.port_b = value & PB_WRITABLE
            self.channels[2].set_gate(bool(value & PB_GATE2), t)

    def _write_control(self, value: int, t: int) -> None:
        select = value >> CW_SC_SHIFT
        if select == SC_READ_BACK:
            # Read-back: latch count and/or status of several counters at once.
            if value & RB_RESERVED:
                self.reserved_readbacks += 1
            for index in range(3):
                if not value & (1 << (RB_COUNTER_SHIFT + index)):
                    continue
                ch = self.channels[index]
                if not value & RB_NO_STATUS:
                    ch.latch_status(t)
                if not value & RB_NO_COUNT:
                    ch.latch_count(t)
            return
        ch = self.channels[select]
        if (value >> CW_RW_SHIFT) & 3 == RW_LATCH:
            # Counter latch command: freeze the count until the guest has read it.
            ch.latch_count(t)
            return
        # A control word: the guest (re)programs a counter's mode.
        if value & CW_BCD:
            self.bcd_requests += 1
        ch.program(value, t)
        if select == 0:
            self.pending_ticks = 0
            self._next_catchup = 0.0
            self._drive_irq0(ch.out(t))

    def _count_written_0(self, t: int) -> None:
        ch = self.channels[0]
        if ch.mode in (MODE_INTERRUPT_ON_TC, MODE_ONE_SHOT):
            self._drive_irq0(ch.out(t))  # mode 0: OUT is low until the new terminal count

    # --- Internal state. ---

    def _now(self) -> int:
        return clk_pulses(self._clock())

    def _edges_between(self, ch: PitChannel, after: int, until: int) -> tuple[int, int | None]:
        """Rising edges in (after, until], across a pending periodic reload."""
        total, last = 0, None
        if ch.reload_at is not None and ch.reload_at[0] <= until:
            boundary = ch.reload_at[0]
            total, last = ch.rising_edges(after, boundary)
            ch.sync(boundary)
            after = max(after, boundary)
        more, later = ch.rising_edges(after, until)
        return total + more, later if later is not None else last

    def _drive_irq0(self, level: bool) -> None:
        if level == self.irq0_level:
            return
        self.irq0_level = level
        if level:
            self.irq0_edges += 1
        if self._irq0 is not None:
            self._irq0(level)

    def _pulse_irq0(self) -> None:
        """OUT dips and rises again: one rising edge for the PIC to latch."""
        self.irq0_level = False
        if self._irq0 is not None:
            self._irq0(False)
        self._drive_irq0(True)

