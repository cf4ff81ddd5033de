"""Traces: guest-physical pages whose writes the monitor must see.

Two kinds of guest pages are traced, in two ways:

* Pages holding translated code (owner: the TC). A write may make CCFs stale,
  and code may run right after it, so the CCFs must be dropped *before* any
  other translated code runs. Such a page is write-protected in unicorn's
  memory map; a guest store reaches the page's MEM_WRITE_PROT hook, where
  the owner drops what the store makes stale, the monitor performs the
  store itself, and unicorn, told the access was handled, looks its TLB
  entry up again -- which the owner's work (unicorn's TB invalidation walks
  the page tables) may have replaced.
* Pages holding guest page tables (owner: the shadow MMU). A write may make
  shadow entries stale, but the architecture lets the CPU use what it cached
  until INVLPG or a CR3 load (SDM vol. 3, 4.10.4), both of which exit. Such a
  page only has a MEM_WRITE hook: the store goes ahead unprotected and the
  owner drops shadow entries, leaving any work that touches unicorn's TLB
  to the next exit (ShadowMMU.settle): inside this hook the store still uses
  its TLB entry. These pages come and go with guest processes, and
  write-protecting them would split unicorn's memory map each time (16% of a
  Linux boot went to rebuilding it).

Stores the monitor makes into guest RAM are reported to the same owners.
Stores that concern no owner's bytes (data sharing a page with code) cost
one callback and invalidate nothing. Every hook is bounded to its page:
unicorn keeps every store to a page that any memory hook covers on its slow
path (~150 ns a store), so a hook over all of memory would slow down every
guest store (see shadow_mmu/mmu.py on unicorn's store path). A new
MEM_WRITE hook needs a TLB flush (stores through entries filled before it
would bypass it). Hooks of pages no longer traced are deleted at `collect()`,
outside emulation: untracing often happens in that very hook's callback, and
deleting a hook frees the callback the binding is running.

A code page that loses its last owner stays protected ("idle"), up to
MAX_IDLE pages: a TC flush drops every CCF and the pages are traced again as
the code is retranslated, and each protection change splits or merges
unicorn's memory map (a cost that grows with the number of traced pages).
An idle page is unprotected once the guest stores to it IDLE_WRITES times.
"""

from __future__ import annotations

from typing import Callable, Protocol

from unicorn import UC_HOOK_MEM_WRITE, UC_HOOK_MEM_WRITE_PROT, UC_PROT_ALL, UC_PROT_EXEC, UC_PROT_READ, Uc
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH

from bt_vmm.machine.layout import PAGE_SIZE

MAX_IDLE = 4096         # protected pages kept with no owner
IDLE_WRITES = 8         # stores an idle protected page takes before it is unprotected


class TraceOwner(Protocol):
    protects: bool        # True: the page is write-protected (see the module docstring)

    def traced_write(self, phys: int, size: int) -> None: ...


class PageTraces:
    def __init__(self, uc: Uc, ram_write: Callable[[int, bytes], None]) -> None:
        self._uc = uc
        self._ram_write = ram_write
        self.owners: dict[int, set[TraceOwner]] = {}   # page -> owners
        self._hooks: dict[tuple[int, bool], int] = {}   # (page, protected) -> its unicorn hook
        self._idle: list[int] = []                      # hooks of untraced pages, to delete
        self._idle_protected: dict[int, int] = {}       # page -> stores since it went idle
        self.trace_faults = 0
        self.in_hook = False          # inside a MEM_WRITE hook (see ShadowMMU._flush_tlb)
        # Called after each protection change (the engine clears unicorn's
        # exception state there: see vcpu/quirks.py FaultState.reset).
        self.after_protect: Callable[[], None] = lambda: None

    @property
    def pages(self) -> set[int]:
        return set(self.owners)

    def trace(self, page: int, owner: TraceOwner) -> None:
        owners = self.owners.setdefault(page, set())
        protect = owner.protects
        if not any(o.protects == protect for o in owners):
            key = (page, protect)
            if protect:
                if self._idle_protected.pop(page, None) is None:
                    self._hooks[key] = self._uc.hook_add(UC_HOOK_MEM_WRITE_PROT, self._protected,
                                                         begin=page, end=page + PAGE_SIZE - 1)
                    self._uc.mem_protect(page, PAGE_SIZE, UC_PROT_READ | UC_PROT_EXEC)
                    self.after_protect()
            else:
                assert not self.in_hook, "a new trace inside a write hook cannot flush the TLB"
                self._hooks[key] = self._uc.hook_add(UC_HOOK_MEM_WRITE, self._watched,
                                                     begin=page, end=page + PAGE_SIZE - 1)
                self._uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
        owners.add(owner)

    def untrace(self, page: int, owner: TraceOwner) -> None:
        owners = self.owners.get(page)
        if owners is None or owner not in owners:
            return
        owners.discard(owner)
        protect = owner.protects
        if not any(o.protects == protect for o in owners):
            if protect:
                self._idle_protected[page] = 0
                while len(self._idle_protected) > MAX_IDLE:
                    self._unprotect(next(iter(self._idle_protected)))
            else:
                self._idle.append(self._hooks.pop((page, protect)))
        if not owners:
            del self.owners[page]

    def _unprotect(self, page: int) -> None:
        del self._idle_protected[page]
        self._idle.append(self._hooks.pop((page, True)))
        self._uc.mem_protect(page, PAGE_SIZE, UC_PROT_ALL)
        self.after_protect()

    def collect(self) -> None:
        """Delete the hooks of pages no longer traced (call outside emulation)."""
        for hook in self._idle:
            self._uc.hook_del(hook)
        self._idle.clear()

    def notify(self, phys: int, size: int) -> None:
        """A write to guest RAM (by the guest or the monitor) at [phys, phys+size)."""
        first, last = phys & ~(PAGE_SIZE - 1), (phys + size - 1) & ~(PAGE_SIZE - 1)
        for page in {first, last}:
            for owner in list(self.owners.get(page, ())):
                owner.traced_write(phys, size)

    def _watched(self, uc: Uc, _access: int, addr: int, size: int, value: int, _ud: object) -> None:
        # A page-table page (not protected): the store lands after this. A
        # store crossing a page boundary is reported whole, then byte by byte:
        # owners only drop state, so hearing of it twice is harmless.
        self.trace_faults += 1
        self.in_hook = True
        try:
            for owner in list(self.owners.get(addr & ~(PAGE_SIZE - 1), ())):
                if not owner.protects:
                    owner.traced_write(addr, size)
        finally:
            self.in_hook = False

    def _protected(self, uc: Uc, _access: int, addr: int, size: int, value: int, _ud: object) -> bool:
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
        page = addr & ~(PAGE_SIZE - 1)
        writes = self._idle_protected.get(page)
        if writes is not None:
            if writes + 1 >= IDLE_WRITES:
                self._unprotect(page)
            else:
                self._idle_protected[page] = writes + 1
        return True
