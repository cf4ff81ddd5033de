"""Robustness: bad input on the command line and to the loaders, resource
bounds (--tc-size, host memory over a long run), disk safety, a short soak and
fuzzing of the loaders and the whole `bt-vmm run` path.

Bad input extends tests/test_cli.py (which covers most malformed command lines
and kernels): every case here must end with exit status 2, exactly one line on
stderr that starts with "bt-vmm: " and names the problem and the file or
option, no traceback, nothing on stdout, no output file left behind, and any
disk image given untouched. The README's "Robustness: bad input and hostile
guests" lists the cases of both files with the observed outcome.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import stat
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import test_loaders_multiboot as lm
from asmkernel import DATA, POWEROFF, ListSink, build_kernel, read_u32, run_kernel
from test_cli import HELLO_ELF, aout_kludge_image, bt_vmm, elf64_header
from bt_vmm.engines.bt import BTEngine, EngineOptions
from bt_vmm.errors import BadInput
from bt_vmm.tcache import region as R
from bt_vmm.hosted.disk import DiskImage
from bt_vmm.loaders import load_multiboot
from bt_vmm.loaders.elf import parse_elf32
from bt_vmm.machine.pc import Machine
from bt_vmm.tcache import region as R

ROOT = Path(__file__).resolve().parent.parent
SERIAL_OUT, JSON_OUT = "OUT.txt", "OUT.json"
EXIT_BAD_INPUT = 2


# ================================================================ bad input

def _file(name: str, data: bytes | str, mode: int | None = None):
    def setup(tmp: Path) -> None:
        p = tmp / name
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        if mode is not None:
            p.chmod(mode)
    return setup


def _files(*setups):
    def setup(tmp: Path) -> None:
        for s in setups:
            s(tmp)
    return setup


def _symlink(name: str, target: str):
    def setup(tmp: Path) -> None:
        (tmp / name).symlink_to(target)
    return setup


def _dir(name: str):
    def setup(tmp: Path) -> None:
        (tmp / name).mkdir()
    return setup


def _none(tmp: Path) -> None:
    pass


HELLO = HELLO_ELF.read_bytes()
DISK = os.urandom(4096)            # a valid 8-sector image, its bytes checked after the run


def _elf_phdrs_cut() -> bytes:
    """hello.elf cut inside its program header table."""
    phoff, phentsize, phnum = struct.unpack_from("<I", HELLO, 28)[0], *struct.unpack_from("<HH", HELLO, 42)
    return HELLO[:phoff + phentsize * phnum - 7]


def _elf_segment_cut() -> bytes:
    """hello.elf cut inside its first PT_LOAD's file data."""
    elf = parse_elf32("hello.elf", HELLO)
    ph = elf.load_segments()[0]
    return HELLO[:ph.offset + ph.filesz // 2]


def _bzimage(syssize: int = 0) -> bytes:
    """What a Linux bzImage's first sectors look like (boot sector signature,
    "HdrS" setup header, protocol 2.15, a bzImage), with `syssize` paragraphs
    of kernel declared."""
    data = bytearray(0x4000)
    data[0x1F1] = 4                                     # setup_sects
    struct.pack_into("<I", data, 0x1F4, syssize)
    data[0x211] = 1                                     # loadflags: LOADED_HIGH
    struct.pack_into("<H", data, 0x1FE, 0xAA55)
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x206, 0x020F)
    return bytes(data)


def _big_endian_elf() -> bytes:
    data = bytearray(lm.good_elf())
    data[5] = 2
    return bytes(data)


_TC_KIB = (R.TC_END - R.TC_BASE) >> 10   # the largest TC the monitor region holds

