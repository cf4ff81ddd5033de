"""A loaded TC profile: CCF records, links, and the numbers `bt-vmm tc` shows.

    from bt_vmm.tcprofile import load_profile
    p = load_profile("run.tcprof")
    p.stats()["expansion_ratio"]
    for ccf in p.top(10, by="executions"):
        print(hex(ccf.pc), ccf.executions, ccf.exits_by_reason)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterator

from bt_vmm.errors import BadInput
from bt_vmm.tcprofile.format import read_profile

# Totals that `tc stats` derives from the per-CCF records and events, and that
# must agree with the engine's own counters (and so with --stats).
DERIVED_TOTALS = ("tus_translated", "guest_bytes_translated", "ccf_bytes", "guest_insns_translated",
                  "ident_insns", "chained_exits", "tc_lookup_misses", "invalidations_by_reason",
                  "flushes_by_reason", "tc_occupancy_peak_bytes", "guest_insns_executed_from_tc")
TOP_KEYS = ("executions", "exits", "size", "insns")


@dataclass(frozen=True)
class Insn:
    """One guest instruction of a TU and where its translation sits."""
    addr: int
    size: int
    kind: str            # ident, jmp, jcc, call, ret, jmp-indirect, cli, popf, callout, ...
    tc_start: int
    tc_end: int
    mnemonic: str
    op_str: str
    raw: bytes

    @property
    def text(self) -> str:
        return f"{self.mnemonic} {self.op_str}".strip()


@dataclass(frozen=True)
class Exit:
    """A direct exit site of a CCF and what it was chained to."""
    index: int
    kind: str            # jmp / taken / fallthrough / call
    target: int          # guest PC
    field: int           # TC address of the rel32 field
    stub: int            # TC address of the int3 stub
    chained_to: tuple[int, ...]   # ids of the CCFs this exit was pointed at, in order


@dataclass(frozen=True)
class CalloutSite:
    addr: int            # TC address of the int3 (or of the `bound` of a preemption check)
    kind: str
    guest_eip: int
    hits: int
    reason: str          # the engine's exits-by-reason key


class CCFRecord:
    """One CCF of the profile (any generation, live or dead)."""

    def __init__(self, profile: "Profile", d: dict[str, Any]) -> None:
        self._p = profile
        self.raw = d                                 # the record as stored (see format.py)
        self.id: int = d["id"]
        self.generation: int = d["generation"]
        self.pc: int = d["pc"]
        self.guest_bytes: bytes = bytes.fromhex(d["guest"])
        self.code: bytes = bytes.fromhex(d["code"])
        self.tc: int = d["tc"]
        self.entry: int = d["entry"]
        self.body: int = d["body"]
        self.executions: int = d["executions"]
        self.end_reason: str = d.get("end_reason", "")
        self.born: float | None = d.get("born")
        self.died: float | None = d.get("died")
        self.death: str | None = d.get("death")
        self.lookup_collisions: int = d.get("lookup_collisions", 0)
        self.regions: list[list] = d["regions"]
        self.pcmap: list[list] = d.get("pcmap", [])

    def __repr__(self) -> str:
        return (f"<CCF #{self.id} gen {self.generation} guest {self.pc:#x} "
                f"{len(self.insns)} insns, {self.size} TC bytes, {self.executions} executions>")

    @property
    def end(self) -> int:
        """One past the TU's last guest byte."""
        return self.pc + len(self.guest_bytes)

    @property
    def tc_end(self) -> int:
        return self.tc + len(self.code)

    @property
    def size(self) -> int:
        return len(self.code)

    @property
    def live(self) -> bool:
        return self.death is None

    @cached_property
    def insns(self) -> list[Insn]:
        from bt_vmm.tcprofile.disasm import guest_text
        out = []
        for addr, size, kind, s, e in self.raw["insns"]:
            off = addr - self.pc
            raw = self.guest_bytes[off:off + size]
            mnemonic, op_str = guest_text(raw, addr)
            out.append(Insn(addr, size, kind, s, e, mnemonic, op_str, raw))
        return out

    @property
    def ident(self) -> int:
        return sum(1 for i in self.insns if i.kind == "ident")

    @property
    def guest_insns_executed(self) -> int:
        return self.executions * len(self.raw["insns"])

    @cached_property
    def exits(self) -> list[Exit]:
        links = self._p._out_links.get(self.id, {})
        return [Exit(i, k, tgt, f, s, tuple(links.get(i, ())))
                for i, (k, tgt, f, s) in enumerate(self.raw["exits"])]

    @cached_property
    def callouts(self) -> list[CalloutSite]:
        return [CalloutSite(a, k, g, n, r) for a, k, g, n, r in self.raw["callouts"]]

    @cached_property
    def exits_by_reason(self) -> dict[str, int]:
        """Exits this CCF took, by the engine's reason (its callouts that fired)."""
        c: Counter[str] = Counter()
        for site in self.callouts:
            if site.hits:
                c[site.reason] += site.hits
        return dict(c.most_common())

    @property
    def exits_total(self) -> int:
        return sum(self.exits_by_reason.values())

    @property
    def incoming(self) -> list[tuple[int, int]]:
        """(ccf id, exit index) of every exit that was chained to this CCF."""
        return self._p._in_links.get(self.id, [])

    @property
    def lookup_misses(self) -> int:
        """In-TC lookups for this CCF's guest PC that missed (whatever generation)."""
        return self._p._misses.get(self.pc, 0)

    def state(self) -> str:
        return "live" if self.live else f"dead ({self.death})"


