"""The i8042 keyboard controller (as Linux's i8042, atkbd and psmouse probe it) and port 0x92."""

from __future__ import annotations

import pytest

from bt_vmm.devices import i8042 as kbc
from bt_vmm.devices import port92
from bt_vmm.devices.bus import PortBus
from bt_vmm.devices.i8042 import I8042
from bt_vmm.devices.port92 import Port92

DATA, STATUS = 0x60, 0x64
OBF, IBF, SYS, CMD, AUXDATA = 0x01, 0x02, 0x04, 0x08, 0x20
CTR_KBDINT, CTR_AUXINT, CTR_KBDDIS, CTR_AUXDIS = 0x01, 0x02, 0x10, 0x20


class Machine:
    def __init__(self) -> None:
        self.irq1: list[bool] = []
        self.irq12: list[bool] = []
        self.resets = 0
        self.kbc = I8042(self.irq1.append, self.irq12.append, self.on_reset)
        self.port92 = Port92(self.on_reset)
        self.bus = PortBus()
        for first, count in kbc.PORTS:
            self.bus.register(first, count, self.kbc)
        for first, count in port92.PORTS:
            self.bus.register(first, count, self.port92)

    def on_reset(self) -> None:
        self.resets += 1

    def inb(self, port: int) -> int:
        return self.bus.read(port, 1)

    def outb(self, port: int, value: int) -> None:
        self.bus.write(port, 1, value)

    def wait_write(self) -> None:
        assert not self.inb(STATUS) & IBF

    def read_data(self, aux: bool | None = None) -> int:
        status = self.inb(STATUS)
        assert status & OBF, "no data in the output buffer"
        if aux is not None:
            assert bool(status & AUXDATA) == aux
        return self.inb(DATA)

    def command(self, command: int, param: int | None = None, replies: int = 0, aux: bool | None = None) -> list[int]:
        """Linux's __i8042_command(): command to 0x64, parameter to 0x60, replies from 0x60."""
        self.wait_write()
        self.outb(STATUS, command)
        if param is not None:
            self.wait_write()
            self.outb(DATA, param)
        return [self.read_data(aux) for _ in range(replies)]

    def flush(self) -> int:
        """i8042_flush(): drain the output buffer, at most 16 bytes."""
        count = 0
        while self.inb(STATUS) & OBF:
            count += 1
            assert count <= 16, "controller appears to be stuck"
            self.inb(DATA)
        return count

    def kbd(self, byte: int, replies: int) -> list[int]:
        self.wait_write()
        self.outb(DATA, byte)
        return [self.read_data(aux=False) for _ in range(replies)]

    def mouse(self, byte: int, replies: int) -> list[int]:
        return self.command(0xD4, byte, replies, aux=True)


@pytest.fixture
def m() -> Machine:
    return Machine()


def test_ports() -> None:
    assert kbc.PORTS == ((0x60, 1), (0x64, 1))
    assert port92.PORTS == ((0x92, 1),)


def test_linux_i8042_probe(m: Machine) -> None:
    # i8042_controller_check: the flush finds an empty buffer.
    assert m.flush() == 0
    # i8042_controller_selftest.
    assert m.command(0xAA, replies=1) == [0x55]
    assert m.inb(STATUS) & SYS
    # i8042_controller_init: read the CTR twice, disable the keyboard, write it back.
    ctr = m.command(0x20, replies=1)[0]
    assert m.command(0x20, replies=1)[0] == ctr
    assert ctr & CTR_KBDINT and ctr & 0x40  # firmware left IRQ1 and translation on
    ctr = (ctr | CTR_KBDDIS) & ~CTR_KBDINT
    m.command(0x60, ctr)
    assert m.command(0x20, replies=1) == [ctr]
    assert m.inb(STATUS) & CMD
    # i8042_check_aux: loopback through the aux output buffer, tests, disable/enable.
    assert m.command(0xD3, 0x5A, replies=1, aux=True) == [0x5A]
    assert m.command(0xA9, replies=1) == [0x00]
    m.command(0xA7)
    assert m.command(0x20, replies=1)[0] & CTR_AUXDIS
    m.command(0xA8)
    assert not m.command(0x20, replies=1)[0] & CTR_AUXDIS
    # The AUX IRQ test: loopback with AUXINT on must raise IRQ12.
    ctr = m.command(0x20, replies=1)[0]
    m.command(0x60, ctr | CTR_AUXINT)
    m.outb(STATUS, 0xD3)
    m.outb(DATA, 0xA5)
    assert m.irq12 == [True]
    assert m.read_data(aux=True) == 0xA5
    assert m.irq12 == [True, False]
    # Keyboard port test, then enable the keyboard port with IRQ1.
    assert m.command(0xAB, replies=1) == [0x00]
    ctr = m.command(0x20, replies=1)[0]
    m.command(0x60, (ctr & ~CTR_KBDDIS) | CTR_KBDINT)
    assert m.kbc.unknown_commands == 0


