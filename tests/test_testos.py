"""The project's test OS under the BT engine: paging, processes in ring 3,
preemption, demand paging, copy-on-write fork, the IDE disk, the serial shell
-- and the same verdicts under QEMU when it is installed."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest

from test_guests import _verdicts, run_cli


@pytest.fixture(scope="module")
def testos(built_guests):
    return str(built_guests / "testos.elf")


def test_selftest_runs_under_check(testos):
    proc = run_cli("run", testos, "--check", "--stats", "--timeout", "100")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert "testos: 25 tests, 0 failed" in proc.stdout
    assert "check passed" in proc.stderr
    # the run went through the mechanisms it is meant to exercise
    for counter in ("to-user", "user-int:0x80", "hidden-fault", "interrupt", "preempt"):
        assert counter in proc.stderr


def test_disk_reads_and_writes_reach_the_image(testos, tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(1 << 20))
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    proc = run_cli("run", testos, "--disk", str(image), "--timeout", "100")
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "ok   disk_rw" in proc.stdout and "testos: 26 tests, 0 failed" in proc.stdout
    # the guest wrote its pattern, read it back, then restored the sectors
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before


def test_read_only_disk_is_left_byte_identical(testos, tmp_path):
    image = tmp_path / "ro.img"
    image.write_bytes(os.urandom(1 << 20))
    before = image.read_bytes()
    proc = run_cli("run", testos, "--disk", f"{image},ro", "--timeout", "100")
    assert "FAIL disk_rw" in proc.stdout          # the guest's writes are refused (ABRT)
    assert image.read_bytes() == before


def test_typed_input_reaches_the_shell(testos):
    proc = run_cli("run", testos, "--append", "shell", "--timeout", "100",
                   input="echo hello there\nforkwait 10\nexit\n")
    assert proc.returncode == 0, proc.stdout[-2000:]
    out = proc.stdout
    assert "testos> echo hello there\nhello there" in out      # echoed as typed, then run
    assert "forkwait: 10 children forked and reaped, 0 bad statuses" in out
    assert "bye" in out


@pytest.mark.skipif(shutil.which("qemu-system-i386") is None, reason="QEMU is not installed")
def test_same_verdicts_as_qemu(testos):
    qemu = subprocess.run(
        ["qemu-system-i386", "-M", "pc", "-m", "64", "-nographic", "-no-reboot", "-kernel", testos,
         "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-serial", "stdio", "-monitor", "none"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    ours = run_cli("run", testos, "--timeout", "100")
    assert qemu.returncode == ours.returncode == 0
    assert _verdicts(ours.stdout) == _verdicts(qemu.stdout)
