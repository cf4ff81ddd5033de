"""The firmware tables a PC BIOS leaves in memory for the OS: MP tables (MP spec 1.4) and ACPI 1.0.

There is no BIOS: these functions build the tables as bytes, each with the
guest-physical address it belongs at, and the machine copies them into RAM.
They are pure: nothing here touches memory or devices. Each builder returns a
list of (address, bytes) chunks; `build_bios_tables()` returns both sets and
checks that no two chunks overlap.

Default layout (every address can be moved through the parameters):

    0xE0000  RSDT       36 + 4 per table: the FADT and the MADT
    0xE0040  FADT       116 bytes, revision 1 (ACPI 1.0): PIIX4 PM block at 0x600
    0xE0100  FACS       64 bytes, 64-byte aligned, no checksum
    0xE0140  MADT       local APIC, IOAPIC, two overrides, a LINT1 NMI
    0xE0200  DSDT       header + Name(_S5_, Package(){0, 0})
    0xF0000  MP floating pointer structure "_MP_", 16 bytes
    0xF0010  MP configuration table "PCMP", at most 0x3F0 bytes
    0xF0400  RSDP "RSD PTR ", revision 0, 20 bytes

An OS finds the MP floating pointer and the RSDP by scanning 0xF0000-0xFFFFF
(and 0xE0000-0xFFFFF for the RSDP) on 16-byte boundaries for the signature
and a valid checksum; everything else is reached through pointers.

What the tables describe: one processor (the BSP, local APIC ID 0, version
0x14) with its local APIC at 0xFEE00000; one I/O APIC (ID 1, version 0x11, 24
pins) at 0xFEC00000; a PCI bus 0 and an ISA bus; the ISA IRQs wired to I/O
APIC pins as on every PC chipset (IRQ0, the PIT, on pin 2; the 8259A's INTR
on pin 0 as ExtINT; IRQ2 is the cascade and not connected; the rest
identity); LINT0 as ExtINT (virtual wire) and LINT1 as NMI; and the ACPI
fixed hardware of a PIIX4 at I/O 0x600 with its SCI on IRQ 9, level
triggered, active high. ACPI mode is already on (SMI_CMD is 0).
"""

from __future__ import annotations

import struct

# --- Default addresses. ---
ACPI_TABLES_BASE = 0xE0000  # RSDT, FADT, FACS, MADT and DSDT, at the offsets below
RSDT_OFFSET = 0x000
FADT_OFFSET = 0x040
FACS_OFFSET = 0x100  # must be 64-byte aligned
MADT_OFFSET = 0x140
DSDT_OFFSET = 0x200
ACPI_TABLES_SIZE = 0x1000  # the DSDT may run to the end of this page
MP_FLOATING_ADDRESS = 0xF0000  # the MP floating pointer structure
MP_CONFIG_OFFSET = 0x10  # the configuration table follows it
MP_AREA_SIZE = 0x400  # floating pointer and configuration table together
RSDP_ADDRESS = 0xF0400  # after the MP area

BIOS_AREA = (0xF0000, 0x100000)  # where the MP floating pointer may be (BIOS ROM)
RSDP_AREA = (0xE0000, 0x100000)  # where an OS scans for the RSDP
LAPIC_ADDRESS = 0xFEE00000
IOAPIC_ADDRESS = 0xFEC00000

# --- MP spec 1.4. ---
MP_SIGNATURE = b"_MP_"
MP_FLOATING_SIZE = 16  # one paragraph
MP_SPEC_REV = 4  # 1.4
MP_CONFIG_SIGNATURE = b"PCMP"
MP_CONFIG_HEADER_SIZE = 44
MP_FEATURE2_IMCRP = 0x80  # IMCR present (PIC mode); clear: virtual wire mode

MP_PROCESSOR = 0  # entry types, in the order the table lists them
MP_BUS = 1
MP_IOAPIC = 2
MP_IO_INTERRUPT = 3
MP_LOCAL_INTERRUPT = 4
MP_PROCESSOR_SIZE = 20  # all other base entries are 8 bytes
MP_ENTRY_SIZE = 8

MP_CPU_ENABLED = 0x01  # processor entry flags
MP_CPU_BSP = 0x02
MP_IOAPIC_ENABLED = 0x01

MP_INT = 0  # interrupt types: vectored, from the APIC's redirection entry
MP_NMI = 1
MP_SMI = 2
MP_EXTINT = 3  # vectored, the 8259A supplies the vector

