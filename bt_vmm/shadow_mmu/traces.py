"""Traces: write-protected guest-physical pages whose writes the monitor must see.

Two kinds of guest pages are traced: pages holding translated code (a write
may make CCFs stale) and pages holding guest page tables (a write may make
shadow entries stale). A traced page is write-protected in unicorn's physical
memory map; a guest store to it reaches the MEM_WRITE_PROT hook (which
reports the physical address), where each owner of the trace brings its state
up to date, and the monitor then performs the store itself and lets execution
continue with the page still traced. Stores the monitor makes into guest RAM
are reported to the same owners. Stores that concern no owner's bytes (data
sharing a page with code) cost one exit and invalidate nothing.

Tracing a page costs a unicorn region split (about 1 ms with RAM mapped by
pointer), paid once per page while it stays traced.

Each traced page gets a write-protection hook of its own, bounded to the
page: unicorn keeps every store to a page that any memory hook covers on its
slow path (~150 ns a store), so a hook over all of memory would slow down
every guest store (see shadow_mmu/mmu.py on unicorn's store path).
"""

from __future__ import annotations

from typing import Callable, Protocol

from unicorn import UC_HOOK_MEM_WRITE_PROT, UC_PROT_ALL, UC_PROT_EXEC, UC_PROT_READ, Uc

from bt_vmm.machine.layout import PAGE_SIZE


class TraceOwner(Protocol):
    def traced_write(self, phys: int, size: int) -> None: ...


class PageTraces:
    def __init__(self, uc: Uc, ram_write: Callable[[int, bytes], None]) -> None:
        self._uc = uc
        self._ram_write = ram_write
        self.owners: dict[int, set[TraceOwner]] = {}   # page -> owners
        self._hooks: dict[int, int] = {}                # page -> its unicorn hook
        self.trace_faults = 0
        # Called after each protection change (the engine clears unicorn's
        # exception state there: see vcpu/quirks.py FaultState.reset).
        self.after_protect: Callable[[], None] = lambda: None

    @property
    def pages(self) -> set[int]:
        return set(self.owners)

    def trace(self, page: int, owner: TraceOwner) -> None:
        owners = self.owners.get(page)
        if owners is None:
            self.owners[page] = {owner}
            self._hooks[page] = self._uc.hook_add(UC_HOOK_MEM_WRITE_PROT, self._hook,
                                                  begin=page, end=page + PAGE_SIZE - 1)
            self._uc.mem_protect(page, PAGE_SIZE, UC_PROT_READ | UC_PROT_EXEC)
            self.after_protect()
        else:
            owners.add(owner)

    def untrace(self, page: int, owner: TraceOwner) -> None:
        owners = self.owners.get(page)
        if owners is not None:
            owners.discard(owner)
            if not owners:
                del self.owners[page]
                self._uc.mem_protect(page, PAGE_SIZE, UC_PROT_ALL)
                self._uc.hook_del(self._hooks.pop(page))
                self.after_protect()

    def notify(self, phys: int, size: int) -> None:
        """A write to guest RAM (by the guest or the monitor) at [phys, phys+size)."""
        first, last = phys & ~(PAGE_SIZE - 1), (phys + size - 1) & ~(PAGE_SIZE - 1)
        for page in {first, last}:
            for owner in list(self.owners.get(page, ())):
                owner.traced_write(phys, size)

    def _hook(self, uc: Uc, _access: int, addr: int, size: int, value: int, _ud: object) -> bool:
        if (addr & (PAGE_SIZE - 1)) + size > PAGE_SIZE:
            # Unicorn reports a store that crosses a page boundary once whole --
            # before it checks the second page, which may still fault -- and
            # then byte by byte for the bytes on protected pages: act on those
            # only (found by selfcheck: the whole store landed, even into the
            # next physical frame, and then the guest got a #PF for it).
            return True
        self.trace_faults += 1
        self.notify(addr, size)
        self._ram_write(addr, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
        return True
