"""Multiboot v1 (specification 0.6.96) kernel loader.

The loader is pure: it validates the image and computes what guest RAM must
contain at entry (kernel bytes, modules, the multiboot information structure)
plus the register values the specification fixes. The machine writes the
chunks into zeroed RAM and sets up the CPU, so nothing here touches unicorn.

Physical memory plan chosen here (the mmap given to the guest describes it):

    [0x00000, 0x01000)   never loaded (real-mode IVT/BDA page; catches null images)
    [0x09000, 0x9FC00)   boot information: MBI, mmap, module list, strings
    [0x9FC00, 0xA0000)   EBDA, reserved
    [0xA0000, 0x100000)  VGA/BIOS hole, never loaded
    [0x100000, mem_size) kernel (usually), then page-aligned modules
"""

from __future__ import annotations

import posixpath
import struct
from dataclasses import dataclass, field
from typing import Optional, Sequence

from bt_vmm.errors import BadInput
from bt_vmm.loaders.elf import is_elf, parse_elf32, printable_name
from bt_vmm.machine.layout import (HIGH_MEM, HOLE_HI, HOLE_LO, LOW_FLOOR, LOW_TOP, MAX_GUEST_MEM,
                                   MIN_GUEST_MEM, MON_BASE, PAGE_SIZE, memory_map)

# Section 3.1.1: header magic, and the value the loader leaves in EAX (3.2).
HEADER_MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002
SEARCH_LIMIT = 8192        # 3.1: the header lies wholly in the first 8192 bytes ...
HEADER_ALIGN = 4           # ... and is 32-bit aligned.
MIN_HEADER_SIZE = 12       # magic, flags, checksum
AOUT_HEADER_SIZE = 32      # + header_addr .. entry_addr (3.1.3)

# Section 3.1.2: header flags. Bits 0-15 are "required": a loader that does
# not understand one must refuse the image. Bits 16-31 are optional.
HF_PAGE_ALIGN = 1 << 0     # modules page aligned (we always do so)
HF_MEMORY_INFO = 1 << 1    # mem_* and mmap_* (we always provide them)
HF_VIDEO_MODE = 1 << 2     # a video mode request: accepted, ignored (no fb info)
HF_AOUT_KLUDGE = 1 << 16   # use the address fields of 3.1.3 instead of ELF
HF_REQUIRED_MASK = 0xFFFF
HF_SUPPORTED_REQUIRED = HF_PAGE_ALIGN | HF_MEMORY_INFO | HF_VIDEO_MODE

# Section 3.3: multiboot information flags that this loader sets.
MBI_MEMORY = 1 << 0
MBI_CMDLINE = 1 << 2
MBI_MODS = 1 << 3
MBI_MMAP = 1 << 6
MBI_LOADER_NAME = 1 << 9

# Section 3.3 field offsets inside the MBI (0.6.96 layout, 116 bytes with
# the framebuffer fields; the unused ones stay zero).
MBI_SIZE = 116
MBI_OFF_FLAGS = 0
MBI_OFF_MEM_LOWER = 4
MBI_OFF_MEM_UPPER = 8
MBI_OFF_CMDLINE = 16
MBI_OFF_MODS_COUNT = 20
MBI_OFF_MODS_ADDR = 24
MBI_OFF_MMAP_LENGTH = 44
MBI_OFF_MMAP_ADDR = 48
MBI_OFF_LOADER_NAME = 64
MOD_ENTRY_SIZE = 16        # mod_start, mod_end, string, reserved
MMAP_ENTRY_SIZE = 20       # the "size" field's value: base u64, length u64, type u32

LOADER_NAME = "bt_vmm"
MAX_CMDLINE = 4096         # bytes, per string; anything longer is a mistake

# The physical memory plan (see the module docstring).
KiB = 1 << 10
MiB = 1 << 20
INFO_BASE = 0x9000
ADDR_LIMIT = 1 << 32


@dataclass
class Module:
    """A multiboot module given on the command line."""

    name: str       # path as given, for messages
    data: bytes
    cmdline: str    # the module's string (path + args, as GRUB does)


