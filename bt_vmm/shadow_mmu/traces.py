"""Traces on guest pages that hold translated code.

A traced page is write-protected in unicorn's physical memory map; a guest
store to it reaches the MEM_WRITE_PROT hook, where the monitor drops the CCFs
the store overlaps, performs the store itself and lets execution continue with
the page still traced. Stores that touch no translated byte (data sharing a page
with code) cost one hook and invalidate nothing -- QEMU's per-page code bitmap
makes the same distinction. A page whose last CCF is gone is untraced.

Tracing a page costs a unicorn region split (about 1 ms with RAM mapped by
pointer); shadow page tables will carry traces as read-only PTEs instead
once the guest runs with paging.
"""

from __future__ import annotations

from typing import Callable

from unicorn import UC_HOOK_MEM_WRITE_PROT, UC_PROT_ALL, UC_PROT_EXEC, UC_PROT_READ, Uc

from bt_vmm.machine.layout import PAGE_SIZE


class CodeTraces:
    def __init__(self, uc: Uc, on_write: Callable[[int, int], None]) -> None:
        self._uc = uc
        self._on_write = on_write
        self.pages: set[int] = set()
        self.trace_faults = 0
        uc.hook_add(UC_HOOK_MEM_WRITE_PROT, self._hook)

    def trace(self, page: int) -> None:
        if page not in self.pages:
            self.pages.add(page)
            self._uc.mem_protect(page, PAGE_SIZE, UC_PROT_READ | UC_PROT_EXEC)

    def untrace(self, page: int) -> None:
        if page in self.pages:
            self.pages.discard(page)
            self._uc.mem_protect(page, PAGE_SIZE, UC_PROT_ALL)

    def untrace_all(self) -> None:
        for page in list(self.pages):
            self.untrace(page)

    def _hook(self, uc: Uc, _access: int, addr: int, size: int, value: int, _ud: object) -> bool:
        self.trace_faults += 1
        self._on_write(addr, size)
        uc.mem_write(addr, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
        return True
