"""The MP and ACPI tables, placed in a first megabyte of RAM and read back the way an OS finds them."""

from __future__ import annotations

import struct

import pytest

from bt_vmm.machine import firmware as F
from bt_vmm.machine.firmware import build_acpi_tables, build_bios_tables, build_mp_tables


def place(chunks: list[tuple[int, bytes]]) -> bytearray:
    ram = bytearray(1 << 20)
    for address, data in chunks:
        assert address + len(data) <= len(ram)
        ram[address : address + len(data)] = data
    return ram


def sums_to_zero(data: bytes) -> bool:
    return sum(data) & 0xFF == 0


def scan(ram: bytes, signature: bytes, start: int, end: int, length: int) -> int | None:
    """The OS's search: a signature on a 16-byte boundary whose `length` bytes sum to zero."""
    for at in range(start, end, 16):
        if ram[at : at + len(signature)] == signature and sums_to_zero(ram[at : at + length]):
            return at
    return None


@pytest.fixture
def ram() -> bytearray:
    return place(build_bios_tables())


# --- MP tables. ---


def find_mp(ram: bytes) -> int:
    at = scan(ram, b"_MP_", 0xF0000, 0x100000, 16)
    assert at is not None
    return at


def mp_entries(ram: bytes, table: int) -> list[tuple[int, bytes]]:
    count = struct.unpack_from("<H", ram, table + 34)[0]
    entries, at = [], table + 44
    for _ in range(count):
        kind = ram[at]
        size = 20 if kind == 0 else 8
        entries.append((kind, bytes(ram[at : at + size])))
        at += size
    assert at == table + struct.unpack_from("<H", ram, table + 4)[0]
    return entries


def test_mp_floating_pointer(ram: bytearray) -> None:
    at = find_mp(ram)
    assert at == 0xF0000 and at % 16 == 0
    sig, table, paragraphs, rev, _, feature1, feature2 = struct.unpack_from("<4sIBBBBB", ram, at)
    assert paragraphs == 1
    assert rev == 4
    assert feature1 == 0  # a configuration table is present
    assert feature2 & 0x80 == 0  # virtual wire mode, no IMCR
    assert sums_to_zero(ram[at : at + 16])
    assert table == 0xF0010


def test_mp_configuration_table(ram: bytearray) -> None:
    table = struct.unpack_from("<I", ram, find_mp(ram) + 4)[0]
    sig, length, rev, _, oem, product, oem_ptr, oem_size, count, lapic, ext_len, ext_sum = struct.unpack_from(
        "<4sHBB8s12sIHHIHB", ram, table
    )
    assert sig == b"PCMP"
    assert rev == 4
    assert sums_to_zero(ram[table : table + length])
    assert oem == b"BTVMM   "
    assert lapic == 0xFEE00000
    assert (oem_ptr, oem_size, ext_len, ext_sum) == (0, 0, 0, 0)
    entries = mp_entries(ram, table)
    kinds = [kind for kind, _ in entries]
    assert kinds == sorted(kinds)  # processors, buses, I/O APICs, I/O interrupts, local interrupts
    assert kinds.count(0) == 1
    assert kinds.count(1) == 2
    assert kinds.count(2) == 1
    assert kinds.count(3) == 16  # ExtINT + 15 ISA IRQs (IRQ2 is not connected)
    assert kinds.count(4) == 2
    assert count == len(entries) == 22


def test_mp_processor_bus_and_ioapic_entries(ram: bytearray) -> None:
    table = struct.unpack_from("<I", ram, find_mp(ram) + 4)[0]
    entries = mp_entries(ram, table)
    processor = [data for kind, data in entries if kind == 0][0]
    _, apic_id, version, flags, signature, features = struct.unpack_from("<BBBBII", processor)
    assert (apic_id, version) == (0, 0x14)
    assert flags == 0x3  # enabled, bootstrap processor
    assert (signature >> 8 & 0xF, signature >> 4 & 0xF, signature & 0xF) == (6, 13, 8)
    assert features == F.CPU_FPU | F.CPU_TSC | F.CPU_CX8 | F.CPU_APIC

    buses = {data[1]: data[2:8] for kind, data in entries if kind == 1}
    assert sorted(buses.values()) == [b"ISA   ", b"PCI   "]
    isa = [bus_id for bus_id, name in buses.items() if name == b"ISA   "][0]

    ioapic = [data for kind, data in entries if kind == 2][0]
    _, ioapic_id, ioapic_version, ioapic_flags, address = struct.unpack("<BBBBI", ioapic)
    assert (ioapic_id, ioapic_version, ioapic_flags, address) == (1, 0x11, 1, 0xFEC00000)

    # I/O interrupts: (type, flags, bus, irq) -> pin.
    routes = {}
    for kind, data in entries:
        if kind == 3:
            _, int_type, flags, bus, irq, dest, pin = struct.unpack("<BBHBBBB", data)
            assert bus == isa and dest == 1
            routes[(int_type, irq)] = (pin, flags)
    assert routes[(F.MP_EXTINT, 0)] == (0, 0)
    assert routes[(F.MP_INT, 0)] == (2, 0)
    assert (F.MP_INT, 2) not in routes
    for irq in (1, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15):
        assert routes[(F.MP_INT, irq)] == (irq, 0), irq
    assert routes[(F.MP_INT, 9)] == (9, F.MP_POLARITY_HIGH | F.MP_TRIGGER_LEVEL)  # the SCI

    local = {}
    for kind, data in entries:
        if kind == 4:
            _, int_type, flags, bus, irq, dest, lint = struct.unpack("<BBHBBBB", data)
            assert dest == 0xFF
            local[lint] = int_type
    assert local == {0: F.MP_EXTINT, 1: F.MP_NMI}