# (id, setup, argv, fragments the message must contain, disks to check unchanged)
BAD_INPUT = [
    # --- files
    ("kernel-broken-symlink", _symlink("k.elf", "nowhere.elf"), ["run", "k.elf"], ["k.elf", "no such file"], []),
    ("kernel-unreadable", _file("secret.elf", HELLO, 0o000), ["run", "secret.elf"],
     ["secret.elf", "cannot read kernel file", "Permission denied"], []),
    ("kernel-dev-null", _none, ["run", "/dev/null"], ["/dev/null", "empty file"], []),
    ("kernel-truncated-phdrs", _file("cut.elf", _elf_phdrs_cut()), ["run", "cut.elf"],
     ["cut.elf", "truncated ELF program header table"], []),
    ("kernel-truncated-segment", _file("cut.elf", _elf_segment_cut()), ["run", "cut.elf"],
     ["cut.elf", "PT_LOAD segment 0", "beyond the end of the file"], []),
    ("kernel-truncated-multiboot-header", _file("cut.bin", aout_kludge_image(0x100000)[:20]), ["run", "cut.bin"],
     ["cut.bin", "multiboot header"], []),
    ("kernel-truncated-aout", _file("cut.bin", lm.build_aout(load_end=0x100000 + 0x4000)), ["run", "cut.bin"],
     ["cut.bin", "load_end_addr", "beyond the end of the file"], []),
    # The Linux boot protocol: a setup header that declares no kernel, or more than the file has.
    ("kernel-bzimage", _file("bzImage", _bzimage()), ["run", "bzImage"],
     ["bzImage", "declares no protected-mode kernel"], []),
    ("kernel-bzimage-truncated", _file("bzImage", _bzimage(syssize=0x1000)), ["run", "bzImage"],
     ["bzImage", "truncated bzImage", "declares 68096 bytes"], []),
    ("initrd-on-multiboot-kernel", _files(_file("hello.elf", HELLO), _file("rd.img", b"x")),
     ["run", "hello.elf", "--initrd", "rd.img"], ["hello.elf", "--initrd applies to Linux bzImage"], []),
    ("kernel-big-endian-elf", _file("be.elf", _big_endian_elf()), ["run", "be.elf"], ["be.elf", "big-endian"], []),
    ("kernel-aarch64-elf", _file("a64.elf", elf64_header(183)), ["run", "a64.elf"],
     ["a64.elf", "64-bit AArch64 ELF"], []),
    ("kernel-overlapping-segments", _file("ovl.elf", lm.build_elf(
        [lm.Seg(0x100000, lm.CODE, memsz=0x2000), lm.Seg(0x101000, lm.DATA)], 0x100010)), ["run", "ovl.elf"],
     ["ovl.elf", "overlap at 0x101000"], []),
    ("kernel-segment-beyond-ram", _file("far.elf", lm.build_elf(
        [lm.Seg(0x100000, lm.CODE), lm.Seg(0x8000000, lm.DATA)], 0x100010)), ["run", "-m", "64", "far.elf"],
     ["far.elf", "0x8000020", "64 MiB"], []),
    ("kernel-segment-in-vga-hole", _file("vga.elf", lm.build_elf([lm.Seg(0xB8000, lm.CODE)], 0xB8000)),
     ["run", "vga.elf"], ["vga.elf", "VGA/BIOS hole"], []),
    ("kernel-bss-over-monitor", _file("huge.bin", aout_kludge_image(0x100000, bss_end_addr=0xFFF00000)),
     ["run", "huge.bin"], ["huge.bin", "monitor region"], []),
    ("kernel-too-big-for-memory", _file("big.elf", lm.build_elf([lm.Seg(0x100000, lm.CODE, memsz=0x300000)],
                                                                0x100010)),
     ["run", "-m", "2", "big.elf"], ["big.elf", "2 MiB", "use -m"], []),
    # --- modules (the bzImage/initrd loader does not exist yet: modules are the initrds here)
    ("module-missing", _none, ["run", "--guest", "hello", "--module", "nothere.img arg"],
     ["nothere.img", "no such file"], []),
    ("module-is-directory", _dir("mods"), ["run", "--guest", "hello", "--module", "mods"], ["mods", "directory"], []),
    ("module-too-big-for-memory", _file("mod.img", bytes(0x180000)),
     ["run", "--guest", "hello", "-m", "2", "--module", "mod.img"], ["mod.img", "module", "2 MiB"], []),
    ("append-too-long", _none, ["run", "--guest", "hello", "--append", "x" * 5000],
     ["hello.elf", "command line is 5010 bytes long", "4096"], []),
    # --- absurd memory sizes
    ("mem-astronomical", _none, ["run", "-m", "99999999999999999999G"], ["memory", "maximum"], []),
    ("mem-above-3g", _none, ["run", "-m", "3073M"], ["memory", "maximum of 3072 MiB"], []),
    ("mem-fraction", _none, ["run", "-m", "1.5G"], ["-m", "1.5G"], []),
    ("mem-negative", _none, ["run", "--mem=-64"], ["-m", "'-64'"], []),
    ("mem-hex", _none, ["run", "-m", "0x100"], ["-m", "0x100"], []),
    # --- --disk
    ("disk-missing", _none, ["run", "--guest", "hello", "--disk", "nodisk.img"], ["nodisk.img", "no such file"], []),
    ("disk-empty", _file("empty.img", b""), ["run", "--guest", "hello", "--disk", "empty.img"],
     ["empty.img", "empty"], []),
    ("disk-not-sectors", _file("odd.img", bytes(1000)), ["run", "--guest", "hello", "--disk", "odd.img"],
     ["odd.img", "1000 bytes", "multiple of 512"], ["odd.img"]),
    ("disk-is-directory", _dir("dd"), ["run", "--guest", "hello", "--disk", "dd"], ["dd", "directory"], []),
    ("disk-char-device", _none, ["run", "--guest", "hello", "--disk", "/dev/null"],
     ["/dev/null", "not a regular file"], []),
    ("disk-unknown-option", _file("d.img", DISK), ["run", "--guest", "hello", "--disk", "d.img,rw"],
     ["'rw'", "d.img,rw", "PATH,ro"], ["d.img"]),
    ("disk-empty-name", _none, ["run", "--guest", "hello", "--disk", ",ro"], ["--disk", "empty file name"], []),
    ("disk-twice", _file("d.img", DISK), ["run", "--guest", "hello", "--disk", "d.img", "--disk", "d.img"],
     ["d.img", "in use"], ["d.img"]),
    ("disk-five", _file("d.img", DISK), ["run", "--guest", "hello"] + ["--disk", "d.img,ro"] * 5,
     ["--disk", "at most 4"], ["d.img"]),
    ("disk-after-bad-kernel", _file("d.img", DISK), ["run", "missing.elf", "--disk", "d.img"],
     ["missing.elf", "no such file"], ["d.img"]),
    # --- --tc-size
    ("tc-size-zero", _none, ["run", "--tc-size", "0"], ["--tc-size", "'0'", "minimum of 16 KiB"], []),
    ("tc-size-too-small", _none, ["run", "--tc-size", "8K"], ["--tc-size", "'8K'", "minimum"], []),
    ("tc-size-too-big", _none, ["run", "--tc-size", f"{_TC_KIB + 1}K"],
     ["--tc-size", f"'{_TC_KIB + 1}K'", f"{_TC_KIB} KiB"], []),
    ("tc-size-absurd", _none, ["run", "--tc-size", "64G"], ["--tc-size", "'64G'", "above"], []),
    ("tc-size-text", _none, ["run", "--tc-size", "lots"], ["--tc-size", "'lots'"], []),
    ("tc-size-with-trap-engine", _none, ["run", "--engine", "trap", "--tc-size", "64K"],
     ["--tc-size", "--engine bt"], []),
]

ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str


