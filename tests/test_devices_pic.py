"""The 8259A pair, driven the way Linux's i8259 driver and interrupt entry code drive it."""

from __future__ import annotations

import pytest

from bt_vmm.devices.bus import PortBus
from bt_vmm.devices.pic8259 import PORTS, Pic8259Pair

M_CMD, M_DATA, S_CMD, S_DATA = 0x20, 0x21, 0xA0, 0xA1
ELCR1, ELCR2 = 0x4D0, 0x4D1
EOI = 0x20  # OCW2 non-specific EOI
READ_IRR, READ_ISR, POLL = 0x0A, 0x0B, 0x0C  # OCW3


class Machine:
    def __init__(self) -> None:
        self.intr_levels: list[bool] = []
        self.pic = Pic8259Pair(intr=self.intr_levels.append)
        self.bus = PortBus()
        for first, count in PORTS:
            self.bus.register(first, count, self.pic)

    def inb(self, port: int) -> int:
        return self.bus.read(port, 1)

    def outb(self, port: int, value: int) -> None:
        self.bus.write(port, 1, value)

    def init_8259a(self, auto_eoi: bool = False) -> None:
        """Linux's init_8259A(): mask all, ICW1-ICW4 on both chips, restore the masks."""
        self.outb(M_DATA, 0xFF)
        self.outb(S_DATA, 0xFF)
        self.outb(M_CMD, 0x11)  # ICW1: edge, cascade, ICW4 needed
        self.outb(M_DATA, 0x20)  # ICW2: IRQ0-7 at vectors 0x20-0x27
        self.outb(M_DATA, 0x04)  # ICW3: slave on IR2
        self.outb(M_DATA, 0x03 if auto_eoi else 0x01)  # ICW4: 8086 mode (+AEOI)
        self.outb(S_CMD, 0x11)
        self.outb(S_DATA, 0x28)  # IRQ8-15 at 0x28-0x2F
        self.outb(S_DATA, 0x02)  # slave ID 2
        self.outb(S_DATA, 0x01)
        self.outb(M_DATA, 0x00)  # unmask everything
        self.outb(S_DATA, 0x00)

    def isr(self, port: int) -> int:
        self.outb(port, READ_ISR)
        value = self.inb(port)
        self.outb(port, READ_IRR)
        return value

    def irr(self, port: int) -> int:
        self.outb(port, READ_IRR)
        return self.inb(port)

    def pulse(self, line: int) -> None:
        self.pic.set_irq(line, True)
        self.pic.set_irq(line, False)


@pytest.fixture
def m() -> Machine:
    machine = Machine()
    machine.init_8259a()
    return machine


def test_ports_cover_both_chips_and_elcr() -> None:
    assert set(PORTS) == {(0x20, 2), (0xA0, 2), (0x4D0, 2)}


def test_reset_state_is_programmed_and_fully_masked() -> None:
    machine = Machine()
    assert machine.inb(M_DATA) == 0xFF and machine.inb(S_DATA) == 0xFF
    machine.pic.set_irq(0, True)
    assert not machine.pic.has_interrupt()
    machine.outb(M_DATA, 0xFE)  # unmask IRQ0: firmware's vector base 0x08
    assert machine.pic.has_interrupt()
    assert machine.pic.acknowledge() == 0x08


def test_imr_reads_back_like_linux_probe(m: Machine) -> None:
    m.outb(M_DATA, 0xFF)
    assert m.inb(M_DATA) == 0xFF
    m.outb(M_DATA, 0xFB)
    assert m.inb(M_DATA) == 0xFB