class Profile:
    """A TC profile read from a file (load_profile) or built in memory."""

    def __init__(self, doc: dict[str, Any], path: str = "<memory>") -> None:
        self.path = path
        self.doc = doc
        self.meta: dict[str, Any] = doc["meta"]
        self.totals: dict[str, Any] = doc["totals"]
        self.events: list[list] = doc["events"]
        self._out_links: dict[int, dict[int, list[int]]] = {}
        self._in_links: dict[int, list[tuple[int, int]]] = {}
        for e in self.events:
            if e[1] == "chain" and len(e) >= 5 and e[2] is not None:
                self._out_links.setdefault(e[2], {}).setdefault(e[3], []).append(e[4])
                self._in_links.setdefault(e[4], []).append((e[2], e[3]))
        self._misses = {pc: n for pc, n in doc.get("lookup_misses", [])}
        try:
            self._ccfs = [CCFRecord(self, d) for d in doc["ccfs"]]
        except (KeyError, TypeError, ValueError) as e:
            raise BadInput(f"{path}: corrupt TC profile (bad CCF record: {e})") from None
        self._by_id = {c.id: c for c in self._ccfs}

    # --- CCFs ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ccfs)

    def __iter__(self) -> Iterator[CCFRecord]:
        return iter(self._ccfs)

    def ccfs(self, live: bool | None = None) -> Iterator[CCFRecord]:
        """Every CCF in order of translation (live=True/False: only those)."""
        for c in self._ccfs:
            if live is None or c.live == live:
                yield c

    def ccf(self, ccf_id: int) -> CCFRecord:
        return self._by_id[ccf_id]

    def find(self, addr: int) -> list[CCFRecord]:
        """The CCFs of the TU at guest PC `addr`; failing that, the TUs whose
        guest bytes contain it; failing that, the CCF whose TC bytes contain it."""
        hits = [c for c in self._ccfs if c.pc == addr]
        if not hits:
            hits = [c for c in self._ccfs if c.pc <= addr < c.end]
        if not hits:
            hits = [c for c in self._ccfs if c.tc <= addr < c.tc_end]
        return hits

    def in_range(self, lo: int, hi: int) -> list[CCFRecord]:
        """The CCFs of the TUs that start in [lo, hi), in guest order."""
        return sorted((c for c in self._ccfs if lo <= c.pc < hi), key=lambda c: (c.pc, c.id))

    def top(self, n: int = 10, by: str = "executions") -> list[CCFRecord]:
        """The hottest CCFs: by executions, exits taken, TC size or guest insns executed."""
        if by not in TOP_KEYS:
            raise ValueError(f"by must be one of {', '.join(TOP_KEYS)}")
        key = {"executions": lambda c: c.executions, "exits": lambda c: c.exits_total,
               "size": lambda c: c.size, "insns": lambda c: c.guest_insns_executed}[by]
        return sorted(self._ccfs, key=lambda c: (-key(c), c.id))[:n]

    # --- totals -------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """The profile's totals, derived from its CCF records and events (the
        engine-only counters -- exits by reason, in-TC lookups -- come from
        "totals")."""
        cs = self._ccfs
        t = self.totals
        guest_bytes = sum(len(c.guest_bytes) for c in cs)
        ccf_bytes = sum(c.size for c in cs)
        insns = sum(len(c.raw["insns"]) for c in cs)
        kinds: Counter[str] = Counter(row[2] for c in cs for row in c.raw["insns"])
        ident = kinds.get("ident", 0)
        sites = sum(len(c.raw["exits"]) for c in cs)
        chains = [e for e in self.events if e[1] == "chain"]
        chained_sites = len({(e[2], e[3]) for e in chains})
        callouts: Counter[str] = Counter()
        for c in cs:
            for k, v in c.exits_by_reason.items():
                callouts[k] += v
        for _, kind, hits in self.doc.get("shared_callouts", []):
            if hits:
                callouts["preempt" if kind == "preempt-lookup" else kind] += hits
        misses = sum(1 for e in self.events if e[1] == "lookup-miss")
        lookups = t.get("tc_lookups")
        invalidations: Counter[str] = Counter(c.death for c in cs if c.death is not None)
        flushes: Counter[str] = Counter(e[2] for e in self.events if e[1] == "flush")
        occupancy = [e[3] for e in self.events if e[1] == "translate"]
        peak = max(occupancy, default=0)
        capacity = self.meta.get("tc_capacity_bytes")
        counted = self.meta.get("counted", True)
        executed = sum(c.guest_insns_executed for c in cs) if counted else None
        return {
            "guest": self.meta.get("guest"),
            "wall_seconds": self.meta.get("wall_seconds"),
            "exit_status": self.meta.get("exit_status"),
            "tus_translated": len(cs),
            "ccfs_live": sum(1 for c in cs if c.live),
            "ccfs_invalidated": sum(1 for c in cs if c.death and not c.death.startswith("flush:")),
            "ccfs_flushed": sum(1 for c in cs if c.death and c.death.startswith("flush:")),
            "generations": self.meta.get("generations", 1),
            "guest_bytes_translated": guest_bytes,
            "ccf_bytes": ccf_bytes,
            "expansion_ratio": round(ccf_bytes / guest_bytes, 3) if guest_bytes else None,
            "guest_insns_translated": insns,
            "ident_insns": ident,
            "ident_share": round(ident / insns, 4) if insns else None,
            "insns_by_kind": dict(kinds.most_common()),
            "exit_sites": sites,
            "exit_sites_chained": chained_sites,
            "chained_exit_share": round(chained_sites / sites, 4) if sites else None,
            "chained_exits": len(chains),
            "callouts_total": sum(callouts.values()),
            "callouts_by_reason": dict(sorted(callouts.items(), key=lambda kv: (-kv[1], kv[0]))),
            "exits_total": t.get("exits_total"),
            "exits_by_reason": t.get("exits_by_reason"),
            "tc_lookups": lookups,
            "tc_lookup_misses": misses,
            "tc_lookup_hit_rate": round(1 - misses / lookups, 5) if lookups else None,
            "invalidations_by_reason": dict(invalidations),
            "flushes_by_reason": dict(flushes),
            "tc_occupancy_peak_bytes": peak,
            "tc_capacity_bytes": capacity,
            "tc_occupancy_peak_share": round(peak / capacity, 4) if capacity else None,
            "ccf_executions": sum(c.executions for c in cs) if counted else None,
            "guest_insns_executed_from_tc": executed,
        }

    def check(self) -> list[str]:
        """Disagreements between the derived totals and the engine's counters
        recorded at the end of the run (none for a sound profile)."""
        derived = self.stats()
        out = []
        for key in DERIVED_TOTALS:
            if key in self.totals and derived[key] != self.totals[key]:
                out.append(f"{key}: derived {derived[key]!r}, engine {self.totals[key]!r}")
        engine = self.totals.get("exits_by_reason") or {}
        for reason, n in derived["callouts_by_reason"].items():
            if n > engine.get(reason, 0):
                out.append(f"callouts {reason}: {n} recorded, engine counted {engine.get(reason, 0)}")
        return out

    # --- time -----------------------------------------------------------------------
    def timeline(self) -> dict[str, Any]:
        """Event series over guest time (wall seconds since the engine was created)."""
        translations, occupancy, invalidations, flushes, misses, chains = [], [], [], [], [], []
        n = 0
        for e in self.events:
            t, kind = e[0], e[1]
            if kind == "translate":
                n += 1
                translations.append([t, n])
                occupancy.append([t, e[3]])
            elif kind == "invalidate":
                invalidations.append([t, e[2], e[3]])
            elif kind == "flush":
                flushes.append([t, e[2], e[3]])
                occupancy.append([t, 0])
            elif kind == "lookup-miss":
                misses.append(t)
            elif kind == "chain":
                chains.append(t)
        end = self.meta.get("wall_seconds")
        if end is None:
            end = self.events[-1][0] if self.events else 0.0
        return {"time_unit": self.meta.get("time_unit", "seconds"), "end": end,
                "tc_capacity_bytes": self.meta.get("tc_capacity_bytes"),
                "translations": translations, "occupancy": occupancy,
                "invalidations": invalidations, "flushes": flushes,
                "chains": chains, "lookup_misses": misses}


def load_profile(path: str) -> Profile:
    """Read a profile written by `bt-vmm run --tc-profile` (BadInput if unusable)."""
    return Profile(read_profile(path), path)