def test_mp_parameters(ram: bytearray) -> None:
    chunks = build_mp_tables(0xF8000, cpu_features=0x1234, cpu_signature=(15, 2, 9))
    ram = place(chunks)
    at = find_mp(ram)
    assert at == 0xF8000
    table = struct.unpack_from("<I", ram, at + 4)[0]
    processor = mp_entries(ram, table)[0][1]
    _, _, _, _, signature, features = struct.unpack_from("<BBBBII", processor)
    assert signature == 0xF29 and features == 0x1234
    with pytest.raises(ValueError):
        build_mp_tables(0xF0008)
    with pytest.raises(ValueError):
        build_mp_tables(0xE0000)


# --- ACPI tables. ---


def sdt(ram: bytes, address: int, signature: bytes) -> tuple[bytes, int]:
    """A table's bytes, after checking its signature, length and checksum; and its revision."""
    sig, length, revision = struct.unpack_from("<4sIB", ram, address)
    assert sig == signature
    assert length >= 36
    data = bytes(ram[address : address + length])
    assert sums_to_zero(data), signature
    assert data[10:16] == b"BTVMM "
    return data, revision


def find_rsdp(ram: bytes) -> int:
    at = scan(ram, b"RSD PTR ", 0xE0000, 0x100000, 20)
    assert at is not None
    return at


def follow_rsdt(ram: bytes) -> dict[bytes, int]:
    rsdp = find_rsdp(ram)
    sig, _, oem, revision, rsdt_address = struct.unpack_from("<8sB6sBI", ram, rsdp)
    assert oem == b"BTVMM " and revision == 0
    rsdt, _ = sdt(ram, rsdt_address, b"RSDT")
    pointers = struct.unpack_from(f"<{(len(rsdt) - 36) // 4}I", rsdt, 36)
    return {bytes(ram[p : p + 4]): p for p in pointers}


def test_rsdp_and_rsdt(ram: bytearray) -> None:
    rsdp = find_rsdp(ram)
    assert rsdp == F.RSDP_ADDRESS
    assert 0xE0000 <= rsdp < 0x100000 and rsdp % 16 == 0
    tables = follow_rsdt(ram)
    assert sorted(tables) == [b"APIC", b"FACP"]
    for address in tables.values():
        assert 0xE0000 <= address < 0xF0000


def test_madt(ram: bytearray) -> None:
    madt, revision = sdt(ram, follow_rsdt(ram)[b"APIC"], b"APIC")
    assert revision == 1
    lapic, flags = struct.unpack_from("<II", madt, 36)
    assert lapic == 0xFEE00000
    assert flags == F.MADT_PCAT_COMPAT
    entries: list[tuple[int, bytes]] = []
    at = 44
    while at < len(madt):
        kind, size = madt[at], madt[at + 1]
        assert size >= 2
        entries.append((kind, madt[at : at + size]))
        at += size
    assert at == len(madt)
    kinds = [kind for kind, _ in entries]
    assert kinds.count(0) == 1 and kinds.count(1) == 1 and kinds.count(2) == 2 and kinds.count(4) == 1

    local = [data for kind, data in entries if kind == 0][0]
    assert struct.unpack("<BBBBI", local) == (0, 8, 0, 0, 1)  # processor 0, APIC ID 0, enabled
    ioapic = [data for kind, data in entries if kind == 1][0]
    assert struct.unpack("<BBBBII", ioapic) == (1, 12, 1, 0, 0xFEC00000, 0)
    overrides = {}
    for kind, data in entries:
        if kind == 2:
            _, size, bus, source, gsi, flags = struct.unpack("<BBBBIH", data)
            assert size == 10 and bus == 0
            overrides[source] = (gsi, flags)
    assert overrides == {0: (2, 0), 9: (9, 0x000D)}  # the PIT on GSI 2; the SCI level, active high
    nmi = [data for kind, data in entries if kind == 4][0]
    assert struct.unpack("<BBBHB", nmi) == (4, 6, 0xFF, 0, 1)  # LINT1 on every processor