def test_irq0_edge_ack_and_eoi(m: Machine) -> None:
    assert not m.pic.has_interrupt()
    m.pic.set_irq(0, True)
    assert m.pic.has_interrupt()
    assert m.intr_levels == [True]
    assert m.irr(M_CMD) & 0x01
    assert m.pic.acknowledge() == 0x20
    assert m.isr(M_CMD) == 0x01
    assert m.irr(M_CMD) & 0x01 == 0  # the edge latch was consumed
    assert not m.pic.has_interrupt()
    assert m.intr_levels == [True, False]
    m.outb(M_CMD, EOI)
    assert m.isr(M_CMD) == 0x00
    # The line is still high: no new edge, no new interrupt.
    assert not m.pic.has_interrupt()
    m.pic.set_irq(0, False)
    m.pic.set_irq(0, True)
    assert m.pic.acknowledge() == 0x20


def test_pulsed_edge_is_latched(m: Machine) -> None:
    m.pulse(4)
    assert m.pic.has_interrupt()
    assert m.pic.acknowledge() == 0x24


def test_specific_eoi_as_linux_sends_it(m: Machine) -> None:
    m.pic.set_irq(1, True)
    assert m.pic.acknowledge() == 0x21
    m.outb(M_CMD, 0x60 + 1)  # specific EOI for IR1
    assert m.isr(M_CMD) == 0


def test_priority_order_and_nesting(m: Machine) -> None:
    m.pic.set_irq(5, True)
    m.pic.set_irq(3, True)
    assert m.pic.acknowledge() == 0x23  # lower IR number wins
    # IR5 waits while IR3 is in service...
    assert not m.pic.has_interrupt()
    # ...but a higher-priority request nests.
    m.pic.set_irq(1, True)
    assert m.pic.has_interrupt()
    assert m.pic.acknowledge() == 0x21
    assert m.isr(M_CMD) == 0x0A
    m.outb(M_CMD, EOI)  # clears IR1, the highest in service
    assert m.isr(M_CMD) == 0x08
    assert not m.pic.has_interrupt()
    m.outb(M_CMD, EOI)  # clears IR3
    assert m.pic.acknowledge() == 0x25


def test_masked_request_waits_in_irr(m: Machine) -> None:
    m.outb(M_DATA, 0x08)
    m.pic.set_irq(3, True)
    assert not m.pic.has_interrupt()
    assert m.irr(M_CMD) & 0x08
    m.outb(M_DATA, 0x00)
    assert m.pic.acknowledge() == 0x23


def test_slave_cascade_irq8(m: Machine) -> None:
    m.pic.set_irq(8, True)
    assert m.pic.has_interrupt()
    assert m.irr(M_CMD) & 0x04  # the slave's INT on master IR2
    assert m.pic.acknowledge() == 0x28
    assert m.isr(M_CMD) == 0x04
    assert m.isr(S_CMD) == 0x01
    # Linux's EOI for a slave IRQ: slave first, then master IR2.
    m.outb(S_CMD, 0x60 + 0)
    m.outb(M_CMD, 0x60 + 2)
    assert m.isr(M_CMD) == 0 and m.isr(S_CMD) == 0


def test_slave_irq_waits_for_master_eoi(m: Machine) -> None:
    m.pic.set_irq(14, True)
    assert m.pic.acknowledge() == 0x2E
    m.pic.set_irq(9, True)  # higher priority on the slave, but master IR2 is in service
    assert not m.pic.has_interrupt()
    m.outb(M_CMD, EOI)
    assert m.pic.acknowledge() == 0x29
    m.outb(S_CMD, EOI)  # clears IR1 (IRQ9), the slave's highest
    assert m.isr(S_CMD) == 0x40  # IRQ14 still in service on the slave


def test_master_irq_preempts_slave_in_service(m: Machine) -> None:
    m.pic.set_irq(12, True)
    assert m.pic.acknowledge() == 0x2C
    m.pic.set_irq(1, True)
    assert m.pic.acknowledge() == 0x21
    m.pic.set_irq(7, True)  # lower than IR2 in service
    assert not m.pic.has_interrupt()


