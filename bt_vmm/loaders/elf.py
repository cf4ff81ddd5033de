"""A small ELF32 reader: just the file header and the program headers.

The multiboot loader only needs what a boot loader needs (entry point and
PT_LOAD segments), so section headers, symbols and relocations are not parsed.
Every defect is reported as a one-line BadInput naming the file, because the
user's fix is always "rebuild or pick another kernel", never a stack trace.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bt_vmm.errors import BadInput

ELF_MAGIC = b"\x7fELF"

# e_ident indices and values (System V ABI, ELF header).
EI_CLASS = 4
EI_DATA = 5
EI_VERSION = 6
EI_NIDENT = 16
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
ELFDATA2MSB = 2
EV_CURRENT = 1

ET_REL = 1
ET_EXEC = 2
ET_DYN = 3
ET_CORE = 4

EM_386 = 3
EM_X86_64 = 62

PT_LOAD = 1

EHDR32_SIZE = 52
PHDR32_SIZE = 32

_EHDR32 = struct.Struct("<16sHHIIIIIHHHHHH")
_PHDR32 = struct.Struct("<IIIIIIII")

# Names for the machines a user is likely to hand us by mistake.
MACHINE_NAMES: dict[int, str] = {
    2: "SPARC",
    3: "i386",
    6: "i486",
    8: "MIPS",
    20: "PowerPC",
    21: "PowerPC64",
    22: "S/390",
    40: "ARM",
    43: "SPARC V9",
    50: "IA-64",
    62: "x86-64",
    183: "AArch64",
    243: "RISC-V",
    258: "LoongArch",
}


def machine_name(e_machine: int) -> str:
    """Human name of an e_machine value, for error messages."""
    return MACHINE_NAMES.get(e_machine, f"machine {e_machine:#x}")


def printable_name(path: str) -> str:
    """The file name made safe for a one-line message (no control characters)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in path)


@dataclass(frozen=True)
class ProgramHeader:
    """One Elf32_Phdr; index is its position in the table, for messages."""

    index: int
    p_type: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    flags: int
    align: int


@dataclass(frozen=True)
class Elf32:
    """The parts of an ELF32 executable that a boot loader uses."""

    e_type: int
    machine: int
    entry: int
    phdrs: tuple[ProgramHeader, ...]

    def load_segments(self) -> list[ProgramHeader]:
        """PT_LOAD headers in table order (the only ones a loader copies)."""
        return [ph for ph in self.phdrs if ph.p_type == PT_LOAD]


def is_elf(data: bytes) -> bool:
    """True if data starts with the ELF magic (any class, any machine)."""
    return data[:4] == ELF_MAGIC


def _check_ident(label: str, data: bytes) -> None:
    """Reject everything that is not a little-endian ELF32 before reading fields."""
    if not is_elf(data):
        raise BadInput(f"{label}: not an ELF file")
    if len(data) < EI_NIDENT:
        raise BadInput(f"{label}: truncated ELF header ({len(data)} of {EHDR32_SIZE} bytes)")
    ei_class = data[EI_CLASS]
    if ei_class == ELFCLASS64:
        # e_machine sits at offset 18 in both ELF32 and ELF64 headers.
        machine = struct.unpack_from("<H", data, 18)[0] if len(data) >= 20 else None
        if machine is None or machine == EM_X86_64:
            raise BadInput(f"{label}: x86-64 ELF: bt_vmm runs 32-bit x86 kernels")
        raise BadInput(f"{label}: 64-bit {machine_name(machine)} ELF: bt_vmm runs 32-bit x86 kernels")
    if ei_class != ELFCLASS32:
        raise BadInput(f"{label}: invalid ELF class {ei_class}")
    if data[EI_DATA] == ELFDATA2MSB:
        raise BadInput(f"{label}: big-endian ELF: bt_vmm runs little-endian 32-bit x86 kernels")
    if data[EI_DATA] != ELFDATA2LSB:
        raise BadInput(f"{label}: invalid ELF data encoding {data[EI_DATA]}")
    if data[EI_VERSION] != EV_CURRENT:
        raise BadInput(f"{label}: unsupported ELF version {data[EI_VERSION]}")


def parse_elf32(path: str, data: bytes) -> Elf32:
    """Parse and validate an i386 ELF32 executable's header and program headers.

    PT_LOAD entries are checked here (file data inside the file, filesz <=
    memsz) so that callers can slice data[offset:offset+filesz] blindly.
    """
    label = printable_name(path)
    _check_ident(label, data)
    if len(data) < EHDR32_SIZE:
        raise BadInput(f"{label}: truncated ELF header ({len(data)} of {EHDR32_SIZE} bytes)")
    (_ident, e_type, e_machine, e_version, e_entry, e_phoff, _e_shoff, _e_flags,
     _e_ehsize, e_phentsize, e_phnum, _e_shentsize, _e_shnum, _e_shstrndx) = _EHDR32.unpack_from(data, 0)
    if e_machine != EM_386:
        raise BadInput(f"{label}: ELF for {machine_name(e_machine)}, not i386: bt_vmm runs 32-bit x86 kernels")
    if e_version != EV_CURRENT:
        raise BadInput(f"{label}: unsupported ELF version {e_version}")
    if e_type == ET_REL:
        raise BadInput(f"{label}: relocatable ELF object (ET_REL), not a linked executable")
    if e_type not in (ET_EXEC, ET_DYN):
        kind = "core dump (ET_CORE)" if e_type == ET_CORE else f"type {e_type}"
        raise BadInput(f"{label}: ELF {kind} is not an executable")
    phdrs: list[ProgramHeader] = []
    if e_phnum:
        if e_phentsize < PHDR32_SIZE:
            raise BadInput(f"{label}: ELF e_phentsize {e_phentsize} is smaller than an Elf32_Phdr ({PHDR32_SIZE})")
        table_end = e_phoff + e_phnum * e_phentsize
        if table_end > len(data):
            raise BadInput(
                f"{label}: truncated ELF program header table "
                f"(needs bytes up to {table_end:#x}, file has {len(data):#x})")
        for i in range(e_phnum):
            fields = _PHDR32.unpack_from(data, e_phoff + i * e_phentsize)
            ph = ProgramHeader(i, *fields)
            if ph.p_type == PT_LOAD:
                _check_load_segment(label, ph, len(data))
            phdrs.append(ph)
    return Elf32(e_type=e_type, machine=e_machine, entry=e_entry, phdrs=tuple(phdrs))


def _check_load_segment(label: str, ph: ProgramHeader, file_size: int) -> None:
    """A PT_LOAD whose bytes are not all in the file cannot be loaded faithfully."""
    if ph.filesz > ph.memsz:
        raise BadInput(
            f"{label}: PT_LOAD segment {ph.index} has p_filesz {ph.filesz:#x} "
            f"larger than p_memsz {ph.memsz:#x}")
    if ph.filesz and ph.offset + ph.filesz > file_size:
        raise BadInput(
            f"{label}: PT_LOAD segment {ph.index} file data [{ph.offset:#x}, {ph.offset + ph.filesz:#x}) "
            f"lies beyond the end of the file ({file_size:#x} bytes)")