@dataclass
class BootImage:
    """Everything the machine must apply to start a kernel: RAM contents and
    the entry state a boot protocol promises (Multiboot 3.2, Linux's 32-bit
    boot protocol). Always protected mode, paging and interrupts off, flat
    code and data segments."""

    entry: int                        # physical entry EIP
    eax: int                          # Multiboot: 0x2BADB002
    ebx: int                          # Multiboot: physical address of the multiboot info (MBI)
    chunks: list[tuple[int, bytes]]   # (guest-physical address, bytes); the rest of RAM is zero
    kernel_range: tuple[int, int]     # [lo, hi) the kernel image occupies incl. bss
    description: str                  # e.g. "multiboot ELF, entry 0x100010, 3 segments"
    esi: int = 0                      # Linux: physical address of boot_params
    gdt: tuple[int, int] = (0, 0)     # the guest's GDTR (base, limit); Multiboot leaves it undefined
    code_sel: int = 0x08              # the selectors of the flat segments at entry
    data_sel: int = 0x10


@dataclass(frozen=True)
class _Header:
    """A multiboot header found in the image (3.1.1-3.1.3)."""

    offset: int
    flags: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0


@dataclass
class _Segment:
    """A physical range the kernel occupies; data is its file-backed prefix."""

    what: str
    lo: int
    hi: int
    data: bytes


@dataclass
class _Kernel:
    entry: int
    segments: list[_Segment] = field(default_factory=list)
    kind: str = ""


# ---------------------------------------------------------------- header

def _find_header(data: bytes) -> tuple[Optional[_Header], Optional[int]]:
    """The first valid header, else None and the offset of a bad-checksum magic.

    Like GRUB, a magic word whose checksum does not add up is skipped rather
    than fatal: such a word can occur by accident in code or data.
    """
    limit = min(len(data), SEARCH_LIMIT)
    magic = struct.pack("<I", HEADER_MAGIC)
    bad_at: Optional[int] = None
    pos = data.find(magic, 0, limit)
    while pos != -1:
        if pos % HEADER_ALIGN == 0 and pos + MIN_HEADER_SIZE <= limit:
            _, flags, checksum = struct.unpack_from("<III", data, pos)
            if (HEADER_MAGIC + flags + checksum) & 0xFFFFFFFF == 0:
                return _read_header(data, pos, flags, limit), None
            if bad_at is None:
                bad_at = pos
        pos = data.find(magic, pos + 1, limit)
    return None, bad_at


def _read_header(data: bytes, offset: int, flags: int, limit: int) -> _Header:
    """Read the address fields when the a.out kludge needs them (3.1.3)."""
    if flags & HF_AOUT_KLUDGE and offset + AOUT_HEADER_SIZE <= limit:
        fields = struct.unpack_from("<IIIII", data, offset + MIN_HEADER_SIZE)
        return _Header(offset, flags, *fields)
    return _Header(offset, flags)


def is_multiboot(data: bytes) -> bool:
    """True if a header with a valid checksum lies in the first 8192 bytes."""
    return _find_header(bytes(data))[0] is not None


def _require_header(label: str, data: bytes, hdr: Optional[_Header], bad_at: Optional[int]) -> _Header:
    """Turn a failed header search into the most specific message."""
    if hdr is not None:
        return hdr
    if bad_at is not None:
        _, flags, checksum = struct.unpack_from("<III", data, bad_at)
        expected = -(HEADER_MAGIC + flags) & 0xFFFFFFFF
        raise BadInput(
            f"{label}: multiboot header at offset {bad_at:#x} has a bad checksum "
            f"({checksum:#010x}, expected {expected:#010x})")
    raise BadInput(f"{label}: no multiboot header in the first 8 KiB")


def _check_flags(label: str, data: bytes, hdr: _Header) -> None:
    """3.1.2: refuse required feature bits we do not implement."""
    unknown = hdr.flags & HF_REQUIRED_MASK & ~HF_SUPPORTED_REQUIRED
    if unknown:
        bits = ", ".join(str(b) for b in range(16) if unknown >> b & 1)
        raise BadInput(
            f"{label}: multiboot header requires unsupported feature flag bit(s) {bits} "
            f"(flags {hdr.flags:#010x}); bt_vmm supports bits 0-2 and 16")
    if hdr.flags & HF_AOUT_KLUDGE and hdr.offset + AOUT_HEADER_SIZE > min(len(data), SEARCH_LIMIT):
        raise BadInput(
            f"{label}: multiboot header at offset {hdr.offset:#x} sets the a.out kludge flag "
            f"but its address fields run past the first 8 KiB or the end of the file")


