"""The translation cache: where CCFs live and how they find each other.

Kept apart from translating (translator/) and from running (engines/), as
QEMU keeps translate-all, cpu-exec and tb-maint apart: this module allocates TC
space, maps guest PCs to CCFs, fills the in-TC lookup table, chains and unchains
exits, and invalidates CCFs when their guest bytes change or the TC fills up.
Unicorn does not notice host writes to code it has compiled (issues #1148,
#2258), so every patch of live TC bytes is followed by ctl_remove_cache.
"""

from __future__ import annotations

import bisect
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from unicorn import Uc
from unicorn.x86_const import UC_X86_REG_CS

from bt_vmm.decoder import TranslationUnit, decode_tu
from bt_vmm.machine.layout import MON_BASE, PAGE_SIZE
from bt_vmm.machine.memory import GuestFault
from bt_vmm.shadow_mmu.traces import PageTraces
from bt_vmm.tcache import region as R
from bt_vmm.translator import CCFCode, Callout, ExitSite, Translator
from bt_vmm.translator.templates import INT3, preempt_check, rel32, t

STEP_AREA_SIZE = 512     # TC bytes for the CCF of a debugger's single step (one instruction)


@dataclass(eq=False)
class CCF:
    index: int
    slot: int
    code: CCFCode
    incoming: list[ExitSite] = field(default_factory=list)
    generation: int = 0          # the TC generation (flush count) it was born in
    phys: list[tuple[int, int]] = field(default_factory=list)   # guest-physical byte ranges
    dead: bool = False
    executions: int = 0          # harvested from the in-TC counter when it dies

    @property
    def tu(self) -> TranslationUnit:
        return self.code.tu

    @property
    def pc(self) -> int:
        return self.code.tu.pc

    @property
    def body(self) -> int:
        return self.code.body

    @property
    def tc_end(self) -> int:
        return self.code.base + len(self.code.code)


