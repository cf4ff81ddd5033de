"""PCI configuration space through configuration mechanism #1, and the functions of an i440FX/PIIX3 PC.

Mechanism #1 (PCI Local Bus spec 3.0, 3.2.2.3.2): the guest writes a 32-bit
CONFIG_ADDRESS to port 0xCF8 naming bus, device, function and dword register,
with bit 31 set, then moves data through CONFIG_DATA at 0xCFC-0xCFF; a byte or
word access at 0xCFC+n reaches register byte n. Only 32-bit accesses to 0xCF8
are CONFIG_ADDRESS: narrower ones go to whatever else decodes those ports on the
ISA side (the PIIX3's reset control register at 0xCF9), so the host claims only
port 0xCF8 itself and the four data ports.

Each function's 256-byte configuration space is a byte array with a per-byte
mask of writable bits and one of write-one-to-clear bits. BAR sizing falls out
of the masks: the address bits below a BAR's size are not writable, so writing
all ones reads back the size mask with the BAR's type bits. A function that is
not there reads as all ones (vendor ID 0xFFFF), which is how a guest's bus scan
learns a slot is empty; those accesses are counted.

The PC's functions are those of a small i440FX machine: the host bridge at
00:00.0 and the PIIX3 ISA bridge and IDE controller at 00:01.0 and 00:01.1.
Their chipset registers (PAM, PIRQ routing, IDE timing) hold what is written
and have no effect: the BIOS area is plain RAM, and there is no PCI interrupt
routing and no IDE drive.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

# --- Ports. ---
CONFIG_ADDRESS = 0xCF8  # 32-bit accesses only: enable, bus, device, function, register
CONFIG_DATA = 0xCFC  # 0xCFC-0xCFF: the selected dword, by byte, word or dword
PORTS = ((CONFIG_ADDRESS, 1), (CONFIG_DATA, 4))

# --- CONFIG_ADDRESS fields. ---
ADDR_ENABLE = 0x80000000  # bit 31: CONFIG_DATA accesses go to configuration space
ADDR_BUS_SHIFT = 16  # bits 16-23: bus number
ADDR_DEVICE_SHIFT = 11  # bits 11-15: device number
ADDR_FUNCTION_SHIFT = 8  # bits 8-10: function number
ADDR_REGISTER = 0xFC  # bits 2-7: dword register; bits 0-1 read as zero
ADDR_WRITABLE = ADDR_ENABLE | 0x00FFFFFC  # bits 24-30 are reserved and read as zero

DEVICES_PER_BUS = 32
FUNCTIONS_PER_DEVICE = 8
CONFIG_SPACE_SIZE = 256

# --- Type 0 configuration header (offsets). ---
VENDOR_ID = 0x00  # u16, read only
DEVICE_ID = 0x02  # u16, read only
COMMAND = 0x04  # u16
STATUS = 0x06  # u16, error bits write-one-to-clear
REVISION_ID = 0x08  # u8, read only
CLASS_CODE = 0x09  # u24, read only: programming interface, subclass, base class
CACHE_LINE_SIZE = 0x0C  # u8
LATENCY_TIMER = 0x0D  # u8
HEADER_TYPE = 0x0E  # u8, read only: layout in bits 0-6, multifunction in bit 7
BIST = 0x0F  # u8: no built-in self test (reads 0)
BAR0 = 0x10  # six u32 base address registers, 0x10-0x24
BAR_COUNT = 6
SUBSYSTEM_VENDOR_ID = 0x2C  # u16, read only
SUBSYSTEM_ID = 0x2E  # u16, read only
EXPANSION_ROM = 0x30  # u32: no option ROM (reads 0)
CAPABILITIES = 0x34  # u8: no capability list (reads 0)
INTERRUPT_LINE = 0x3C  # u8: scratch for the IRQ the OS routed
INTERRUPT_PIN = 0x3D  # u8, read only: INTA#-INTD# (1-4) or none (0)
HEADER_SIZE = 0x40  # the rest is device specific

# --- COMMAND bits. ---
CMD_IO = 0x0001  # respond to I/O space accesses
CMD_MEMORY = 0x0002  # respond to memory space accesses
CMD_BUS_MASTER = 0x0004  # may initiate bus transactions (DMA)
CMD_PARITY = 0x0040  # parity error response
CMD_SERR = 0x0100  # SERR# enable
CMD_INTX_DISABLE = 0x0400  # INTx# emulation disable
CMD_WRITABLE = CMD_IO | CMD_MEMORY | CMD_BUS_MASTER | CMD_PARITY | CMD_SERR | CMD_INTX_DISABLE

# --- STATUS bits. ---
STATUS_FAST_B2B = 0x0080  # fast back-to-back capable
STATUS_DEVSEL_MEDIUM = 0x0200  # DEVSEL# timing: medium
STATUS_ERRORS = 0xF900  # parity, target/master abort, SERR, detected parity: write 1 to clear

# --- HEADER_TYPE. ---
HEADER_MULTIFUNCTION = 0x80  # the device has functions beyond 0

# --- BAR bits. ---
BAR_IO = 0x1  # bit 0: I/O space BAR
BAR_MEM_PREFETCH = 0x8  # memory BAR: prefetchable
BAR_IO_ADDRESS = 0x0000FFFC  # an I/O BAR on a 64 KiB port space: upper 16 bits read 0
BAR_MEM_ADDRESS = 0xFFFFFFF0  # a 32-bit memory BAR anywhere below 4 GiB
ALL_ONES = 0xFFFFFFFF


class PciFunction:
    """One function's configuration space: values, writable bits, write-one-to-clear bits."""

    def __init__(
        self,
        vendor_id: int,
        device_id: int,
        class_code: int,
        revision: int = 0,
        header_type: int = 0,
        subsystem_vendor_id: int = 0,
        subsystem_id: int = 0,
        interrupt_pin: int = 0,
        command_writable: int = CMD_WRITABLE,
        status: int = 0,
    ) -> None:
        self.config = bytearray(CONFIG_SPACE_SIZE)
        self.wmask = bytearray(CONFIG_SPACE_SIZE)  # writable bits of each byte
        self.w1cmask = bytearray(CONFIG_SPACE_SIZE)  # write-one-to-clear bits of each byte
        self.bar_sizes: dict[int, int] = {}  # BAR index -> size in bytes

        self._put(VENDOR_ID, 2, vendor_id)
        self._put(DEVICE_ID, 2, device_id)
        self._put(REVISION_ID, 1, revision)
        self._put(CLASS_CODE, 3, class_code)
        self._put(HEADER_TYPE, 1, header_type)
        self._put(SUBSYSTEM_VENDOR_ID, 2, subsystem_vendor_id)
        self._put(SUBSYSTEM_ID, 2, subsystem_id)
        self._put(INTERRUPT_PIN, 1, interrupt_pin)
        self._put(STATUS, 2, status)
        self.set_writable(COMMAND, 2, command_writable)
        self.set_writable(STATUS, 2, 0, w1c=STATUS_ERRORS)
        self.set_writable(CACHE_LINE_SIZE, 1, 0xFF)
        self.set_writable(LATENCY_TIMER, 1, 0xFF)
        self.set_writable(INTERRUPT_LINE, 1, 0xFF)

        self._initial = bytes(self.config)  # power-on contents, restored by reset()

        # Counters.
        self.reads = 0  # configuration reads served
        self.writes = 0  # configuration writes served

    # --- Building a function. ---

    def set_writable(self, offset: int, size: int, mask: int, w1c: int = 0) -> None:
        """Make the bits of `mask` in the `size`-byte field at `offset` writable (and `w1c` write-1-to-clear)."""
        for i in range(size):
            self.wmask[offset + i] = mask >> (8 * i) & 0xFF
            self.w1cmask[offset + i] = w1c >> (8 * i) & 0xFF

    def add_bar(self, index: int, size: int, io: bool, prefetchable: bool = False) -> None:
        """Declare BAR `index` decoding `size` bytes (a power of two) of I/O or 32-bit memory space."""
        if not 0 <= index < BAR_COUNT:
            raise ValueError(f"BAR {index} does not exist")
        if size & (size - 1) or size < (4 if io else 16):
            raise ValueError(f"BAR size {size:#x} is not a power of two of the minimum size")
        offset = BAR0 + 4 * index
        if io:
            type_bits, address_bits = BAR_IO, BAR_IO_ADDRESS
        else:
            type_bits, address_bits = (BAR_MEM_PREFETCH if prefetchable else 0), BAR_MEM_ADDRESS
        self._put(offset, 4, type_bits)
        self.set_writable(offset, 4, address_bits & ~(size - 1))
        self.bar_sizes[index] = size
        self._initial = bytes(self.config)

    def freeze(self) -> None:
        """Take the current contents as the power-on state (after setting device-specific defaults)."""
        self._initial = bytes(self.config)

    def put(self, offset: int, size: int, value: int) -> None:
        """Set a field regardless of the writable masks (the device's own side)."""
        self._put(offset, size, value)

    # --- Looking at a function. ---

    def get(self, offset: int, size: int) -> int:
        """A field's value (the device's own side; not counted as a configuration read)."""
        return int.from_bytes(self.config[offset : offset + size], "little")

    @property
    def vendor_id(self) -> int:
        return self.get(VENDOR_ID, 2)

    @property
    def device_id(self) -> int:
        return self.get(DEVICE_ID, 2)

    @property
    def class_code(self) -> int:
        return self.get(CLASS_CODE, 3)

    @property
    def command(self) -> int:
        return self.get(COMMAND, 2)

    def bar_address(self, index: int) -> int:
        """The base address the OS assigned to BAR `index` (type bits stripped)."""
        value = self.get(BAR0 + 4 * index, 4)
        return value & ~3 if value & BAR_IO else value & ~0xF

    # --- Configuration cycles. ---

    def read(self, offset: int, size: int) -> int:
        self.reads += 1
        return self.get(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes += 1
        for i in range(size):
            at = offset + i
            byte = value >> (8 * i) & 0xFF
            wmask = self.wmask[at]
            old = self.config[at]
            new = old & ~wmask | byte & wmask
            new &= ~(byte & self.w1cmask[at])
            self.config[at] = new

    def reset(self) -> None:
        """RST#: the configuration space returns to its power-on contents."""
        self.config[:] = self._initial

    def _put(self, offset: int, size: int, value: int) -> None:
        self.config[offset : offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


class PciHost:
    """Configuration mechanism #1 in front of bus 0."""

    def __init__(self) -> None:
        self.functions: dict[tuple[int, int, int], PciFunction] = {}
        self.config_address = 0

        # Counters.
        self.absent_reads: Counter[tuple[int, int, int]] = Counter()  # by (bus, device, function)
        self.absent_writes: Counter[tuple[int, int, int]] = Counter()
        self.disabled_data_accesses = 0  # CONFIG_DATA accesses with the enable bit clear
        self.narrow_address_accesses = 0  # byte/word accesses to 0xCF8 (not CONFIG_ADDRESS)

    def add(self, bus: int, device: int, function: int, fn: PciFunction) -> PciFunction:
        """Put `fn` at bus:device.function."""
        if not (0 <= bus < 256 and 0 <= device < DEVICES_PER_BUS and 0 <= function < FUNCTIONS_PER_DEVICE):
            raise ValueError(f"no such PCI address {bus:02x}:{device:02x}.{function}")
        key = (bus, device, function)
        if key in self.functions:
            raise ValueError(f"PCI function {bus:02x}:{device:02x}.{function} already present")
        self.functions[key] = fn
        return fn

    def get(self, bus: int, device: int, function: int) -> PciFunction | None:
        return self.functions.get((bus, device, function))

    def reset(self) -> None:
        self.config_address = 0
        for fn in self.functions.values():
            fn.reset()

    # --- Snapshot: the address latch and each function's configuration space. ---

    def state(self) -> dict:
        return {"config_address": self.config_address,
                "functions": [[*key, fn.config.hex()] for key, fn in sorted(self.functions.items())]}

    def restore(self, state: dict) -> None:
        self.config_address = state["config_address"]
        for bus, device, function, config in state["functions"]:
            self.functions[(bus, device, function)].config[:] = bytes.fromhex(config)

    # --- Guest side. ---

    def io_read(self, port: int, size: int) -> int:
        if port == CONFIG_ADDRESS:
            if size != 4:
                # Not a configuration cycle: an ISA-side register nobody decodes here.
                self.narrow_address_accesses += 1
                return (1 << (8 * size)) - 1
            # The bus probe checks that CONFIG_ADDRESS holds what it wrote.
            return self.config_address
        return self._data_read(port - CONFIG_DATA, size)

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == CONFIG_ADDRESS:
            if size != 4:
                self.narrow_address_accesses += 1
                return
            # Selecting bus, device, function and register for the next data access.
            self.config_address = value & ADDR_WRITABLE
            return
        self._data_write(port - CONFIG_DATA, size, value)

    # --- Configuration cycles. ---

    def _target(self, byte: int) -> tuple[tuple[int, int, int], int] | None:
        """The function address and config offset of a CONFIG_DATA access, or None if disabled."""
        address = self.config_address
        if not address & ADDR_ENABLE:
            self.disabled_data_accesses += 1
            return None
        key = (
            address >> ADDR_BUS_SHIFT & 0xFF,
            address >> ADDR_DEVICE_SHIFT & 0x1F,
            address >> ADDR_FUNCTION_SHIFT & 0x7,
        )
        return key, (address & ADDR_REGISTER) + byte

    def _data_read(self, byte: int, size: int) -> int:
        size = min(size, 4 - byte)  # an access past 0xCFF is cut at the dword's end
        target = self._target(byte)
        if target is None:
            return (1 << (8 * size)) - 1
        key, offset = target
        fn = self.functions.get(key)
        if fn is None:
            # Scanning for devices: an empty slot answers with a master abort, all ones.
            self.absent_reads[key] += 1
            return (1 << (8 * size)) - 1
        return fn.read(offset, size)

    def _data_write(self, byte: int, size: int, value: int) -> None:
        size = min(size, 4 - byte)
        target = self._target(byte)
        if target is None:
            return
        key, offset = target
        fn = self.functions.get(key)
        if fn is None:
            self.absent_writes[key] += 1
            return
        fn.write(offset, size, value)


# --- The i440FX/PIIX3 functions. ---

VENDOR_INTEL = 0x8086
I440FX_DEVICE = 0x1237  # 82441FX PCI and memory controller (PMC)
PIIX3_ISA_DEVICE = 0x7000  # 82371SB PIIX3 PCI-to-ISA bridge
PIIX3_IDE_DEVICE = 0x7010  # 82371SB PIIX3 IDE controller
CLASS_HOST_BRIDGE = 0x060000
CLASS_ISA_BRIDGE = 0x060100
CLASS_IDE_LEGACY = 0x010180  # IDE, both channels in ISA compatibility mode, bus-master capable
I440FX_REVISION = 0x02

# 82441FX device-specific registers (values held, no effect).
I440FX_PMCCFG = 0x50  # u16: PMC configuration
I440FX_DRB = 0x60  # u8 x 8: DRAM row boundaries
I440FX_PAM = 0x59  # u8 x 7: programmable attribute map for 0xC0000-0xFFFFF
I440FX_PAM_COUNT = 7
I440FX_SMRAM = 0x72  # u8: SMRAM space control

# PIIX3 ISA bridge registers (values held, no effect).
PIIX3_PIRQRC = 0x60  # u8 x 4: PIRQ[A-D]# route control; bit 7 set: not routed
PIIX3_PIRQ_DISABLED = 0x80
PIIX3_TOM = 0x69  # u8: top of memory
PIIX3_DEVRESB = 0x6A  # u8 x 2
PIIX3_APIC_CONFIG = 0x80  # u8: APIC base address relocation (default 0xFEC00000)

# PIIX3 IDE registers.
IDE_BMIBA = 4  # BAR4: bus-master IDE I/O base, 16 ports
IDE_BMIBA_SIZE = 16
IDE_TIMING = 0x40  # u16 x 2: IDETIM primary and secondary (values held)
IDE_SIDETIM = 0x44  # u8: slave IDE timing


@dataclass
class I440fx:
    host_bridge: PciFunction  # 00:00.0
    isa_bridge: PciFunction  # 00:01.0
    ide: PciFunction  # 00:01.1


def build_i440fx(pci: PciHost) -> I440fx:
    """Add the standard i440FX/PIIX3 functions to `pci`'s bus 0 and return them."""
    host = PciFunction(
        VENDOR_INTEL,
        I440FX_DEVICE,
        CLASS_HOST_BRIDGE,
        revision=I440FX_REVISION,
        command_writable=CMD_MEMORY | CMD_BUS_MASTER,
        status=STATUS_DEVSEL_MEDIUM,
    )
    host.put(COMMAND, 2, CMD_MEMORY | CMD_BUS_MASTER)  # the host bridge always forwards memory
    host.set_writable(I440FX_PMCCFG, 2, 0xFFFF)
    host.set_writable(I440FX_PAM, I440FX_PAM_COUNT, (1 << (8 * I440FX_PAM_COUNT)) - 1)
    host.set_writable(I440FX_DRB, 8, ALL_ONES | ALL_ONES << 32)
    host.set_writable(I440FX_SMRAM, 1, 0xFF)
    host.put(I440FX_SMRAM, 1, 0x02)  # compatible SMRAM at 0xA0000, closed
    host.freeze()

    isa = PciFunction(
        VENDOR_INTEL,
        PIIX3_ISA_DEVICE,
        CLASS_ISA_BRIDGE,
        header_type=HEADER_MULTIFUNCTION,
        command_writable=CMD_IO | CMD_MEMORY | CMD_BUS_MASTER,
        status=STATUS_DEVSEL_MEDIUM,
    )
    isa.put(COMMAND, 2, CMD_IO | CMD_MEMORY | CMD_BUS_MASTER)  # ISA always decodes (subtractive)
    isa.put(PIIX3_PIRQRC, 4, PIIX3_PIRQ_DISABLED * 0x01010101)
    isa.set_writable(PIIX3_PIRQRC, 4, 0x8F8F8F8F)  # bit 7 disable, bits 0-3 IRQ number
    isa.set_writable(PIIX3_TOM, 1, 0xFF)
    isa.set_writable(PIIX3_DEVRESB, 2, 0xFFFF)
    isa.set_writable(PIIX3_APIC_CONFIG, 1, 0x7F)
    isa.freeze()

    ide = PciFunction(
        VENDOR_INTEL,
        PIIX3_IDE_DEVICE,
        CLASS_IDE_LEGACY,
        command_writable=CMD_IO | CMD_BUS_MASTER,
        status=STATUS_FAST_B2B | STATUS_DEVSEL_MEDIUM,
    )
    # BARs 0-3 stay zero and read-only: the channels are at the ISA ports 0x1F0/0x170.
    ide.add_bar(IDE_BMIBA, IDE_BMIBA_SIZE, io=True)
    ide.set_writable(IDE_TIMING, 4, 0xFFFFFFFF)
    ide.set_writable(IDE_SIDETIM, 1, 0xFF)
    ide.freeze()

    pci.add(0, 0, 0, host)
    pci.add(0, 1, 0, isa)
    pci.add(0, 1, 1, ide)
    return I440fx(host_bridge=host, isa_bridge=isa, ide=ide)
