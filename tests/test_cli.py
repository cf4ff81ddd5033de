"""Command-line tests: `python -m bt_vmm` run as a subprocess.

Bad input must end with exit status 2 and exactly one line on stderr that
names the problem (and the file, where a file is involved), never a traceback,
and must not leave behind an output file that was asked for on the command
line. The positive tests boot the bundled guests end to end.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUEST_DIR = ROOT / "bt_vmm" / "guests"
HELLO_ELF = GUEST_DIR / "hello.elf"
BUNDLED = ["demo", "hello", "sensitive", "smc"]

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_INSN_LIMIT = 8

MB_MAGIC = 0x1BADB002
CALL_TIMEOUT = 120      # seconds per subprocess; a bad-input run takes well under one


# ---------------------------------------------------------------- helpers

def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("BT_VMM_DEBUG", None)           # that variable turns errors into tracebacks
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def bt_vmm(cwd: Path, *args: str, timeout: float = CALL_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bt_vmm", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _u32(v: int) -> int:
    return v & 0xFFFFFFFF


def aout_kludge_image(load_addr: int, bss_end_addr: int = 0) -> bytes:
    """A multiboot a.out-kludge image: header at offset 0, loaded at load_addr.

    The code after the 32-byte header is `cli; hlt`; the entry point is right
    after the header.
    """
    flags = 0x00010003                       # page align, memory info, a.out kludge
    header = struct.pack("<IIIIIIII", MB_MAGIC, flags, _u32(-(MB_MAGIC + flags)),
                         load_addr,           # header_addr (header is at offset 0)
                         load_addr,           # load_addr
                         0,                   # load_end_addr: the rest of the file
                         bss_end_addr,        # 0: no bss
                         load_addr + 32)      # entry_addr
    return header + b"\xfa\xf4" + b"\x90" * 30


def elf64_header(e_machine: int = 62) -> bytes:
    """A minimal ELF64 executable header (no program headers)."""
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    return ident + struct.pack("<HHIQQQIHHHHHH", 2, e_machine, 1, 0x100000, 0, 0, 0,
                               64, 56, 0, 64, 0, 0)


def elf32_header(e_machine: int) -> bytes:
    """A minimal ELF32 little-endian executable header for e_machine (no program headers)."""
    ident = b"\x7fELF" + bytes([1, 1, 1, 0]) + bytes(8)
    return ident + struct.pack("<HHIIIIIHHHHHH", 2, e_machine, 1, 0x100000, 0, 0, 0,
                               52, 32, 0, 40, 0, 0)


def hello_with_bad_checksum() -> bytes:
    data = bytearray(HELLO_ELF.read_bytes())
    pos = data.find(struct.pack("<I", MB_MAGIC), 0, 8192)
    assert pos >= 0 and pos % 4 == 0, "hello.elf has no multiboot header in its first 8 KiB"
    data[pos + 8] ^= 0xFF                    # first byte of the checksum field
    return bytes(data)


# ---------------------------------------------------------------- bad input
#
# Each case: (id, setup, argv, substrings the message must contain, run_outputs).
# setup(tmp_path) creates input files; run_outputs says whether `run`'s
# --serial file:OUT.txt / --stats-json OUT.json may be appended (False for
# cases that are not `run` or that exercise that very option).

def _write(name: str, data: bytes | str):
    def setup(tmp: Path) -> None:
        p = tmp / name
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    return setup


def _mkdir(name: str):
    def setup(tmp: Path) -> None:
        (tmp / name).mkdir()
    return setup


def _nothing(tmp: Path) -> None:
    pass


BAD_INPUT = [
    ("unknown-option", _nothing, ["--bogus"], ["unrecognized arguments", "--bogus"], None),
    ("unknown-run-option", _nothing, ["run", "--bogus"], ["unrecognized arguments", "--bogus"], "both"),
    ("extra-positional", _nothing, ["run", "a.elf", "b.elf"], ["unrecognized arguments", "b.elf"], "both"),
    ("unknown-subcommand", _nothing, ["frob"], ["invalid choice", "frob"], None),
    ("no-subcommand", _nothing, [], ["command"], None),
    ("mem-not-a-size", _nothing, ["run", "-m", "abc"], ["-m", "abc"], "both"),
    ("mem-zero", _nothing, ["run", "-m", "0"], ["memory", "0 MiB", "minimum"], "both"),
    ("mem-not-4k-multiple", _nothing, ["run", "-m", "5K"], ["5K", "4 KiB"], "both"),
    ("mem-too-small", _nothing, ["run", "-m", "512K"], ["512 KiB", "minimum", "-m"], "both"),
    ("mem-absurd", _nothing, ["run", "-m", "100G"], ["memory", "maximum"], "both"),
    ("max-insns-zero", _nothing, ["run", "--max-insns", "0"], ["--max-insns", "'0'"], "both"),
    ("max-insns-negative", _nothing, ["run", "--max-insns", "-5"], ["--max-insns", "-5"], "both"),
    ("max-insns-text", _nothing, ["run", "--max-insns", "x"], ["--max-insns", "'x'"], "both"),
    ("timeout-zero", _nothing, ["run", "--timeout", "0"], ["--timeout", "'0'"], "both"),
    ("timeout-negative", _nothing, ["run", "--timeout", "-1"], ["--timeout", "-1"], "both"),
    ("timeout-text", _nothing, ["run", "--timeout", "abc"], ["--timeout", "abc"], "both"),
    ("serial-bogus", _nothing, ["run", "--serial", "bogus"], ["--serial", "bogus"], "json"),
    ("serial-empty-file", _nothing, ["run", "--serial", "file:"], ["--serial", "file:"], "json"),
    ("serial-missing-dir", _nothing, ["run", "--serial", "file:/nonexistent-dir/out.txt"],
     ["--serial", "/nonexistent-dir/out.txt", "does not exist"], "json"),
    ("serial-is-directory", _mkdir("outdir"), ["run", "--serial", "file:outdir"],
     ["--serial", "outdir", "directory"], "json"),
    ("stats-json-missing-dir", _nothing, ["run", "--guest", "hello", "--stats-json", "/nonexistent-dir/s.json"],
     ["--stats-json", "/nonexistent-dir/s.json", "does not exist"], "serial"),
    ("stats-json-is-directory", _mkdir("jsondir"), ["run", "--guest", "hello", "--stats-json", "jsondir"],
     ["--stats-json", "jsondir", "directory"], "serial"),
    ("engine-unknown", _nothing, ["run", "--engine", "kvm"], ["--engine", "kvm"], "both"),
    ("kernel-missing", _nothing, ["run", "missing.elf"], ["missing.elf", "no such file"], "both"),
    ("kernel-is-directory", _mkdir("kdir"), ["run", "kdir"], ["kdir", "directory"], "both"),
    ("kernel-empty", _write("empty.elf", b""), ["run", "empty.elf"], ["empty.elf", "empty"], "both"),
    ("kernel-truncated-elf", _write("trunc.elf", HELLO_ELF.read_bytes()[:30]), ["run", "trunc.elf"],
     ["trunc.elf", "truncated"], "both"),
    ("kernel-text-file", _write("notes.txt", "just some text\nnot a kernel\n" * 20), ["run", "notes.txt"],
     ["notes.txt", "multiboot header"], "both"),
    ("kernel-bad-checksum", _write("badsum.elf", hello_with_bad_checksum()), ["run", "badsum.elf"],
     ["badsum.elf", "checksum"], "both"),
    ("kernel-x86-64-elf", _write("k64.elf", elf64_header(62)), ["run", "k64.elf"],
     ["k64.elf", "x86-64", "32-bit"], "both"),
    ("kernel-arm-elf", _write("arm.elf", elf32_header(40)), ["run", "arm.elf"],
     ["arm.elf", "ARM"], "both"),
    ("kernel-in-monitor-region", _write("monitor.bin", aout_kludge_image(0xFFD00000)), ["run", "monitor.bin"],
     ["monitor.bin", "monitor region"], "both"),
    ("kernel-exceeds-memory", _write("big.bin", aout_kludge_image(0x100000, bss_end_addr=0x300000)),
     ["run", "-m", "2", "big.bin"], ["big.bin", "0x300000", "2 MiB"], "both"),
    ("guest-unknown", _nothing, ["run", "--guest", "nosuch"], ["unknown guest", "nosuch"], "both"),
    ("kernel-and-guest", _write("k.elf", HELLO_ELF.read_bytes()), ["run", "k.elf", "--guest", "hello"],
     ["KERNEL", "--guest"], "both"),
]

SERIAL_OUT = "OUT.txt"
JSON_OUT = "OUT.json"


@pytest.mark.parametrize("case_id, setup, argv, needles, outputs", BAD_INPUT,
                         ids=[c[0] for c in BAD_INPUT])
def test_bad_input(tmp_path, case_id, setup, argv, needles, outputs):
    setup(tmp_path)
    argv = list(argv)
    if outputs in ("both", "serial"):
        argv += ["--serial", f"file:{SERIAL_OUT}"]
    if outputs in ("both", "json"):
        argv += ["--stats-json", JSON_OUT]
    before = sorted(p.name for p in tmp_path.iterdir())

    proc = bt_vmm(tmp_path, *argv)

    assert proc.returncode == EXIT_BAD_INPUT, (proc.returncode, proc.stderr)
    err = proc.stderr
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), f"expected one line on stderr, got {err!r}"
    line = lines[0]
    assert line.strip(), "empty error message"
    assert line.startswith("bt-vmm: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert "internal error" not in line
    assert proc.stdout == "", f"nothing should reach stdout on bad input, got {proc.stdout!r}"
    # No output file left behind, whether or not it was asked for.
    assert not (tmp_path / SERIAL_OUT).exists()
    assert not (tmp_path / JSON_OUT).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_bad_input_runs_no_guest_with_stats(tmp_path):
    """--stats must not print a table (or anything else) when the input is bad."""
    proc = bt_vmm(tmp_path, "run", "missing.elf", "--stats")
    assert proc.returncode == EXIT_BAD_INPUT
    assert proc.stderr.splitlines() == ["bt-vmm: missing.elf: no such file"]
    assert proc.stdout == ""


# ---------------------------------------------------------------- good input

def test_version(tmp_path):
    proc = bt_vmm(tmp_path, "--version")
    assert proc.returncode == EXIT_OK
    assert proc.stdout.startswith("bt-vmm ")


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"]], ids=["top", "run"])
def test_help(tmp_path, argv):
    proc = bt_vmm(tmp_path, *argv)
    assert proc.returncode == EXIT_OK
    assert "usage:" in proc.stdout
    assert proc.stderr == ""


def test_guests_lists_bundled(tmp_path):
    proc = bt_vmm(tmp_path, "guests")
    assert proc.returncode == EXIT_OK, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    for name in BUNDLED:
        assert name in names
    assert proc.stderr == ""


@pytest.mark.skipif(shutil.which("bt-vmm") is None, reason="bt-vmm console script not installed")
def test_console_script(tmp_path):
    proc = subprocess.run(["bt-vmm", "guests"], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=CALL_TIMEOUT)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "hello" in proc.stdout


def test_run_default_is_demo(tmp_path):
    proc = bt_vmm(tmp_path, "run")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "bt_vmm demo guest" in proc.stdout
    assert "demo: done" in proc.stdout
    assert proc.stderr == ""


def test_run_hello_append(tmp_path):
    proc = bt_vmm(tmp_path, "run", "--guest", "hello", "--append", "a b")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "cmdline: hello.elf a b" in proc.stdout.splitlines()


def test_run_kernel_file(tmp_path):
    """A KERNEL path on the command line boots like --guest; the cmdline names the file."""
    (tmp_path / "mykernel.elf").write_bytes(HELLO_ELF.read_bytes())
    proc = bt_vmm(tmp_path, "run", "mykernel.elf", "--append", "x=1")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "cmdline: mykernel.elf x=1" in proc.stdout.splitlines()


def test_run_aout_kludge_image(tmp_path):
    """The hand-built a.out-kludge image (cli; hlt) is valid when loaded at 1 MiB."""
    (tmp_path / "halt.bin").write_bytes(aout_kludge_image(0x100000))
    proc = bt_vmm(tmp_path, "run", "-m", "2", "halt.bin")
    assert proc.returncode == EXIT_OK, proc.stderr


def test_serial_file(tmp_path):
    proc = bt_vmm(tmp_path, "run", "--guest", "hello", "--serial", f"file:{SERIAL_OUT}")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert proc.stdout == ""
    out = (tmp_path / SERIAL_OUT).read_text()
    assert "Hello from a bt_vmm guest!" in out
    assert "cmdline: hello.elf" in out


def test_serial_none(tmp_path):
    proc = bt_vmm(tmp_path, "run", "--guest", "hello", "--serial", "none")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr == ""
    assert sorted(tmp_path.iterdir()) == []


STAT_LABELS = ["tus translated", "ccf bytes", "ident share", "chained exits", "exits by reason",
               "tc lookups", "tc lookup misses", "invalidations by reason",
               "guest insns executed from tc"]


def test_stats_table(tmp_path):
    proc = bt_vmm(tmp_path, "run", "--guest", "hello", "--stats")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "Hello from a bt_vmm guest!" in proc.stdout
    for label in STAT_LABELS:
        assert label in proc.stderr, f"{label!r} missing from the statistics table"
        assert label not in proc.stdout
    assert "Traceback" not in proc.stderr


STAT_KEYS = ["tus_translated", "ccf_bytes", "ident_share", "chained_exits", "exits_by_reason",
             "tc_lookups", "tc_lookup_misses", "invalidations_by_reason",
             "guest_insns_executed_from_tc"]


@pytest.mark.parametrize("guest", ["hello", "demo"])
def test_stats_json(tmp_path, guest):
    proc = bt_vmm(tmp_path, "run", "--guest", guest, "--stats-json", JSON_OUT)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert proc.stdout.strip(), "guest output should still reach stdout"
    assert proc.stderr == ""
    data = json.loads((tmp_path / JSON_OUT).read_text())
    for key in STAT_KEYS:
        assert key in data, key
    assert isinstance(data["tus_translated"], int) and data["tus_translated"] > 0
    assert isinstance(data["ccf_bytes"], int) and data["ccf_bytes"] > 0
    assert 0 < data["ident_share"] <= 1
    assert isinstance(data["chained_exits"], int) and data["chained_exits"] >= 0
    assert isinstance(data["exits_by_reason"], dict)
    assert all(isinstance(v, int) and v > 0 for v in data["exits_by_reason"].values())
    assert isinstance(data["tc_lookups"], int) and data["tc_lookups"] >= 0
    assert isinstance(data["tc_lookup_misses"], int) and data["tc_lookup_misses"] >= 0
    assert isinstance(data["invalidations_by_reason"], dict)
    assert data["guest_insns_executed_from_tc"] > data["tus_translated"]
    assert data.get("exit_status", 0) == 0


def test_max_insns(tmp_path):
    proc = bt_vmm(tmp_path, "run", "--max-insns", "1000")
    assert proc.returncode == EXIT_INSN_LIMIT, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "--max-insns" in lines[0]
    assert "demo: done" not in proc.stdout


@pytest.mark.parametrize("guest", BUNDLED)
def test_check_bundled_guest(tmp_path, guest):
    proc = bt_vmm(tmp_path, "run", "--guest", guest, "--check", "--serial", "none")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "Traceback" not in proc.stderr
