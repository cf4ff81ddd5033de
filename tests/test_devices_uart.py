"""The 16550A UART, driven the way Linux's 8250 driver and simple polled consoles drive it."""

from __future__ import annotations

import pytest

from bt_vmm.devices.bus import PortBus
from bt_vmm.devices.uart16550 import (
    FIFO_DEPTH,
    IER_EDSSI,
    IER_ELSI,
    IER_ERBFI,
    IER_ETBEI,
    LSR_DR,
    LSR_OE,
    LSR_TEMT,
    LSR_THRE,
    MCR_DTR,
    MCR_LOOP,
    MCR_OUT2,
    MCR_RTS,
    PORT_COUNT,
    Uart16550,
)

BASE = 0x3F8
RBR = THR = DLL = BASE + 0
IER = DLM = BASE + 1
IIR = FCR = BASE + 2
LCR = BASE + 3
MCR = BASE + 4
LSR = BASE + 5
MSR = BASE + 6
SCR = BASE + 7


class Machine:
    """A port bus with COM1 on it, recording what reaches the host."""

    def __init__(self) -> None:
        self.output: list[bytes] = []
        self.irq_levels: list[bool] = []
        self.uart = Uart16550(BASE, sink=self.output.append, irq=self.irq_levels.append)
        self.bus = PortBus()
        self.bus.register(BASE, PORT_COUNT, self.uart)

    def inb(self, port: int) -> int:
        return self.bus.read(port, 1)

    def outb(self, port: int, value: int) -> None:
        self.bus.write(port, 1, value)

    def putc_polled(self, byte: int) -> None:
        """A polled console's putc: spin on LSR.THRE, then write THR."""
        for _ in range(1000):
            if self.inb(LSR) & LSR_THRE:
                break
        else:  # pragma: no cover - would mean THRE never comes up
            raise AssertionError("THRE never set")
        self.outb(THR, byte)

    def puts(self, text: bytes) -> None:
        for byte in text:
            self.putc_polled(byte)


@pytest.fixture
def m() -> Machine:
    return Machine()


# --- The 8250 driver's probe. ---


def test_scratch_register_holds_a_byte(m: Machine) -> None:
    for value in (0x00, 0x55, 0xAA, 0xFF):
        m.outb(SCR, value)
        assert m.inb(SCR) == value


def test_ier_probe_sees_only_the_low_nibble(m: Machine) -> None:
    # autoconfig: IER=0 must read 0, IER=0x0F must read 0x0F.
    m.outb(IER, 0)
    assert m.inb(IER) & 0x0F == 0
    m.outb(IER, 0xFF)
    assert m.inb(IER) == 0x0F
    m.outb(IER, 0)


def test_loopback_test_reflects_mcr_in_msr(m: Machine) -> None:
    # autoconfig: MCR = LOOP | OUT2 | RTS must give MSR high nibble 0x90 (DCD | CTS).
    saved = m.inb(MCR)
    m.outb(MCR, MCR_LOOP | 0x0A)
    assert m.inb(MSR) & 0xF0 == 0x90
    m.outb(MCR, MCR_LOOP | MCR_DTR | 0x04)  # DTR -> DSR, OUT1 -> RI
    assert m.inb(MSR) & 0xF0 == 0x60
    m.outb(MCR, saved)
    assert m.inb(MSR) & 0xF0 == 0xB0  # back on the host line: CTS, DSR, DCD


def test_msr_delta_bits_latch_until_read(m: Machine) -> None:
    m.outb(MCR, MCR_LOOP | MCR_RTS | 0x04)  # CTS on, RI on
    m.inb(MSR)
    m.outb(MCR, MCR_LOOP | MCR_RTS)  # RI trailing edge
    msr = m.inb(MSR)
    assert msr & 0x0F == 0x04  # TERI only
    assert m.inb(MSR) & 0x0F == 0