def test_atkbd_probe_and_reset(m: Machine) -> None:
    assert m.kbd(0xF2, 3) == [0xFA, 0xAB, 0x83]  # GETID
    assert m.kbd(0xED, 1) == [0xFA]  # SETLEDS ...
    assert m.kbd(0x00, 1) == [0xFA]  # ... off
    assert m.kbd(0xFF, 2) == [0xFA, 0xAA]  # RESET_BAT
    assert m.kbd(0xF5, 1) == [0xFA]  # RESET_DIS
    assert m.kbd(0xF0, 1) == [0xFA]
    assert m.kbd(0x00, 2) == [0xFA, 0x02]  # scancode set 2
    assert m.kbd(0xF3, 1) == [0xFA]  # SETREP
    assert m.kbd(0x2B, 1) == [0xFA]
    assert m.kbd(0xF4, 1) == [0xFA]  # ENABLE
    assert m.kbd(0xEE, 1) == [0xEE]  # echo
    assert m.kbd(0xFE, 1) == [0xEE]  # resend
    assert m.kbd(0xAB, 1) == [0xFE]  # unknown: resend request
    assert m.kbc.unknown_kbd_commands == 1


def test_keyboard_irq_edges_per_byte(m: Machine) -> None:
    m.kbc.feed_scancodes(bytes([0x1E, 0x9E]))  # 'a' make and break (set 1)
    assert m.irq1 == [True]
    assert m.read_data(aux=False) == 0x1E
    assert m.irq1 == [True, False, True]  # the line dips between bytes: a new edge
    assert m.read_data(aux=False) == 0x9E
    assert m.irq1 == [True, False, True, False]
    assert not m.inb(STATUS) & OBF
    assert m.inb(DATA) == 0x9E  # an empty buffer reads its last byte again


def test_disabled_keyboard_holds_input(m: Machine) -> None:
    m.command(0xAD)
    m.kbc.feed_scancodes(b"\x1e")
    assert not m.inb(STATUS) & OBF
    m.kbd(0xF5, 0)  # scanning off too
    m.command(0xAE)
    assert m.read_data() == 0xFA  # the reply to F5 was waiting
    assert not m.inb(STATUS) & OBF
    assert m.kbd(0xF4, 1) == [0xFA]
    assert m.read_data() == 0x1E


def test_no_irq1_without_ctr_bit(m: Machine) -> None:
    m.command(0x60, 0x44)
    m.kbc.feed_scancodes(b"\x1e")
    assert m.inb(STATUS) & OBF
    assert m.irq1 == []


def test_mouse_commands(m: Machine) -> None:
    m.command(0x60, 0x47 & ~CTR_AUXDIS)  # both interrupts, aux enabled
    assert m.mouse(0xFF, 3) == [0xFA, 0xAA, 0x00]  # reset: BAT, ID
    assert m.irq12[:1] == [True]
    assert m.mouse(0xF2, 2) == [0xFA, 0x00]  # GETID: a plain PS/2 mouse
    assert m.mouse(0xF3, 1) == [0xFA]
    assert m.mouse(200, 1) == [0xFA]  # sample rate parameter (>= 0x80 is still a parameter)
    assert m.mouse(0xE9, 4) == [0xFA, 0x00, 0x02, 200]
    assert m.mouse(0xF4, 1) == [0xFA]
    assert m.mouse(0xE9, 4)[1] & 0x20
    assert m.mouse(0x42, 1) == [0xFE]
    assert m.kbc.unknown_aux_commands == 1


def test_reset_line_pulse(m: Machine) -> None:
    m.outb(STATUS, 0xFE)  # Linux's reboot=k
    assert m.resets == 1
    m.outb(STATUS, 0xFF)  # pulses nothing
    assert m.resets == 1


def test_output_port_a20_and_reset(m: Machine) -> None:
    assert m.kbc.a20
    m.command(0xD1, 0xDD)  # A20 off
    assert not m.kbc.a20
    assert m.command(0xD0, replies=1)[0] & 0x03 == 0x01
    m.command(0xD1, 0xDF)  # A20 on: the classic enable sequence
    assert m.kbc.a20
    assert m.command(0xD0, replies=1)[0] & 0x03 == 0x03
    assert m.resets == 0
    m.command(0xD1, 0xDE)  # bit 0 clear: system reset
    assert m.resets == 1


def test_unknown_controller_command_counted(m: Machine) -> None:
    m.outb(STATUS, 0xC8)
    assert m.kbc.unknown_commands == 1
    assert not m.inb(STATUS) & OBF


def test_controller_ram(m: Machine) -> None:
    m.command(0x65, 0x77)
    assert m.command(0x25, replies=1) == [0x77]


def test_reset_restores_power_on_state(m: Machine) -> None:
    m.command(0x60, 0x00)
    m.command(0x20)  # reply left in the buffer
    m.kbc.reset()
    assert not m.inb(STATUS) & OBF
    assert m.command(0x20, replies=1) == [0x65]


def test_port92_a20_and_fast_reset(m: Machine) -> None:
    assert m.port92.a20
    assert m.inb(0x92) == 0x02
    m.outb(0x92, m.inb(0x92) & ~0x02)
    assert not m.port92.a20 and m.inb(0x92) == 0x00
    m.outb(0x92, 0x02)
    assert m.port92.a20 and m.inb(0x92) == 0x02
    m.outb(0x92, 0x03)  # 0 -> 1 on bit 0: reset
    assert m.resets == 1
    m.outb(0x92, 0x03)  # no transition: nothing
    assert m.resets == 1
    m.outb(0x92, 0x02)
    m.outb(0x92, 0x03)
    assert m.resets == 2
    m.port92.reset()
    assert m.inb(0x92) == 0x02