def run_main(cwd: Path, *argv: str) -> Outcome:
    """`bt-vmm ARGV` in this process (the subprocess form is test_cli.bt_vmm,
    used below for a few cases): about 100 times faster to start."""
    from bt_vmm.cli.main import main
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(list(argv))
            except SystemExit as e:             # argparse errors exit
                status = e.code
    finally:
        os.chdir(old)
    return Outcome(status, out.getvalue(), err.getvalue())


def _run_case(case, base: Path, subprocess: bool = False) -> tuple:
    case_id, setup, argv, _, disks = case
    tmp = base / case_id
    tmp.mkdir()
    setup(tmp)
    before = {name: hashlib.sha256((tmp / name).read_bytes()).hexdigest() for name in disks}
    listing = sorted(p.name for p in tmp.iterdir())
    run = bt_vmm if subprocess else run_main
    proc = run(tmp, *argv, "--serial", f"file:{SERIAL_OUT}", "--stats-json", JSON_OUT)
    return tmp, proc, before, listing


def check_bad_input(case, tmp: Path, proc, before: dict, listing: list) -> None:
    case_id, _, _, needles, disks = case
    assert proc.returncode == EXIT_BAD_INPUT, (proc.returncode, proc.stderr)
    err = proc.stderr
    assert "Traceback" not in err and "internal error" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith("bt-vmm: ")
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert proc.stdout == ""
    assert sorted(p.name for p in tmp.iterdir()) == listing       # no OUT.txt / OUT.json, nothing else
    for name in disks:
        assert hashlib.sha256((tmp / name).read_bytes()).hexdigest() == before[name]


