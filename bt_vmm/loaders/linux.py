"""The Linux/x86 boot protocol (Documentation/x86/boot.rst), 32-bit entry.

A bzImage is a real-mode setup part followed by the protected-mode kernel
(a self-decompressing stub). There is no BIOS here to run the setup part,
so the loader does what the protocol's "32-bit boot protocol" section asks of
a boot loader that enters the kernel in protected mode: it copies the setup
header out of the image into a zeroed `struct boot_params` (the zero page),
fills in the fields a BIOS-era setup would have (the e820 memory map), the
command line and initrd location, loads the protected-mode kernel at its
load address, and enters it at `code32_start` with ESI pointing at the zero
page, flat __BOOT_CS/__BOOT_DS segments from a GDT of its own, paging and
interrupts off.

Like the Multiboot loader it is pure: it returns a BootImage.

Physical memory plan:

    [0x06000, 0x06020)   the boot GDT: null, null, __BOOT_CS (0x10), __BOOT_DS (0x18)
    [0x07000, 0x08000)   boot_params (the zero page)
    [0x08000, ...)       the kernel command line
    [0x100000, ...)      the protected-mode kernel; it decompresses itself to its
                         preferred address (16 MiB for Debian's) and needs
                         init_size bytes there
    [.., mem_size)       the initrd, page aligned, as high as initrd_addr_max allows
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bt_vmm.errors import BadInput
from bt_vmm.loaders.elf import printable_name
from bt_vmm.loaders.multiboot import BootImage
from bt_vmm.machine import firmware
from bt_vmm.machine.layout import HIGH_MEM, MAX_GUEST_MEM, PAGE_SIZE, memory_map
from bt_vmm.vcpu.descriptors import FLAT_CODE, FLAT_DATA

# The setup header lives at 0x1F1 in both the image and boot_params.
HDR_START = 0x1F1
HDR_END = 0x290                 # through kernel_info_offset (protocol 2.15); later fields stay zero
BOOT_FLAG = 0xAA55
HDR_MAGIC = b"HdrS"
MIN_VERSION = 0x0206            # cmdline_size; every bzImage since Linux 2.6.22
LOADED_HIGH = 0x01              # loadflags: the protected-mode kernel loads at 1 MiB
LOADER_UNDEFINED = 0xFF         # type_of_loader: a boot loader without an assigned ID
BOOT_CS, BOOT_DS = 0x10, 0x18   # the selectors the protocol names

# boot_params offsets (arch/x86/include/uapi/asm/bootparam.h)
BP_ACPI_RSDP = 0x070            # u64, protocol 2.14
BP_EXT_RAMDISK_IMAGE = 0x0C0
BP_EXT_RAMDISK_SIZE = 0x0C4
BP_EXT_CMD_LINE_PTR = 0x0C8
BP_ALT_MEM_K = 0x1E0
BP_E820_ENTRIES = 0x1E8
BP_E820_TABLE = 0x2D0
E820_MAX = 128
BP_SIZE = 0x1000

# setup header offsets (absolute, as in the image)
SETUP_SECTS = 0x1F1
SYSSIZE = 0x1F4                 # the protected-mode kernel's size in 16-byte paragraphs
VID_MODE = 0x1FA
TYPE_OF_LOADER = 0x210
LOADFLAGS = 0x211
CODE32_START = 0x214
RAMDISK_IMAGE = 0x218
RAMDISK_SIZE = 0x21C
CMD_LINE_PTR = 0x228
INITRD_ADDR_MAX = 0x22C
KERNEL_ALIGNMENT = 0x230
RELOCATABLE = 0x234
CMDLINE_SIZE = 0x238
PREF_ADDRESS = 0x258
INIT_SIZE = 0x260

GDT_AT = 0x6000
ZERO_PAGE_AT = 0x7000
CMDLINE_AT = 0x8000
CMDLINE_LIMIT = 0x9FC00 - CMDLINE_AT


def is_bzimage(data: bytes) -> bool:
    return len(data) > 0x206 and data[0x202:0x206] == HDR_MAGIC and \
        struct.unpack_from("<H", data, 0x1FE)[0] == BOOT_FLAG


@dataclass(frozen=True)
class SetupHeader:
    version: int
    setup_size: int             # bytes of real-mode code before the protected-mode kernel
    code32_start: int
    initrd_addr_max: int
    cmdline_size: int
    relocatable: bool
    pref_address: int
    init_size: int


def parse_setup_header(label: str, data: bytes) -> SetupHeader:
    if len(data) < HDR_END:
        raise BadInput(f"{label}: truncated bzImage ({len(data)} bytes, no complete setup header)")
    if not is_bzimage(data):
        raise BadInput(f"{label}: not a Linux bzImage (no 'HdrS' setup header)")
    version = struct.unpack_from("<H", data, 0x206)[0]
    if version < MIN_VERSION:
        raise BadInput(f"{label}: boot protocol {version >> 8}.{version & 0xFF:02d} is older than "
                       f"{MIN_VERSION >> 8}.{MIN_VERSION & 0xFF:02d}, the oldest this loader supports")
    if not data[LOADFLAGS] & LOADED_HIGH:
        raise BadInput(f"{label}: a zImage (loaded low); only bzImage kernels are supported")
    sects = data[SETUP_SECTS] or 4                      # boot.rst: 0 means 4
    setup_size = (sects + 1) * 512
    if setup_size >= len(data):
        raise BadInput(f"{label}: truncated bzImage (setup of {setup_size} bytes, file of {len(data)})")
    kernel_size = 16 * struct.unpack_from("<I", data, SYSSIZE)[0]
    if kernel_size == 0:
        raise BadInput(f"{label}: bzImage setup header declares no protected-mode kernel (syssize 0)")
    if setup_size + kernel_size > len(data):
        raise BadInput(f"{label}: truncated bzImage (the setup header declares {setup_size + kernel_size} "
                       f"bytes, the file has {len(data)})")
    u32 = lambda off: struct.unpack_from("<I", data, off)[0]          # noqa: E731
    has = lambda v: version >= v                                     # noqa: E731
    return SetupHeader(
        version=version, setup_size=setup_size, code32_start=u32(CODE32_START),
        initrd_addr_max=u32(INITRD_ADDR_MAX) if has(0x0203) else 0x37FFFFFF,
        cmdline_size=u32(CMDLINE_SIZE),
        relocatable=bool(data[RELOCATABLE]) if has(0x0205) else False,
        pref_address=struct.unpack_from("<Q", data, PREF_ADDRESS)[0] if has(0x020A) else 0,
        init_size=u32(INIT_SIZE) if has(0x020A) else 0)


def _boot_gdt() -> bytes:
    gdt = bytearray(8 * 4)
    gdt[8 * (BOOT_CS >> 3):8 * (BOOT_CS >> 3) + 8] = FLAT_CODE.pack()
    gdt[8 * (BOOT_DS >> 3):8 * (BOOT_DS >> 3) + 8] = FLAT_DATA.pack()
    return bytes(gdt)


def load_linux(path: str, data: bytes, mem_size: int, cmdline: str = "",
               initrd: bytes | None = None, initrd_name: str = "initrd") -> BootImage:
    """Validate a bzImage and compute the guest's state at the 32-bit entry.

    Raises BadInput with a one-line message naming the file on any problem."""
    label = printable_name(path)
    data = bytes(data)
    if not data:
        raise BadInput(f"{label}: empty file")
    if mem_size > MAX_GUEST_MEM:
        raise BadInput(f"{label}: guest memory of {mem_size >> 20} MiB is above the maximum of "
                       f"{MAX_GUEST_MEM >> 20} MiB")
    hdr = parse_setup_header(label, data)
    kernel = data[hdr.setup_size:]
    load_at = HIGH_MEM
    # The stub decompresses to its preferred address (a relocatable kernel
    # loaded below it moves up there) and needs init_size bytes from there.
    run_at = max(load_at, hdr.pref_address) if hdr.relocatable else load_at
    need = max(load_at + len(kernel), run_at + hdr.init_size)
    if need > mem_size:
        raise BadInput(f"{label}: the kernel needs memory up to {need:#x} to decompress and run, "
                       f"but the guest has only {mem_size >> 20} MiB (use -m)")

    raw_cmdline = cmdline.encode("utf-8", "surrogateescape")
    limit = min(hdr.cmdline_size or 255, CMDLINE_LIMIT - 1)
    if b"\0" in raw_cmdline:
        raise BadInput(f"{label}: kernel command line contains a NUL character")
    if len(raw_cmdline) > limit:
        raise BadInput(f"{label}: kernel command line is {len(raw_cmdline)} bytes; "
                       f"this kernel takes at most {limit}")

    bp = bytearray(BP_SIZE)
    bp[HDR_START:HDR_END] = data[HDR_START:HDR_END]
    struct.pack_into("<H", bp, VID_MODE, 0xFFFF)                    # "normal"
    bp[TYPE_OF_LOADER] = LOADER_UNDEFINED
    struct.pack_into("<I", bp, CODE32_START, load_at)
    struct.pack_into("<I", bp, CMD_LINE_PTR, CMDLINE_AT)
    e820 = memory_map(mem_size)
    bp[BP_E820_ENTRIES] = len(e820)
    for i, (base, length, kind) in enumerate(e820[:E820_MAX]):
        struct.pack_into("<QQI", bp, BP_E820_TABLE + 20 * i, base, length, kind)
    struct.pack_into("<I", bp, BP_ALT_MEM_K, (mem_size - HIGH_MEM) >> 10)
    if hdr.version >= 0x020E:
        struct.pack_into("<Q", bp, BP_ACPI_RSDP, firmware.RSDP_ADDRESS)

    chunks = [(GDT_AT, _boot_gdt()), (CMDLINE_AT, raw_cmdline + b"\0"), (load_at, kernel)]
    description = f"Linux bzImage, boot protocol {hdr.version >> 8}.{hdr.version & 0xFF:02d}, " \
                  f"{len(kernel) >> 10} KiB kernel at {load_at:#x}"
    if initrd is not None:
        top = min(mem_size, hdr.initrd_addr_max + 1)
        at = (top - len(initrd)) & ~(PAGE_SIZE - 1)
        if not initrd or at < need:
            what = "is empty" if not initrd else \
                f"({len(initrd) >> 10} KiB) does not fit between the kernel and {top:#x} (use -m)"
            raise BadInput(f"{printable_name(initrd_name)}: initrd {what}")
        struct.pack_into("<II", bp, RAMDISK_IMAGE, at, len(initrd))
        chunks.append((at, initrd))
        description += f", {len(initrd) >> 10} KiB initrd at {at:#x}"
    chunks.insert(0, (ZERO_PAGE_AT, bytes(bp)))
    return BootImage(entry=load_at, eax=0, ebx=0, esi=ZERO_PAGE_AT, gdt=(GDT_AT, 8 * 4 - 1),
                     code_sel=BOOT_CS, data_sel=BOOT_DS, chunks=chunks,
                     kernel_range=(load_at, need), description=description)
