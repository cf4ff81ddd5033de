"""Shadow paging: the page tables unicorn really walks, derived from the guest's.

Unicorn's CR3 always points at shadow page tables the monitor builds in a pool
of host memory that unicorn sees as physical memory above guest RAM and that
no linear address maps, so the guest can neither read nor write them.

Each guest address space (keyed by the guest's CR3) has two shadow page
directories that share their page tables:

* the *kernel view*, used while guest CPL0 code runs from the TC: every guest
  PDE is a supervisor PDE and the monitor region's PDE is a user PDE, so
  CR4.SMAP keeps the translated guest kernel out of the monitor region;
* the *user view*, used while guest CPL3 code runs directly: guest PDEs keep
  the guest's U/S bit and the monitor region's PDE is supervisor-only.

Shadow entries are filled lazily: a #PF that the guest's own tables would not
raise is a *hidden* fault (filled silently); one they would raise is a *true*
fault, reflected with the guest's error code and CR2 (SDM vol. 3, 4.7). Pages
holding guest page directories and tables are traced, so a guest PTE write
drops the shadow entries it makes stale. Accessed and dirty bits are set in
the guest's entries as the CPU would: A when an entry is first used, D on the
first write, which a read-only shadow entry catches (SDM 4.8).

The shadows are in PAE format with execute-disable, whatever the guest uses
(it has two-level 32-bit paging): a guest page-directory entry becomes two
2 MiB shadow directory entries, a guest page table two shadow tables of 512
entries. The reason is unicorn's store path: a store to a page that the TLB
holds as executable always takes the slow path (a page lookup and a check
for translated code, ~150 ns), a store to a non-executable page the fast one
(a few ns). Under binary translation guest kernel code only ever runs from
the TC, so the kernel view marks all of guest memory execute-disable; code
that runs as is (user code, and the kernel under trap-and-emulate) gets
execute permission page by page, at its first instruction fetch there (a
hidden fault with the I/D bit set).
"""
from __future__ import annotations

import ctypes
import mmap
import struct
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from unicorn import UC_PROT_ALL, Uc
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH
from unicorn import x86_const as X

from bt_vmm.errors import Unsupported
from bt_vmm.machine.layout import MON_BASE, MON_PDES, MON_SIZE, PAGE_SIZE
from bt_vmm.machine.memory import GuestFault
from bt_vmm.shadow_mmu.traces import PageTraces
from bt_vmm.tcache import region as R

# Entry bits: the guest's 32-bit ones, and the same low bits in the 64-bit
# PAE entries of the shadows, plus execute-disable (SDM vol. 3, 4.4).
P, RW, US, PWT, PCD, A, D, PS, G = 1, 2, 4, 8, 16, 32, 64, 128, 256
NX = 1 << 63
ERR_P, ERR_W, ERR_U, ERR_ID = 1, 2, 4, 16
EFER_NXE = 1 << 11
MSR_EFER = 0xC0000080
POOL_BASE = 0xD0000000          # unicorn-physical, never mapped linearly
POOL_PAGES = 4096               # 16 MiB of shadow page tables
MAX_SPACES = 64
BIG = 0x400000
HALF = 512                      # entries in a PAE table: a guest table is two of them


class RegionWanted(Exception):
    """The guest accessed the monitor region's linear range, which its own
    page tables (or, with paging off, the physical address space) give a
    meaning: the monitor must move out of the way (engines/bt.py)."""


@dataclass(eq=False)
class ShadowPT:
    """The shadow of one guest page table (or 4 MiB page): two PAE tables."""
    lo: int
    hi: int
    key: tuple
    gpt: int | None                       # guest page-table page it shadows (None: a split 4 MiB page)
    users: set = field(default_factory=set)   # {(space, pde index)}


@dataclass(eq=False)
class View:
    """One shadow address-space root: a page-directory-pointer table (32
    bytes in a root page) and its four page directories."""
    pdpt: int
    pds: tuple[int, int, int, int]


@dataclass(eq=False)
class Space:
    cr3: int                              # guest page directory (physical), or -1 for paging off
    root: int                             # the page holding both views' PDPTs
    kview: View
    uview: View
    pts: dict[int, ShadowPT] = field(default_factory=dict)