MP_POLARITY_HIGH = 0x1  # interrupt flags, bits 0-1 (0: conforms to the bus)
MP_POLARITY_LOW = 0x3
MP_TRIGGER_EDGE = 0x1 << 2  # bits 2-3 (0: conforms to the bus)
MP_TRIGGER_LEVEL = 0x3 << 2

MP_ALL_LOCAL_APICS = 0xFF  # local interrupt destination: every processor
PCI_BUS_ID = 0  # MP bus IDs: PCI buses keep their bus numbers, ISA comes after
ISA_BUS_ID = 1
BUS_TYPE_PCI = b"PCI   "
BUS_TYPE_ISA = b"ISA   "

# CPUID.1:EDX feature flags, for the processor entry.
CPU_FPU = 1 << 0
CPU_VME = 1 << 1
CPU_DE = 1 << 2
CPU_PSE = 1 << 3
CPU_TSC = 1 << 4
CPU_MSR = 1 << 5
CPU_PAE = 1 << 6
CPU_MCE = 1 << 7
CPU_CX8 = 1 << 8
CPU_APIC = 1 << 9
CPU_SEP = 1 << 11
CPU_MTRR = 1 << 12
CPU_PGE = 1 << 13
CPU_CMOV = 1 << 15
DEFAULT_CPU_FEATURES = CPU_FPU | CPU_TSC | CPU_CX8 | CPU_APIC
DEFAULT_CPU_SIGNATURE = (6, 13, 8)  # family, model, stepping

ISA_IRQS = 16
PIT_IRQ = 0  # ISA IRQ0, the PIT: on I/O APIC pin 2 on every PC
PIT_PIN = 2
CASCADE_IRQ = 2  # the slave 8259A's cascade: no ISA device raises it
EXTINT_PIN = 0  # the 8259A's INTR output
SCI_IRQ = 9  # the PIIX4's ACPI SCI

# --- ACPI 1.0. ---
RSDP_SIGNATURE = b"RSD PTR "
RSDP_SIZE = 20  # revision 0
SDT_HEADER_SIZE = 36
OEM_ID = b"BTVMM "  # six bytes
OEM_TABLE_ID = b"BTVMM-PC"  # eight bytes
OEM_REVISION = 1
CREATOR_ID = b"BTVM"
CREATOR_REVISION = 1

MADT_PCAT_COMPAT = 0x1  # the machine also has dual 8259As
MADT_LOCAL_APIC = 0  # MADT entry types
MADT_IOAPIC = 1
MADT_SOURCE_OVERRIDE = 2
MADT_LAPIC_NMI = 4
MADT_LAPIC_ENABLED = 0x1
MADT_ALL_PROCESSORS = 0xFF  # the NMI entry's ACPI processor ID for every processor
MADT_BUS_ISA = 0  # interrupt source override bus: ISA

FADT_SIZE = 116  # revision 1
FADT_REVISION = 1
FADT_WBINVD = 1 << 0  # WBINVD works to flush caches
FADT_PROC_C1 = 1 << 2  # C1 (HLT) works on all processors
FADT_PWR_BUTTON = 1 << 4  # no fixed-feature power button
FADT_SLP_BUTTON = 1 << 5  # no fixed-feature sleep button
FADT_FLAGS = FADT_WBINVD | FADT_PROC_C1 | FADT_PWR_BUTTON | FADT_SLP_BUTTON
FADT_INT_MODEL_APIC = 1  # ACPI 1.0 INT_MODEL: multiple APIC
C2_UNSUPPORTED = 101  # P_LVL2_LAT above 100 us: no C2
C3_UNSUPPORTED = 1001  # P_LVL3_LAT above 1000 us: no C3
PM_BASE = 0x600  # the PIIX4 PM block of devices/acpi_pm.py
PM1_EVT_LEN = 4  # PM1a_EVT_BLK: status and enable
PM1_CNT_LEN = 2  # PM1a_CNT_BLK at PM_BASE + 4
PM_TMR_LEN = 4  # PM_TMR_BLK at PM_BASE + 8
FACS_SIZE = 64
FACS_ALIGN = 64

# AML (ACPI 1.0 ch. 16).
AML_NAME = 0x08  # NameOp
AML_PACKAGE = 0x12  # PackageOp
AML_ZERO = 0x00  # ZeroOp
DSDT_REVISION = 1  # integers are 32 bits

Chunk = tuple[int, bytes]


