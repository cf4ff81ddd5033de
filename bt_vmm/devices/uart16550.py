"""A National Semiconductor 16550A UART wired up as a PC's COM1.

The module follows the datasheet's register map from top to bottom. Transmission
is instantaneous: a byte written to THR is on the host the moment it is written,
so THR is always empty (LSR.THRE and LSR.TEMT are always set) and the transmit
FIFO never holds anything. Output is batched into lines for the host (`sink`
gets one call per line, or per 256 bytes), which is why `flush()` exists.

Input comes from the host through `feed()`. Bytes go into the receive FIFO (16
bytes with FIFOs enabled, the single holding register without) and the rest
waits in a host-side backlog that refills the FIFO as the guest reads RBR, so
the host never overruns the guest. Because no time passes on the line, the
FIFO's character-timeout interrupt is reported as soon as data sits below the
trigger level, instead of four character times later.

On a PC, MCR.OUT2 enables the tristate driver between the UART's INTR pin and
the IRQ line, and in loopback mode the OUT pins are forced inactive, so the
line seen by `irq` is "interrupt pending, OUT2 set, not in loopback".
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from bt_vmm.devices.state import DeviceState

# --- Register offsets from the base port. LCR.DLAB remaps offsets 0 and 1. ---
RBR = 0  # read, DLAB=0: receiver buffer (pops the receive FIFO)
THR = 0  # write, DLAB=0: transmitter holding register
DLL = 0  # DLAB=1: divisor latch, low byte
IER = 1  # DLAB=0: interrupt enable
DLM = 1  # DLAB=1: divisor latch, high byte
IIR = 2  # read: interrupt identification
FCR = 2  # write: FIFO control
LCR = 3  # line control (word format, break, DLAB)
MCR = 4  # modem control (DTR, RTS, OUT1, OUT2, loopback)
LSR = 5  # line status
MSR = 6  # modem status
SCR = 7  # scratch: a byte of storage the 8250 driver probes with
PORT_COUNT = 8  # the UART decodes eight consecutive ports

# --- IER: interrupt enable bits. ---
IER_ERBFI = 0x01  # received data available (and FIFO character timeout)
IER_ETBEI = 0x02  # transmitter holding register empty
IER_ELSI = 0x04  # receiver line status: overrun, parity, framing, break
IER_EDSSI = 0x08  # modem status: any MSR delta bit
IER_MASK = 0x0F  # bits 4-7 read as zero on the 16550A

# --- IIR: interrupt identification, in priority order. ---
IIR_NO_INT = 0x01  # bit 0 set: no interrupt pending
IIR_LINE_STATUS = 0x06  # 1st: OE/PE/FE/BI in LSR; cleared by reading LSR
IIR_RX_DATA = 0x04  # 2nd: receive FIFO at its trigger level; cleared by reading RBR
IIR_RX_TIMEOUT = 0x0C  # 2nd: data below the trigger level; cleared by reading RBR
IIR_THR_EMPTY = 0x02  # 3rd: THR empty; cleared by reading IIR or writing THR
IIR_MODEM_STATUS = 0x00  # 4th: an MSR delta bit; cleared by reading MSR
IIR_FIFOS_ENABLED = 0xC0  # bits 6-7: set while FCR bit 0 enables the FIFOs

# --- FCR: FIFO control (write only). ---
FCR_ENABLE = 0x01  # enable both FIFOs; other bits are only programmed when set
FCR_CLEAR_RX = 0x02  # clear the receive FIFO (self-clearing)
FCR_CLEAR_TX = 0x04  # clear the transmit FIFO (always empty here)
FCR_DMA_MODE = 0x08  # RXRDY/TXRDY pin mode: no DMA pins on this bus, no effect
FCR_TRIGGER_SHIFT = 6  # bits 6-7: receive FIFO interrupt trigger level
RX_TRIGGER_LEVELS = (1, 4, 8, 14)  # bytes, indexed by FCR bits 6-7
FIFO_DEPTH = 16  # bytes in each FIFO

# --- LCR: line control. ---
LCR_WORD_LENGTH = 0x03  # 5-8 data bits (no effect: bytes pass through whole)
LCR_STOP_BITS = 0x04  # 1 or 2 stop bits (no effect)
LCR_PARITY = 0x38  # parity enable/even/stick (no effect: no parity errors occur)
LCR_BREAK = 0x40  # hold the line in the spacing state (a break)
LCR_DLAB = 0x80  # divisor latch access: offsets 0 and 1 become DLL and DLM

# --- MCR: modem control. ---
MCR_DTR = 0x01  # data terminal ready; loops back to MSR.DSR
MCR_RTS = 0x02  # request to send; loops back to MSR.CTS
MCR_OUT1 = 0x04  # user output 1; loops back to MSR.RI
MCR_OUT2 = 0x08  # user output 2: the PC's IRQ enable; loops back to MSR.DCD
MCR_LOOP = 0x10  # loopback: THR feeds RBR, MCR bits 0-3 feed MSR bits 4-7
MCR_MASK = 0x1F  # bits 5-7 read as zero on the 16550A

# --- LSR: line status (read only). ---
LSR_DR = 0x01  # data ready: the receive FIFO holds at least one byte
LSR_OE = 0x02  # overrun error (only loopback can overrun; the host never does)
LSR_PE = 0x04  # parity error (never: bytes arrive intact)
LSR_FE = 0x08  # framing error (never)
LSR_BI = 0x10  # break interrupt (never: the host sends no breaks)
LSR_THRE = 0x20  # THR empty: always, transmission is instantaneous
LSR_TEMT = 0x40  # transmitter empty: always
LSR_RX_FIFO_ERROR = 0x80  # a PE/FE/BI byte is in the FIFO (never)
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI  # latched; cleared by reading LSR

# --- MSR: modem status (read only). ---
MSR_DCTS = 0x01  # CTS changed since MSR was last read
MSR_DDSR = 0x02  # DSR changed
MSR_TERI = 0x04  # RI went from on to off
MSR_DDCD = 0x08  # DCD changed
MSR_CTS = 0x10  # clear to send
MSR_DSR = 0x20  # data set ready
MSR_RI = 0x40  # ring indicator
MSR_DCD = 0x80  # data carrier detect
MSR_DELTAS = 0x0F  # bits 0-3; cleared by reading MSR
HOST_MODEM_LINES = MSR_CTS | MSR_DSR | MSR_DCD  # the host is a connected, ready terminal

# --- Host side. ---
TX_LINE_MAX = 256  # bytes buffered before the sink gets them without a newline
BAUD_BASE = 115200  # the PC's 1.8432 MHz crystal divided by 16
POWER_ON_DIVISOR = 12  # divisor latches are undefined at power-on; 9600 baud


class Uart16550(DeviceState):
    """COM1: the guest's serial console, talking to the host through `sink` and `feed()`."""

    # Snapshot state (devices/state.py): the registers and FIFOs. A partial output line is
    # flushed to the sink before a snapshot, so it belongs to the run that printed it.
    STATE = ("ier", "lcr", "mcr", "scr", "dll", "dlm", "fifo_enabled", "rx_trigger", "lsr_errors",
             "msr_deltas", "rbr_last", "thre_interrupt", "rx", "backlog", "irq_level")

    def __init__(
        self,
        base: int = 0x3F8,
        sink: Callable[[bytes], None] | None = None,
        irq: Callable[[bool], None] | None = None,
    ) -> None:
        self.base = base
        self._sink = sink if sink is not None else (lambda data: None)
        self._irq = irq

        # Registers (the ones the guest can read back).
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.scr = 0
        self.dll = POWER_ON_DIVISOR & 0xFF
        self.dlm = POWER_ON_DIVISOR >> 8
        self.fifo_enabled = False  # FCR bit 0
        self.rx_trigger = 1  # FCR bits 6-7, as a byte count
        self.lsr_errors = 0  # latched LSR error bits
        self.msr_deltas = 0  # latched MSR delta bits
        self.rbr_last = 0  # RBR keeps the last byte read when the FIFO is empty
        self.thre_interrupt = False  # the THR-empty interrupt latch

        self.rx: deque[int] = deque()  # the receive FIFO (or holding register)
        self.backlog: deque[int] = deque()  # host input not yet on the line
        self._tx_line = bytearray()  # transmitted bytes not yet handed to the sink
        self.irq_level = False  # the IRQ line as last reported to `irq`

        # Counters.
        self.tx_bytes = 0  # bytes the guest transmitted to the host
        self.rx_bytes = 0  # bytes the guest read from RBR
        self.loopback_bytes = 0  # bytes transmitted in loopback mode (never reach the host)
        self.overruns = 0  # loopback bytes lost to a full receive FIFO
        self.rx_dropped = 0  # received bytes discarded by a FIFO clear or a reset
        self.wide_accesses = 0  # 16/32-bit accesses, served as byte accesses to the first port
        self.breaks_not_sent = 0  # breaks requested through LCR: a byte sink cannot carry them
        self.readonly_writes = 0  # writes to LSR/MSR (factory test only; ignored)

        self.reset()

    @property
    def baud(self) -> int:
        """The line speed the guest programmed (0 if the divisor is 0)."""
        divisor = self.dlm << 8 | self.dll
        return BAUD_BASE // divisor if divisor else 0

    @property
    def pending_input(self) -> int:
        """Host input bytes the guest has not read yet (FIFO plus backlog)."""
        return len(self.rx) + len(self.backlog)

    # --- Host side. ---

    def feed(self, data: bytes) -> None:
        """Queue host input; it enters the receive FIFO as the guest makes room."""
        self.backlog.extend(data)
        self._refill()
        self._update_irq()

    def flush(self) -> None:
        """Hand any partial line to the sink (at exit, reset, or when the host wants it)."""
        if self._tx_line:
            data = bytes(self._tx_line)
            self._tx_line.clear()
            self._sink(data)

    # --- Guest side. ---

    def io_read(self, port: int, size: int) -> int:
        offset = self._offset(port, size)
        dlab = self.lcr & LCR_DLAB
        if offset == RBR:
            # Divisor programming reads back DLL; otherwise the driver takes a received byte.
            return self.dll if dlab else self._read_rbr()
        if offset == IER:
            return self.dlm if dlab else self.ier
        if offset == IIR:
            # The interrupt handler asks why the line is up.
            return self._read_iir()
        if offset == LCR:
            return self.lcr
        if offset == MCR:
            return self.mcr
        if offset == LSR:
            # Polled I/O: is there input (DR), may I transmit (THRE)?
            return self._read_lsr()
        if offset == MSR:
            # Modem lines; the probe's loopback test reads MCR's bits back here.
            return self._read_msr()
        # SCR: the probe checks that a byte written here reads back.
        return self.scr

    def io_write(self, port: int, size: int, value: int) -> None:
        offset = self._offset(port, size)
        value &= 0xFF
        dlab = self.lcr & LCR_DLAB
        if offset == THR:
            # Either the low divisor byte (setting the baud rate) or a byte to send.
            if dlab:
                self.dll = value
            else:
                self._write_thr(value)
        elif offset == IER:
            if dlab:
                self.dlm = value
            else:
                self._write_ier(value)
        elif offset == FCR:
            # Enable/clear the FIFOs and pick the receive trigger level.
            self._write_fcr(value)
        elif offset == LCR:
            # Word format, break, and DLAB to reach the divisor latch.
            if value & LCR_BREAK and not self.lcr & LCR_BREAK:
                self.breaks_not_sent += 1
            self.lcr = value
        elif offset == MCR:
            # Modem lines, OUT2 (the PC's IRQ enable) and loopback for self-test.
            self._write_mcr(value)
        elif offset in (LSR, MSR):
            # Factory test writes; the datasheet advises against them.
            self.readonly_writes += 1
        else:
            self.scr = value

    def reset(self) -> None:
        """Master reset: every register but the divisor latches returns to power-on state."""
        self.flush()
        self.rx_dropped += len(self.rx)
        self.rx.clear()
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.scr = 0
        self.fifo_enabled = False
        self.rx_trigger = 1
        self.lsr_errors = 0
        self.msr_deltas = 0
        self.rbr_last = 0
        self.thre_interrupt = False
        # The host backlog survives: a machine reset does not erase what the user typed.
        self._refill()
        self._update_irq()

    # --- Register behaviour. ---

    def _offset(self, port: int, size: int) -> int:
        if size != 1:
            self.wide_accesses += 1
        offset = port - self.base
        if not 0 <= offset < PORT_COUNT:
            raise ValueError(f"port {port:#x} is not a UART port (base {self.base:#x})")
        return offset

    def _read_rbr(self) -> int:
        if not self.rx:
            return self.rbr_last
        self.rbr_last = self.rx.popleft()
        self.rx_bytes += 1
        self._refill()
        self._update_irq()
        return self.rbr_last

    def _read_iir(self) -> int:
        source = self._interrupt_source()
        value = IIR_NO_INT if source is None else source
        if self.fifo_enabled:
            value |= IIR_FIFOS_ENABLED
        if source == IIR_THR_EMPTY:
            # Reading IIR is how the handler acknowledges a THR-empty interrupt.
            self.thre_interrupt = False
            self._update_irq()
        return value

    def _read_lsr(self) -> int:
        value = LSR_THRE | LSR_TEMT | self.lsr_errors
        if self.rx:
            value |= LSR_DR
        if self.lsr_errors:
            self.lsr_errors = 0
            self._update_irq()
        return value

    def _read_msr(self) -> int:
        value = self.msr_deltas | self._modem_inputs()
        if self.msr_deltas:
            self.msr_deltas = 0
            self._update_irq()
        return value

    def _write_thr(self, value: int) -> None:
        # Writing THR clears the THR-empty interrupt; the byte leaves at once and
        # THR is empty again, so the interrupt re-arms: the IRQ line pulses, which
        # is the edge an edge-triggered PIC needs to ask for the next byte.
        self.thre_interrupt = False
        self._update_irq()
        if self.mcr & MCR_LOOP:
            self._loop_back(value)
        else:
            self.tx_bytes += 1
            self._tx_line.append(value)
            if value == 0x0A or len(self._tx_line) >= TX_LINE_MAX:
                self.flush()
        self.thre_interrupt = bool(self.ier & IER_ETBEI)
        self._update_irq()

    def _loop_back(self, value: int) -> None:
        self.loopback_bytes += 1
        if len(self.rx) < self._rx_capacity():
            self.rx.append(value)
            return
        self.overruns += 1
        self.lsr_errors |= LSR_OE
        if not self.fifo_enabled:
            # Without FIFOs the new byte overwrites the holding register; with
            # them it overwrites the shift register and the FIFO keeps its bytes.
            self.rx[-1] = value

    def _write_ier(self, value: int) -> None:
        old = self.ier
        self.ier = value & IER_MASK
        if self.ier & IER_ETBEI and not old & IER_ETBEI:
            # Enabling ETBEI while THR is empty raises the interrupt at once:
            # this is how drivers kick off interrupt-driven transmission.
            self.thre_interrupt = True
        elif not self.ier & IER_ETBEI:
            self.thre_interrupt = False
        self._update_irq()

    def _write_fcr(self, value: int) -> None:
        if not value & FCR_ENABLE:
            # FCR bit 0 clear: FIFOs off (clearing them); other bits not programmed.
            if self.fifo_enabled:
                self._clear_rx()
            self.fifo_enabled = False
        else:
            if not self.fifo_enabled or value & FCR_CLEAR_RX:
                self._clear_rx()
            self.fifo_enabled = True
            self.rx_trigger = RX_TRIGGER_LEVELS[value >> FCR_TRIGGER_SHIFT & 3]
        self._refill()
        self._update_irq()

    def _write_mcr(self, value: int) -> None:
        before = self._modem_inputs()
        was_looped = self.mcr & MCR_LOOP
        self.mcr = value & MCR_MASK
        after = self._modem_inputs()
        changed = before ^ after
        if changed & MSR_CTS:
            self.msr_deltas |= MSR_DCTS
        if changed & MSR_DSR:
            self.msr_deltas |= MSR_DDSR
        if before & MSR_RI and not after & MSR_RI:
            self.msr_deltas |= MSR_TERI
        if changed & MSR_DCD:
            self.msr_deltas |= MSR_DDCD
        if was_looped and not self.mcr & MCR_LOOP:
            self._refill()  # the line is reconnected: host input flows again
        self._update_irq()

    # --- Internal state. ---

    def _modem_inputs(self) -> int:
        """MSR bits 4-7: MCR's outputs in loopback, the host's idea of a terminal otherwise."""
        if not self.mcr & MCR_LOOP:
            return HOST_MODEM_LINES
        value = 0
        if self.mcr & MCR_RTS:
            value |= MSR_CTS
        if self.mcr & MCR_DTR:
            value |= MSR_DSR
        if self.mcr & MCR_OUT1:
            value |= MSR_RI
        if self.mcr & MCR_OUT2:
            value |= MSR_DCD
        return value

    def _rx_capacity(self) -> int:
        return FIFO_DEPTH if self.fifo_enabled else 1

    def _clear_rx(self) -> None:
        self.rx_dropped += len(self.rx)
        self.rx.clear()

    def _refill(self) -> None:
        """Move host backlog into the receive FIFO; loopback disconnects the line."""
        if self.mcr & MCR_LOOP:
            return
        capacity = self._rx_capacity()
        while self.backlog and len(self.rx) < capacity:
            self.rx.append(self.backlog.popleft())

    def _interrupt_source(self) -> int | None:
        """The highest-priority pending, enabled interrupt, as its IIR code."""
        if self.ier & IER_ELSI and self.lsr_errors:
            return IIR_LINE_STATUS
        if self.ier & IER_ERBFI and self.rx:
            if not self.fifo_enabled or len(self.rx) >= self.rx_trigger:
                return IIR_RX_DATA
            return IIR_RX_TIMEOUT
        if self.thre_interrupt:
            return IIR_THR_EMPTY
        if self.ier & IER_EDSSI and self.msr_deltas:
            return IIR_MODEM_STATUS
        return None

    def _update_irq(self) -> None:
        """Recompute the PC's IRQ line and report it to `irq` when it changes."""
        gate_open = self.mcr & (MCR_OUT2 | MCR_LOOP) == MCR_OUT2
        level = gate_open and self._interrupt_source() is not None
        if level != self.irq_level:
            self.irq_level = level
            if self._irq is not None:
                self._irq(level)
