"""Debian 12's unmodified i386 Linux kernel, booted to a busybox shell under BT.

The guest comes from Debian's package archive (guests/linux/debian.py, cached
under guests/linux/cache/): the official `linux-image-*-686-unsigned` bzImage
and `busybox-static`, in an initramfs built here. One boot, driven through a
pseudo-terminal exactly as a user at a terminal would drive it: the shell
prompt, a few commands (kernel identity, /proc, shell arithmetic, a program
that forks and reaps children), then `poweroff -f`, which must end the run
with status 0.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOOT_TIMEOUT = 900          # seconds to the prompt; about 130-170 s on the 2-core development machine
COMMAND_TIMEOUT = 300


def _guest_module(name: str):
    spec = importlib.util.spec_from_file_location(f"linux_{name}", ROOT / "guests" / "linux" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def linux_guest() -> tuple[Path, Path]:
    """(bzImage, initramfs), fetched from Debian's archive the first time."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        pytest.skip("the Debian Linux guest is fetched with apt-get and dpkg (a Debian-based host)")
    debian = _guest_module("debian")
    try:
        return debian.guest()
    except debian.FetchError as e:
        pytest.fail(f"fetching the Debian guest failed: {e}")


def test_debian_linux_boots_to_an_interactive_shell(linux_guest):
    kernel, initrd = linux_guest
    console = _guest_module("ptyconsole").PtyConsole(
        [sys.executable, "-m", "bt_vmm", "run", "--kernel", str(kernel), "--initrd", str(initrd),
         "-m", "128M", "--append", "console=ttyS0 nokaslr quiet"], cwd=ROOT)
    try:
        t0 = time.monotonic()
        console.read_until(rb"/ # ", BOOT_TIMEOUT)
        boot = time.monotonic() - t0
        uname = console.command("uname -a", 1, COMMAND_TIMEOUT)
        assert re.search(r"Linux \S+ 6\.1\.0-\S+-686 #1 SMP PREEMPT_DYNAMIC Debian .* i686 GNU/Linux", uname)
        cpuinfo = console.command("cat /proc/cpuinfo", 2, COMMAND_TIMEOUT)
        assert "vendor_id\t: GenuineIntel" in cpuinfo
        assert "model name\t: bt_vmm virtual i686 CPU" in cpuinfo
        assert re.search(r"flags\t+: .*\bsep\b.*\bcmov\b", cpuinfo)
        proc = console.command("ls /proc", 3, COMMAND_TIMEOUT)
        for entry in ("cpuinfo", "meminfo", "interrupts", "self", "1"):
            assert re.search(rf"(^|\s){entry}(\s|$)", proc, re.M), entry
        loop = console.command("i=0; s=0; while [ $i -lt 300 ]; do s=$((s+i*i)); i=$((i+1)); done; echo sum=$s",
                               4, COMMAND_TIMEOUT)
        assert "sum=8955050" in loop
        forked = console.command("/bin/forktest; echo status=$?", 5, COMMAND_TIMEOUT)
        assert forked.count("running") == 8, forked
        assert "8 children forked and reaped, all statuses right" in forked and "status=0" in forked, forked
        console.type("poweroff -f\r")
        status = console.proc.wait(timeout=COMMAND_TIMEOUT)
        assert status == 0, console.proc.stderr.read().decode(errors="replace")[-3000:]
        print(f"\nboot to prompt {boot:.0f} s, whole session {time.monotonic() - t0:.0f} s")
    finally:
        console.close()