# ---------------------------------------------------------------- images

def _load_aout(label: str, data: bytes, hdr: _Header) -> _Kernel:
    """Section 3.1.3: the header's address fields say what to load where."""
    if hdr.load_addr > hdr.header_addr:
        raise BadInput(
            f"{label}: a.out kludge load_addr {hdr.load_addr:#x} is above header_addr {hdr.header_addr:#x}")
    # The file offset to load from is the header's offset minus
    # (header_addr - load_addr).
    start = hdr.offset - (hdr.header_addr - hdr.load_addr)
    if start < 0:
        raise BadInput(
            f"{label}: a.out kludge load_addr {hdr.load_addr:#x} would start loading "
            f"{-start:#x} bytes before the beginning of the file")
    if hdr.load_end_addr == 0:
        size = len(data) - start          # 0 means: text and data are the rest of the file
    elif hdr.load_end_addr < hdr.load_addr:
        raise BadInput(
            f"{label}: a.out kludge load_end_addr {hdr.load_end_addr:#x} is below load_addr {hdr.load_addr:#x}")
    else:
        size = hdr.load_end_addr - hdr.load_addr
        if start + size > len(data):
            raise BadInput(
                f"{label}: a.out kludge load_end_addr {hdr.load_end_addr:#x} needs file bytes up to "
                f"{start + size:#x}, beyond the end of the file ({len(data):#x} bytes)")
    load_end = hdr.load_addr + size
    if hdr.bss_end_addr == 0:
        mem_end = load_end                # 0 means: no bss
    elif hdr.bss_end_addr < load_end:
        raise BadInput(
            f"{label}: a.out kludge bss_end_addr {hdr.bss_end_addr:#x} is below the end "
            f"of the loaded data {load_end:#x}")
    else:
        mem_end = hdr.bss_end_addr
    if mem_end == hdr.load_addr:
        raise BadInput(f"{label}: a.out kludge image is empty (nothing to load)")
    segment = _Segment("a.out kludge image", hdr.load_addr, mem_end, data[start:start + size])
    if not hdr.load_addr <= hdr.entry_addr < mem_end:
        raise BadInput(
            f"{label}: entry point {hdr.entry_addr:#x} lies outside the loaded image "
            f"[{hdr.load_addr:#x}, {mem_end:#x})")
    return _Kernel(hdr.entry_addr, [segment], "a.out kludge")


def _load_elf(label: str, path: str, data: bytes) -> _Kernel:
    """Without the a.out kludge the image is ELF; segments go to p_paddr (3.1.3, GRUB)."""
    elf = parse_elf32(path, data)
    loads = [ph for ph in elf.load_segments() if ph.memsz > 0]
    if not loads:
        raise BadInput(f"{label}: ELF has no PT_LOAD segments with memory to load")
    segments = [
        _Segment(f"PT_LOAD segment {ph.index}", ph.paddr, ph.paddr + ph.memsz,
                 data[ph.offset:ph.offset + ph.filesz])
        for ph in loads]
    # GRUB 2 finds the segment whose *virtual* range holds e_entry and
    # translates to that segment's physical address (higher-half kernels).
    # GRUB Legacy used e_entry as is, so accept a physical entry as a fallback.
    for ph in loads:
        if ph.vaddr <= elf.entry < ph.vaddr + ph.memsz:
            entry = elf.entry - ph.vaddr + ph.paddr
            break
    else:
        if not any(s.lo <= elf.entry < s.hi for s in segments):
            raise BadInput(f"{label}: entry point {elf.entry:#x} is not inside any PT_LOAD segment")
        entry = elf.entry
    return _Kernel(entry, segments, "ELF")


# ---------------------------------------------------------------- checks

def _mem_text(mem_size: int) -> str:
    return f"{mem_size // MiB} MiB" if mem_size % MiB == 0 else f"{mem_size // KiB} KiB"