def test_special_fully_nested_mode_lets_slave_nest() -> None:
    m = Machine()
    m.init_8259a()
    m.outb(M_CMD, 0x11)
    m.outb(M_DATA, 0x20)
    m.outb(M_DATA, 0x04)
    m.outb(M_DATA, 0x11)  # ICW4: 8086, SFNM
    m.pic.set_irq(14, True)
    assert m.pic.acknowledge() == 0x2E
    m.pic.set_irq(9, True)
    assert m.pic.has_interrupt()
    assert m.pic.acknowledge() == 0x29


def test_level_triggered_via_elcr_stays_asserted(m: Machine) -> None:
    m.outb(ELCR2, 0x08)  # IRQ11 level-triggered
    assert m.inb(ELCR2) == 0x08
    m.pic.set_irq(11, True)
    assert m.pic.acknowledge() == 0x2B
    m.outb(S_CMD, EOI)
    m.outb(M_CMD, EOI)
    # The device still holds the line: the interrupt comes again.
    assert m.pic.has_interrupt()
    assert m.pic.acknowledge() == 0x2B
    m.pic.set_irq(11, False)  # this time the handler services the device before its EOIs
    m.outb(S_CMD, EOI)
    m.outb(M_CMD, EOI)
    assert not m.pic.has_interrupt()


def test_elcr_hardwired_edge_bits(m: Machine) -> None:
    m.outb(ELCR1, 0xFF)
    m.outb(ELCR2, 0xFF)
    assert m.inb(ELCR1) == 0xF8  # IRQ 0, 1, 2 are always edge
    assert m.inb(ELCR2) == 0xDE  # IRQ 8, 13 are always edge
    assert m.bus.read(ELCR1, 2) == 0xDEF8


def test_edge_line_needs_new_edge(m: Machine) -> None:
    m.pic.set_irq(3, True)
    assert m.pic.acknowledge() == 0x23
    m.outb(M_CMD, EOI)
    assert not m.pic.has_interrupt()


def test_spurious_irq7(m: Machine) -> None:
    m.outb(ELCR1, 0x20)  # IRQ5 level
    m.pic.set_irq(5, True)
    assert m.pic.has_interrupt()
    m.pic.set_irq(5, False)  # the request goes away before INTA
    assert m.pic.acknowledge() == 0x27
    assert m.isr(M_CMD) == 0  # no ISR bit: Linux checks this to spot spurious IRQ7
    assert m.pic.spurious_interrupts[7] == 1
    # Nothing pending at all gives the same.
    assert m.pic.acknowledge() == 0x27
    assert m.pic.spurious_interrupts[7] == 2


def test_spurious_irq15_leaves_master_ir2_in_service(m: Machine) -> None:
    m.outb(ELCR2, 0x02)  # IRQ9 level
    m.pic.set_irq(9, True)
    assert m.pic.has_interrupt()
    m.pic.set_irq(9, False)  # gone before INTA, but the master latched its IR2 edge
    assert m.pic.has_interrupt()
    assert m.pic.acknowledge() == 0x2F
    assert m.pic.spurious_interrupts[15] == 1
    assert m.isr(M_CMD) == 0x04  # Linux EOIs the master only for a spurious IRQ15
    assert m.isr(S_CMD) == 0x00
    m.outb(M_CMD, 0x60 + 2)
    assert not m.pic.has_interrupt()


def test_slave_in_auto_eoi_mode_loses_no_requests() -> None:
    m = Machine()
    m.init_8259a()
    m.outb(S_CMD, 0x11)
    m.outb(S_DATA, 0x28)
    m.outb(S_DATA, 0x02)
    m.outb(S_DATA, 0x03)  # slave in AEOI: its INT stays up while requests remain
    m.pic.set_irq(9, True)
    m.pic.set_irq(10, True)
    assert m.pic.acknowledge() == 0x29
    m.outb(M_CMD, EOI)
    assert m.pic.acknowledge() == 0x2A


def test_masking_after_intr_gives_spurious(m: Machine) -> None:
    m.pic.set_irq(6, True)
    assert m.pic.has_interrupt()
    m.outb(M_DATA, 0x40)
    assert m.pic.acknowledge() == 0x27