class ShadowMMU:
    def __init__(self, uc: Uc, ram, ram_size: int, traces: PageTraces,
                 mmio: list[tuple[int, int]], open_bus: int,
                 placement: R.Placement | None = None) -> None:
        self._uc = uc
        self.placement = placement or R.Placement()
        self._ram = ram                   # guest RAM (host mapping)
        self.ram_size = ram_size
        self._traces = traces
        self._mmio = mmio                 # [(base, size)] physical ranges that are devices
        self._open_bus = open_bus         # where frames with nothing behind them are mapped
        self._pool = mmap.mmap(-1, POOL_PAGES * PAGE_SIZE)
        uc.mem_map_ptr(POOL_BASE, POOL_PAGES * PAGE_SIZE, UC_PROT_ALL,
                       ctypes.addressof(ctypes.c_char.from_buffer(self._pool)))
        self._free = list(range(POOL_BASE + (POOL_PAGES - 1) * PAGE_SIZE, POOL_BASE - 1, -PAGE_SIZE))
        self.spaces: OrderedDict[int, Space] = OrderedDict()
        self.pts: dict[tuple, ShadowPT] = {}
        self.by_gpt: dict[int, ShadowPT] = {}
        self.by_gpd: dict[int, Space] = {}
        self.stats: Counter[str] = Counter()
        self.flush_pending = False
        self._remaps: list[tuple[int, int]] = []      # deferred by traced writes
        # Under binary translation the guest kernel never executes guest pages
        # (the TC does): its view is execute-disable at the directory level.
        self._kernel_nx = NX
        self._monitor_kpde = self._monitor_pt({R.PREEMPT_BOUNDS})
        # Told about every linear range whose mapping changed (the TC keys
        # translations by linear address).
        self.on_remap = lambda linear, size: None
        self.paging = False
        self.wp = True
        self.pse = False
        self.user = False                 # which view is live
        self.cr3 = 0
        uc.reg_write(X.UC_X86_REG_MSR, (MSR_EFER, EFER_NXE))
        self.space = self._flat_space()

    # --- pool ---------------------------------------------------------------------
    def _alloc(self) -> int:
        if not self._free:
            self.stats["pool-resets"] += 1
            self.reset()
            if not self._free:
                raise Unsupported("shadow page-table pool exhausted")
        page = self._free.pop()
        off = page - POOL_BASE
        self._pool[off:off + PAGE_SIZE] = bytes(PAGE_SIZE)
        return page

    def _put(self, addr: int, value: int) -> None:
        struct.pack_into("<Q", self._pool, addr - POOL_BASE, value)

    def _peek(self, addr: int) -> int:
        return struct.unpack_from("<Q", self._pool, addr - POOL_BASE)[0]

    def _set(self, pt: ShadowPT, slot: int, value: int) -> None:
        """Entry `slot` (0..1023, the guest's PTE index) of a shadow table."""
        self._put((pt.lo if slot < HALF else pt.hi) + 8 * (slot % HALF), value)

    def _get(self, pt: ShadowPT, slot: int) -> int:
        return self._peek((pt.lo if slot < HALF else pt.hi) + 8 * (slot % HALF))

    def _set_pde(self, view: View, index: int, lo: int, hi: int) -> None:
        """The two 2 MiB shadow directory entries for guest PDE `index`."""
        at = view.pds[index >> 8] + 16 * (index & 0xFF)
        self._put(at, lo)
        self._put(at + 8, hi)

    def pde(self, view: View, index: int) -> tuple[int, int]:
        at = view.pds[index >> 8] + 16 * (index & 0xFF)
        return self._peek(at), self._peek(at + 8)

    def _flush_tlb(self) -> None:
        """Drop unicorn's TLB. Not from inside a memory-write hook, where the
        store being made still uses its TLB entry: there (a guest PTE write)
        the flush waits for the next exit (`settle`). The architecture allows
        that: a CPU may use a translation it cached until INVLPG or a CR3 load
        (SDM vol. 3, 4.10.4), both of which exit."""
        if self._traces.in_hook:
            self.flush_pending = True
            return
        self.flush_pending = False
        self._uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    def settle(self) -> None:
        """At an exit: carry out what a traced write deferred."""
        while self._remaps:
            self.on_remap(*self._remaps.pop())
        if self.flush_pending:
            self._flush_tlb()

    # --- the guest's paging state ---------------------------------------------
    def configure(self, paging: bool, cr3: int, wp: bool, pse: bool) -> None:
        """Guest CR0.PG/WP, CR3 or CR4.PSE changed."""
        if not wp and paging:
            raise Unsupported("guest paging with CR0.WP=0 is not virtualized")
        changed_mode = paging != self.paging or pse != self.pse
        self.paging, self.wp, self.pse = paging, wp, pse
        self.cr3 = cr3 & ~0xFFF
        if changed_mode:
            self.reset()
        self.space = self._space_for(self.cr3) if paging else self._flat_space()
        self._load()

    def set_user(self, user: bool) -> None:
        """Switch between the kernel view (TC) and the user view (direct execution)."""
        if user != self.user:
            self.user = user
            self._load()

    def _load(self) -> None:
        view = self.space.uview if self.user else self.space.kview
        self._uc.reg_write(X.UC_X86_REG_CR3, view.pdpt)

    def reset(self) -> None:
        """Drop every shadow (CR4/CR0 paging-mode changes, pool exhaustion)."""
        for space in list(self.spaces.values()):
            self._drop_space(space)
        self.stats["resets"] += 1

    # --- spaces -------------------------------------------------------------------
    def _monitor_pt(self, supervisor_pages: set[int]) -> list[tuple[int, int]]:
        """The kernel view's directory entries for the monitor region: user
        pages under SMAP (out of the translated kernel's reach), except the
        given pages, which are supervisor and read-only: the TC's preemption
        bounds, which the TC reads without toggling AC (and, for ring 1, the
        shadow GDT). Only the TC is executable."""
        tables = [self._alloc() for _ in range(2 * MON_PDES)]
        for i in range(MON_SIZE >> 12):
            off = i << 12
            flags = 0 if off in supervisor_pages else RW | US
            self._put(tables[i // HALF] + 8 * (i % HALF),
                      (MON_BASE + off) | P | flags | (0 if off >= R.TC_BASE else NX))
        return [(tables[2 * k] | P | RW | US, tables[2 * k + 1] | P | RW | US) for k in range(MON_PDES)]

    def run_kernel_natively(self) -> None:
        """The trap-and-emulate engine runs guest kernel code at ring 1, as is:
        its view must let it execute guest pages (page by page, as for user
        code), and its own segment loads read the shadow GDT implicitly. SMAP
        would refuse that, so the shadow GDT's pages join the supervisor
        read-only ones (readable by the guest kernel: a weaker guarantee than
        the BT engine's)."""
        self._kernel_nx = 0
        gdt = set(range(R.SHADOW_GDT, R.SHADOW_GDT + R.SHADOW_GDT_SIZE, PAGE_SIZE))
        self._monitor_kpde = self._monitor_pt({R.PREEMPT_BOUNDS} | gdt)
        self.reset()
        self.space = self._space_for(self.cr3) if self.paging else self._flat_space()
        self._load()

    def _map_monitor(self, space: Space) -> None:
        """The region's directory entries at its placement: the kernel view's
        page tables, and for the user view supervisor-only 2 MiB pages."""
        for k, index in enumerate(self.placement.pdes):
            if index in space.pts:
                self._unlink(space, index)
            self._set_pde(space.kview, index, *self._monitor_kpde[k])
            frame = MON_BASE + (k << 22)
            self._set_pde(space.uview, index, frame | P | RW | PS, (frame + BIG // 2) | P | RW | PS)

    def move_monitor(self, old_pdes: range) -> None:
        """The placement changed: unmap the region from its old directory
        entries in every shadow (the guest's own mappings there are filled on
        demand from now on) and map it at the new ones."""
        for space in self.spaces.values():
            for index in old_pdes:
                self._set_pde(space.kview, index, 0, 0)
                self._set_pde(space.uview, index, 0, 0)
            self._map_monitor(space)
        self._load()

    def free_monitor_pde(self) -> int:
        """A linear range for the region (its first directory index) that no guest address space
        this monitor knows maps, and that RAM and device pages (identity
        mapped while paging is off) leave alone: the middle of the longest
        run of such ranges. Kernels fill a free area from one end (Linux's
        vmalloc area from the bottom) and keep fixed structures at its edges
        (the fixmap and the CPU entry area at the top), so the middle is
        where the guest comes last -- and each move costs a TC flush."""
        busy = [(0, self.ram_size)] + self._mmio
        directories = [space.cr3 for space in self.spaces.values() if space.cr3 >= 0]

        def free(index: int) -> bool:
            lo, hi = index << 22, (index + 1) << 22
            return (index not in self.placement.pdes
                    and not any(b < hi and lo < b + n for b, n in busy)
                    and not any(self._rd(pd + 4 * index) & P for pd in directories))

        best, run_start = (0, None), None
        for index in range(1025):
            if index < 1024 and free(index):
                if run_start is None:
                    run_start = index
            elif run_start is not None:
                best = max(best, (index - run_start, run_start))
                run_start = None
        length, start = best
        if length < MON_PDES:
            raise Unsupported(f"no {MON_SIZE >> 20} MiB linear range is free for the monitor region")
        return start + (length - MON_PDES) // 2

    def _new_view(self, root: int, offset: int) -> View:
        view = View(root + offset, tuple(self._alloc() for _ in range(4)))
        for i, pd in enumerate(view.pds):
            self._put(view.pdpt + 8 * i, pd | P)
        return view

    def _new_space(self, cr3: int) -> Space:
        root = self._alloc()
        space = Space(cr3, root, self._new_view(root, 0), self._new_view(root, 32))
        self._map_monitor(space)
        self.spaces[cr3] = space
        self.stats["spaces-built"] += 1
        return space

    def _flat_space(self) -> Space:
        """Paging off: identity-map RAM and device pages (user view all-user)."""
        space = self.spaces.get(-1)
        if space is not None:
            return space
        space = self._new_space(-1)
        for base, size in [(0, self.ram_size)] + self._mmio:
            for page in range(base, base + size, PAGE_SIZE):
                pt = self._pt_for(space, page >> 22, ("flat", page >> 22), None, RW | US, RW | US)
                self._set(pt, (page >> 12) & 0x3FF, page | P | RW | US | NX)
        return space

    def _pool_reset(self) -> None:
        """The pool is empty and a hidden fault needs a page table: drop every
        shadow and rebuild the current address space (empty) *before* any entry
        is written. Letting _alloc reset in the middle of _pt_for left the
        dropped space's page directory live in CR3 while the pool handed its
        pages out again (found by tests/test_hostile_guests.py)."""
        self.stats["pool-resets"] += 1
        self.reset()
        self.space = self._space_for(self.cr3)
        self._load()

    def _space_for(self, cr3: int) -> Space:
        space = self.spaces.get(cr3)
        if space is None:
            if len(self.spaces) >= MAX_SPACES:
                victim = next(s for s in self.spaces.values() if s.cr3 not in (-1,))
                self._drop_space(victim)
            if len(self._free) < 9:          # not mid-way through _new_space
                self.stats["pool-resets"] += 1
                self.reset()
            space = self._new_space(cr3)
            self.by_gpd[cr3] = space
            self._traces.trace(cr3, self)
        else:
            self.spaces.move_to_end(cr3)
        return space

    def _drop_space(self, space: Space) -> None:
        for index in list(space.pts):
            self._unlink(space, index)
        self._free += [space.root, *space.kview.pds, *space.uview.pds]
        del self.spaces[space.cr3]
        if space.cr3 >= 0:
            del self.by_gpd[space.cr3]
            self._traces.untrace(space.cr3, self)
        self.stats["spaces-dropped"] += 1

    def _pt_for(self, space: Space, index: int, key: tuple, gpt: int | None,
                kflags: int, uflags: int) -> ShadowPT:
        pt = space.pts.get(index)
        if pt is not None and pt.key == key:
            return pt
        if pt is not None:
            self._unlink(space, index)
        pt = self.pts.get(key)
        if pt is None:
            pt = ShadowPT(self._alloc(), self._alloc(), key, gpt)
            self.pts[key] = pt
            if gpt is not None:
                self.by_gpt[gpt] = pt
                self._traces.trace(gpt, self)
            self.stats["shadow-pts-built"] += 1
        pt.users.add((space, index))
        space.pts[index] = pt
        kf = P | (kflags & RW) | self._kernel_nx
        uf = P | (uflags & (RW | US))
        self._set_pde(space.kview, index, pt.lo | kf, pt.hi | kf)
        self._set_pde(space.uview, index, pt.lo | uf, pt.hi | uf)
        return pt

    def _unlink(self, space: Space, index: int) -> None:
        pt = space.pts.pop(index)
        self._set_pde(space.kview, index, 0, 0)
        self._set_pde(space.uview, index, 0, 0)
        pt.users.discard((space, index))
        if not pt.users:
            del self.pts[pt.key]
            if pt.gpt is not None:
                del self.by_gpt[pt.gpt]
                self._traces.untrace(pt.gpt, self)
            self._free += [pt.lo, pt.hi]
            self.stats["shadow-pts-dropped"] += 1
    # --- guest page walk ------------------------------------------------------------
    def _rd(self, phys: int) -> int:
        return struct.unpack_from("<I", self._ram, phys)[0]

    def _set_bits(self, phys: int, bits: int) -> None:
        """A/D updates go straight to guest RAM: they change no mapping, so the
        traces need not hear of them."""
        v = self._rd(phys)
        if v & bits != bits:
            struct.pack_into("<I", self._ram, phys, v | bits)

    def walk(self, linear: int, write: bool, user: bool, set_ad: bool = True):
        """Translate like the CPU: returns (phys, pde addr, pte addr or None,
        effective flags) or raises GuestFault(14) with the error code it would push."""
        err = (ERR_W if write else 0) | (ERR_U if user else 0)
        pde_addr = self.cr3 + 4 * (linear >> 22)
        self._check_table(pde_addr)
        pde = self._rd(pde_addr)
        if not pde & P:
            raise GuestFault(14, err, cr2=linear)
        if pde & PS and self.pse:
            flags, pte_addr = pde, None
            phys = (pde & 0xFFC00000) | (linear & 0x3FFFFF)
        else:
            pte_addr = (pde & ~0xFFF) + 4 * ((linear >> 12) & 0x3FF)
            self._check_table(pte_addr)
            pte = self._rd(pte_addr)
            if not pte & P:
                raise GuestFault(14, err, cr2=linear)
            flags = pte & (pde | ~(RW | US))
            phys = (pte & ~0xFFF) | (linear & 0xFFF)
        if (user and not flags & US) or (write and not flags & RW and (user or self.wp)):
            raise GuestFault(14, err | ERR_P, cr2=linear)
        if set_ad:
            self._set_bits(pde_addr, A)
            if pte_addr is not None:
                self._set_bits(pte_addr, A | (D if write else 0))
            elif write:
                self._set_bits(pde_addr, D)
        return phys, pde_addr, pte_addr, flags

    def _check_table(self, addr: int) -> None:
        if addr + 4 > self.ram_size:
            raise Unsupported(f"guest page table at {addr:#x} lies outside guest RAM")

    def translate(self, linear: int, write: bool = False, user: bool = False, touch: bool = True) -> int:
        """Guest-linear to guest-physical for the monitor's own accesses;
        `touch=False` for a look that the guest's CPU would not make (no
        accessed or dirty bits set)."""
        linear &= 0xFFFFFFFF
        if not self.paging:
            return linear
        return self.walk(linear, write, user, set_ad=touch)[0]

    # --- faults ---------------------------------------------------------------------
    def page_fault(self, linear: int, err: int, user: bool) -> None:
        """A #PF in the shadow: fill it (hidden) or raise GuestFault (true)."""
        write = bool(err & ERR_W)
        fetch = bool(err & ERR_ID)
        if fetch and not user and self._kernel_nx:
            raise Unsupported(f"guest kernel code ran outside the TC at {linear:#x}")
        if linear >> 22 in self.placement.pdes:
            if not self.paging or self._rd(self.cr3 + 4 * (linear >> 22)) & P:
                raise RegionWanted(linear)
            self.stats["true-faults"] += 1
            # The guest's directory has no entry there: not present (P=0), though
            # the shadow's entry made unicorn report a protection fault (found by
            # tests/test_hostile_guests.py).
            raise GuestFault(14, (err & ERR_W) | (ERR_U if user else 0), cr2=linear)
        if not self.paging:
            pt = self.space.pts.get(linear >> 22)
            slot = (linear >> 12) & 0x3FF
            if pt is not None and self._get(pt, slot) & P:
                if not fetch:       # pragma: no cover - an identity entry cannot fault otherwise
                    raise Unsupported(f"unexpected page fault at {linear:#x} with paging off")
                self._set(pt, slot, self._get(pt, slot) & ~NX)     # code runs here as is
                self.stats["exec-faults"] += 1
                self._flush_tlb()
                return
            if fetch:
                raise Unsupported(f"guest executes nonexistent physical memory at {linear:#x}")
            pt = self._pt_for(self.space, linear >> 22, ("flat", linear >> 22), None, RW | US, RW | US)
            self._set(pt, slot, self._open_bus | P | RW | US | NX)
            self.stats["open-bus-maps"] += 1
            return
        try:
            phys, pde_addr, pte_addr, flags = self.walk(linear, write, user)
        except GuestFault:
            self.stats["true-faults"] += 1
            raise
        frame = phys & ~0xFFF
        if frame >= self.ram_size and not any(b <= frame < b + s for b, s in self._mmio):
            if fetch:
                raise Unsupported(f"guest executes nonexistent physical memory at {frame:#x} "
                                  f"(linear {linear:#x})")
            frame = self._open_bus
            self.stats["open-bus-maps"] += 1
        if not self._free:
            self._pool_reset()
        pde = self._rd(pde_addr)
        index = linear >> 22
        if pte_addr is None:
            key = ("big", pde & 0xFFC00000, pde & (RW | US))
            pt = self._pt_for(self.space, index, key, None, pde, pde)
            dirty = bool(pde & D) or write
        else:
            pt = self._pt_for(self.space, index, ("pt", pde & ~0xFFF), pde & ~0xFFF, pde, pde)
            dirty = bool(self._rd(pte_addr) & D) or write
        entry = frame | P | (flags & US)
        if flags & RW and dirty:
            entry |= RW
        slot = (linear >> 12) & 0x3FF
        old = self._get(pt, slot)
        # Execute permission only where code runs as is (see the module docstring).
        if not (fetch or (old & P and not old & NX)):
            entry |= NX
        self._set(pt, slot, entry)
        if old & P:
            self._flush_tlb()       # an upgrade (to writable or executable): drop the cached entry
        self.stats["exec-faults" if fetch else "hidden-faults"] += 1

    # --- keeping shadows coherent ------------------------------------------------
    protects = False    # a trace owner whose pages stay writable (shadow_mmu/traces.py)

    def _remapped(self, linear: int, size: int) -> None:
        """Tell the TC a mapping changes, at the next exit: the new entry is in
        place by then (a guest store reaches the owners before it lands, and
        the TC compares where its code is now with where it was), and inside
        a write hook the TC's invalidation must not touch unicorn's TLB. The
        architecture allows the delay: until INVLPG or a CR3 load the CPU may
        still use the old mapping."""
        self._remaps.append((linear, size))

    def traced_write(self, phys: int, size: int) -> None:
        """The guest (or the monitor) writes a page holding a guest PD or PT."""
        page = phys & ~0xFFF
        first, last = (phys & 0xFFF) >> 2, ((phys + size - 1) & 0xFFF) >> 2
        touched = False
        space = self.by_gpd.get(page)
        if space is not None and space is self.space:
            for index in range(first, last + 1):
                self._remapped(index << 22, BIG)
        if space is not None:
            for index in range(first, last + 1):
                if index in space.pts:
                    self._unlink(space, index)
                    touched = True
        pt = self.by_gpt.get(page)
        if pt is not None:
            for index in range(first, last + 1):
                for user_space, pde_index in pt.users:
                    if user_space is self.space:
                        self._remapped((pde_index << 22) | (index << 12), PAGE_SIZE)
                if self._get(pt, index):
                    self._set(pt, index, 0)
                    touched = True
        if touched:
            self.stats["pt-writes"] += 1
            self._flush_tlb()

    def invlpg(self, linear: int) -> None:
        if not self.paging:
            return      # the identity shadow never changes; clearing its PTE lost the page (selfcheck)
        self.on_remap(linear & ~0xFFF, PAGE_SIZE)
        pt = self.space.pts.get(linear >> 22)
        if pt is not None:
            self._set(pt, (linear >> 12) & 0x3FF, 0)
        self._flush_tlb()
