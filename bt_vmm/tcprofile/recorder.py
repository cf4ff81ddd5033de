"""Recording a TC profile while the guest runs.

The TCache calls the recorder on every translation, chain, invalidation and
flush; the engine calls it on every callout (the int3 exits the translator
planted) and every preemption check that fired (a `bound` raising #BR), which
attributes those exits to the CCF that contains them. Each call is a
few dictionary and list operations in Python that already runs on that exit,
so recording adds no exits of its own. Execution counts come from the
counters the CCFs bump themselves (EngineOptions(count=True)) and are read
once, when the profile is built at the end of the run.

Times are wall-clock seconds since the recorder was attached to the TC, i.e.
since the engine was created, just before the guest's first instruction.
"""

from __future__ import annotations

import datetime
import struct
import time
from typing import Any

from bt_vmm.tcache import region as R
from bt_vmm.tcprofile.format import FORMAT, VERSION

# Callout kinds, as the engine counts them in its exits-by-reason.
_REASON = {"exit": "exit", "reenter": "reenter", "lookup-miss": "lookup-miss",
           "undefined": "undefined", "irq-window": "irq-window", "preempt": "preempt",
           "preempt-lookup": "preempt", "insn-limit": "insn-limit"}


def callout_reason(c) -> str:
    """The engine's exits-by-reason key for one callout."""
    if c.kind in ("emulate", "emulate-end"):
        return f"{c.kind}:{c.insn.mnemonic}"
    return _REASON.get(c.kind, c.kind)


