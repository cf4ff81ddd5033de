"""PCI configuration mechanism #1 and the i440FX/PIIX3 functions, scanned the way a guest's PCI code does."""

from __future__ import annotations

import pytest

from bt_vmm.devices import pci as P
from bt_vmm.devices.bus import PortBus
from bt_vmm.devices.pci import PciFunction, PciHost, build_i440fx


class Guest:
    """The guest's view: in/out on a port bus carrying the PCI host."""

    def __init__(self) -> None:
        self.host = PciHost()
        self.chipset = build_i440fx(self.host)
        self.bus = PortBus()
        for first, count in P.PORTS:
            self.bus.register(first, count, self.host)

    def select(self, bus: int, dev: int, fn: int, offset: int) -> None:
        self.bus.write(0xCF8, 4, 0x80000000 | bus << 16 | dev << 11 | fn << 8 | offset & 0xFC)

    def read(self, bus: int, dev: int, fn: int, offset: int, size: int) -> int:
        self.select(bus, dev, fn, offset)
        return self.bus.read(0xCFC + (offset & 3), size)

    def write(self, bus: int, dev: int, fn: int, offset: int, size: int, value: int) -> None:
        self.select(bus, dev, fn, offset)
        self.bus.write(0xCFC + (offset & 3), size, value)

    def scan_bus0(self) -> dict[tuple[int, int], tuple[int, int, int]]:
        """Linux's pci_scan_slot over bus 0: function 0, then 1-7 if multifunction."""
        found = {}
        for dev in range(32):
            for fn in range(8):
                ids = self.read(0, dev, fn, P.VENDOR_ID, 4)
                if ids & 0xFFFF == 0xFFFF:
                    if fn == 0:
                        break
                    continue
                class_rev = self.read(0, dev, fn, P.REVISION_ID, 4)
                found[(dev, fn)] = (ids & 0xFFFF, ids >> 16, class_rev >> 8)
                if fn == 0 and not self.read(0, dev, fn, P.HEADER_TYPE, 1) & P.HEADER_MULTIFUNCTION:
                    break
        return found


@pytest.fixture
def guest() -> Guest:
    return Guest()


def test_type1_probe(guest: Guest) -> None:
    """pci_check_type1(): CONFIG_ADDRESS holds the enable bit written to it."""
    guest.bus.write(0xCFB, 1, 0x01)  # a byte write to 0xCFB does not reach CONFIG_ADDRESS
    guest.bus.write(0xCF8, 4, 0x80000000)
    assert guest.bus.read(0xCF8, 4) == 0x80000000
    guest.bus.write(0xCF8, 4, 0xFFFFFFFF)
    assert guest.bus.read(0xCF8, 4) == 0x80FFFFFC  # reserved bits and bits 0-1 read 0
    guest.bus.write(0xCF8, 1, 0)
    assert guest.host.narrow_address_accesses == 1


def test_enumerate_bus_0(guest: Guest) -> None:
    assert guest.scan_bus0() == {
        (0, 0): (0x8086, 0x1237, 0x060000),
        (1, 0): (0x8086, 0x7000, 0x060100),
        (1, 1): (0x8086, 0x7010, 0x010180),
    }
    # Slots 2-31 answered all ones once each (function 0 only), and so did 01.2-01.7.
    assert sum(guest.host.absent_reads.values()) == 30 + 6
    assert guest.host.absent_reads[(0, 2, 0)] == 1
    assert guest.host.absent_reads[(0, 1, 7)] == 1
    assert (0, 0, 1) not in guest.host.absent_reads  # 00.0 is single-function: not probed