def _check_range(label: str, what: str, lo: int, hi: int, mem_size: int) -> None:
    """Every loaded byte must be in guest RAM, outside the monitor and the holes."""
    span = f"{what} [{lo:#x}, {hi:#x})"
    if hi > MON_BASE:
        raise BadInput(f"{label}: {span} overlaps the monitor region at {MON_BASE:#x}")
    if lo < LOW_FLOOR:
        raise BadInput(f"{label}: {span} touches the first page (below {LOW_FLOOR:#x})")
    if lo < HOLE_HI and hi > HOLE_LO:
        raise BadInput(
            f"{label}: {span} overlaps the legacy VGA/BIOS hole [{HOLE_LO:#x}, {HOLE_HI:#x})")
    if hi > mem_size:
        raise BadInput(
            f"{label}: {span} needs memory up to {hi:#x}, "
            f"but the guest has only {_mem_text(mem_size)} (use -m)")


def _check_kernel(label: str, kernel: _Kernel, mem_size: int) -> None:
    for seg in kernel.segments:
        _check_range(label, seg.what, seg.lo, seg.hi, mem_size)
    ordered = sorted(kernel.segments, key=lambda s: s.lo)
    for a, b in zip(ordered, ordered[1:]):
        if b.lo < a.hi:
            raise BadInput(f"{label}: {a.what} and {b.what} overlap at {b.lo:#x}")


# ---------------------------------------------------------------- boot info