def checksum(data: bytes) -> int:
    """The byte that makes `data` sum to zero modulo 256."""
    return -sum(data) & 0xFF


# --- MP tables. ---


def build_mp_tables(
    base: int = MP_FLOATING_ADDRESS,
    *,
    config_address: int | None = None,
    apic_id: int = 0,
    apic_version: int = 0x14,
    cpu_signature: tuple[int, int, int] = DEFAULT_CPU_SIGNATURE,
    cpu_features: int = DEFAULT_CPU_FEATURES,
    lapic_address: int = LAPIC_ADDRESS,
    ioapic_id: int = 1,
    ioapic_version: int = 0x11,
    ioapic_address: int = IOAPIC_ADDRESS,
    sci_irq: int | None = SCI_IRQ,
    oem_id: bytes = b"BTVMM",
    product_id: bytes = b"BT_VMM PC",
) -> list[Chunk]:
    """The MP floating pointer at `base` and the configuration table (after it by default)."""
    if base % 16 or not BIOS_AREA[0] <= base <= BIOS_AREA[1] - MP_FLOATING_SIZE:
        raise ValueError(f"MP floating pointer at {base:#x}: not a paragraph in 0xF0000-0xFFFFF")
    if config_address is None:
        config_address = base + MP_CONFIG_OFFSET

    entries = [_mp_processor(apic_id, apic_version, cpu_signature, cpu_features)]
    entries.append(struct.pack("<BB6s", MP_BUS, PCI_BUS_ID, BUS_TYPE_PCI))
    entries.append(struct.pack("<BB6s", MP_BUS, ISA_BUS_ID, BUS_TYPE_ISA))
    entries.append(struct.pack("<BBBBI", MP_IOAPIC, ioapic_id, ioapic_version, MP_IOAPIC_ENABLED, ioapic_address))

    # I/O interrupt assignments: ISA IRQs to I/O APIC pins.
    def io_interrupt(kind: int, flags: int, irq: int, pin: int) -> bytes:
        return struct.pack("<BBHBBBB", MP_IO_INTERRUPT, kind, flags, ISA_BUS_ID, irq, ioapic_id, pin)

    entries.append(io_interrupt(MP_EXTINT, 0, 0, EXTINT_PIN))
    for irq in range(ISA_IRQS):
        if irq == CASCADE_IRQ:
            continue
        pin = PIT_PIN if irq == PIT_IRQ else irq
        flags = MP_POLARITY_HIGH | MP_TRIGGER_LEVEL if irq == sci_irq else 0
        entries.append(io_interrupt(MP_INT, flags, irq, pin))

    # Local interrupt assignments: virtual wire on LINT0, NMI on LINT1.
    for kind, lint in ((MP_EXTINT, 0), (MP_NMI, 1)):
        entries.append(struct.pack("<BBHBBBB", MP_LOCAL_INTERRUPT, kind, 0, ISA_BUS_ID, 0, MP_ALL_LOCAL_APICS, lint))

    body = b"".join(entries)
    length = MP_CONFIG_HEADER_SIZE + len(body)
    header = struct.pack(
        "<4sHBB8s12sIHHIHBB",
        MP_CONFIG_SIGNATURE,
        length,
        MP_SPEC_REV,
        0,  # checksum, filled in below
        oem_id.ljust(8)[:8],
        product_id.ljust(12)[:12],
        0,  # no OEM table
        0,
        len(entries),
        lapic_address,
        0,  # no extended entries
        0,
        0,
    )
    table = bytearray(header + body)
    table[7] = checksum(table)

    floating = bytearray(
        struct.pack(
            "<4sIBBBB4s",
            MP_SIGNATURE,
            config_address,
            MP_FLOATING_SIZE // 16,
            MP_SPEC_REV,
            0,  # checksum, filled in below
            0,  # feature 1: 0, a configuration table is present
            bytes(4),  # feature 2: IMCRP clear (virtual wire mode); 3-5 reserved
        )
    )
    floating[10] = checksum(floating)
    if config_address == base + MP_CONFIG_OFFSET and len(table) > MP_AREA_SIZE - MP_CONFIG_OFFSET:
        raise ValueError("MP configuration table outgrew its area")
    return [(base, bytes(floating)), (config_address, bytes(table))]


def _mp_processor(apic_id: int, version: int, signature: tuple[int, int, int], features: int) -> bytes:
    family, model, stepping = signature
    cpu_signature = (family & 0xF) << 8 | (model & 0xF) << 4 | stepping & 0xF
    flags = MP_CPU_ENABLED | MP_CPU_BSP
    return struct.pack("<BBBBII8x", MP_PROCESSOR, apic_id, version, flags, cpu_signature, features)


