"""Run statistics: one dictionary, printed as a table (--stats) or JSON (--stats-json).

Counters that cost nothing are always kept (translations, exits, chaining,
invalidations, world switches by reason with their round-trip times);
guest-instruction and in-TC lookup counts need counters bumped inside the
CCFs, which the translator emits only when statistics are asked for.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from bt_vmm.tcache import region as R


def collect(engine, result, counted: bool) -> dict[str, Any]:
    tc = engine.tcache
    s = tc.stats
    uc = engine.m.uc
    callouts = {k: v for k, v in sorted(engine.exits.items())}
    lookups = int.from_bytes(uc.mem_read(R.phys(R.N_LOOKUPS), 8), "little") if counted else None
    misses = engine.exits.get("lookup-miss", 0)
    guest_insns = s["guest_insns"]
    data: dict[str, Any] = {
        "engine": engine.name,
        "exit_status": result.status,
        "reason": result.reason,
        "wall_seconds": round(result.wall_seconds, 6),
        "tus_translated": s["translated"],
        "guest_bytes_translated": s["guest_bytes"],
        "ccf_bytes": s["ccf_bytes"],
        "expansion_ratio": round(s["ccf_bytes"] / s["guest_bytes"], 3) if s["guest_bytes"] else None,
        "guest_insns_translated": guest_insns,
        "ident_insns": s["ident_insns"],
        "ident_share": round(s["ident_insns"] / guest_insns, 4) if guest_insns else None,
        "chained_exits": s["chained"],
        "exits_total": sum(engine.exits.values()),
        "exits_by_reason": callouts,
        "tc_lookups": lookups,
        "tc_lookup_misses": misses,
        "invalidations_by_reason": dict(tc.invalidations),
        "flushes_by_reason": dict(tc.flushes),
        "tc_occupancy_peak_bytes": tc.occupancy_peak,
        "trace_faults": engine.traces.trace_faults,
        "page_faults": {
            "hidden": engine.mmu.stats["hidden-faults"],
            "true": engine.mmu.stats["true-faults"],
            "trace (page-table writes)": engine.mmu.stats["pt-writes"],
        },
        "shadow_page_tables": {
            "built": engine.mmu.stats["shadow-pts-built"],
            "dropped": engine.mmu.stats["shadow-pts-dropped"],
            "address spaces built": engine.mmu.stats["spaces-built"],
            "address spaces dropped": engine.mmu.stats["spaces-dropped"],
        },
        "exceptions_and_interrupts_by_vector": {str(k): v for k, v in sorted(engine.vectors.items())},
        "guest_insns_executed_from_tc": tc.guest_insns_executed() if counted else None,
        "user_insns_executed_directly": engine.insns_direct if counted else None,
        "unclaimed_io_reads": sum(engine.m.bus.unclaimed_reads.values()),
        "unclaimed_io_writes": sum(engine.m.bus.unclaimed_writes.values()),
    }
    # World switches (hosted/switch.py): none when the host world shares the process.
    ws = engine.m.world_switch
    data["hosted"] = "inproc" if ws is None else "process"
    data["world_switches"] = sum(ws.counts.values()) if ws is not None else 0
    data["world_switches_by_reason"] = ws.stats() if ws is not None else {}
    data["host_events_by_kind"] = dict(sorted(ws.events.items())) if ws is not None else {}
    if engine.opts.check:
        data["check_violations"] = engine.check_violations
    audit = getattr(engine, "audit_report", None)
    if audit is not None:
        report = audit()
        data["sensitive_unprivileged_executed"] = report["by_mnemonic"]
        data["sensitive_unprivileged_by_address"] = report["by_address"]
    return data


def print_table(data: dict[str, Any], file=None) -> None:
    console = Console(file=file or sys.stderr, highlight=False)
    table = Table(title=f"bt_vmm statistics ({data['engine']} engine)", show_header=False)
    table.add_column("counter", style="bold")
    table.add_column("value", justify="right")
    switches = data.get("world_switches_by_reason") or {}
    for key, value in data.items():
        if key == "world_switches_by_reason":
            continue                       # a table of its own, below
        if isinstance(value, dict):
            table.add_row(key.replace("_", " "), "" if value else "none")
            for k, v in value.items():
                table.add_row(f"  {k}", f"{v:,}" if isinstance(v, int) else str(v))
        elif value is not None:
            table.add_row(key.replace("_", " "), f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)
    if switches:
        costs = Table(title="world switches: VMM world -> host world and back")
        for name in ("reason", "count", "median µs", "p99 µs", "total ms"):
            costs.add_column(name, justify="left" if name == "reason" else "right")
        for reason, v in switches.items():
            costs.add_row(reason, f"{v['count']:,}", f"{v['median_us']:.1f}", f"{v['p99_us']:.1f}",
                          f"{v['total_ms']:.1f}")
        console.print(costs)


def write_json(data: dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