@pytest.mark.parametrize("case", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input(tmp_path, case):
    if case[0] == "kernel-unreadable" and ROOT_USER:
        pytest.skip("root reads any file")
    check_bad_input(case, *_run_case(case, tmp_path))


SUBPROCESS_CASES = ["kernel-truncated-segment", "disk-twice", "tc-size-too-small", "kernel-bzimage"]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_bad_input_as_a_process(tmp_path, case_id):
    """The same checks on `python -m bt_vmm` itself, for a few cases."""
    case = next(c for c in BAD_INPUT if c[0] == case_id)
    check_bad_input(case, *_run_case(case, tmp_path, subprocess=True))


# ================================================================ --tc-size

def test_tc_size_small_enough_to_flush_runs_the_test_os(tmp_path):
    """The bundled test OS in a 32 KiB TC (its working set is about 55 KiB):
    the TC fills and is flushed several times, and every self-test passes."""
    proc = bt_vmm(tmp_path, "run", "--guest", "testos", "--tc-size", "32K", "--timeout", "100",
                  "--stats-json", JSON_OUT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert "testos: 25 tests, 0 failed" in proc.stdout
    stats = json.loads((tmp_path / JSON_OUT).read_text())
    assert stats["flushes_by_reason"].get("tc-full", 0) >= 3
    assert stats["tc_occupancy_peak_bytes"] <= 32 << 10
    assert stats["invalidations_by_reason"].get("flush:tc-full", 0) > stats["tus_translated"] // 4


def test_tc_minimum_holds_the_largest_ccf():
    """64 popfd in one TU make the largest CCF the translator emits (with the
    execution counters on): it fits in a TC of the minimum --tc-size."""
    asm = ("push 0x202;" * 64 + "jmp pops; pops:" + "popfd;" * 64
           + f"mov dword ptr [{DATA}], 1; {POWEROFF} fault_handler: hlt")
    result, engine, _ = run_kernel(asm, tc_size=R.TC_MIN_SIZE, count=True)
    assert result.status == 0, result
    assert read_u32(engine, DATA) == 1
    biggest = max(len(c.code.code) for c in engine.tcache.all_ccfs())
    assert 8 << 10 < biggest <= R.TC_MIN_SIZE - 0x1000


# ================================================================ disk safety

ATA_DATA, ATA_ERROR, ATA_COUNT, ATA_CMD = 0x1F0, 0x1F1, 0x1F2, 0x1F7
BUF = 0x400000


def ata_write(tag: int, lba: int, count: int, fill: int) -> str:
    """WRITE SECTORS (LBA28, PIO, polled) of `count` sectors of byte `fill`;
    the final status and error registers land at DATA + 8*tag."""
    return f"""
    mov edi, {BUF}; mov ecx, {512 * count}; mov al, {fill}; rep stosb
    mov dx, 0x1f6; mov al, {0xE0 | (lba >> 24) & 0xF}; out dx, al
    mov dx, 0x1f2; mov al, {count & 0xFF}; out dx, al
    mov dx, 0x1f3; mov al, {lba & 0xFF}; out dx, al
    mov dx, 0x1f4; mov al, {(lba >> 8) & 0xFF}; out dx, al
    mov dx, 0x1f5; mov al, {(lba >> 16) & 0xFF}; out dx, al
    mov dx, 0x1f7; mov al, 0x30; out dx, al
    mov esi, {BUF}
    mov ebx, {count}
w{tag}:
    mov dx, 0x1f7
p{tag}:
    in al, dx
    test al, 0x80
    jnz p{tag}
    test al, 0x01
    jnz e{tag}
    test al, 0x08
    jz e{tag}
    mov dx, 0x1f0
    mov ecx, 256
    rep outsw
    dec ebx
    jnz w{tag}
e{tag}:
    mov dx, 0x1f7
    in al, dx
    mov [{DATA + 8 * tag}], al
    mov dx, 0x1f1
    in al, dx
    mov [{DATA + 8 * tag + 4}], al
"""


class LoggingDisk(DiskImage):
    """Records every write and checks, at each one, that the file holds
    exactly the original bytes with every earlier write applied in order
    (written through before the guest could issue the next one)."""

    def __init__(self, path: str, read_only: bool = False) -> None:
        super().__init__(path, read_only)
        self.log: list[tuple[int, int, int]] = []      # (lba, sectors, first byte)
        with open(path, "rb") as f:
            self.expected = bytearray(f.read())

    def write_from_buffer(self, lba: int, count: int) -> int:
        with open(self.path, "rb") as f:
            assert f.read() == self.expected, f"the image is not what the writes so far make it (at #{len(self.log)})"
        done = super().write_from_buffer(lba, count)
        data = bytes(self.buffer[:512 * done])
        self.expected[512 * lba:512 * lba + len(data)] = data
        self.log.append((lba, done, data[0]))
        return done


def run_disk_guest(asm: str, disk: DiskImage):
    boot = load_multiboot("disk.bin", build_kernel(asm + f"{POWEROFF} fault_handler: hlt"), 16 << 20)
    machine = Machine(16 << 20, ListSink(), [disk])
    machine.load(boot)
    engine = BTEngine(machine, EngineOptions(timeout=20))
    try:
        result = engine.run(boot.entry)
    finally:
        machine.close()
    return result, engine


def test_guest_writes_reach_the_image_in_order(tmp_path):
    image = tmp_path / "disk.img"
    original = os.urandom(16 * 512)
    image.write_bytes(original)
    disk = LoggingDisk(str(image))
    asm = (ata_write(0, 5, 1, 0xA1) + ata_write(1, 2, 1, 0xB2) + ata_write(2, 5, 1, 0xC3)
           + ata_write(3, 7, 3, 0xD4))
    result, engine = run_disk_guest(asm, disk)
    assert result.status == 0, result
    assert disk.log == [(5, 1, 0xA1), (2, 1, 0xB2), (5, 1, 0xC3), (7, 1, 0xD4), (8, 1, 0xD4), (9, 1, 0xD4)]
    for tag in range(4):
        assert read_u32(engine, DATA + 8 * tag) & 0xFF == 0x50        # DRDY | DSC, no DRQ, no ERR
    after = image.read_bytes()
    expect = bytearray(original)
    for lba, fill in ((2, 0xB2), (5, 0xC3), (7, 0xD4), (8, 0xD4), (9, 0xD4)):
        expect[512 * lba:512 * lba + 512] = bytes([fill]) * 512
    assert after == bytes(expect)


@pytest.mark.parametrize("lba, count", [(16, 1), (15, 2), (0xFFFFFFF, 1), (10, 0)],
                         ids=["one-past-the-end", "straddling-the-end", "lba28-max", "count-256"])
def test_writes_outside_the_image_fail_and_write_nothing(tmp_path, lba, count):
    image = tmp_path / "disk.img"
    original = os.urandom(16 * 512)
    image.write_bytes(original)
    disk = LoggingDisk(str(image))
    result, engine = run_disk_guest(ata_write(0, lba, count, 0xEE), disk)
    assert result.status == 0, result
    status, error = read_u32(engine, DATA) & 0xFF, read_u32(engine, DATA + 4) & 0xFF
    assert status & 0x01 and error == 0x10                  # ERR, IDNF: before any sector moves
    assert disk.log == []
    assert image.read_bytes() == original and image.stat().st_size == 16 * 512


def test_read_only_image_refuses_writes_and_stays_byte_identical(tmp_path):
    image = tmp_path / "ro.img"
    original = os.urandom(16 * 512)
    image.write_bytes(original)
    image.chmod(stat.S_IRUSR | stat.S_IRGRP)
    mtime = image.stat().st_mtime_ns
    disk = LoggingDisk(str(image), read_only=True)
    result, engine = run_disk_guest(ata_write(0, 3, 1, 0x77) + ata_write(1, 0, 2, 0x88), disk)
    assert result.status == 0, result
    for tag in range(2):
        assert read_u32(engine, DATA + 8 * tag) & 0x01 and read_u32(engine, DATA + 8 * tag + 4) & 0xFF == 0x04
    assert disk.log == []
    assert image.read_bytes() == original and image.stat().st_mtime_ns == mtime


# ================================================================ soak (short form)

def _soak_module():
    spec = importlib.util.spec_from_file_location("soak", ROOT / "benchmarks" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("soak", module)        # dataclasses look their module up there
    spec.loader.exec_module(sys.modules["soak"])
    return sys.modules["soak"]


def test_short_soak_of_the_test_os_shell():
    """benchmarks/soak.py's workload, briefly: the test OS's self-tests, then
    four rounds of 'forkwait 10' typed at its shell prompt. The long form
    (python benchmarks/soak.py) measures host RSS over hundreds of rounds."""
    soak = _soak_module()
    res = soak.run_soak(rounds=4, forkwait=10, timeout=100)
    assert res.ok, (res.problems, res.output[-2000:])
    c = res.counters
    assert c["syscalls"] >= 4 * 10 and c["address_spaces_built"] >= 4 * 10
    assert c["address_spaces_live"] <= 65 and c["shadow_pool_pages_used"] < c["shadow_pool_pages"]
    # Host memory: the run must not balloon (the long form measures the slope).
    assert max(s[2] for s in res.samples) - res.samples[0][2] < 64 << 20


# ================================================================ fuzzing

ELF_SEED = lm.good_elf()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 0x80), st.integers(0, 255)), max_size=8),
       st.integers(0, len(ELF_SEED)))