def test_poll_mode(m: Machine) -> None:
    m.pic.set_irq(6, True)
    m.pic.set_irq(4, True)
    m.outb(M_CMD, POLL)
    assert m.inb(M_CMD) == 0x84  # interrupt pending, level 4
    assert m.isr(M_CMD) == 0x10  # the poll acted as INTA
    m.outb(M_CMD, EOI)
    m.outb(M_CMD, POLL)
    assert m.inb(M_CMD) == 0x86
    m.outb(M_CMD, EOI)
    m.outb(M_CMD, POLL)
    assert m.inb(M_CMD) == 0x00  # nothing pending
    # The poll is one read only: the next read is the IRR again.
    assert m.inb(M_CMD) == 0x00


def test_auto_eoi() -> None:
    m = Machine()
    m.init_8259a(auto_eoi=True)
    m.pic.set_irq(0, True)
    assert m.pic.acknowledge() == 0x20
    assert m.isr(M_CMD) == 0
    m.pic.set_irq(3, True)
    assert m.pic.acknowledge() == 0x23


def test_icw1_clears_state(m: Machine) -> None:
    m.pic.set_irq(3, True)
    m.pic.acknowledge()
    m.outb(M_DATA, 0x55)
    m.outb(M_CMD, 0x11)
    assert m.inb(M_DATA) == 0x00  # ICW1 clears IMR (a read does not disturb the sequence)
    m.outb(M_DATA, 0x30)
    m.outb(M_DATA, 0x04)
    m.outb(M_DATA, 0x01)
    assert m.isr(M_CMD) == 0
    m.pic.set_irq(3, False)
    m.pic.set_irq(3, True)
    assert m.pic.acknowledge() == 0x33


def test_rotation_commands(m: Machine) -> None:
    m.outb(M_CMD, 0xC0 | 3)  # set priority: IR3 lowest, so IR4 highest
    m.pic.set_irq(1, True)
    m.pic.set_irq(5, True)
    assert m.pic.acknowledge() == 0x25
    m.outb(M_CMD, 0xA0)  # rotate on non-specific EOI: IR5 becomes lowest
    assert m.pic.master.lowest_priority == 5
    assert m.pic.acknowledge() == 0x21
    m.outb(M_CMD, 0xE0 | 1)  # rotate on specific EOI
    assert m.pic.master.lowest_priority == 1
    assert m.pic.master.rotations == 3


def test_special_mask_mode(m: Machine) -> None:
    m.pic.set_irq(3, True)
    assert m.pic.acknowledge() == 0x23
    m.pic.set_irq(6, True)
    assert not m.pic.has_interrupt()
    m.outb(M_CMD, 0x68)  # OCW3: set special mask mode
    m.outb(M_DATA, 0x08)  # mask IR3, the level in service
    assert m.pic.has_interrupt()
    assert m.pic.acknowledge() == 0x26
    m.outb(M_CMD, 0x48)  # reset special mask mode
    assert not m.pic.master.special_mask


def test_unsupported_commands_are_counted(m: Machine) -> None:
    m.outb(M_CMD, 0x10)  # ICW1 without ICW4: MCS-80 mode
    m.outb(M_DATA, 0x20)
    m.outb(M_DATA, 0x04)
    assert m.pic.unsupported_commands["no-icw4-mcs80-mode"] == 1
    m.outb(M_CMD, 0x88)
    assert m.pic.unsupported_commands["ocw3-bit7"] == 1


def test_set_irq_rejects_cascade_and_out_of_range() -> None:
    pic = Pic8259Pair()
    with pytest.raises(ValueError):
        pic.set_irq(2, True)
    with pytest.raises(ValueError):
        pic.set_irq(16, True)


def test_reset_keeps_line_levels_but_clears_latches(m: Machine) -> None:
    m.pic.set_irq(4, True)
    m.pic.reset()
    m.outb(M_DATA, 0x00)
    assert not m.pic.has_interrupt()  # the edge latch was cleared
    assert m.pic.master.lines & 0x10  # the wire is still high
