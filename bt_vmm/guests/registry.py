"""The test guest kernels bundled with bt_vmm.

The ELF files next to this module are built from the sources in the
repository's ``guests/`` directory (``make -C guests bundle``); each is a
Multiboot v1 kernel loaded at 1 MiB that reports over COM1 and powers off.
"""

from __future__ import annotations

import pathlib

#: name -> (file name inside this package directory, one-line description)
GUESTS: dict[str, tuple[str, str]] = {
    "demo": (
        "demo.elf",
        "default guest: primes, CRC32, recursion and sensitive-instruction loops",
    ),
    "hello": (
        "hello.elf",
        "prints a greeting, the multiboot command line and memory size",
    ),
    "sensitive": (
        "sensitive.elf",
        "self-checking tour of privileged/sensitive instructions and exceptions",
    ),
    "smc": (
        "smc.elf",
        "self-checking self-modifying and runtime-generated code",
    ),
    "testos": (
        "testos.elf",
        "multi-process test OS: paging, ring-3 processes, int 0x80, preemption, "
        "demand paging, copy-on-write fork, ATA disk, serial shell",
    ),
    "bench": (
        "bench.elf",
        "benchmark guest for `bt-vmm bench`: nanobenchmark loops and two ring-3 programs "
        "between timing markers",
    ),
}


def guest_path(name: str) -> pathlib.Path:
    """Return the path of the bundled guest *name*; KeyError if unknown."""
    try:
        filename, _ = GUESTS[name]
    except KeyError:
        known = ", ".join(sorted(GUESTS))
        raise KeyError(f"unknown guest {name!r} (known: {known})") from None
    return pathlib.Path(__file__).parent / filename