def test_fadt_facs_and_dsdt(ram: bytearray) -> None:
    fadt, revision = sdt(ram, follow_rsdt(ram)[b"FACP"], b"FACP")
    assert revision == 1
    assert len(fadt) == 116
    facs_address, dsdt_address = struct.unpack_from("<II", fadt, 36)
    sci_int, smi_cmd = struct.unpack_from("<HI", fadt, 46)
    assert sci_int == 9
    assert smi_cmd == 0  # no SMI command port: ACPI mode is already on
    pm1a_evt, pm1b_evt, pm1a_cnt, pm1b_cnt, pm2_cnt, pm_tmr, gpe0, gpe1 = struct.unpack_from("<8I", fadt, 56)
    assert (pm1a_evt, pm1a_cnt, pm_tmr) == (0x600, 0x604, 0x608)
    assert (pm1b_evt, pm1b_cnt, pm2_cnt, gpe0, gpe1) == (0, 0, 0, 0, 0)
    assert tuple(fadt[88:92]) == (4, 2, 0, 4)  # PM1_EVT_LEN, PM1_CNT_LEN, PM2_CNT_LEN, PM_TMR_LEN
    lvl2, lvl3 = struct.unpack_from("<HH", fadt, 96)
    assert lvl2 > 100 and lvl3 > 1000  # no C2, no C3
    flags = struct.unpack_from("<I", fadt, 112)[0]
    assert flags & F.FADT_WBINVD and flags & F.FADT_PROC_C1
    assert not flags & (1 << 8)  # TMR_VAL_EXT clear: a 24-bit PM timer

    # FACS: 64-byte aligned, no checksum.
    assert facs_address % 64 == 0
    sig, length = struct.unpack_from("<4sI", ram, facs_address)
    assert sig == b"FACS" and length == 64

    # DSDT: header plus Name(_S5_, Package(){0, 0}).
    dsdt, dsdt_revision = sdt(ram, dsdt_address, b"DSDT")
    assert dsdt_revision == 1
    aml = dsdt[36:]
    assert aml == bytes([0x08]) + b"_S5_" + bytes([0x12, 0x04, 0x02, 0x00, 0x00])
    # SLP_TYP for S5, as an OS reads it: the first package element.
    name_at = aml.index(b"_S5_")
    assert aml[name_at - 1] == 0x08 and aml[name_at + 4] == 0x12
    package_length, count = aml[name_at + 5], aml[name_at + 6]
    assert count == 2 and package_length == 1 + 1 + count
    assert aml[name_at + 7] == 0x00  # ZeroOp: SLP_TYPa = 0


def test_nothing_overlaps_and_everything_is_in_the_bios_area() -> None:
    chunks = sorted(build_bios_tables())
    for (at, data), (next_at, _) in zip(chunks, chunks[1:]):
        assert at + len(data) <= next_at
    for at, data in chunks:
        assert 0xE0000 <= at and at + len(data) <= 0x100000
    with pytest.raises(ValueError):
        F.check_no_overlap([(0xE0000, bytes(16)), (0xE0008, bytes(4))])


def test_acpi_parameters() -> None:
    chunks = build_acpi_tables(0xE8000, rsdp_address=0xFFF00, pm_base=0xB000, sci_irq=11)
    ram = place(chunks)
    assert find_rsdp(ram) == 0xFFF00
    tables = follow_rsdt(ram)
    assert all(0xE8000 <= address < 0xE9000 for address in tables.values())
    fadt, _ = sdt(ram, tables[b"FACP"], b"FACP")
    assert struct.unpack_from("<H", fadt, 46)[0] == 11
    assert struct.unpack_from("<I", fadt, 56)[0] == 0xB000
    with pytest.raises(ValueError):
        build_acpi_tables(rsdp_address=0xF0008)
    with pytest.raises(ValueError):
        build_acpi_tables(0xE0010)


def test_builders_are_pure() -> None:
    assert build_bios_tables() == build_bios_tables()
    for at, data in build_bios_tables():
        assert isinstance(at, int) and isinstance(data, bytes)
