#!/usr/bin/env python3
"""Fetch Debian 12's i386 Linux kernel and busybox, and build an initramfs.

    python guests/linux/debian.py [--cache DIR]      # prints the bzImage and initramfs paths

then `bt-vmm run --kernel BZIMAGE --initrd INITRAMFS -m 128M` boots it to a
busybox shell on the console (`poweroff -f` ends the run).

Uses the ordinary apt client against the machine's configured Debian
archive, for the i386 architecture, with private lists and cache
directories (no change to the host's dpkg configuration, no root needed for
the download itself beyond what apt-get needs to write DIR):

    apt-get -o APT::Architecture=i386 -o APT::Architectures=i386 \\
            -o Dir::State::Lists=DIR/lists -o Dir::Cache=DIR/cache update
    apt-get ... download linux-image-<newest>-686-unsigned busybox-static

`dpkg -x` unpacks the bzImage (boot/vmlinuz-*) and busybox (bin/busybox). The
initramfs is a gzip'd cpio in the "newc" format written here in Python, so no
root is needed for device nodes: /init mounts devtmpfs itself.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

DEFAULT_CACHE = Path(__file__).resolve().parent / "cache"     # ignored by git
APT_ARCH = ["-o", "APT::Architecture=i386", "-o", "APT::Architectures=i386"]
KERNEL_PKG = re.compile(r"^linux-image-(\d+)\.(\d+)\.(\d+)-(\d+)-686-unsigned$")

# The guest's /init: a shell on the console, then a clean power-off.
INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "bt-vmm-linux: init running on $(uname -r)"
setsid cttyhack sh -l
echo "bt-vmm-linux: shell exited, powering off"
poweroff -f
"""


class FetchError(Exception):
    pass


def _apt(cache: Path, *args: str) -> str:
    opts = APT_ARCH + ["-o", f"Dir::State::Lists={cache / 'lists'}", "-o", f"Dir::Cache={cache / 'apt'}",
                       "-o", "Debug::NoLocking=1"]
    proc = subprocess.run(["apt-get", *opts, *args], cwd=cache, capture_output=True, text=True)
    if proc.returncode != 0:
        raise FetchError(f"apt-get {' '.join(args)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout


def _apt_cache(cache: Path, *args: str) -> str:
    opts = APT_ARCH + ["-o", f"Dir::State::Lists={cache / 'lists'}", "-o", f"Dir::Cache={cache / 'apt'}"]
    return subprocess.run(["apt-cache", *opts, *args], capture_output=True, text=True, check=True).stdout


def newest_kernel_package(cache: Path) -> str:
    names = [n for n in _apt_cache(cache, "pkgnames", "linux-image-").split() if KERNEL_PKG.match(n)]
    if not names:
        raise FetchError("no linux-image-*-686-unsigned package in the i386 package lists")
    return max(names, key=lambda n: tuple(int(x) for x in KERNEL_PKG.match(n).groups()))


def fetch(cache: Path = DEFAULT_CACHE) -> tuple[Path, Path]:
    """(bzImage, busybox) from the cache, downloading them the first time."""
    cache.mkdir(parents=True, exist_ok=True)
    done = cache / "fetched"
    if done.exists():
        kernel, busybox = (cache / p for p in done.read_text().split())
        if kernel.exists() and busybox.exists():
            return kernel, busybox
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise FetchError("fetching the Debian guest needs apt-get and dpkg (a Debian-based host)")
    (cache / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (cache / "apt" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    _apt(cache, "update")
    pkg = newest_kernel_package(cache)
    for old in cache.glob("*.deb"):
        old.unlink()
    _apt(cache, "download", pkg, "busybox-static")
    root = cache / "root"
    shutil.rmtree(root, ignore_errors=True)
    for deb in cache.glob("*.deb"):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    kernels = sorted(root.glob("boot/vmlinuz-*"))
    busybox = root / "bin" / "busybox"
    if not kernels or not busybox.exists():
        raise FetchError(f"{pkg} or busybox-static did not contain boot/vmlinuz-* and bin/busybox")
    kernel = kernels[-1]
    done.write_text(f"{kernel.relative_to(cache)} {busybox.relative_to(cache)}\n")
    return kernel, busybox


def cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A "newc" cpio archive of (path, mode, data); directories have no data."""
    out = io.BytesIO()

    def put(name: str, mode: int, data: bytes, ino: int) -> None:
        raw = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0]
        out.write(b"070701" + b"".join(f"{f:08X}".encode() for f in fields))
        out.write(raw)
        out.write(b"\0" * (-(110 + len(raw)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))

    for ino, (name, mode, data) in enumerate(entries, start=1):
        put(name, mode, data, ino)
    put("TRAILER!!!", 0, b"", 0)
    return out.getvalue()


def build_initramfs(busybox: Path, init: str = INIT, extra: dict[str, bytes] | None = None) -> bytes:
    """gzip'd cpio: /init, /bin/busybox, the mount points, and `extra` files
    (path -> bytes, made executable)."""
    dirs = ["bin", "sbin", "dev", "proc", "sys", "tmp", "root", "etc"]
    entries = [(d, 0o040755, b"") for d in dirs]
    entries.append(("init", 0o100755, init.encode()))
    entries.append(("bin/busybox", 0o100755, busybox.read_bytes()))
    for name, data in (extra or {}).items():
        entries.append((name.lstrip("/"), 0o100755, data))
    return gzip.compress(cpio_newc(entries), compresslevel=6, mtime=0)


FORKTEST_SRC = Path(__file__).resolve().parent / "forktest.c"


def build_forktest(out: Path) -> Path:
    """guests/linux/forktest.c as a static i386 Linux program (no libc)."""
    if shutil.which("gcc") is None:
        raise FetchError("building forktest needs gcc (apt-get install gcc)")
    proc = subprocess.run(
        ["gcc", "-m32", "-march=i586", "-O2", "-ffreestanding", "-nostdlib", "-fno-pic", "-fno-pie",
         "-fno-stack-protector", "-fcf-protection=none", "-static", "-Wl,-m,elf_i386",
         "-Wl,--build-id=none", "-o", str(out), str(FORKTEST_SRC)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise FetchError(f"building forktest failed: {proc.stderr.strip()[-300:]}")
    return out


def guest(cache: Path = DEFAULT_CACHE) -> tuple[Path, Path]:
    """(bzImage, initramfs with busybox and /bin/forktest), building what is missing."""
    kernel, busybox = fetch(cache)
    initrd = cache / "initramfs.cpio.gz"
    fork = build_forktest(cache / "forktest")
    data = build_initramfs(busybox, extra={"bin/forktest": fork.read_bytes()})
    if not initrd.exists() or initrd.read_bytes() != data:
        initrd.write_bytes(data)
    return kernel, initrd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"cache directory (default {DEFAULT_CACHE})")
    args = ap.parse_args()
    try:
        kernel, initrd = guest(args.cache)
    except FetchError as e:
        print(f"debian.py: {e}", file=sys.stderr)
        return 1
    print(kernel)
    print(initrd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