class TCRecorder:
    """Collects a TC profile. Use it as

        rec = TCRecorder()
        engine = BTEngine(machine, rec.options(timeout=10))   # count=True, recorder=rec
        result = engine.run(entry)
        doc = rec.profile(engine, result, guest="mykernel")    # a dict (the schema in format.py)
        write_profile(doc, "run.tcprof")
    """

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.tcache = None
        self.events: list[list] = []
        self._born: dict[int, float] = {}                 # ccf index -> time
        self._death: dict[int, tuple[float, str]] = {}    # ccf index -> (time, reason)
        self._site_owner: dict[int, tuple[int, int]] = {}   # id(ExitSite) -> (ccf index, exit index)
        self._sites: list = []                            # keeps the ExitSites (and their ids) alive
        self._hits: dict[int, list] = {}                  # id(Callout) -> [callout, count]
        self._misses: dict[int, int] = {}                 # guest target PC -> lookup misses
        self._collisions: dict[int, int] = {}             # ccf index -> misses at its entry check

    def options(self, **kw):
        """EngineOptions with execution counters on and this recorder attached."""
        from bt_vmm.engines.bt import EngineOptions
        return EngineOptions(count=True, recorder=self, **kw)

    # --- hooks (the TCache and the engine call these) -------------------------------
    def attach(self, tcache) -> None:
        self.tcache = tcache
        self.t0 = time.perf_counter()

    def translated(self, ccf) -> None:
        t = round(time.perf_counter() - self.t0, 6)
        self._born[ccf.index] = t
        for i, site in enumerate(ccf.code.exits):
            self._site_owner[id(site)] = (ccf.index, i)
            self._sites.append(site)
        self.events.append([t, "translate", ccf.index, self.tcache.occupancy])

    def chained(self, site, target) -> None:
        owner = self._site_owner.get(id(site))
        src, i = owner if owner is not None else (None, None)
        self.events.append([round(time.perf_counter() - self.t0, 6), "chain", src, i, target.index])

    def invalidated(self, ccf, reason: str) -> None:
        t = round(time.perf_counter() - self.t0, 6)
        self._death[ccf.index] = (t, reason)
        self.events.append([t, "invalidate", ccf.index, reason])

    def flushed(self, reason: str, live) -> None:
        t = round(time.perf_counter() - self.t0, 6)
        n = 0
        for ccf in live:
            if not ccf.dead:
                self._death[ccf.index] = (t, f"flush:{reason}")
                n += 1
        self.events.append([t, "flush", reason, n])

    def callout(self, c) -> None:
        h = self._hits.get(id(c))
        if h is None:
            self._hits[id(c)] = [c, 1]
        else:
            h[1] += 1
        if c.kind == "lookup-miss":
            self._lookup_miss(c)

    def _lookup_miss(self, c) -> None:
        # The lookup left the target guest PC in S_TARGET (the TC's own scratch word).
        uc = self.tcache._uc
        target = struct.unpack("<I", uc.mem_read(R.phys(R.S_TARGET), 4))[0]
        self._misses[target] = self._misses.get(target, 0) + 1
        if c.ccf is not None:            # the entry check of another TU in that table slot
            self._collisions[c.ccf.index] = self._collisions.get(c.ccf.index, 0) + 1
        self.events.append([round(time.perf_counter() - self.t0, 6), "lookup-miss", target,
                            c.ccf.index if c.ccf is not None else None])

    # --- the profile ------------------------------------------------------------------
    def profile(self, engine, result=None, guest: str | None = None) -> dict[str, Any]:
        """The profile document of the run `engine` just made (see format.py)."""
        from bt_vmm import __version__
        tc = engine.tcache
        uc = engine.m.uc
        counted = bool(tc.translator.count)
        by_ccf: dict[int, list] = {}
        shared = []
        hits = list(self._hits.values())
        for c in tc.callouts.values():     # re-enter int3s of dead CCFs that never fired
            if c.kind == "reenter" and id(c) not in self._hits:
                hits.append([c, 0])
        for c, n in hits:
            if c.ccf is None:
                shared.append([c.addr, c.kind, n])
            else:
                by_ccf.setdefault(c.ccf.index, []).append((c, n))
        ccfs = [self._ccf_record(ccf, tc, by_ccf.get(ccf.index, ())) for ccf in tc.all_ccfs()]
        s = tc.stats
        lookups = struct.unpack("<Q", uc.mem_read(R.phys(R.N_LOOKUPS), 8))[0] if counted else None
        totals = {
            "tus_translated": s["translated"],
            "guest_bytes_translated": s["guest_bytes"],
            "ccf_bytes": s["ccf_bytes"],
            "guest_insns_translated": s["guest_insns"],
            "ident_insns": s["ident_insns"],
            "chained_exits": s["chained"],
            "exits_total": sum(engine.exits.values()),
            "exits_by_reason": dict(sorted(engine.exits.items())),
            "tc_lookups": lookups,
            "tc_lookup_misses": engine.exits.get("lookup-miss", 0),
            "invalidations_by_reason": dict(tc.invalidations),
            "flushes_by_reason": dict(tc.flushes),
            "tc_occupancy_peak_bytes": tc.occupancy_peak,
            "guest_insns_executed_from_tc": tc.guest_insns_executed() if counted else None,
        }
        meta = {
            "bt_vmm_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "guest": guest,
            "engine": engine.name,
            "counted": counted,
            "time_unit": "wall seconds since the engine was created",
            "tc_base": tc._tc_lo,
            "tc_capacity_bytes": tc._tc_hi - tc._alloc_lo,
            "lookup_routine": tc.lookup_addr,
            "generations": tc.generation + 1,
            "wall_seconds": round(result.wall_seconds, 6) if result is not None else None,
            "exit_status": result.status if result is not None else None,
            "reason": result.reason if result is not None else None,
        }
        return {
            "format": FORMAT,
            "version": VERSION,
            "meta": meta,
            "totals": totals,
            "ccfs": ccfs,
            "shared_callouts": sorted(shared),
            "lookup_misses": sorted([pc, n] for pc, n in self._misses.items()),
            "events": self.events,
        }

    def _ccf_record(self, ccf, tc, hit_callouts) -> dict[str, Any]:
        code = ccf.code
        tu = code.tu
        hits = {id(c): n for c, n in hit_callouts}
        # int3 callouts, and the preemption checks (a `bound` that raises #BR)
        sites = list(code.callouts) + list(getattr(code, "preempt_points", ()))
        callouts = [[c.addr, c.kind, c.guest_eip, hits.get(id(c), 0), callout_reason(c)]
                    for c in sorted(sites, key=lambda c: c.addr)]
        known = {id(c) for c in sites}
        for c, n in hit_callouts:         # e.g. the re-enter int3 an invalidation planted
            if id(c) not in known:
                callouts.append([c.addr, c.kind, c.guest_eip, n, callout_reason(c)])
        insns, regions = layout(ccf)
        death = self._death.get(ccf.index)
        if death is None and ccf.dead:
            death = (None, "unknown")
        return {
            "id": ccf.index,
            "generation": ccf.generation,
            "pc": tu.pc,
            "end_reason": tu.end_reason,
            "guest": b"".join(i.raw for i in tu.insns).hex(),
            "tc": code.base,
            "entry": code.entry,
            "body": code.body,
            "code": code.code.hex(),
            "insns": insns,
            "regions": regions,
            "exits": [[e.kind, e.target, e.field, e.stub] for e in code.exits],
            "callouts": callouts,
            "pcmap": [[a, g, f] for a, g, f in code.pcmap],
            "executions": tc.executions(ccf),
            "lookup_collisions": self._collisions.get(ccf.index, 0),
            "born": self._born.get(ccf.index),
            "died": death[0] if death else None,
            "death": death[1] if death else None,
        }