class TCache:
    def __init__(self, uc: Uc, translator_factory: Callable[[int, int], Translator],
                 fetch: Callable[[int, int], bytes], traces: PageTraces,
                 phys_of: Callable[[int, bool], int], tc_size: int = R.TC_END - R.TC_BASE,
                 recorder=None, placement: R.Placement | None = None) -> None:
        self._uc = uc
        self.placement = placement or R.Placement()
        self._translator_factory = translator_factory
        self._tc_size = tc_size
        # Optional observer (bt_vmm.tcprofile.TCRecorder): told about every
        # translation, chain, invalidation and flush when a profile is recorded.
        self.recorder = recorder
        self._fetch = fetch
        self._traces = traces
        self._phys_of = phys_of
        self.by_pc: dict[int, CCF] = {}
        self.callouts: dict[int, Callout] = {}    # keyed by the EIP after the int3
        self._starts: list[int] = []              # TC addresses of live and dead CCFs, ascending
        self._ccfs: list[CCF] = []
        self._by_page: dict[int, set[CCF]] = {}     # guest-physical page -> CCFs
        self._by_linear: dict[int, set[CCF]] = {}   # guest-linear page -> CCFs
        self.retired: list[CCF] = []              # dead CCFs, kept for statistics
        self.generation = 0                       # bumped by every flush
        self.stats = Counter()
        self.invalidations = Counter()
        self.flushes = Counter()
        self.occupancy_peak = 0
        # Guest addresses of the debugger's breakpoints: every CCF is translated
        # with a breakpoint callout before each instruction at one of them.
        self.breakpoints: set[int] = set()
        self._build_shared()
        if recorder is not None:
            recorder.attach(self)

    def _build_shared(self) -> None:
        """Shared code at the start of the TC: the lookup routine and the miss
        stub, for the region's current placement."""
        self._tc_lo = self.placement.lin(R.TC_BASE)
        self._tc_hi = self._tc_lo + self._tc_size
        self.lookup_addr = self._tc_lo
        self.translator = self._translator_factory(self.lookup_addr, self.placement.base)
        # The lookup routine has a preemption check: returns and indirect
        # branches (recursion, dispatch loops) are check points too. When it
        # fires, the guest's ECX is in S_ECX and the target in S_TARGET.
        lookup_body = t("lookup_counted" if self.translator.count else "lookup").code
        lookup = lookup_body[:7] + preempt_check(self.placement.base) + lookup_body[7:]
        self.miss_stub = self.lookup_addr + len(lookup)
        self.stop_addr = self.miss_stub + 1
        # A debugger's single step: ret and indirect branches of the step CCF
        # end here (the target saved as the lookup saves it, then a callout),
        # and the step CCF itself is translated into the area after it.
        step_lookup = self.stop_addr + 1
        self.step_area = (step_lookup + len(lookup_body[:7]) + 1 + 15) & ~15
        shared = lookup + INT3 + b"\xf4" + lookup_body[:7] + INT3
        self.shared_code = shared
        self._write(self.lookup_addr, shared)
        self.callouts = {self.miss_stub + 1: Callout("lookup-miss", self.miss_stub, 0),
                         step_lookup + 8: Callout("step-lookup", step_lookup + 7, 0)}
        self._step_translator = Translator(step_lookup, count=False, budget=False,
                                           mon_base=self.placement.base, step=True)
        self.step_ccf: CCF | None = None
        # preemption checks (`bound`, which faults at its own address), by TC address
        self.preempt_points: dict[int, Callout] = {
            self.lookup_addr + 7: Callout("preempt-lookup", self.lookup_addr + 7, 0)}
        self._alloc_lo = self.step_area + STEP_AREA_SIZE
        self._alloc = self._alloc_lo
        self._next_slot = 0
        self._clear_table()

    def rebase(self) -> None:
        """The region moved (its placement changed): every CCF goes, and the
        shared code is rebuilt for the new linear addresses."""
        self.flush("monitor-moved")
        self._build_shared()

    def _write(self, tc_addr: int, data: bytes) -> None:
        """Store into the TC (unicorn's mem_write takes physical addresses)."""
        self._uc.mem_write(tc_addr - self.placement.base + MON_BASE, data)

    def _read(self, tc_addr: int, n: int) -> bytes:
        return bytes(self._uc.mem_read(tc_addr - self.placement.base + MON_BASE, n))

    # --- lookup ---------------------------------------------------------------
    def get(self, pc: int) -> CCF:
        """The CCF for guest PC `pc`, translating it on a miss."""
        ccf = self.by_pc.get(pc)
        return ccf if ccf is not None else self._translate(pc)

    def ccf_at(self, tc_addr: int) -> CCF | None:
        step = self.step_ccf
        if step is not None and step.code.base <= tc_addr < step.tc_end:
            return step
        i = bisect.bisect_right(self._starts, tc_addr) - 1
        if i >= 0:
            ccf = self._ccfs[i]
            if tc_addr < ccf.tc_end:
                return ccf
        return None

    def fill_table(self, ccf: CCF) -> None:
        self._uc.mem_write(R.phys(R.LTABLE) + 4 * (ccf.pc & 0xFFFF), struct.pack("<I", ccf.code.entry))

    # --- translation ----------------------------------------------------------
    def _translate(self, pc: int) -> CCF:
        tu = decode_tu(pc, self._fetch)
        # Worst case: the CCF is a few times the guest bytes; retry after a flush.
        for attempt in (0, 1):
            if self._next_slot < R.COUNTER_SLOTS:
                code = self.translator.translate(tu, self._alloc, self._next_slot, self._resolve,
                                                 self.breakpoints)
                if self._alloc + len(code.code) <= self._tc_hi:
                    break
            if attempt:
                raise RuntimeError("a single TU does not fit in an empty TC")
            self.flush("tc-full")
        ccf = CCF(len(self._ccfs) + len(self.retired), self._next_slot, code, generation=self.generation)
        self._next_slot += 1
        self._alloc = (self._alloc + len(code.code) + 15) & ~15
        self._write(code.base, code.code)
        self._starts.append(code.base)
        self._ccfs.append(ccf)
        self.by_pc[pc] = ccf
        for c in code.callouts:
            c.ccf = ccf
            self.callouts[c.addr + 1] = c
        for c in code.preempt_points:
            c.ccf = ccf
            self.preempt_points[c.addr] = c
        rec = self.recorder
        if rec is not None:
            rec.translated(ccf)
        for site in code.exits:
            target = self.by_pc.get(site.target)
            # (an exit back to this very TU was resolved before it existed: not chained yet)
            if target is not None and target is not ccf:
                target.incoming.append(site)
                self.stats["chained"] += 1
                if rec is not None:
                    rec.chained(site, target)
        ccf.phys = self._phys_ranges(tu)
        for page in tu.pages:
            self._by_linear.setdefault(page, set()).add(ccf)
        for lo, _ in ccf.phys:
            page = lo & ~(PAGE_SIZE - 1)
            self._by_page.setdefault(page, set()).add(ccf)
            self._traces.trace(page, self)
        self.fill_table(ccf)
        self.stats["translated"] += 1
        self.stats["guest_bytes"] += tu.end - tu.pc
        self.stats["guest_insns"] += len(tu.insns)
        self.stats["ident_insns"] += code.ident
        self.stats["ccf_bytes"] += len(code.code)
        self.occupancy_peak = max(self.occupancy_peak, self.occupancy)
        return ccf

    def translate_step(self, pc: int) -> CCF:
        """The CCF of the one instruction at guest PC `pc`, for a debugger's
        single step (engines/debug.py): translated into the step area, kept out
        of the lookup table and of every chain, its exits and ret/indirect
        branches callouts; the previous step CCF's place is reused."""
        tu = decode_tu(pc, self._fetch, max_insns=1)
        base = self.step_area
        code = self._step_translator.translate(tu, base, 0, lambda target: None)
        if len(code.code) > STEP_AREA_SIZE:          # pragma: no cover - one instruction always fits
            raise RuntimeError(f"the step CCF for {pc:#x} does not fit in the step area")
        if self.step_ccf is not None:
            for c in self.step_ccf.code.callouts:
                self.callouts.pop(c.addr + 1, None)
        ccf = CCF(-1, -1, code, generation=self.generation)
        self._write(base, code.code)
        self._forget(base, base + STEP_AREA_SIZE)
        for c in code.callouts:
            c.ccf = ccf
            self.callouts[c.addr + 1] = c
        self.step_ccf = ccf
        return ccf

    def breakpoint_changed(self, addr: int) -> None:
        """A debugger's breakpoint at guest `addr` came or went: CCFs with an
        instruction there are translated again (with or without the callout)."""
        for ccf in list(self._by_linear.get(addr & ~(PAGE_SIZE - 1), ())):
            if any(insn.addr == addr for insn in ccf.tu.insns):
                self.invalidate(ccf, "breakpoint")

    def _phys_ranges(self, tu: TranslationUnit, touch: bool = True) -> list[tuple[int, int]]:
        """The guest-physical bytes a TU was decoded from, page by page (with
        `touch=False`, where they are now, setting no accessed bits)."""
        out = []
        addr, end = tu.pc, tu.end
        while addr < end:
            chunk = min(end, (addr & ~(PAGE_SIZE - 1)) + PAGE_SIZE) - addr
            try:
                phys = self._phys_of(addr, touch)
            except GuestFault:
                break
            out.append((phys, phys + chunk))
            addr += chunk
        return out

    def _resolve(self, pc: int) -> int | None:
        ccf = self.by_pc.get(pc)
        return ccf.body if ccf is not None else None

    @property
    def occupancy(self) -> int:
        return self._alloc - self._alloc_lo

    # --- chaining -------------------------------------------------------------
    def chain(self, site: ExitSite, ccf: CCF, generation: int) -> None:
        """Point the exit `site` straight at `ccf`'s body (skipped when the exit's
        own CCF was flushed since the exit fired)."""
        if generation != self.generation:
            return
        self._patch(site.field, ccf.body)
        ccf.incoming.append(site)
        self.stats["chained"] += 1
        if self.recorder is not None:
            self.recorder.chained(site, ccf)

    def _patch(self, field_addr: int, dest: int) -> None:
        self._write(field_addr, rel32(field_addr + 4, dest))
        self._forget(field_addr - 2, field_addr + 4)

    def _forget(self, lo: int, hi: int) -> None:
        """Make unicorn drop what it compiled from TC bytes [lo, hi). Its
        ctl_remove_cache translates `lo` through the current page tables at the
        current privilege level (uc_invalidate_tb -> get_page_addr_code): while
        guest user code runs directly the monitor region is a supervisor page,
        the translation fails and the call silently does nothing -- stale CCFs
        then ran after a flush made on entry from user mode (found by
        tests/test_robustness.py with a small --tc-size). There, every
        compiled block is dropped instead."""
        if self._uc.reg_read(UC_X86_REG_CS) & 3:
            self._uc.ctl_flush_tb()
        else:
            self._uc.ctl_remove_cache(lo, hi)

    # --- invalidation ---------------------------------------------------------
    protects = True     # a trace owner whose pages are write-protected (shadow_mmu/traces.py)

    def traced_write(self, phys: int, size: int) -> None:
        """A store to [phys, phys+size) hit a page holding translated code: drop
        every CCF whose guest bytes it overlaps."""
        for page in {phys & ~(PAGE_SIZE - 1), (phys + size - 1) & ~(PAGE_SIZE - 1)}:
            for ccf in list(self._by_page.get(page, ())):
                if any(lo < phys + size and phys < hi for lo, hi in ccf.phys):
                    self.invalidate(ccf, "smc-write")

    def remapped(self, linear: int, size: int) -> None:
        """The guest changed the mapping of [linear, linear+size): CCFs decoded
        through the old mapping stand for other bytes now -- unless their
        bytes are still where they were (a kernel splitting a large page or
        changing protections remaps thousands of code pages onto the same
        frames: dropping those CCFs cost a Linux boot 30,000 retranslations)."""
        if not self._by_linear:
            return
        for page in range(linear & ~(PAGE_SIZE - 1), linear + size, PAGE_SIZE):
            for ccf in list(self._by_linear.get(page, ())):
                if self._phys_ranges(ccf.tu, touch=False) != ccf.phys:
                    self.invalidate(ccf, "remap")

    def invalidate(self, ccf: CCF, reason: str) -> None:
        if ccf.dead:
            return
        ccf.executions = self.executions(ccf)   # harvest while the counter is still read live
        ccf.dead = True
        self.invalidations[reason] += 1
        if self.recorder is not None:
            self.recorder.invalidated(ccf, reason)
        del self.by_pc[ccf.pc]
        for site in ccf.incoming:
            self._patch(site.field, site.stub)
        ccf.incoming.clear()
        slot_addr = R.phys(R.LTABLE) + 4 * (ccf.pc & 0xFFFF)
        if struct.unpack("<I", self._uc.mem_read(slot_addr, 4))[0] == ccf.code.entry:
            self._uc.mem_write(slot_addr, struct.pack("<I", self.miss_stub))
        # Unicorn may still hold compiled code that jumps to this body (a TB
        # that was running when the chain was cut): make the body itself exit,
        # so a stale jump re-dispatches on the guest PC instead of running
        # stale code.
        self._write(ccf.body, INT3)
        self._forget(ccf.body, ccf.body + 1)
        self.callouts[ccf.body + 1] = Callout("reenter", ccf.body, ccf.pc, ccf=ccf)
        for page in ccf.tu.pages:
            linear_owners = self._by_linear.get(page)
            if linear_owners is not None:
                linear_owners.discard(ccf)
                if not linear_owners:
                    del self._by_linear[page]
        for lo, _ in ccf.phys:
            page = lo & ~(PAGE_SIZE - 1)
            owners = self._by_page.get(page)
            if owners is not None:
                owners.discard(ccf)
                if not owners:
                    del self._by_page[page]
                    self._traces.untrace(page, self)

    def flush(self, reason: str) -> None:
        """Drop every CCF and start the TC over (when it is full, or on demand)."""
        self.flushes[reason] += 1
        if self.recorder is not None:
            self.recorder.flushed(reason, self._ccfs)
        for ccf in self._ccfs:
            if not ccf.dead:
                ccf.executions = self.executions(ccf)
                ccf.dead = True          # its counter slot is about to be reused
                self.invalidations[f"flush:{reason}"] += 1
            self.retired.append(ccf)
            # A flushed CCF never runs again (its callouts go below): drop the
            # capstone objects (about 2 KB per instruction), which made a long
            # run with a small TC grow without bound (benchmarks/soak.py).
            for insn in ccf.tu.insns:
                insn.cs = None
            for c in ccf.code.callouts:
                c.fast, c.fast_ready = None, False
        self._ccfs.clear()
        self._starts.clear()
        self.by_pc.clear()
        for page in list(self._by_page):
            self._traces.untrace(page, self)
        self._by_page.clear()
        self._by_linear.clear()
        self.callouts = {k: v for k, v in self.callouts.items() if v.ccf is None}
        self.preempt_points = {k: v for k, v in self.preempt_points.items() if v.ccf is None}
        self._alloc = self._alloc_lo
        self._next_slot = 0
        self._uc.mem_write(R.phys(R.COUNTERS), bytes(8 * R.COUNTER_SLOTS))
        self._clear_table()
        self._forget(self._tc_lo, self._tc_hi)
        self.generation += 1

    def _clear_table(self) -> None:
        self._uc.mem_write(R.phys(R.LTABLE), struct.pack("<I", self.miss_stub) * R.LTABLE_ENTRIES)

    # --- counters -------------------------------------------------------------
    def executions(self, ccf: CCF) -> int:
        if ccf.dead:
            return ccf.executions
        return struct.unpack("<Q", self._uc.mem_read(R.phys(R.COUNTERS) + 8 * ccf.slot, 8))[0]

    def all_ccfs(self) -> list[CCF]:
        return self.retired + self._ccfs

    def guest_insns_executed(self) -> int:
        return sum(self.executions(c) * len(c.tu.insns) for c in self.all_ccfs())