def test_absent_function_reads_all_ones(guest: Guest) -> None:
    assert guest.read(0, 5, 0, P.VENDOR_ID, 2) == 0xFFFF
    assert guest.read(0, 5, 0, P.VENDOR_ID, 4) == 0xFFFFFFFF
    assert guest.read(0, 5, 0, P.HEADER_TYPE, 1) == 0xFF
    assert guest.read(1, 0, 0, P.VENDOR_ID, 4) == 0xFFFFFFFF  # no bus 1
    assert guest.read(0, 0, 1, P.VENDOR_ID, 2) == 0xFFFF  # the host bridge has one function
    guest.write(0, 5, 0, P.COMMAND, 2, 7)
    assert guest.host.absent_writes[(0, 5, 0)] == 1
    assert guest.host.absent_reads[(0, 5, 0)] == 3


def test_disabled_config_address_reads_all_ones(guest: Guest) -> None:
    guest.bus.write(0xCF8, 4, 0)  # enable bit clear
    assert guest.bus.read(0xCFC, 4) == 0xFFFFFFFF
    guest.bus.write(0xCFC, 4, 0)
    assert guest.host.disabled_data_accesses == 2


def test_byte_and_word_accesses_land_on_the_right_bytes(guest: Guest) -> None:
    assert guest.read(0, 1, 0, P.HEADER_TYPE, 1) == 0x80
    assert guest.read(0, 1, 1, P.CLASS_CODE + 2, 1) == 0x01  # base class: mass storage
    assert guest.read(0, 1, 1, P.CLASS_CODE + 1, 1) == 0x01  # subclass: IDE
    assert guest.read(0, 1, 1, P.CLASS_CODE, 1) == 0x80  # prog-if: legacy, bus master
    assert guest.read(0, 1, 1, P.DEVICE_ID, 2) == 0x7010
    assert guest.read(0, 0, 0, 0x0A, 2) == 0x0600
    assert guest.read(0, 0, 0, P.REVISION_ID, 1) == 0x02
    guest.write(0, 1, 1, P.LATENCY_TIMER, 1, 0x40)
    assert guest.read(0, 1, 1, P.CACHE_LINE_SIZE, 4) == 0x00004000
    guest.write(0, 1, 1, P.INTERRUPT_LINE, 1, 14)
    assert guest.read(0, 1, 1, P.INTERRUPT_LINE, 2) == 14


def test_vendor_and_device_ids_are_read_only(guest: Guest) -> None:
    guest.write(0, 0, 0, P.VENDOR_ID, 4, 0x12345678)
    assert guest.read(0, 0, 0, P.VENDOR_ID, 4) == 0x12378086
    guest.write(0, 1, 0, P.REVISION_ID, 4, 0xFFFFFFFF)
    assert guest.read(0, 1, 0, P.REVISION_ID, 4) >> 8 == 0x060100


def test_ide_bar_sizing(guest: Guest) -> None:
    """pci_read_bases(): save, write all ones, read the size mask, restore."""
    bar4 = P.BAR0 + 4 * 4
    saved = guest.read(0, 1, 1, bar4, 4)
    assert saved == P.BAR_IO
    guest.write(0, 1, 1, bar4, 4, 0xFFFFFFFF)
    sizing = guest.read(0, 1, 1, bar4, 4)
    assert sizing == 0x0000FFF1
    size = (~(sizing & ~0x3) & 0xFFFF) + 1
    assert size == 16
    guest.write(0, 1, 1, bar4, 4, saved)
    assert guest.read(0, 1, 1, bar4, 4) == P.BAR_IO
    # The OS assigns it.
    guest.write(0, 1, 1, bar4, 4, 0xC040)
    assert guest.read(0, 1, 1, bar4, 4) == 0xC041
    assert guest.chipset.ide.bar_address(4) == 0xC040
    # Legacy mode: BARs 0-3 are not there.
    for bar in range(4):
        guest.write(0, 1, 1, P.BAR0 + 4 * bar, 4, 0xFFFFFFFF)
        assert guest.read(0, 1, 1, P.BAR0 + 4 * bar, 4) == 0
    # Nor on the bridges.
    for bar in range(6):
        guest.write(0, 0, 0, P.BAR0 + 4 * bar, 4, 0xFFFFFFFF)
        assert guest.read(0, 0, 0, P.BAR0 + 4 * bar, 4) == 0