def test_elf_parser_mutations_only_raise_bad_input(edits, cut):
    """The ELF32 reader on a valid image with header bytes changed and the
    file cut anywhere: it returns or says BadInput, never anything else."""
    data = bytearray(ELF_SEED)
    for pos, value in edits:
        data[pos] = value
    data = bytes(data[:cut])
    try:
        elf = parse_elf32("fuzz.elf", data)
    except BadInput as e:
        assert "\n" not in str(e) and str(e).startswith("fuzz.elf: ")
        return
    for ph in elf.load_segments():
        assert ph.filesz <= ph.memsz and (not ph.filesz or ph.offset + ph.filesz <= len(data))


# A small kernel that loops, calls, stores and powers off: mutated copies of it
# go through the whole `bt-vmm run` path in this process.
RUN_SEED = build_kernel(f"""
    mov ecx, 50
again:
    add eax, ecx
    call func
    dec ecx
    jnz again
    mov [{DATA}], eax
    {POWEROFF}
func:
    ret
fault_handler:
    iretd
""")
DOCUMENTED = {0, 2, 4, 6, 8, 10, 124}


@st.composite
def mutated_kernels(draw) -> bytes:
    data = bytearray(RUN_SEED)
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(st.integers(0, 0x3F) | st.integers(0, len(data) - 1))
        if draw(st.booleans()) or pos + 4 > len(data):
            data[pos] = draw(st.integers(0, 255))
        else:
            struct.pack_into("<I", data, pos, draw(st.sampled_from(
                [0, 0xFFFFFFFF, 0x100000, 0x7FFFFFFF, 0xFFC00000]) | st.integers(0, 0xFFFFFFFF)))
    if draw(st.booleans()):       # keep the header's checksum valid, to get past it
        flags = struct.unpack_from("<I", data, 4)[0]
        struct.pack_into("<I", data, 8, -(lm.MB_MAGIC + flags) & 0xFFFFFFFF)
    return bytes(data[:draw(st.integers(1, len(data)))]) if draw(st.integers(0, 9)) == 0 else bytes(data)


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(mutated_kernels())
def test_mutated_kernels_never_crash_the_monitor(tmp_path, image):
    """Mutated images through `bt-vmm run` (loader, machine, engine, with
    --max-insns and --timeout): an exit status from the documented table and
    no internal error, whatever the bytes."""
    from bt_vmm.cli.main import main
    path = tmp_path / "fuzz.bin"
    path.write_bytes(image)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(["run", str(path), "-m", "4", "--max-insns", "20000", "--timeout", "1",
                           "--serial", "none"])
        except SystemExit as e:            # argparse only; never expected here
            status = e.code
    message = err.getvalue()
    assert "internal error" not in message and "Traceback" not in message, message
    assert status in DOCUMENTED or status & 1, (status, message)
    if status == EXIT_BAD_INPUT:
        assert message.count("\n") == 1 and "fuzz.bin" in message