def test_fifo_detection_reports_16550a(m: Machine) -> None:
    m.outb(FCR, 0xE7)  # enable, clear both, trigger 14 (bit 5 means nothing here)
    assert m.inb(IIR) >> 6 == 3
    # The 16750 check: with DLAB set and FCR bit 5, IIR >> 5 stays 6 on a 16550A.
    m.outb(LCR, 0x80)
    m.outb(FCR, 0x21)
    assert m.inb(IIR) >> 5 == 6
    m.outb(LCR, 0x03)
    m.outb(FCR, 0)
    assert m.inb(IIR) & 0xC0 == 0


def test_divisor_latch_programming(m: Machine) -> None:
    m.outb(LCR, 0x80)  # DLAB
    m.outb(DLL, 0x01)
    m.outb(DLM, 0x00)
    assert (m.inb(DLL), m.inb(DLM)) == (0x01, 0x00)
    m.outb(LCR, 0x03)  # 8N1, DLAB off
    assert m.uart.baud == 115200
    assert m.inb(LCR) == 0x03
    # With DLAB off the same ports are THR and IER again.
    m.outb(IER, 0)
    m.outb(THR, ord("x"))
    m.uart.flush()
    assert m.output == [b"x"]
    assert m.uart.dll == 0x01


def test_loopback_sends_thr_to_rbr_not_to_host(m: Machine) -> None:
    m.outb(MCR, MCR_LOOP)
    m.outb(THR, 0x5A)
    assert m.inb(LSR) & LSR_DR
    assert m.inb(RBR) == 0x5A
    assert not m.inb(LSR) & LSR_DR
    m.uart.flush()
    assert m.output == []
    assert m.uart.tx_bytes == 0 and m.uart.loopback_bytes == 1


def test_loopback_overrun_without_fifo(m: Machine) -> None:
    m.outb(MCR, MCR_LOOP)
    m.outb(THR, 1)
    m.outb(THR, 2)  # the holding register is overwritten
    lsr = m.inb(LSR)
    assert lsr & LSR_OE and lsr & LSR_DR
    assert not m.inb(LSR) & LSR_OE  # reading LSR clears OE
    assert m.inb(RBR) == 2
    assert m.uart.overruns == 1


def test_loopback_overrun_with_fifo_keeps_fifo(m: Machine) -> None:
    m.outb(FCR, 0x07)
    m.outb(MCR, MCR_LOOP)
    for value in range(FIFO_DEPTH + 1):
        m.outb(THR, value)
    assert m.inb(LSR) & LSR_OE
    assert [m.inb(RBR) for _ in range(FIFO_DEPTH)] == list(range(FIFO_DEPTH))
    assert not m.inb(LSR) & LSR_DR


# --- Transmit. ---


def test_thr_always_empty(m: Machine) -> None:
    assert m.inb(LSR) & (LSR_THRE | LSR_TEMT) == LSR_THRE | LSR_TEMT
    m.outb(THR, ord("a"))
    assert m.inb(LSR) & (LSR_THRE | LSR_TEMT) == LSR_THRE | LSR_TEMT


def test_polled_transmit_is_batched_per_line(m: Machine) -> None:
    m.puts(b"hello, world\nsecond line\npartial")
    assert m.output == [b"hello, world\n", b"second line\n"]
    m.uart.flush()
    assert m.output[-1] == b"partial"
    m.uart.flush()  # nothing pending: no empty write
    assert len(m.output) == 3
    assert m.uart.tx_bytes == len(b"hello, world\nsecond line\npartial")


def test_long_line_is_cut_at_256_bytes(m: Machine) -> None:
    m.puts(b"x" * 600)
    assert m.output == [b"x" * 256, b"x" * 256]
    m.uart.flush()
    assert m.output[-1] == b"x" * 88


def test_reset_flushes_pending_output(m: Machine) -> None:
    m.puts(b"no newline")
    m.uart.reset()
    assert m.output == [b"no newline"]


# --- Receive. ---


def test_polled_receive(m: Machine) -> None:
    m.uart.feed(b"ok")
    received = []
    while m.inb(LSR) & LSR_DR:
        received.append(m.inb(RBR))
    assert bytes(received) == b"ok"
    assert m.inb(RBR) == ord("k")  # an empty RBR keeps its last byte
    assert m.uart.rx_bytes == 2


