"""The PC's two cascaded Intel 8259A programmable interrupt controllers, plus the PIIX ELCR.

The master sits at 0x20/0x21 and delivers INTR to the CPU; the slave sits at
0xA0/0xA1 and its INT output is wired to the master's IR2, so ISA IRQ 8-15 reach
the CPU through master IRQ2. The module follows the datasheet: initialization
command words ICW1-ICW4, operation command words OCW1-OCW3, then the priority
resolver and the INTA cycle.

Modelling choices, each a place where a device made of Python cannot be a
circuit:

* Edge-triggered inputs latch a request in IRR on the rising edge and keep it
  until INTA (or ICW1) takes it. The datasheet asks the IR line to stay high
  until the first INTA pulse; devices here report their line levels and may
  pulse them, so the latch is what makes an edge count. Level-triggered inputs
  (ELCR, or ICW1.LTIM) have IRR follow the line: a request that goes away before
  INTA becomes the spurious IRQ7 the datasheet describes.
* The master's IR2 is an edge input (the PIIX hardwires that ELCR bit to 0)
  driven by the slave's INT. Its latch is set whenever the slave's INT is up,
  not only on the rising edge, so a slave in automatic-EOI mode whose INT never
  drops between requests loses none of them. A slave request that goes away
  after the master latched it gives the datasheet's spurious IRQ15: the master
  puts IR2 in service and the slave answers with its IR7 vector.
* A machine without a BIOS still needs the controllers in a sane state before
  the guest programs them, so reset() leaves them as PC firmware does (vector
  bases 0x08 and 0x70, cascade on IR2, 8086 mode) but with every line masked.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

from bt_vmm.devices.bus import BytePorts
from bt_vmm.devices.state import DeviceState

# --- Ports. ---
MASTER_COMMAND = 0x20  # master, A0=0: ICW1, OCW2, OCW3 / read IRR, ISR, poll word
MASTER_DATA = 0x21  # master, A0=1: ICW2-ICW4, OCW1 (IMR) / read IMR
SLAVE_COMMAND = 0xA0  # slave, A0=0
SLAVE_DATA = 0xA1  # slave, A0=1
ELCR_MASTER = 0x4D0  # PIIX edge/level control for IRQ 0-7 (1 = level)
ELCR_SLAVE = 0x4D1  # PIIX edge/level control for IRQ 8-15
PORTS = ((MASTER_COMMAND, 2), (SLAVE_COMMAND, 2), (ELCR_MASTER, 2))

# --- ICW1 (A0=0, D4=1): starts the initialization sequence. ---
ICW1_IC4 = 0x01  # ICW4 will follow
ICW1_SNGL = 0x02  # single 8259A, no ICW3 (no cascade)
ICW1_ADI = 0x04  # call address interval 4 (MCS-80/85 only; no effect in 8086 mode)
ICW1_LTIM = 0x08  # level-triggered mode for every input
ICW1_INIT = 0x10  # marks the write as ICW1
ICW1_MCS80_VECTOR = 0xE0  # A7-A5 of the MCS-80 call address (ignored in 8086 mode)

# --- ICW2 (A0=1, first after ICW1): the vector base. ---
ICW2_VECTOR_MASK = 0xF8  # T7-T3; T2-T0 come from the IR number

# --- ICW3 (A0=1, cascade mode only). ---
# Master: bit n set = a slave on IRn. Slave: bits 0-2 = its ID (the master IR it drives).
SLAVE_ID_MASK = 0x07

# --- ICW4 (A0=1, when ICW1.IC4). ---
ICW4_8086 = 0x01  # uPM: 8086/8088 mode (clear: MCS-80/85 mode, which x86 cannot use)
ICW4_AEOI = 0x02  # automatic EOI at the end of INTA
ICW4_MASTER = 0x04  # M/S: in buffered mode, this chip is the master
ICW4_BUF = 0x08  # buffered mode (SP/EN becomes a buffer enable output)
ICW4_SFNM = 0x10  # special fully nested mode (a master over slaves)

# --- OCW2 (A0=0, D4=0, D3=0): EOI and priority rotation, by bits 7-5 (R, SL, EOI). ---
OCW2_LEVEL_MASK = 0x07  # L2-L0: the IR level for specific commands
OCW2_CMD_SHIFT = 5
OCW2_ROTATE_AEOI_CLEAR = 0b000  # stop rotating priority in automatic EOI mode
OCW2_NONSPECIFIC_EOI = 0b001  # clear the highest-priority ISR bit
OCW2_NOP = 0b010  # no operation
OCW2_SPECIFIC_EOI = 0b011  # clear ISR bit L
OCW2_ROTATE_AEOI_SET = 0b100  # rotate priority on each automatic EOI
OCW2_ROTATE_NONSPECIFIC_EOI = 0b101  # non-specific EOI, then that level becomes lowest
OCW2_SET_PRIORITY = 0b110  # make level L the lowest priority
OCW2_ROTATE_SPECIFIC_EOI = 0b111  # specific EOI of L, then L becomes lowest

# --- OCW3 (A0=0, D4=0, D3=1). ---
OCW3_SELECT = 0x08  # marks the write as OCW3
OCW3_RIS = 0x01  # with RR: 1 = read ISR, 0 = read IRR
OCW3_RR = 0x02  # act on RIS
OCW3_POLL = 0x04  # poll command: the next read is the poll word
OCW3_SMM = 0x20  # with ESMM: 1 = set special mask mode, 0 = reset it
OCW3_ESMM = 0x40  # act on SMM
OCW3_RESERVED = 0x80  # must be 0

POLL_INTERRUPT = 0x80  # poll word bit 7: a request was pending (bits 2-0: its level)

# --- The PC's wiring. ---
CASCADE_IRQ = 2  # the slave's INT drives master IR2
SPURIOUS_IRQ = 7  # INTA with nothing to deliver yields the chip's IR7 vector
ELCR_MASTER_MASK = 0xF8  # IRQ 0, 1, 2 are always edge (PIIX: read-only 0)
ELCR_SLAVE_MASK = 0xDE  # IRQ 8 and 13 are always edge
FLOATING_BUS = 0xFF  # what the CPU reads in INTA when no chip drives the bus

# --- What firmware leaves behind (reset state). ---
BIOS_MASTER_VECTOR = 0x08
BIOS_SLAVE_VECTOR = 0x70
ALL_MASKED = 0xFF


class Pic8259(DeviceState):
    """One 8259A. The pair below does the cascade; this is the datasheet's block diagram."""

    # Snapshot state (devices/state.py): one chip's registers and modes.
    STATE = ("irr", "isr", "imr", "elcr", "lines", "icw1", "icw3", "icw4", "vector_base",
             "init_step", "lowest_priority", "rotate_on_aeoi", "read_isr", "poll_pending",
             "special_mask")

    def __init__(self, name: str, is_master: bool, elcr_mask: int) -> None:
        self.name = name
        self.is_master = is_master  # the SP/EN pin: ICW3 is a slave mask, not an ID
        self.elcr_mask = elcr_mask

        # Registers.
        self.irr = 0  # edge latches: requests seen as rising edges, not yet acknowledged
        self.isr = 0  # in-service register
        self.imr = 0  # interrupt mask register (OCW1)
        self.elcr = 0  # edge/level control (PIIX), 1 = level
        self.lines = 0  # the IR input levels as last reported

        # Programming (ICW1-ICW4) and modes (OCW2, OCW3).
        self.icw1 = 0
        self.icw3 = 0
        self.icw4 = 0
        self.vector_base = 0
        self.init_step = 0  # the ICW expected next on A0=1 (2, 3, 4), or 0 when ready
        self.lowest_priority = 7  # the IR with the lowest priority; the next one is highest
        self.rotate_on_aeoi = False
        self.read_isr = False  # OCW3 RR/RIS: what an A0=0 read returns
        self.poll_pending = False  # OCW3 P: the next read is the poll word
        self.special_mask = False  # OCW3 SMM

        # Counters.
        self.spurious = 0  # INTA (or poll) with no request to deliver: IR7 vector, no ISR bit
        self.stray_eois = 0  # non-specific EOIs with nothing in service
        self.rotations = 0  # rotate/priority commands (OCW2), carried out

    # --- Mode bits, as the ICWs set them. ---

    @property
    def auto_eoi(self) -> bool:
        return bool(self.icw4 & ICW4_AEOI)

    @property
    def special_fully_nested(self) -> bool:
        return bool(self.icw4 & ICW4_SFNM)

    @property
    def cascaded(self) -> bool:
        return not self.icw1 & ICW1_SNGL

    @property
    def level_mask(self) -> int:
        """The inputs whose requests follow the line level rather than latch edges."""
        return 0xFF if self.icw1 & ICW1_LTIM else self.elcr

    @property
    def requests(self) -> int:
        """IRR as the datasheet defines it: latched edges and asserted level inputs."""
        level = self.level_mask
        return (self.irr & ~level | self.lines & level) & 0xFF

    # --- Inputs. ---

    def set_input(self, line: int, level: bool) -> None:
        bit = 1 << line
        if level:
            if not self.lines & bit:
                self.irr |= bit  # the edge-sense latch catches the rising edge
            self.lines |= bit
        else:
            self.lines &= ~bit

    # --- Priority resolution. ---

    def priority_order(self) -> list[int]:
        """IR levels from highest to lowest priority (rotation moves the lowest)."""
        return [(self.lowest_priority + 1 + i) & 7 for i in range(8)]

    def pending(self) -> int | None:
        """The request the chip would present on INT now, or None (its INT output is low).

        Fully nested mode: a request wins only if no level of equal or higher
        priority is in service. Special mask mode lets masked in-service levels
        stop blocking; special fully nested mode lets a slave's line interrupt
        again while it is in service, so higher-priority slave requests get in.
        """
        requests = self.requests & ~self.imr
        if not requests:
            return None
        blocking = self.isr
        if self.special_mask:
            blocking &= ~self.imr
        sfnm = self.is_master and self.special_fully_nested and self.cascaded
        reentrant = self.icw3 if sfnm else 0
        for irq in self.priority_order():
            bit = 1 << irq
            if requests & bit and (not blocking & bit or reentrant & bit):
                return irq
            if blocking & bit:
                return None
        return None

    def intack(self) -> int | None:
        """The chip's part of an INTA cycle (or a poll): the IR it delivers, or None if spurious."""
        irq = self.pending()
        if irq is None:
            self.spurious += 1
            return None
        bit = 1 << irq
        self.irr &= ~bit  # the edge latch is consumed; a level input stays requested
        if self.auto_eoi:
            if self.rotate_on_aeoi:
                self.lowest_priority = irq
        else:
            self.isr |= bit
        return irq

    # --- Guest side: writes. ---

    def write_command(self, value: int, unsupported: Counter[str]) -> None:
        """A0=0: ICW1, OCW2 or OCW3, told apart by bits 4 and 3."""
        if value & ICW1_INIT:
            self._icw1(value, unsupported)
        elif value & OCW3_SELECT:
            self._ocw3(value, unsupported)
        else:
            self._ocw2(value)

    def write_data(self, value: int, unsupported: Counter[str]) -> None:
        """A0=1: the next ICW during initialization, OCW1 (the mask) otherwise."""
        if self.init_step == 2:
            # ICW2: where this chip's vectors start.
            self.vector_base = value & ICW2_VECTOR_MASK
            if self.cascaded:
                self.init_step = 3
            else:
                self.init_step = 4 if self.icw1 & ICW1_IC4 else 0
        elif self.init_step == 3:
            # ICW3: which IRs have slaves (master) or which IR this slave drives.
            self.icw3 = value
            self.init_step = 4 if self.icw1 & ICW1_IC4 else 0
        elif self.init_step == 4:
            # ICW4: 8086 mode, automatic EOI, buffering, special fully nested mode.
            self.icw4 = value & 0x1F
            if not value & ICW4_8086:
                unsupported["mcs80-mode"] += 1
            if value & 0xE0:
                unsupported["icw4-reserved-bits"] += 1
            self.init_step = 0
        else:
            # OCW1: the driver masks or unmasks lines.
            self.imr = value

    def _icw1(self, value: int, unsupported: Counter[str]) -> None:
        # The datasheet's ICW1 side effects: edge sense reset, IMR cleared, IR7
        # lowest priority, special mask mode off, status read set to IRR, and
        # (without IC4) every ICW4 function zero. In-service state goes too.
        self.icw1 = value
        self.icw3 = 0
        self.icw4 = 0
        self.irr = 0
        self.isr = 0
        self.imr = 0
        self.lowest_priority = 7
        self.rotate_on_aeoi = False
        self.read_isr = False
        self.poll_pending = False
        self.special_mask = False
        self.init_step = 2
        if not value & ICW1_IC4:
            unsupported["no-icw4-mcs80-mode"] += 1

    def _ocw2(self, value: int) -> None:
        command = value >> OCW2_CMD_SHIFT
        level = value & OCW2_LEVEL_MASK
        if command == OCW2_NONSPECIFIC_EOI:
            # The interrupt handler is done with the highest-priority level in service.
            self._eoi_highest(rotate=False)
        elif command == OCW2_SPECIFIC_EOI:
            # The handler names the level it is done with (Linux does this for each IRQ).
            self.isr &= ~(1 << level)
        elif command == OCW2_ROTATE_NONSPECIFIC_EOI:
            self.rotations += 1
            self._eoi_highest(rotate=True)
        elif command == OCW2_ROTATE_SPECIFIC_EOI:
            self.rotations += 1
            self.isr &= ~(1 << level)
            self.lowest_priority = level
        elif command == OCW2_SET_PRIORITY:
            self.rotations += 1
            self.lowest_priority = level
        elif command == OCW2_ROTATE_AEOI_SET:
            self.rotations += 1
            self.rotate_on_aeoi = True
        elif command == OCW2_ROTATE_AEOI_CLEAR:
            self.rotate_on_aeoi = False
        # OCW2_NOP: nothing.

    def _eoi_highest(self, rotate: bool) -> None:
        # In special mask mode an ISR bit masked by IMR is not cleared by a non-specific EOI.
        candidates = self.isr & ~self.imr if self.special_mask else self.isr
        for irq in self.priority_order():
            if candidates & (1 << irq):
                self.isr &= ~(1 << irq)
                if rotate:
                    self.lowest_priority = irq
                return
        self.stray_eois += 1

    def _ocw3(self, value: int, unsupported: Counter[str]) -> None:
        if value & OCW3_RESERVED:
            unsupported["ocw3-bit7"] += 1
        if value & OCW3_ESMM:
            # Special mask mode: masking a level in service re-enables the lower ones.
            self.special_mask = bool(value & OCW3_SMM)
        if value & OCW3_RR:
            # The driver chooses what the next A0=0 reads return: IRR or ISR.
            self.read_isr = bool(value & OCW3_RIS)
        if value & OCW3_POLL:
            # Poll command: the next read acts as INTA and returns the poll word.
            self.poll_pending = True

    # --- Guest side: reads. ---

    def read_command(self) -> int:
        if self.poll_pending:
            return self.poll()
        return self.isr if self.read_isr else self.requests

    def read_data(self) -> int:
        if self.poll_pending:
            return self.poll()
        return self.imr

    def poll(self) -> int:
        """The poll word: an INTA done by a read (sets the ISR bit), its level in bits 2-0."""
        self.poll_pending = False
        irq = self.intack()
        if irq is None:
            return 0
        return POLL_INTERRUPT | irq

    # --- Reset. ---

    def reset(self, vector_base: int, icw3: int) -> None:
        """The state PC firmware leaves: programmed for the PC's cascade, everything masked."""
        self.icw1 = ICW1_INIT | ICW1_IC4
        self.vector_base = vector_base
        self.icw3 = icw3
        self.icw4 = ICW4_8086
        self.init_step = 0
        self.irr = 0
        self.isr = 0
        self.imr = ALL_MASKED
        self.elcr = 0
        self.lowest_priority = 7
        self.rotate_on_aeoi = False
        self.read_isr = False
        self.poll_pending = False
        self.special_mask = False
        # The input lines are wires from the devices: a reset does not change their levels.


