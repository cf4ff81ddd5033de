"""The project's guest kernels, built from source, run under the BT engine with --check."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bt_vmm.guests.registry import GUESTS, guest_path

EXPECTED = {
    "hello.elf": ["Hello from a bt_vmm guest!", "cmdline: hello.elf x=1 y", "mem_upper: 64512 KiB"],
    "hello_aout.bin": ["Hello from a bt_vmm guest (a.out kludge)!", "cmdline: hello_aout.bin x=1 y"],
    "sensitive.elf": ["sensitive: 50 checks, 0 failed"],
    "smc.elf": ["smc: 8 checks, 0 failed"],
    "demo.elf": ["bt_vmm demo guest: binary-translated kernel code", "fib(20) = 6765", "demo: done"],
    "testos.elf": ["testos: booting", "ok   user_mode", "ok   preempt_rr", "ok   forkwait",
                   "testos: 25 tests, 0 failed"],
}


def run_cli(*args: str, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bt_vmm", *args], capture_output=True, text=True,
                          timeout=timeout, input=input,
                          stdin=None if input is not None else subprocess.DEVNULL)


def _verdicts(out: str) -> list[str]:
    return [line for line in out.splitlines()
            if line.startswith(("ok ", "FAIL")) or (line.startswith("testos: ") and " tests, " in line)]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_built_guest_runs_under_bt_check(built_guests, name):
    proc = run_cli("run", str(built_guests / name), "--append", "x=1 y", "--check", "--stats")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in EXPECTED[name]:
        assert line in proc.stdout
    assert "FAIL" not in proc.stdout
    assert "check violations" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", sorted(GUESTS))
def test_bundled_guest_matches_its_source(built_guests, name):
    """The ELF shipped in the package prints what a fresh build of guests/ prints."""
    fresh = run_cli("run", str(built_guests / f"{name}.elf"), "--serial", "stdio")
    bundled = run_cli("run", "--guest", name)
    assert bundled.returncode == fresh.returncode == 0
    if name == "testos":   # prints times, tick and fault counts: compare the verdicts
        assert _verdicts(bundled.stdout) == _verdicts(fresh.stdout)
    else:
        assert bundled.stdout.replace(f"{name}.elf", "X") == fresh.stdout.replace(f"{name}.elf", "X")
    assert guest_path(name).stat().st_size < 64 << 10