def test_without_fifo_one_byte_on_the_line_rest_in_backlog(m: Machine) -> None:
    m.uart.feed(b"abc")
    assert len(m.uart.rx) == 1 and len(m.uart.backlog) == 2
    assert bytes(m.inb(RBR) for _ in range(3)) == b"abc"


def test_fifo_overflow_goes_to_backlog_and_refills(m: Machine) -> None:
    m.outb(FCR, 0x07)
    data = bytes(range(40))
    m.uart.feed(data)
    assert len(m.uart.rx) == FIFO_DEPTH
    assert len(m.uart.backlog) == 40 - FIFO_DEPTH
    assert m.uart.pending_input == 40
    received = bytearray()
    while m.inb(LSR) & LSR_DR:
        received.append(m.inb(RBR))
    assert bytes(received) == data
    assert not m.inb(LSR) & LSR_OE  # the host never overruns the guest


def test_fifo_clear_drops_received_bytes_and_counts_them(m: Machine) -> None:
    m.outb(FCR, 0x01)
    m.uart.feed(bytes(20))
    m.outb(FCR, 0x03)  # clear RX: 16 bytes go, the backlog refills
    assert m.uart.rx_dropped == FIFO_DEPTH
    assert len(m.uart.rx) == 4


def test_host_input_waits_while_in_loopback(m: Machine) -> None:
    m.outb(MCR, MCR_LOOP)
    m.uart.feed(b"z")
    assert not m.inb(LSR) & LSR_DR
    m.outb(MCR, 0)
    assert m.inb(RBR) == ord("z")


# --- Interrupts. ---


def test_received_data_interrupt(m: Machine) -> None:
    m.outb(MCR, MCR_OUT2)
    m.outb(IER, IER_ERBFI)
    assert m.irq_levels == []
    m.uart.feed(b"q")
    assert m.irq_levels == [True]
    assert m.inb(IIR) == 0x04
    assert m.inb(RBR) == ord("q")
    assert m.irq_levels == [True, False]
    assert m.inb(IIR) == 0x01


def test_receive_interrupt_stays_up_while_backlog_refills(m: Machine) -> None:
    m.outb(MCR, MCR_OUT2)
    m.outb(IER, IER_ERBFI)
    m.uart.feed(b"ab")
    m.inb(RBR)
    assert m.irq_levels == [True]  # 'b' moved in at once: the line never dropped
    m.inb(RBR)
    assert m.irq_levels == [True, False]


def test_fifo_trigger_level_and_timeout(m: Machine) -> None:
    m.outb(FCR, 0x81)  # FIFOs on, trigger at 8 bytes
    m.outb(MCR, MCR_OUT2)
    m.outb(IER, IER_ERBFI)
    m.uart.feed(b"123")
    assert m.inb(IIR) == 0xCC  # below the trigger: character timeout
    m.uart.feed(b"45678")
    assert m.inb(IIR) == 0xC4  # at the trigger: received data available
    for _ in range(8):
        m.inb(RBR)
    assert m.inb(IIR) == 0xC1
    assert m.irq_levels == [True, False]


def test_thr_empty_interrupt(m: Machine) -> None:
    m.outb(MCR, MCR_OUT2)
    m.outb(IER, IER_ETBEI)  # enabling with THR empty raises it at once
    assert m.irq_levels == [True]
    assert m.inb(IIR) == 0x02  # reading IIR acknowledges it...
    assert m.irq_levels == [True, False]
    assert m.inb(IIR) == 0x01
    m.outb(THR, ord("a"))  # ...and the byte written leaves THR empty again
    assert m.irq_levels == [True, False, True]
    m.outb(THR, ord("b"))  # writing THR while pending: the line pulses (an edge)
    assert m.irq_levels == [True, False, True, False, True]
    m.outb(IER, 0)  # stop_tx
    assert m.irq_levels[-1] is False
    assert m.inb(IIR) == 0x01