class Pic8259Pair(BytePorts):
    """Master and slave 8259A as wired in a PC/AT, with the PIIX's ELCR registers."""

    def __init__(self, intr: Callable[[bool], None] | None = None) -> None:
        self.intr = intr  # called with the master's INT output when it changes
        self.master = Pic8259("master", True, ELCR_MASTER_MASK)
        self.slave = Pic8259("slave", False, ELCR_SLAVE_MASK)
        self.intr_level = False  # INTR as last reported to `intr`

        # Counters.
        self.spurious_interrupts: Counter[int] = Counter()  # by IRQ: 7 (master), 15 (slave)
        self.unsupported_commands: Counter[str] = Counter()  # what the guest asked for, by kind
        self.wide_accesses = 0  # 16/32-bit accesses, split into byte accesses
        self.floating_inta = 0  # INTA for a master IR with a slave that does not answer
        self.reset()

    # --- Devices' side. ---

    def set_irq(self, line: int, level: bool) -> None:
        """Drive ISA IRQ `line` (0-15) to `level`."""
        if not 0 <= line < 16:
            raise ValueError(f"IRQ {line} does not exist on the PC's 8259 pair")
        if line == CASCADE_IRQ:
            raise ValueError("IRQ2 is the cascade input; ISA IRQ2 devices are wired to IRQ9 on the AT")
        if line < 8:
            self.master.set_input(line, level)
        else:
            self.slave.set_input(line - 8, level)
        self._update()

    # --- CPU side. ---

    def has_interrupt(self) -> bool:
        """The master's INTR output: is there an interrupt for the CPU to acknowledge?"""
        return self.master.pending() is not None

    def acknowledge(self) -> int:
        """The INTA cycle: the vector the CPU reads, with IRR/ISR updated on both chips."""
        irq = self.master.intack()
        if irq is None:
            # Nothing left to deliver (a level request went away, or a mask came
            # down after INTR rose): the master answers with its IR7 vector and
            # sets no ISR bit.
            self.spurious_interrupts[SPURIOUS_IRQ] += 1
            vector = self.master.vector_base | SPURIOUS_IRQ
        elif self.master.cascaded and self.master.icw3 & (1 << irq):
            # A slave IR: the master is now in service on IR2 and the slave
            # puts the vector on the bus.
            vector = self._slave_intack(irq)
        else:
            vector = self.master.vector_base | irq
        self._update()
        return vector

    def _slave_intack(self, master_irq: int) -> int:
        if master_irq != CASCADE_IRQ or (self.slave.icw3 & SLAVE_ID_MASK) != CASCADE_IRQ:
            # ICW3 names a slave where the PC has none, or the slave has another
            # ID: nobody drives the data bus during the second INTA pulse.
            self.floating_inta += 1
            return FLOATING_BUS
        irq = self.slave.intack()
        if irq is None:
            # The slave's request went away: IRQ15 spurious. The master's IR2
            # stays in service; the handler must EOI the master only.
            self.spurious_interrupts[8 + SPURIOUS_IRQ] += 1
            return self.slave.vector_base | SPURIOUS_IRQ
        return self.slave.vector_base | irq

    # --- Snapshot. ---

    def state(self) -> dict:
        return {"master": self.master.state(), "slave": self.slave.state(), "intr_level": self.intr_level}

    def restore(self, state: dict) -> None:
        self.master.restore(state["master"])
        self.slave.restore(state["slave"])
        self.intr_level = state["intr_level"]

    # --- Guest side. ---

    def reset(self) -> None:
        """Machine reset: both chips as firmware leaves them, every line masked, ELCR edge."""
        self.master.reset(BIOS_MASTER_VECTOR, 1 << CASCADE_IRQ)
        self.slave.reset(BIOS_SLAVE_VECTOR, CASCADE_IRQ)
        self._update()

    def _read_byte(self, port: int) -> int:
        if port == MASTER_COMMAND:
            # IRR/ISR status read (Linux reads ISR to tell spurious IRQ7 from a
            # real one), or the poll word after a poll command.
            value = self.master.read_command()
        elif port == MASTER_DATA:
            # The mask; Linux probes for the PIC by writing 0xff and reading it back.
            value = self.master.read_data()
        elif port == SLAVE_COMMAND:
            value = self.slave.read_command()
        elif port == SLAVE_DATA:
            value = self.slave.read_data()
        elif port == ELCR_MASTER:
            return self.master.elcr
        elif port == ELCR_SLAVE:
            return self.slave.elcr
        else:
            return 0xFF  # a wide access ran past the registers: nothing decodes it
        self._update()  # a poll may have acknowledged a request
        return value

    def _write_byte(self, port: int, value: int) -> None:
        if port == MASTER_COMMAND:
            self.master.write_command(value, self.unsupported_commands)
        elif port == MASTER_DATA:
            self.master.write_data(value, self.unsupported_commands)
        elif port == SLAVE_COMMAND:
            self.slave.write_command(value, self.unsupported_commands)
        elif port == SLAVE_DATA:
            self.slave.write_data(value, self.unsupported_commands)
        elif port == ELCR_MASTER:
            # The ACPI/PCI IRQ routing code marks PCI interrupt lines level-triggered.
            self.master.elcr = value & self.master.elcr_mask
        elif port == ELCR_SLAVE:
            self.slave.elcr = value & self.slave.elcr_mask
        else:
            return
        self._update()

    # --- Internal state. ---

    def _update(self) -> None:
        """Propagate the slave's INT to master IR2, then report INTR if it changed."""
        slave_int = self.slave.pending() is not None
        self.master.set_input(CASCADE_IRQ, slave_int)
        if slave_int:
            self.master.irr |= 1 << CASCADE_IRQ  # latched while asserted (see the module notes)
        level = self.has_interrupt()
        if level != self.intr_level:
            self.intr_level = level
            if self.intr is not None:
                self.intr(level)