def _page_up(addr: int) -> int:
    return (addr + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def _c_string(label: str, what: str, text: str) -> bytes:
    """A NUL-terminated byte string for the guest (3.3: C-style strings)."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise BadInput(f"{label}: {what} is not encodable as UTF-8") from None
    if b"\0" in raw:
        raise BadInput(f"{label}: {what} contains a NUL character")
    if len(raw) > MAX_CMDLINE:
        raise BadInput(f"{label}: {what} is {len(raw)} bytes long; the limit is {MAX_CMDLINE}")
    return raw + b"\0"


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _build_info(base: int, mem_size: int, cmdline: bytes,
                mods: Sequence[tuple[int, int, bytes]]) -> bytes:
    """Lay out MBI, mmap, module array and strings contiguously from base.

    mods holds (mod_start, mod_end, NUL-terminated string). The size of the
    result does not depend on base, so callers can size it with base=0.
    """
    mmap = b"".join(struct.pack("<IQQI", MMAP_ENTRY_SIZE, b, n, t) for b, n, t in memory_map(mem_size))
    mmap_addr = base + MBI_SIZE                      # points at the first "size" field (3.3)
    mods_addr = mmap_addr + len(mmap)
    strings_addr = mods_addr + MOD_ENTRY_SIZE * len(mods)
    blob = bytearray()

    def add_string(raw: bytes) -> int:
        addr = strings_addr + len(blob)
        blob.extend(raw.ljust(_align4(len(raw)), b"\0"))
        return addr

    name_addr = add_string(LOADER_NAME.encode() + b"\0")
    cmdline_addr = add_string(cmdline)
    mod_array = b"".join(struct.pack("<IIII", start, end, add_string(s), 0) for start, end, s in mods)

    mbi = bytearray(MBI_SIZE)
    struct.pack_into("<I", mbi, MBI_OFF_FLAGS, MBI_MEMORY | MBI_CMDLINE | MBI_MODS | MBI_MMAP | MBI_LOADER_NAME)
    # 3.3: mem_lower/mem_upper are in KiB; upper starts at 1 MiB.
    struct.pack_into("<II", mbi, MBI_OFF_MEM_LOWER, LOW_TOP // KiB, (mem_size - HIGH_MEM) // KiB)
    struct.pack_into("<I", mbi, MBI_OFF_CMDLINE, cmdline_addr)
    struct.pack_into("<II", mbi, MBI_OFF_MODS_COUNT, len(mods), mods_addr)
    struct.pack_into("<II", mbi, MBI_OFF_MMAP_LENGTH, len(mmap), mmap_addr)
    struct.pack_into("<I", mbi, MBI_OFF_LOADER_NAME, name_addr)
    return bytes(mbi) + mmap + mod_array + bytes(blob)


def _place_low(size: int, busy: Sequence[tuple[int, int]]) -> Optional[int]:
    """A page-aligned spot in conventional memory clear of the kernel.

    INFO_BASE is preferred; a kernel loaded low (rare, but legal) pushes the
    boot information into the lowest free gap instead.
    """
    def free(at: int) -> bool:
        return (at >= LOW_FLOOR and at + size <= LOW_TOP
                and not any(lo < at + size and at < hi for lo, hi in busy))

    if free(INFO_BASE):
        return INFO_BASE
    # Any lowest free gap starts at the floor or right after a busy range.
    fits = [c for c in [LOW_FLOOR] + [_page_up(hi) for _, hi in busy] if free(c)]
    return min(fits) if fits else None


# ---------------------------------------------------------------- entry point

def load_multiboot(path: str, data: bytes, mem_size: int, cmdline: str = "",
                   modules: Sequence[Module] = ()) -> BootImage:
    """Validate a multiboot v1 kernel and compute the guest's state at entry.

    Raises BadInput with a one-line message naming the file on any problem.
    """
    label = printable_name(path)
    data = bytes(data)
    if mem_size < MIN_GUEST_MEM:
        raise BadInput(
            f"{label}: guest memory of {_mem_text(mem_size)} is below the minimum of "
            f"{MIN_GUEST_MEM // MiB} MiB (use -m)")
    if mem_size > MAX_GUEST_MEM:
        raise BadInput(
            f"{label}: guest memory of {_mem_text(mem_size)} is above the maximum of "
            f"{_mem_text(MAX_GUEST_MEM)}")
    if not data:
        raise BadInput(f"{label}: empty file")

    hdr, bad_at = _find_header(data)
    if hdr is not None and hdr.flags & HF_AOUT_KLUDGE:
        # 3.1.2 bit 16: the address fields win even if the file is ELF
        # (this is how 64-bit ELF kernels with a 32-bit entry get booted).
        _check_flags(label, data, hdr)
        kernel = _load_aout(label, data, hdr)
    elif is_elf(data):
        # ELF problems first: "this is an ARM kernel" beats "no header".
        kernel = _load_elf(label, path, data)
        _check_flags(label, data, _require_header(label, data, hdr, bad_at))
    else:
        _check_flags(label, data, _require_header(label, data, hdr, bad_at))
        raise BadInput(
            f"{label}: not an ELF file and its multiboot header does not set "
            f"the a.out kludge flag (bit 16)")
    _check_kernel(label, kernel, mem_size)

    kernel_lo = min(s.lo for s in kernel.segments)
    kernel_hi = max(s.hi for s in kernel.segments)
    chunks: list[tuple[int, bytes]] = [(s.lo, s.data) for s in kernel.segments if s.data]

    # 3.3 mods: modules follow the kernel, page aligned (header flag 0,
    # honoured unconditionally), and never below 1 MiB.
    placed: list[tuple[int, int, bytes]] = []
    cursor = _page_up(max(kernel_hi, HIGH_MEM))
    for mod in modules:
        mod_label = printable_name(mod.name)
        start, end = cursor, cursor + len(mod.data)
        _check_range(mod_label, "module", start, end, mem_size)
        placed.append((start, end, _c_string(mod_label, "module command line", mod.cmdline)))
        if mod.data:
            chunks.append((start, bytes(mod.data)))
        cursor = _page_up(end)

    # 3.3 cmdline: GRUB passes the kernel path then the arguments.
    name = posixpath.basename(path)
    kernel_cmdline = _c_string(label, "kernel command line", f"{name} {cmdline}" if cmdline else name)
    size = len(_build_info(0, mem_size, kernel_cmdline, placed))
    base = _place_low(size, [(s.lo, s.hi) for s in kernel.segments])
    if base is None:
        raise BadInput(
            f"{label}: boot information ({size} bytes of MBI, memory map, module list and "
            f"strings) does not fit in free conventional memory below {LOW_TOP:#x}")
    chunks.insert(0, (base, _build_info(base, mem_size, kernel_cmdline, placed)))

    nseg = len(kernel.segments)
    description = f"multiboot {kernel.kind}, entry {kernel.entry:#x}, {nseg} segment{'s' * (nseg != 1)}"
    if modules:
        description += f", {len(modules)} module{'s' * (len(modules) != 1)}"
    return BootImage(
        entry=kernel.entry,
        eax=BOOTLOADER_MAGIC,
        ebx=base,
        chunks=chunks,
        kernel_range=(kernel_lo, kernel_hi),
        description=description,
    )