def test_thre_interrupt_rearms_when_etbei_toggles(m: Machine) -> None:
    # Linux's UART_BUG_THRE probe: IER=THRI, read IIR, IER=0, IER=THRI, read IIR.
    m.outb(IER, IER_ETBEI)
    assert m.inb(IIR) & 0x0F == 0x02
    m.outb(IER, 0)
    m.outb(IER, IER_ETBEI)
    assert m.inb(IIR) & 0x0F == 0x02


def test_iir_priorities(m: Machine) -> None:
    m.outb(MCR, MCR_LOOP | MCR_RTS)  # CTS changes: a modem status delta
    m.outb(THR, 1)
    m.outb(THR, 2)  # overrun: line status; RBR full: received data
    m.outb(IER, IER_ERBFI | IER_ETBEI | IER_ELSI | IER_EDSSI)
    assert m.inb(IIR) == 0x06  # line status first
    m.inb(LSR)
    assert m.inb(IIR) == 0x04  # then received data
    m.inb(RBR)
    assert m.inb(IIR) == 0x02  # then THR empty, acknowledged by this read
    assert m.inb(IIR) == 0x00  # then modem status
    m.inb(MSR)
    assert m.inb(IIR) == 0x01
    assert m.irq_levels == []  # loopback forces OUT2 off: the PC's IRQ never rose


def test_disabled_interrupts_are_not_reported(m: Machine) -> None:
    m.outb(MCR, MCR_OUT2)
    m.uart.feed(b"x")
    assert m.inb(IIR) == 0x01
    assert m.irq_levels == []


def test_out2_gates_the_irq_line(m: Machine) -> None:
    m.outb(IER, IER_ERBFI)
    m.uart.feed(b"x")
    assert m.irq_levels == []  # pending, but OUT2 is off
    assert m.inb(IIR) == 0x04
    m.outb(MCR, MCR_OUT2)
    assert m.irq_levels == [True]
    m.outb(MCR, 0)
    assert m.irq_levels == [True, False]
    m.outb(MCR, MCR_OUT2 | MCR_LOOP)
    assert m.irq_levels == [True, False]
    m.outb(MCR, MCR_OUT2)
    assert m.irq_levels == [True, False, True]


def test_reset_returns_to_power_on_and_drops_the_line(m: Machine) -> None:
    m.outb(FCR, 0x07)
    m.outb(LCR, 0x1B)
    m.outb(MCR, MCR_OUT2)
    m.outb(IER, IER_ETBEI)
    m.outb(SCR, 0x42)
    m.uart.reset()
    assert m.irq_levels == [True, False]
    assert [m.inb(BASE + i) for i in range(1, 8)] == [0x00, 0x01, 0x00, 0x00, 0x60, 0xB0, 0x00]


# --- Odd accesses are served and counted. ---


def test_wide_access_is_a_byte_access_to_the_first_port(m: Machine) -> None:
    m.bus.write(SCR, 2, 0xBEEF)
    assert m.inb(SCR) == 0xEF
    assert m.bus.read(LSR, 4) == LSR_THRE | LSR_TEMT
    assert m.uart.wide_accesses == 2


def test_unservable_writes_are_counted(m: Machine) -> None:
    m.outb(LSR, 0xFF)
    m.outb(MSR, 0xFF)
    assert m.uart.readonly_writes == 2
    assert m.inb(LSR) == LSR_THRE | LSR_TEMT
    m.outb(LCR, 0x43)  # set break
    m.outb(LCR, 0x43)  # still set: one break
    m.outb(LCR, 0x03)
    assert m.uart.breaks_not_sent == 1


def test_no_sink_and_no_irq_are_allowed() -> None:
    uart = Uart16550()
    uart.io_write(0x3F8, 1, ord("\n"))
    uart.io_write(0x3F9, 1, IER_ETBEI)
    assert uart.tx_bytes == 1
    assert uart.irq_level is False  # OUT2 off