# --- ACPI tables. ---


def build_acpi_tables(
    base: int = ACPI_TABLES_BASE,
    *,
    rsdp_address: int = RSDP_ADDRESS,
    apic_id: int = 0,
    lapic_address: int = LAPIC_ADDRESS,
    ioapic_id: int = 1,
    ioapic_address: int = IOAPIC_ADDRESS,
    pm_base: int = PM_BASE,
    sci_irq: int = SCI_IRQ,
    oem_id: bytes = OEM_ID,
) -> list[Chunk]:
    """RSDP at `rsdp_address`; RSDT, FADT, FACS, MADT and DSDT from `base` at the documented offsets."""
    if rsdp_address % 16 or not RSDP_AREA[0] <= rsdp_address <= RSDP_AREA[1] - RSDP_SIZE:
        raise ValueError(f"RSDP at {rsdp_address:#x}: not a paragraph in 0xE0000-0xFFFFF")
    if base % FACS_ALIGN:
        raise ValueError(f"ACPI tables at {base:#x}: the base must be 64-byte aligned")
    oem_id = oem_id.ljust(6)[:6]
    rsdt_at = base + RSDT_OFFSET
    fadt_at = base + FADT_OFFSET
    facs_at = base + FACS_OFFSET
    madt_at = base + MADT_OFFSET
    dsdt_at = base + DSDT_OFFSET

    dsdt = _sdt(b"DSDT", DSDT_REVISION, _dsdt_aml(), oem_id)
    facs = _facs()
    madt = _sdt(b"APIC", 1, _madt_body(apic_id, lapic_address, ioapic_id, ioapic_address, sci_irq), oem_id)
    fadt = _sdt(b"FACP", FADT_REVISION, _fadt_body(facs_at, dsdt_at, pm_base, sci_irq), oem_id)
    rsdt = _sdt(b"RSDT", 1, struct.pack("<II", fadt_at, madt_at), oem_id)

    rsdp = bytearray(struct.pack("<8sB6sBI", RSDP_SIGNATURE, 0, oem_id, 0, rsdt_at))
    rsdp[8] = checksum(rsdp)

    chunks = [
        (rsdt_at, rsdt),
        (fadt_at, fadt),
        (facs_at, facs),
        (madt_at, madt),
        (dsdt_at, dsdt),
    ]
    # Each table must fit before the next one's slot.
    for (at, data), (next_at, _) in zip(chunks, chunks[1:]):
        if at + len(data) > next_at:
            raise ValueError(f"ACPI table {data[:4]!r} at {at:#x} runs into the next one at {next_at:#x}")
    if dsdt_at + len(dsdt) > base + ACPI_TABLES_SIZE:
        raise ValueError("the DSDT runs past the ACPI table area")
    return [(rsdp_address, bytes(rsdp)), *chunks]


def _sdt(signature: bytes, revision: int, body: bytes, oem_id: bytes) -> bytes:
    """A system description table: the 36-byte header, then `body`, checksummed."""
    table = bytearray(
        struct.pack(
            "<4sIBB6s8sI4sI",
            signature,
            SDT_HEADER_SIZE + len(body),
            revision,
            0,  # checksum, filled in below
            oem_id,
            OEM_TABLE_ID,
            OEM_REVISION,
            CREATOR_ID,
            CREATOR_REVISION,
        )
        + body
    )
    table[9] = checksum(table)
    return bytes(table)


def _madt_body(apic_id: int, lapic_address: int, ioapic_id: int, ioapic_address: int, sci_irq: int) -> bytes:
    parts = [struct.pack("<II", lapic_address, MADT_PCAT_COMPAT)]
    # Processor Local APIC: ACPI processor 0 is this APIC, enabled.
    parts.append(struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, 0, apic_id, MADT_LAPIC_ENABLED))
    # I/O APIC: its pins are GSIs 0-23.
    parts.append(struct.pack("<BBBBII", MADT_IOAPIC, 12, ioapic_id, 0, ioapic_address, 0))
    # Interrupt source overrides: the PIT on pin 2 (flags conform to ISA), the SCI level/high.
    parts.append(struct.pack("<BBBBIH", MADT_SOURCE_OVERRIDE, 10, MADT_BUS_ISA, PIT_IRQ, PIT_PIN, 0))
    sci_flags = MP_POLARITY_HIGH | MP_TRIGGER_LEVEL
    parts.append(struct.pack("<BBBBIH", MADT_SOURCE_OVERRIDE, 10, MADT_BUS_ISA, sci_irq, sci_irq, sci_flags))
    # Local APIC NMI: LINT1 of every processor, flags conforming.
    parts.append(struct.pack("<BBBHB", MADT_LAPIC_NMI, 6, MADT_ALL_PROCESSORS, 0, 1))
    return b"".join(parts)


