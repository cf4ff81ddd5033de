"""An Intel 82093AA I/O APIC with 24 pins, after its datasheet, wired to the one local APIC.

The guest reaches the chip's registers indirectly: it writes a register index
to IOREGSEL (0xFEC00000) and then reads or writes the 32-bit register through
IOWIN (0xFEC00010). Each of the 24 pins has a 64-bit redirection table entry
saying which vector to send, how, and to whom.

Devices drive the pins with `set_irq(gsi, level)`, where `level` is the
electrical level of the pin; an entry programmed active low inverts it. An
edge-triggered pin sends its message on the rising edge of the (polarity
corrected) input. A level-triggered pin sends while the input is asserted and
Remote IRR is clear, and sets Remote IRR; the local APIC's EOI for that
vector (wired to `eoi()`) clears Remote IRR and, if the input is still
asserted, sends again.

Messages are delivered at once (delivery status never reads 1) to the local
APIC when the destination matches it. Fixed and lowest-priority messages are
served; SMI, NMI, INIT and ExtINT messages have no consumer here and are
counted, as are messages addressed to nobody.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator

from .lapic import LocalApic
from .state import DeviceState

BASE = 0xFEC00000  # the default physical address of the register window
PAGE_SIZE = 0x1000

# --- Memory-mapped registers (offsets from BASE). ---
IOREGSEL = 0x00  # register select: the index IOWIN accesses (8 bits)
IOWIN = 0x10  # register window: the 32-bit register IOREGSEL names

# --- Indirect registers (IOREGSEL values). ---
IOAPICID = 0x00  # ID in bits 24-27
IOAPICVER = 0x01  # read only: version and maximum redirection entry
IOAPICARB = 0x02  # read only: arbitration ID in bits 24-27
IOREDTBL = 0x10  # redirection table: entry n is 0x10+2n (low), 0x11+2n (high)

PINS = 24  # redirection table entries
VERSION = 0x11  # the 82093AA
VERSION_VALUE = (PINS - 1) << 16 | VERSION  # 0x00170011
ID_SHIFT = 24
ID_MASK = 0x0F000000  # a 4-bit APIC ID

# --- Redirection entry fields (low dword; the destination is in the high dword). ---
RTE_VECTOR = 0x000FF  # vector sent to the local APIC
RTE_DELIVERY_MODE = 0x00700  # fixed, lowest priority, SMI, NMI, INIT, ExtINT
RTE_LOGICAL = 0x00800  # destination mode: logical (set) or physical
RTE_DELIVERY_STATUS = 0x01000  # read only: a message is waiting to be sent (never)
RTE_POLARITY_LOW = 0x02000  # input pin active low
RTE_REMOTE_IRR = 0x04000  # read only: level interrupt accepted, EOI not yet seen
RTE_LEVEL = 0x08000  # trigger mode: level (set) or edge
RTE_MASKED = 0x10000  # interrupt masked
RTE_LOW_WRITABLE = RTE_VECTOR | RTE_DELIVERY_MODE | RTE_LOGICAL | RTE_POLARITY_LOW | RTE_LEVEL | RTE_MASKED
RTE_DEST_SHIFT = 56  # destination field, bits 56-63
RTE_HIGH_WRITABLE = 0xFF000000  # writable bits of the high dword
RTE_RESET = RTE_MASKED  # power-up: every pin masked

DELIVERY_SHIFT = 8
DELIVERY_FIXED = 0
DELIVERY_LOWEST = 1
DELIVERY_KINDS = {2: "SMI", 4: "NMI", 5: "INIT", 7: "ExtINT"}  # modes with no consumer here


class IoApic(DeviceState):
    """The I/O APIC: 24 interrupt pins turned into messages for `lapic`."""

    # Snapshot state (devices/state.py): registers and pin levels.
    STATE = ("ioregsel", "id", "redirection", "inputs")

    def __init__(self, lapic: LocalApic, apic_id: int = 1) -> None:
        self.lapic = lapic
        self.apic_id_at_reset = apic_id & 0xF
        if lapic.on_eoi is None:
            lapic.on_eoi = self.eoi  # the local APIC's EOI broadcast reaches this chip

        # Registers.
        self.ioregsel = 0
        self.id = 0
        self.redirection = [RTE_RESET] * PINS  # 64-bit entries
        self.inputs = [False] * PINS  # electrical level of each pin (survives reset)

        # Counters.
        self.delivered: Counter[int] = Counter()  # messages sent, by pin
        self.masked_edges = 0  # rising edges on masked edge-triggered pins (lost)
        self.undeliverable = 0  # messages whose destination matches no local APIC
        self.unsupported_deliveries: Counter[str] = Counter()  # SMI/NMI/INIT/ExtINT messages
        self.unknown_registers = 0  # IOWIN accesses to indices that hold no register
        self.reserved_accesses = 0  # accesses outside IOREGSEL and IOWIN
        self.readonly_writes = 0  # writes to the version and arbitration registers
        self.bad_pins = 0  # set_irq() on pins beyond the 24th

        self.reset()

    def reset(self) -> None:
        """Power-up: every pin masked, edge, active high, vector 0; ID as the BIOS left it."""
        self.ioregsel = 0
        self.id = self.apic_id_at_reset << ID_SHIFT
        self.redirection = [RTE_RESET] * PINS

    # --- Device side. ---

    def set_irq(self, gsi: int, level: bool) -> None:
        """A device drives pin `gsi` to electrical `level`."""
        if not 0 <= gsi < PINS:
            self.bad_pins += 1
            return
        was = self._asserted(gsi)
        self.inputs[gsi] = bool(level)
        now = self._asserted(gsi)
        entry = self.redirection[gsi]
        if entry & RTE_LEVEL:
            if now:
                self._service_level(gsi)
        elif now and not was:
            # A rising edge: edge-triggered pins remember nothing while masked.
            if entry & RTE_MASKED:
                self.masked_edges += 1
            else:
                self._deliver(gsi)

    def eoi(self, vector: int) -> None:
        """The local APIC finished a level-triggered `vector`: clear Remote IRR, resend if still up."""
        for pin, entry in enumerate(self.redirection):
            if entry & RTE_LEVEL and entry & RTE_REMOTE_IRR and entry & RTE_VECTOR == vector:
                self.redirection[pin] = entry & ~RTE_REMOTE_IRR
                self._service_level(pin)

    def entry(self, pin: int) -> int:
        """Redirection table entry `pin`, 64 bits."""
        return self.redirection[pin]

    # --- Guest side. ---

    def mmio_read(self, offset: int, size: int) -> int:
        value = 0
        for dword_offset, shift, nbytes, pos in _split(offset, size):
            dword = self._read_dword(dword_offset)
            value |= (dword >> (8 * shift) & ((1 << (8 * nbytes)) - 1)) << (8 * pos)
        return value

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        for dword_offset, shift, nbytes, pos in _split(offset, size):
            mask = ((1 << (8 * nbytes)) - 1) << (8 * shift)
            piece = (value >> (8 * pos)) << (8 * shift) & mask
            if dword_offset == IOREGSEL:
                # Selecting a register (only the low byte exists).
                if mask & 0xFF:
                    self.ioregsel = piece & 0xFF
            elif dword_offset == IOWIN:
                # Writing the selected register; a narrow write merges into its current value.
                if mask != 0xFFFFFFFF:
                    piece |= self._read_register(self.ioregsel) & ~mask
                self._write_register(self.ioregsel, piece)
            else:
                self.reserved_accesses += 1

    def _read_dword(self, offset: int) -> int:
        if offset == IOREGSEL:
            return self.ioregsel
        if offset == IOWIN:
            return self._read_register(self.ioregsel)
        self.reserved_accesses += 1
        return 0

    def _read_register(self, index: int) -> int:
        if index == IOAPICID:
            return self.id
        if index == IOAPICVER:
            # The driver learns how many pins there are.
            return VERSION_VALUE
        if index == IOAPICARB:
            return self.id  # the arbitration ID is loaded from the APIC ID
        if IOREDTBL <= index < IOREDTBL + 2 * PINS:
            # Reading an entry back (Linux checks Remote IRR and masks this way).
            pin, high = divmod(index - IOREDTBL, 2)
            return self.redirection[pin] >> (32 * high) & 0xFFFFFFFF
        self.unknown_registers += 1
        return 0

    def _write_register(self, index: int, value: int) -> None:
        if index == IOAPICID:
            self.id = value & ID_MASK
        elif index in (IOAPICVER, IOAPICARB):
            self.readonly_writes += 1
        elif IOREDTBL <= index < IOREDTBL + 2 * PINS:
            # Programming a pin: vector, trigger, polarity, mask, destination.
            pin, high = divmod(index - IOREDTBL, 2)
            if high:
                self._write_entry(pin, self.redirection[pin] & 0xFFFFFFFF | (value & RTE_HIGH_WRITABLE) << 32)
            else:
                self._write_entry(pin, self.redirection[pin] & ~0xFFFFFFFF | value & RTE_LOW_WRITABLE)
        else:
            self.unknown_registers += 1

    def _write_entry(self, pin: int, entry: int) -> None:
        old = self.redirection[pin]
        entry = entry & ~RTE_REMOTE_IRR | old & RTE_REMOTE_IRR
        if not entry & RTE_LEVEL:
            entry &= ~RTE_REMOTE_IRR  # Remote IRR means nothing for edge-triggered pins
        self.redirection[pin] = entry
        if entry & RTE_LEVEL:
            # Unmasking (or retargeting) a level pin whose input is up sends it now.
            self._service_level(pin)

    # --- Internal state. ---

    def _asserted(self, pin: int) -> bool:
        return self.inputs[pin] != bool(self.redirection[pin] & RTE_POLARITY_LOW)

    def _service_level(self, pin: int) -> None:
        entry = self.redirection[pin]
        if entry & (RTE_MASKED | RTE_REMOTE_IRR) or not self._asserted(pin):
            return
        if self._deliver(pin):
            self.redirection[pin] |= RTE_REMOTE_IRR

    def _deliver(self, pin: int) -> bool:
        """Send pin's message; True if a local APIC accepted it."""
        entry = self.redirection[pin]
        mode = (entry & RTE_DELIVERY_MODE) >> DELIVERY_SHIFT
        if mode not in (DELIVERY_FIXED, DELIVERY_LOWEST):
            self.unsupported_deliveries[DELIVERY_KINDS.get(mode, f"mode {mode}")] += 1
            return False
        destination = entry >> RTE_DEST_SHIFT & 0xFF
        if not self.lapic.matches_destination(destination, bool(entry & RTE_LOGICAL)):
            self.undeliverable += 1
            return False
        self.delivered[pin] += 1
        self.lapic.accept(entry & RTE_VECTOR, level=bool(entry & RTE_LEVEL))
        return True


def _split(offset: int, size: int) -> Iterator[tuple[int, int, int, int]]:
    """Cut an access into per-dword pieces: (dword offset, byte in dword, bytes, byte in access)."""
    pos = 0
    while pos < size:
        at = offset + pos
        nbytes = min(size - pos, 4 - (at & 3))
        yield at & ~3, at & 3, nbytes, pos
        pos += nbytes
