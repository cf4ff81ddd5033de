"""Tests for the multiboot v1 loader, on synthetic images built right here."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bt_vmm.errors import BadInput
from bt_vmm.loaders import BootImage, Module, is_multiboot, load_multiboot
from bt_vmm.machine.layout import MON_BASE

MiB = 1 << 20
MB_MAGIC = 0x1BADB002
MEM = 16 * MiB
NAME = "kernel.elf"


# ------------------------------------------------------------ image builders

def mb_header(flags: int = 0x3, aout: Optional[tuple[int, int, int, int, int]] = None,
              checksum: Optional[int] = None) -> bytes:
    """A multiboot header; aout = (header, load, load_end, bss_end, entry) addrs."""
    if checksum is None:
        checksum = -(MB_MAGIC + flags) & 0xFFFFFFFF
    out = struct.pack("<III", MB_MAGIC, flags, checksum)
    if aout is not None:
        out += struct.pack("<IIIII", *aout)
    return out


@dataclass
class Seg:
    paddr: int
    data: bytes
    memsz: Optional[int] = None      # defaults to len(data)
    vaddr: Optional[int] = None      # defaults to paddr
    p_type: int = 1                  # PT_LOAD


def build_elf(segs: list[Seg], entry: int, *, flags: int = 0x3, header: Optional[bytes] = None,
              machine: int = 3, e_type: int = 2, with_header: bool = True) -> bytes:
    """An ELF32 executable: ehdr, phdrs, multiboot header, then segment data at 0x1000."""
    phoff, phnum = 52, len(segs)
    mbh = header if header is not None else mb_header(flags)
    head = bytearray(0x1000)
    offsets = []
    body = bytearray()
    for s in segs:
        offsets.append(0x1000 + len(body))
        body += s.data
        body += b"\0" * (-len(body) % 16)
    ident = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)
    struct.pack_into("<16sHHIIIIIHHHHHH", head, 0, ident, e_type, machine, 1, entry, phoff, 0, 0,
                     52, 32, phnum, 40, 0, 0)
    for i, (s, off) in enumerate(zip(segs, offsets)):
        memsz = len(s.data) if s.memsz is None else s.memsz
        vaddr = s.paddr if s.vaddr is None else s.vaddr
        struct.pack_into("<IIIIIIII", head, phoff + 32 * i, s.p_type, off, vaddr, s.paddr,
                         len(s.data), memsz, 5, 0x1000)
    if with_header:
        at = phoff + 32 * phnum
        at += -at % 4
        head[at:at + len(mbh)] = mbh
    return bytes(head + body)


CODE = bytes(range(1, 0x41))         # recognisable, non-zero "text"
DATA = b"DATA" * 8


def good_elf(**kw) -> bytes:
    """Text at 1 MiB, data + bss at 0x102000 (bss ends at 0x102800)."""
    return build_elf([Seg(0x100000, CODE), Seg(0x102000, DATA, memsz=0x800)], 0x100010, **kw)


def build_aout(load_addr: int = 0x100000, *, flags: int = 0x10003, code: bytes = CODE,
               load_end: Optional[int] = None, bss_end: Optional[int] = None,
               entry: Optional[int] = None, header_addr: Optional[int] = None,
               pad: int = 0) -> bytes:
    """A flat a.out-kludge image: [pad bytes][header][code], loaded from file offset 0."""
    size = pad + 32 + len(code)
    hdr_addr = load_addr + pad if header_addr is None else header_addr
    le = load_addr + size if load_end is None else load_end
    be = le + 0x1000 if bss_end is None else bss_end
    ent = load_addr + pad + 32 if entry is None else entry
    return b"\x90" * pad + mb_header(flags, (hdr_addr, load_addr, le, be, ent)) + code


# ------------------------------------------------------------ readers

class Ram:
    """Reads guest-physical memory as the machine would leave it (zeros elsewhere)."""

    def __init__(self, image: BootImage) -> None:
        self.chunks = image.chunks

    def read(self, addr: int, n: int) -> bytes:
        out = bytearray(n)
        for base, data in self.chunks:
            lo, hi = max(addr, base), min(addr + n, base + len(data))
            if lo < hi:
                out[lo - addr:hi - addr] = data[lo - base:hi - base]
        return bytes(out)

    def u32(self, addr: int) -> int:
        return struct.unpack("<I", self.read(addr, 4))[0]

    def cstr(self, addr: int) -> str:
        out = bytearray()
        while (b := self.read(addr + len(out), 1)) != b"\0":
            out += b
        return out.decode()


def mbi_fields(image: BootImage) -> dict:
    ram = Ram(image)
    m = image.ebx
    mmap_len, mmap_addr = ram.u32(m + 44), ram.u32(m + 48)
    mmap = []
    p = mmap_addr
    while p < mmap_addr + mmap_len:
        size = ram.u32(p)
        mmap.append(struct.unpack("<QQI", ram.read(p + 4, 20)))
        p += size + 4
    count, mods_addr = ram.u32(m + 20), ram.u32(m + 24)
    mods = [struct.unpack("<IIII", ram.read(mods_addr + 16 * i, 16)) for i in range(count)]
    return {
        "flags": ram.u32(m),
        "mem_lower": ram.u32(m + 4),
        "mem_upper": ram.u32(m + 8),
        "cmdline": ram.cstr(ram.u32(m + 16)),
        "mmap_length": mmap_len,
        "mmap": mmap,
        "mods": [(s, e, ram.cstr(a), r) for s, e, a, r in mods],
        "loader": ram.cstr(ram.u32(m + 64)),
    }


def assert_bad(data: bytes, *fragments: str, name: str = NAME, mem: int = MEM, **kw) -> str:
    with pytest.raises(BadInput) as info:
        load_multiboot(name, data, mem, **kw)
    msg = str(info.value)
    assert "\n" not in msg and "\r" not in msg, msg
    assert name in msg, msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


def assert_sane(image: BootImage, mem: int) -> None:
    """Invariants of every successful load."""
    spans = sorted((a, a + len(d)) for a, d in image.chunks)
    for lo, hi in spans:
        assert 0 <= lo < hi <= mem and hi <= MON_BASE
        assert not (lo < 0x100000 and hi > 0xA0000)
    for (_, a_hi), (b_lo, _) in zip(spans, spans[1:]):
        assert a_hi <= b_lo, "chunks overlap"
    lo, hi = image.kernel_range
    assert lo <= image.entry < hi
    assert image.eax == 0x2BADB002
    assert any(a == image.ebx for a, _ in image.chunks)


# ------------------------------------------------------------ good images

def test_good_elf() -> None:
    img = load_multiboot(NAME, good_elf(), MEM, cmdline="console=ttyS0 quiet")
    assert_sane(img, MEM)
    assert img.entry == 0x100010
    assert img.eax == 0x2BADB002
    assert img.ebx == 0x9000
    assert img.kernel_range == (0x100000, 0x102800)
    assert (0x100000, CODE) in img.chunks and (0x102000, DATA) in img.chunks
    assert img.description == "multiboot ELF, entry 0x100010, 2 segments"
    ram = Ram(img)
    assert ram.read(0x102000 + len(DATA), 16) == bytes(16)      # bss reads as zero
    mbi = mbi_fields(img)
    assert mbi["flags"] == (1 << 0) | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 9)
    assert mbi["mem_lower"] == 639
    assert mbi["mem_upper"] == (MEM - MiB) // 1024
    assert mbi["cmdline"] == "kernel.elf console=ttyS0 quiet"
    assert mbi["loader"] == "bt_vmm"
    assert mbi["mods"] == []
    assert mbi["mmap_length"] == 4 * 24
    assert mbi["mmap"] == [
        (0, 0x9FC00, 1),
        (0x9FC00, 0x400, 2),
        (0xE0000, 0x20000, 2),
        (0x100000, MEM - MiB, 1),
    ]
    # Everything the MBI points at lies in conventional memory above it.
    for addr, data in img.chunks:
        if addr == img.ebx:
            assert addr + len(data) <= 0x9FC00


def test_cmdline_is_file_name_without_append() -> None:
    img = load_multiboot("/boot/dir/kernel.elf", good_elf(), MEM)
    assert mbi_fields(img)["cmdline"] == "kernel.elf"


def test_minimum_memory_has_no_upper_ram_entry() -> None:
    img = load_multiboot(NAME, build_elf([Seg(0x20000, CODE)], 0x20000), MiB)
    mbi = mbi_fields(img)
    assert mbi["mem_upper"] == 0
    assert [e[2] for e in mbi["mmap"]] == [1, 2, 2]


def test_higher_half_entry_translated_to_physical() -> None:
    data = build_elf([Seg(0x100000, CODE, vaddr=0xC0100000)], 0xC0100010)
    img = load_multiboot(NAME, data, MEM)
    assert img.entry == 0x100010
    assert (0x100000, CODE) in img.chunks


def test_physical_entry_accepted_like_grub_legacy() -> None:
    data = build_elf([Seg(0x100000, CODE, vaddr=0xC0100000)], 0x100004)
    assert load_multiboot(NAME, data, MEM).entry == 0x100004


def test_video_flag_accepted_and_ignored() -> None:
    img = load_multiboot(NAME, good_elf(flags=0x7), MEM)
    assert not mbi_fields(img)["flags"] & ((1 << 11) | (1 << 12))


def test_good_aout_kludge() -> None:
    data = build_aout(0x100000, pad=0x40)
    img = load_multiboot("kernel.bin", data, MEM, cmdline="a b")
    assert_sane(img, MEM)
    assert img.entry == 0x100000 + 0x40 + 32
    assert img.kernel_range == (0x100000, 0x100000 + len(data) + 0x1000)
    assert (0x100000, data) in img.chunks
    assert img.description.startswith("multiboot a.out kludge, entry 0x100060")
    assert mbi_fields(img)["cmdline"] == "kernel.bin a b"


def test_aout_header_after_load_addr_offset() -> None:
    """3.1.3: file offset = header offset - (header_addr - load_addr)."""
    # The header sits at file offset 0x20, the load starts at file offset 0x10.
    data = b"\xEE" * 0x10 + b"\x90" * 0x10 + mb_header(0x10000, (0x200020, 0x200010, 0, 0, 0x200040)) + CODE
    img = load_multiboot("k.bin", data, MEM)
    assert img.kernel_range == (0x200010, 0x200010 + len(data) - 0x10)   # load_end 0 = to end of file
    assert (0x200010, data[0x10:]) in img.chunks
    assert img.entry == 0x200040


def test_aout_kludge_wins_over_elf() -> None:
    """A 64-bit ELF with the a.out kludge (a 32-bit trampoline) loads by the kludge."""
    elf64 = bytearray(make_elf64())
    hdr = mb_header(0x10003, (0x100000 + 0x40, 0x100000, 0, 0, 0x100000 + 0x40 + 32))
    elf64[0x40:0x40 + len(hdr)] = hdr
    img = load_multiboot(NAME, bytes(elf64), MEM)
    assert img.entry == 0x100060


def test_modules_page_aligned_after_kernel() -> None:
    mods = [Module("initrd.img", b"I" * 0x1801, "initrd.img root=1"),
            Module("extra.bin", b"E" * 10, "extra.bin")]
    img = load_multiboot(NAME, good_elf(), MEM, modules=mods)
    assert_sane(img, MEM)
    mbi = mbi_fields(img)
    assert mbi["mods"] == [
        (0x103000, 0x103000 + 0x1801, "initrd.img root=1", 0),
        (0x105000, 0x105000 + 10, "extra.bin", 0),
    ]
    ram = Ram(img)
    assert ram.read(0x103000, 0x1801) == b"I" * 0x1801
    assert ram.read(0x105000, 10) == b"E" * 10
    assert img.description.endswith(", 2 modules")


def test_low_kernel_moves_boot_info() -> None:
    data = build_elf([Seg(0x8000, CODE, memsz=0x4000)], 0x8000)
    img = load_multiboot(NAME, data, MEM, modules=[Module("m", b"x", "m")])
    assert_sane(img, MEM)
    assert img.ebx == 0x1000
    assert mbi_fields(img)["mods"][0][0] == 0x100000       # modules never below 1 MiB


def test_is_multiboot() -> None:
    assert is_multiboot(good_elf())
    assert is_multiboot(build_aout())
    assert not is_multiboot(good_elf(with_header=False))
    assert not is_multiboot(b"")
    assert not is_multiboot(bytes(8192) + mb_header())                 # beyond 8 KiB
    assert not is_multiboot(b"\0\0" + mb_header())                     # misaligned
    assert not is_multiboot(mb_header(checksum=0))


# ------------------------------------------------------------ failures: the file

def test_empty_file() -> None:
    assert_bad(b"", "empty file")


def test_truncated_elf_header() -> None:
    assert_bad(good_elf()[:30], "truncated ELF header")
    assert_bad(good_elf()[:10], "truncated ELF header")


def test_truncated_program_headers() -> None:
    data = bytearray(good_elf())
    struct.pack_into("<H", data, 44, 2000)            # e_phnum
    assert_bad(bytes(data), "truncated ELF program header table")


def test_not_elf_and_no_header() -> None:
    assert_bad(b"hello, world\n" * 100, "no multiboot header in the first 8 KiB")


def test_elf_without_header() -> None:
    assert_bad(good_elf(with_header=False), "no multiboot header in the first 8 KiB")


def test_not_elf_without_aout_kludge() -> None:
    assert_bad(mb_header(0x3) + CODE, "not an ELF file", "bit 16")


def test_bad_checksum() -> None:
    msg = assert_bad(good_elf(header=mb_header(checksum=0x12345678)), "bad checksum")
    assert "no multiboot header" not in msg


def make_elf64(machine: int = 62) -> bytes:
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, machine, 1, 0x100000, 64, 0, 0, 64, 56, 0, 64, 0, 0)
    return ehdr + bytes(0x200)


def test_elf64() -> None:
    assert_bad(make_elf64(), "x86-64 ELF: bt_vmm runs 32-bit x86 kernels")
    assert_bad(make_elf64(183), "64-bit AArch64 ELF")


def test_arm_elf() -> None:
    assert_bad(good_elf(machine=40), "ARM")


def test_big_endian_elf() -> None:
    data = bytearray(good_elf())
    data[5] = 2
    assert_bad(bytes(data), "big-endian")


def test_relocatable_object() -> None:
    assert_bad(good_elf(e_type=1), "ET_REL")


def test_segment_beyond_file_end() -> None:
    data = bytearray(good_elf())
    struct.pack_into("<I", data, 52 + 4, 0x10_0000)     # phdr 0 p_offset
    assert_bad(bytes(data), "PT_LOAD segment 0", "beyond the end of the file")


def test_filesz_above_memsz() -> None:
    data = build_elf([Seg(0x100000, CODE, memsz=0x10)], 0x100000)
    assert_bad(data, "p_filesz 0x40 larger than p_memsz 0x10")


def test_no_load_segments() -> None:
    assert_bad(build_elf([Seg(0x100000, CODE, p_type=4)], 0x100000), "no PT_LOAD segments")
    assert_bad(build_elf([], 0x100000), "no PT_LOAD segments")


def test_overlapping_segments() -> None:
    data = build_elf([Seg(0x100000, CODE, memsz=0x2000), Seg(0x101000, DATA)], 0x100000)
    assert_bad(data, "PT_LOAD segment 0 and PT_LOAD segment 1 overlap at 0x101000")


def test_entry_outside_segments() -> None:
    assert_bad(build_elf([Seg(0x100000, CODE)], 0x200000), "entry point 0x200000", "not inside any PT_LOAD")


# ------------------------------------------------------------ failures: placement

def test_kernel_beyond_ram() -> None:
    data = build_elf([Seg(0x2000000, CODE)], 0x2000000)
    assert_bad(data, "needs memory up to 0x2000040", "only 16 MiB (use -m)")


def test_bss_beyond_ram() -> None:
    data = build_elf([Seg(0x100000, CODE, memsz=32 * MiB)], 0x100000)
    assert_bad(data, "needs memory up to 0x2100000")


def test_kernel_overlaps_monitor() -> None:
    at = f"overlaps the monitor region at {MON_BASE:#x}"
    data = build_elf([Seg(MON_BASE, CODE)], MON_BASE)
    assert_bad(data, at, mem=3 << 30)
    data = build_elf([Seg(MON_BASE - 0x1000, CODE, memsz=0x2000)], MON_BASE - 0x1000)
    assert_bad(data, at)
    data = build_elf([Seg(0xFFFFF000, CODE, memsz=0x10000)], 0xFFFFF000)
    assert_bad(data, at)


def test_segment_in_vga_hole() -> None:
    assert_bad(build_elf([Seg(0xB8000, CODE)], 0xB8000), "VGA/BIOS hole")
    assert_bad(build_elf([Seg(0x9F000, CODE, memsz=0x2000)], 0x9F000), "VGA/BIOS hole")


def test_segment_in_first_page() -> None:
    assert_bad(build_elf([Seg(0x0, CODE)], 0x0), "first page")


def test_memory_too_small() -> None:
    assert_bad(good_elf(), "512 KiB", "minimum", mem=512 * 1024)


def test_memory_too_large() -> None:
    assert_bad(good_elf(), "maximum", mem=4 << 30)


def test_unsupported_flag_bit() -> None:
    msg = assert_bad(good_elf(flags=0x3 | (1 << 3) | (1 << 15)), "unsupported")
    assert "3, 15" in msg


def test_unknown_optional_flag_bit_ignored() -> None:
    load_multiboot(NAME, good_elf(flags=0x3 | (1 << 20)), MEM)


def test_absurd_cmdline() -> None:
    assert_bad(good_elf(), "kernel command line", "limit is 4096", cmdline="x" * 5000)


def test_cmdline_with_nul() -> None:
    assert_bad(good_elf(), "NUL", cmdline="a\0b")


def test_module_beyond_ram() -> None:
    mod = Module("big.img", bytes(16 * MiB), "big.img")
    assert_bad(good_elf(), "module", "use -m", name="big.img", modules=[mod])


def test_module_cmdline_too_long() -> None:
    mod = Module("m.img", b"x", "m" * 5000)
    assert_bad(good_elf(), "module command line", name="m.img", modules=[mod])


def test_boot_info_does_not_fit() -> None:
    # A kernel filling all of conventional memory leaves no room for the MBI.
    data = build_elf([Seg(0x1000, CODE, memsz=0x9EC00)], 0x1000)
    assert_bad(data, "boot information")


def test_message_is_one_line_even_for_odd_names() -> None:
    with pytest.raises(BadInput) as info:
        load_multiboot("bad\nname.elf", b"", MEM)
    assert "\n" not in str(info.value) and "name.elf" in str(info.value)


# ------------------------------------------------------------ failures: a.out kludge

def test_aout_load_addr_above_header_addr() -> None:
    assert_bad(build_aout(0x100000, header_addr=0xFF000), "load_addr 0x100000 is above header_addr")


def test_aout_load_starts_before_file() -> None:
    assert_bad(build_aout(0x100000, header_addr=0x100100), "before the beginning of the file")


def test_aout_load_end_beyond_file() -> None:
    assert_bad(build_aout(0x100000, load_end=0x110000), "beyond the end of the file")


def test_aout_load_end_below_load_addr() -> None:
    assert_bad(build_aout(0x100000, load_end=0xF0000), "load_end_addr 0xf0000 is below load_addr")


def test_aout_bss_below_load_end() -> None:
    assert_bad(build_aout(0x100000, bss_end=0x100010), "bss_end_addr 0x100010")


def test_aout_entry_outside() -> None:
    assert_bad(build_aout(0x100000, entry=0x300000), "entry point 0x300000 lies outside")


def test_aout_header_fields_truncated() -> None:
    assert_bad(mb_header(0x10003), "a.out kludge flag", "address fields")


def test_aout_beyond_ram() -> None:
    assert_bad(build_aout(0x100000, bss_end=0x2000000), "needs memory up to 0x2000000")


# ------------------------------------------------------------ property test

SEEDS = {
    "elf": good_elf(),
    "higher-half": build_elf([Seg(0x100000, CODE, vaddr=0xC0100000),
                              Seg(0x101000, DATA, memsz=0x3000, vaddr=0xC0101000)], 0xC0100000),
    "aout": build_aout(0x100000, pad=0x20),
}
WORDS = st.sampled_from([0, 1, 0x1000, 0x9000, 0xA0000, 0x100000, 0x7FFFFFFF, 0x80000000,
                         MON_BASE, 0xFFFFFFFF, MB_MAGIC]) | st.integers(0, 0xFFFFFFFF)


@st.composite
def mutated_images(draw) -> tuple[bytes, int]:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 6))):
        # Headers are where the interesting fields are: bias towards them.
        pos = draw(st.integers(0, min(0xFF, len(data) - 1)) | st.integers(0, len(data) - 1))
        if draw(st.booleans()):
            data[pos] = draw(st.integers(0, 255))
        elif pos + 4 <= len(data):
            struct.pack_into("<I", data, pos, draw(WORDS))
    if draw(st.booleans()):
        # Keep the multiboot checksum valid so the checks behind it get exercised.
        at = bytes(data).find(struct.pack("<I", MB_MAGIC), 0, 8192)
        if at >= 0 and at % 4 == 0 and at + 12 <= len(data):
            flags = struct.unpack_from("<I", data, at + 4)[0]
            struct.pack_into("<I", data, at + 8, -(MB_MAGIC + flags) & 0xFFFFFFFF)
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    mem = draw(st.sampled_from([1 * MiB, 2 * MiB, MEM, 64 * MiB]))
    return bytes(data), mem


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_images(), st.booleans())
def test_mutations_only_raise_bad_input(case: tuple[bytes, int], with_module: bool) -> None:
    data, mem = case
    mods = [Module("mod.bin", b"M" * 100, "mod.bin arg")] if with_module else []
    try:
        img = load_multiboot(NAME, data, mem, cmdline="x=1", modules=mods)
    except BadInput as exc:
        msg = str(exc)
        assert "\n" not in msg and (NAME in msg or "mod.bin" in msg)
        return
    assert_sane(img, mem)