def test_memory_bar_sizing() -> None:
    fn = PciFunction(0x1234, 0x1111, 0x030000)
    fn.add_bar(0, 0x100000, io=False, prefetchable=True)
    fn.add_bar(1, 0x1000, io=False)
    fn.write(P.BAR0, 4, 0xFFFFFFFF)
    assert fn.read(P.BAR0, 4) == 0xFFF00008
    fn.write(P.BAR0 + 4, 4, 0xFFFFFFFF)
    assert fn.read(P.BAR0 + 4, 4) == 0xFFFFF000
    fn.write(P.BAR0, 4, 0xE0000000)
    assert fn.bar_address(0) == 0xE0000000
    with pytest.raises(ValueError):
        fn.add_bar(2, 0x3000, io=False)


def test_command_and_status(guest: Guest) -> None:
    ide = guest.chipset.ide
    guest.write(0, 1, 1, P.COMMAND, 2, 0xFFFF)
    assert guest.read(0, 1, 1, P.COMMAND, 2) == P.CMD_IO | P.CMD_BUS_MASTER
    assert ide.command == P.CMD_IO | P.CMD_BUS_MASTER
    status = guest.read(0, 1, 1, P.STATUS, 2)
    assert status == P.STATUS_FAST_B2B | P.STATUS_DEVSEL_MEDIUM
    # Error bits are write-one-to-clear; the rest of STATUS is read only.
    ide.put(P.STATUS, 2, status | 0x2000)  # received master abort
    guest.write(0, 1, 1, P.STATUS, 2, 0x0280)  # writing ones to read-only bits changes nothing
    assert guest.read(0, 1, 1, P.STATUS, 2) == status | 0x2000
    guest.write(0, 1, 1, P.STATUS, 2, 0x2000)
    assert guest.read(0, 1, 1, P.STATUS, 2) == status
    # A dword write to COMMAND/STATUS clears nothing it writes zeros to.
    guest.write(0, 1, 1, P.COMMAND, 4, 0x00000005)
    assert guest.read(0, 1, 1, P.COMMAND, 4) == status << 16 | 0x0005


def test_chipset_registers_hold_values(guest: Guest) -> None:
    assert guest.read(0, 1, 0, P.PIIX3_PIRQRC, 4) == 0x80808080
    guest.write(0, 1, 0, P.PIIX3_PIRQRC + 1, 1, 0x0B)
    assert guest.read(0, 1, 0, P.PIIX3_PIRQRC, 4) == 0x80800B80
    guest.write(0, 0, 0, P.I440FX_PAM + 1, 2, 0x3333)
    assert guest.read(0, 0, 0, P.I440FX_PAM + 1, 2) == 0x3333


def test_reset_restores_power_on_contents(guest: Guest) -> None:
    guest.write(0, 1, 1, P.BAR0 + 16, 4, 0xC040)
    guest.write(0, 1, 1, P.COMMAND, 2, 5)
    guest.write(0, 1, 0, P.PIIX3_PIRQRC, 1, 0x0A)
    guest.bus.reset()
    assert guest.host.config_address == 0
    guest.select(0, 1, 1, P.BAR0 + 16)
    assert guest.bus.read(0xCFC, 4) == P.BAR_IO
    assert guest.read(0, 1, 1, P.COMMAND, 2) == 0
    assert guest.read(0, 1, 0, P.PIIX3_PIRQRC, 1) == 0x80


def test_add_rejects_duplicates_and_bad_addresses() -> None:
    host = PciHost()
    fn = PciFunction(0x8086, 0x1237, 0x060000)
    assert host.add(0, 3, 0, fn) is fn
    assert host.get(0, 3, 0) is fn
    with pytest.raises(ValueError):
        host.add(0, 3, 0, PciFunction(0x8086, 0x1237, 0x060000))
    with pytest.raises(ValueError):
        host.add(0, 32, 0, PciFunction(0x8086, 0x1237, 0x060000))