def layout(ccf) -> tuple[list, list]:
    """Where each guest instruction's translation sits in the CCF, and what the
    rest of the CCF is: ([[guest addr, size, kind, tc start, tc end]...],
    [[tc start, tc end, what, guest addr or None]...]). Reconstructed from the
    translator's PC map, rewrites and callouts (the translator emits every
    instruction at a PC-map mark; the irq check after sti/popf is a template
    with one int3)."""
    from bt_vmm.translator.templates import INT3, t
    from bt_vmm.translator.translate import TB_BREAK
    code = ccf.code
    tu = code.tu
    base, body, end = code.base, code.body, code.base + len(code.code)
    buf = code.code
    rewrites = {id(insn): (s, e) for insn, s, e in code.rewrites}
    irq = t("irq_check").code
    irq_at = irq.index(INT3)
    irq_sites = {c.addr for c in code.callouts if c.kind == "irq-window"}
    bp_sites = {c.addr for c in code.callouts if c.kind == "breakpoint"}
    pcmap = code.pcmap
    regions: list[list] = [[base, body, "entry-check", tu.pc]]
    insns: list[list] = []
    pos = body
    j = 1
    for n, insn in enumerate(tu.insns):
        rw = rewrites.get(id(insn))
        if rw is not None:
            start, stop = rw
        else:
            while j < len(pcmap) and not (pcmap[j][0] >= pos and pcmap[j][1] == insn.addr
                                          and pcmap[j][2] is None):
                j += 1
            start = pcmap[j][0] if j < len(pcmap) else pos
            stop = start + len(insn.raw)
            if buf[start - base:start - base + 2] == TB_BREAK and insn.raw[:2] != TB_BREAK:
                stop += len(TB_BREAK)
        if pos in bp_sites:
            regions.append([pos, pos + 1, "breakpoint", insn.addr])
            pos += 1
        if start > pos:
            regions.append([pos, start, "counter" if n == 0 else "gap", None])
        insns.append([insn.addr, len(insn.raw), insn.kind.value, start, stop])
        pos = stop
        if pos + irq_at in irq_sites:
            regions.append([pos, pos + len(irq), "irq-check", insn.next])
            pos += len(irq)
        while j < len(pcmap) and pcmap[j][0] < pos:
            j += 1
    stubs = min((e.stub for e in code.exits), default=end)
    if stubs > pos:
        regions.append([pos, stubs, "fallthrough-exit", tu.insns[-1].next])
    if end > stubs:
        regions.append([stubs, end, "exit-stubs", None])
    return insns, regions
