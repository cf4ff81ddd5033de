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
        # Guest-linear to guest-physical (the shadow MMU's guest page walk);
        # identity while the guest runs with paging off.
        self.translate: Callable[[int, bool], int] = lambda addr, write: addr & 0xFFFFFFFF

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

    def write_raw(self, addr: int, data: bytes) -> None:
        """A store the traces already accounted for (the guest's own, replayed)."""
        self._ram[addr:addr + len(data)] = data

    def fetch(self, addr: int, n: int) -> bytes:
        """Code bytes at guest-linear `addr` for the decoder: up to n bytes,
        fewer where the next page is not mapped (a GuestFault if the first is not)."""
        out = b""
        for i, (phys, chunk) in enumerate(self._fetch_pieces(addr, n)):
            if phys is None:
                break
            if not 0 <= phys < self.size:
                if i == 0:
                    raise Unsupported(f"guest executes nonexistent physical memory at {phys:#x}")
                break
            out += self._ram[phys:min(phys + chunk, self.size)]
        return out

    def _fetch_pieces(self, addr: int, n: int):
        first = True
        addr &= 0xFFFFFFFF
        while n:
            chunk = min(n, 0x1000 - (addr & 0xFFF))
            try:
                yield self.translate(addr, False), chunk
            except GuestFault:
                if first:
                    raise
                yield None, chunk
                return
            first = False
            addr = (addr + chunk) & 0xFFFFFFFF
            n -= chunk

    # Guest-linear accesses, split at page boundaries, translated through the
    # guest's page tables (a GuestFault(14) when they would fault).
    def _pieces(self, addr: int, n: int, write: bool):
        addr &= 0xFFFFFFFF
        while n:
            chunk = min(n, 0x1000 - (addr & 0xFFF))
            yield self.translate(addr, write), chunk
            addr = (addr + chunk) & 0xFFFFFFFF
            n -= chunk

    def read_lin(self, addr: int, n: int) -> bytes:
        return b"".join(self.read_phys(p, c) for p, c in self._pieces(addr, n, False))

    def write_lin(self, addr: int, data: bytes) -> None:
        pieces = list(self._pieces(addr, len(data), True))   # all translations before any store
        off = 0
        for phys, chunk in pieces:
            self.write_phys(phys, data[off:off + chunk])
            off += chunk

    def read_u(self, addr: int, n: int) -> int:
        return int.from_bytes(self.read_lin(addr, n), "little")

    def write_u(self, addr: int, n: int, value: int) -> None:
        self.write_lin(addr, (value & ((1 << (8 * n)) - 1)).to_bytes(n, "little"))