def _fadt_body(facs_at: int, dsdt_at: int, pm_base: int, sci_irq: int) -> bytes:
    body = struct.pack(
        "<IIBBHIBBBBIIIIIIIIBBBBBBBBHHHHBBBBBHBI",
        facs_at,  # FIRMWARE_CTRL
        dsdt_at,  # DSDT
        FADT_INT_MODEL_APIC,  # INT_MODEL
        0,  # reserved (Preferred_PM_Profile in ACPI 2.0)
        sci_irq,  # SCI_INT
        0,  # SMI_CMD: none, ACPI mode is always on
        0,  # ACPI_ENABLE
        0,  # ACPI_DISABLE
        0,  # S4BIOS_REQ
        0,  # reserved (PSTATE_CNT)
        pm_base,  # PM1a_EVT_BLK
        0,  # PM1b_EVT_BLK
        pm_base + 4,  # PM1a_CNT_BLK
        0,  # PM1b_CNT_BLK
        0,  # PM2_CNT_BLK
        pm_base + 8,  # PM_TMR_BLK
        0,  # GPE0_BLK
        0,  # GPE1_BLK
        PM1_EVT_LEN,
        PM1_CNT_LEN,
        0,  # PM2_CNT_LEN
        PM_TMR_LEN,
        0,  # GPE0_BLK_LEN
        0,  # GPE1_BLK_LEN
        0,  # GPE1_BASE
        0,  # reserved (CST_CNT)
        C2_UNSUPPORTED,  # P_LVL2_LAT
        C3_UNSUPPORTED,  # P_LVL3_LAT
        0,  # FLUSH_SIZE
        0,  # FLUSH_STRIDE
        0,  # DUTY_OFFSET
        0,  # DUTY_WIDTH
        0,  # DAY_ALRM: no RTC alarm fields
        0,  # MON_ALRM
        0,  # CENTURY: no century byte in CMOS
        0,  # reserved (IAPC_BOOT_ARCH in ACPI 2.0)
        0,  # reserved
        FADT_FLAGS,
    )
    assert SDT_HEADER_SIZE + len(body) == FADT_SIZE
    return body


def _facs() -> bytes:
    """The firmware ACPI control structure: no waking vector, global lock free."""
    return struct.pack("<4sIIIII40x", b"FACS", FACS_SIZE, 0, 0, 0, 0)


def _dsdt_aml() -> bytes:
    """Name(_S5_, Package(){0, 0}): S5 is SLP_TYP 0 for PM1a and PM1b."""
    elements = bytes([AML_ZERO, AML_ZERO])
    package_body = bytes([len(elements)]) + elements  # NumElements, then the elements
    package = bytes([AML_PACKAGE, 1 + len(package_body)]) + package_body  # a one-byte PkgLength
    return bytes([AML_NAME]) + b"_S5_" + package


# --- Both. ---


def build_bios_tables(
    mp_base: int = MP_FLOATING_ADDRESS,
    acpi_base: int = ACPI_TABLES_BASE,
    rsdp_address: int = RSDP_ADDRESS,
    *,
    cpu_features: int = DEFAULT_CPU_FEATURES,
    cpu_signature: tuple[int, int, int] = DEFAULT_CPU_SIGNATURE,
) -> list[Chunk]:
    """The MP and ACPI tables of the default PC, checked not to overlap."""
    chunks = build_mp_tables(mp_base, cpu_features=cpu_features, cpu_signature=cpu_signature)
    chunks += build_acpi_tables(acpi_base, rsdp_address=rsdp_address)
    check_no_overlap(chunks)
    return chunks


def check_no_overlap(chunks: list[Chunk]) -> None:
    """Raise ValueError if any two chunks share a byte."""
    ordered = sorted(chunks)
    for (at, data), (next_at, _) in zip(ordered, ordered[1:]):
        if at + len(data) > next_at:
            raise ValueError(f"firmware chunk at {at:#x} (+{len(data):#x}) overlaps the one at {next_at:#x}")
