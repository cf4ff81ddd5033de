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
from bt_vmm.machine.layout import MON_BASE, PAGE_SIZE
from bt_vmm.machine.memory import GuestFault
from bt_vmm.shadow_mmu.traces import PageTraces
from bt_vmm.tcache import region as R

P, RW, US, PWT, PCD, A, D, PS, G = 1, 2, 4, 8, 16, 32, 64, 128, 256
ERR_P, ERR_W, ERR_U = 1, 2, 4
POOL_BASE = 0xD0000000          # unicorn-physical, never mapped linearly
POOL_PAGES = 4096               # 16 MiB of shadow page tables
MON_PDE = MON_BASE >> 22
MAX_SPACES = 64
BIG = 0x400000


@dataclass(eq=False)
class ShadowPT:
    phys: int
    key: tuple
    gpt: int | None                       # guest page-table page it shadows (None: a split 4 MiB page)
    users: set = field(default_factory=set)   # {(space, pde index)}


@dataclass(eq=False)
class Space:
    cr3: int                              # guest page directory (physical), or -1 for paging off
    kpd: int
    upd: int
    pts: dict[int, ShadowPT] = field(default_factory=dict)


class ShadowMMU:
    def __init__(self, uc: Uc, ram, ram_size: int, traces: PageTraces,
                 mmio: list[tuple[int, int]]) -> None:
        self._uc = uc
        self._ram = ram                   # guest RAM (host mapping)
        self.ram_size = ram_size
        self._traces = traces
        self._mmio = mmio                 # [(base, size)] physical ranges that are devices
        self._pool = mmap.mmap(-1, POOL_PAGES * PAGE_SIZE)
        uc.mem_map_ptr(POOL_BASE, POOL_PAGES * PAGE_SIZE, UC_PROT_ALL,
                       ctypes.addressof(ctypes.c_char.from_buffer(self._pool)))
        self._free = list(range(POOL_BASE + (POOL_PAGES - 1) * PAGE_SIZE, POOL_BASE - 1, -PAGE_SIZE))
        self.spaces: OrderedDict[int, Space] = OrderedDict()
        self.pts: dict[tuple, ShadowPT] = {}
        self.by_gpt: dict[int, ShadowPT] = {}
        self.by_gpd: dict[int, Space] = {}
        self.stats: Counter[str] = Counter()
        self._monitor_kpde = self._monitor_pt({R.PREEMPT_BOUNDS})
        # Told about every linear range whose mapping changed (the TC keys
        # translations by linear address).
        self.on_remap = lambda linear, size: None
        self.paging = False
        self.wp = True
        self.pse = False
        self.user = False                 # which view is live
        self.cr3 = 0
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

    def _set(self, table: int, index: int, value: int) -> None:
        struct.pack_into("<I", self._pool, table - POOL_BASE + 4 * index, value)

    def _get(self, table: int, index: int) -> int:
        return struct.unpack_from("<I", self._pool, table - POOL_BASE + 4 * index)[0]

    def _flush_tlb(self) -> None:
        self._uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

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
        self._uc.reg_write(X.UC_X86_REG_CR3, self.space.upd if self.user else self.space.kpd)

    def reset(self) -> None:
        """Drop every shadow (CR4/CR0 paging-mode changes, pool exhaustion)."""
        for space in list(self.spaces.values()):
            self._drop_space(space)
        self.stats["resets"] += 1

    # --- spaces -------------------------------------------------------------------
    def _monitor_pt(self, supervisor_pages: set[int]) -> int:
        """The kernel view's page-directory entry for the monitor region: a
        user page under SMAP (out of the translated kernel's reach), except the
        given pages, which are supervisor and read-only: the TC's preemption
        bounds, which the TC reads without toggling AC (and, for ring 1, the
        shadow GDT)."""
        pt = self._alloc()
        for i in range(1024):
            flags = 0 if (i << 12) in supervisor_pages else RW | US
            self._set(pt, i, (MON_BASE + (i << 12)) | P | flags)
        return pt | P | RW | US

    def gdt_for_ring1(self) -> None:
        """The trap-and-emulate engine runs guest kernel code at ring 1, whose
        own segment loads read the shadow GDT implicitly. SMAP would refuse
        that, so the shadow GDT's pages join the supervisor read-only ones
        (readable by the guest kernel: a weaker guarantee than the BT engine's)."""
        gdt = set(range(R.SHADOW_GDT, R.SHADOW_GDT + R.SHADOW_GDT_SIZE, PAGE_SIZE))
        self._monitor_kpde = self._monitor_pt({R.PREEMPT_BOUNDS} | gdt)
        for space in self.spaces.values():
            self._set(space.kpd, MON_PDE, self._monitor_kpde)
        self._load()

    def _new_space(self, cr3: int) -> Space:
        space = Space(cr3, self._alloc(), self._alloc())
        self._set(space.kpd, MON_PDE, self._monitor_kpde)
        self._set(space.upd, MON_PDE, MON_BASE | P | RW | PS)
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
                self._set(pt.phys, (page >> 12) & 0x3FF, page | P | RW | US)
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
            if len(self._free) < 2:          # not mid-way through _new_space
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
        self._free += [space.kpd, space.upd]
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
            pt = ShadowPT(self._alloc(), key, gpt)
            self.pts[key] = pt
            if gpt is not None:
                self.by_gpt[gpt] = pt
                self._traces.trace(gpt, self)
            self.stats["shadow-pts-built"] += 1
        pt.users.add((space, index))
        space.pts[index] = pt
        self._set(space.kpd, index, pt.phys | P | (kflags & RW))
        self._set(space.upd, index, pt.phys | P | (uflags & (RW | US)))
        return pt

    def _unlink(self, space: Space, index: int) -> None:
        pt = space.pts.pop(index)
        self._set(space.kpd, index, 0)
        self._set(space.upd, index, 0)
        pt.users.discard((space, index))
        if not pt.users:
            del self.pts[pt.key]
            if pt.gpt is not None:
                del self.by_gpt[pt.gpt]
                self._traces.untrace(pt.gpt, self)
            self._free.append(pt.phys)
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

    def translate(self, linear: int, write: bool = False, user: bool = False) -> int:
        """Guest-linear to guest-physical for the monitor's own accesses."""
        linear &= 0xFFFFFFFF
        if not self.paging:
            return linear
        return self.walk(linear, write, user)[0]

    # --- faults ---------------------------------------------------------------------
    def page_fault(self, linear: int, err: int, user: bool) -> None:
        """A #PF in the shadow: fill it (hidden) or raise GuestFault (true)."""
        write = bool(err & ERR_W)
        if linear >> 22 == MON_PDE:
            if not user:
                raise Unsupported(f"guest kernel code accessed the monitor region at {linear:#x}")
            if self.paging and self._rd(self.cr3 + 4 * MON_PDE) & P:
                raise Unsupported("the guest maps the monitor region's linear range (0xffc00000+)")
            if not self.paging:
                raise Unsupported(f"guest access to nonexistent physical memory at {linear:#x}")
            self.stats["true-faults"] += 1
            # The guest's directory has no entry there: not present (P=0), though
            # the shadow's supervisor-only entry made unicorn report a protection
            # fault (found by tests/test_hostile_guests.py).
            raise GuestFault(14, (err & ERR_W) | ERR_U, cr2=linear)
        if not self.paging:
            raise Unsupported(f"guest access to nonexistent physical memory at {linear:#x}")
        try:
            phys, pde_addr, pte_addr, flags = self.walk(linear, write, user)
        except GuestFault:
            self.stats["true-faults"] += 1
            raise
        frame = phys & ~0xFFF
        if frame >= self.ram_size and not any(b <= frame < b + s for b, s in self._mmio):
            raise Unsupported(f"guest maps linear {linear:#x} to nonexistent physical memory {frame:#x}")
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
        old = self._get(pt.phys, slot)
        self._set(pt.phys, slot, entry)
        if old & P:
            self._flush_tlb()       # an upgrade (read-only to writable): drop the cached entry
        self.stats["hidden-faults"] += 1

    # --- keeping shadows coherent ------------------------------------------------
    def traced_write(self, phys: int, size: int) -> None:
        """The guest (or the monitor) writes a page holding a guest PD or PT."""
        page = phys & ~0xFFF
        first, last = (phys & 0xFFF) >> 2, ((phys + size - 1) & 0xFFF) >> 2
        touched = False
        space = self.by_gpd.get(page)
        if space is not None and space is self.space:
            for index in range(first, last + 1):
                self.on_remap(index << 22, BIG)
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
                        self.on_remap((pde_index << 22) | (index << 12), PAGE_SIZE)
                if self._get(pt.phys, index):
                    self._set(pt.phys, index, 0)
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
            self._set(pt.phys, (linear >> 12) & 0x3FF, 0)
        self._flush_tlb()
