"""Guest memory as the monitor reaches it: physical RAM in unicorn, and the
guest-linear view the vCPU uses when it emulates an instruction.

Everything the monitor writes into guest RAM (exception frames, emulated
stores) goes through `write_phys`, which tells the translation cache first, so a
monitor store into translated code is seen like a guest store would be.
"""

from __future__ import annotations

import mmap
from typing import Callable

from unicorn import Uc

from bt_vmm.errors import Unsupported


class GuestFault(Exception):
    """An exception the guest must see (vector, error code, CR2 for #PF)."""

    def __init__(self, vector: int, error_code: int | None = None, cr2: int | None = None) -> None:
        super().__init__(f"guest exception {vector}")
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2


class GuestMemory:
    """Guest RAM through the host mapping unicorn shares with the monitor."""

    def __init__(self, uc: Uc, ram: mmap.mmap) -> None:
        self._uc = uc
        self._ram = ram
        self.size = len(ram)
        self.on_write: Callable[[int, int], None] = lambda addr, n: None

    def _check(self, addr: int, n: int) -> None:
        if addr < 0 or addr + n > self.size:
            raise Unsupported(f"guest access to nonexistent physical memory at {addr:#x} "
                              f"(RAM ends at {self.size:#x})")

    def read_phys(self, addr: int, n: int) -> bytes:
        self._check(addr, n)
        return self._ram[addr:addr + n]

    def write_phys(self, addr: int, data: bytes) -> None:
        self._check(addr, len(data))
        self.on_write(addr, len(data))
        self._ram[addr:addr + len(data)] = data

    def fetch(self, addr: int, n: int) -> bytes:
        """Code bytes for the decoder: up to n bytes, fewer at the end of RAM."""
        if not 0 <= addr < self.size:
            raise Unsupported(f"guest executes nonexistent physical memory at {addr:#x}")
        return self._ram[addr:min(addr + n, self.size)]

    # Guest-linear accesses. With guest paging off, linear is physical.
    def read_lin(self, addr: int, n: int) -> bytes:
        return self.read_phys(addr & 0xFFFFFFFF, n)

    def write_lin(self, addr: int, data: bytes) -> None:
        self.write_phys(addr & 0xFFFFFFFF, data)

    def read_u(self, addr: int, n: int) -> int:
        return int.from_bytes(self.read_lin(addr, n), "little")

    def write_u(self, addr: int, n: int, value: int) -> None:
        self.write_lin(addr, (value & ((1 << (8 * n)) - 1)).to_bytes(n, "little"))
