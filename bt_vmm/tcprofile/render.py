"""What `bt-vmm tc` prints: data for --json, rich tables and panels otherwise."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from bt_vmm.tcache import region as R
from bt_vmm.tcprofile.disasm import tc_insns
from bt_vmm.tcprofile.profile import CCFRecord, Profile

# What the translator did to each kind of guest instruction (translator/translate.py).
REWRITES = {
    "ident": "",
    "jmp": "direct jump: an exit, chained to the successor's CCF",
    "jcc": "conditional jump: taken and fall-through exits, each chainable",
    "jcxz/loop": "jcxz/loop: rel8 hop over the fall-through exit, then the taken exit",
    "call": "call: pushes the guest return address, then an exit to the callee",
    "ret": "ret: guest target into ecx, in-TC lookup (exit only on a miss)",
    "jmp-indirect": "indirect jump: guest target into ecx, in-TC lookup",
    "call-indirect": "indirect call: target into ecx, push guest return address, in-TC lookup",
    "cli": "cli: inline, clears the virtual IF in the monitor page",
    "sti": "sti: inline, sets the virtual IF; irq check after the next instruction",
    "pushf": "pushf: inline, virtual IF/IOPL/AC merged into the pushed image",
    "popf": "popf: inline, image split into virtual IF/IOPL/AC; irq check after it",
    "segment-read": "reads the virtual selector inline",
    "gs-access": "guest GS swapped in around the instruction",
    "callout": "emulated by the monitor; the CCF goes on",
    "callout-end": "emulated by the monitor, which picks the next CCF",
    "undefined": "undefined opcode: #UD delivered to the guest",
}
REGIONS = {
    "entry-check": "indirect entry: checks the looked-up guest PC",
    "counter": "execution counter (profiling / --stats)",
    "irq-check": "pending-interrupt check (exits only if IF=1 and an irq waits)",
    "fallthrough-exit": "exit to the next TU",
    "exit-stubs": "unchained exits land on these int3 stubs",
    "breakpoint": "a debugger's breakpoint (int3 callout before the instruction)",
}
# Names of the monitor data page's words (region.py), for the TC disassembly.
_GS_NAMES: dict[int, str] = {}
for _name, _value in vars(R).items():
    if _name.isupper() and isinstance(_value, int) and 0 <= _value < R.DATA_SIZE:
        _GS_NAMES.setdefault(_value, _name)
_GS_REF = re.compile(r"gs:\[(0x[0-9a-f]+|\d+)\]")
_ABS_REF = re.compile(r"cs:\[(0x[0-9a-f]+)\]")          # e.g. the preemption check's bounds
_REGION_NAMES: dict[int, str] = {}
for _name, _value in vars(R).items():
    if _name.isupper() and isinstance(_value, int) and _value >= R.DATA_SIZE:
        _REGION_NAMES.setdefault(_value, _name)
_CALLOUT_WHY = {
    "lookup-miss": "the table slot held another PC",
    "exit": "unchained exit",
    "irq-window": "an interrupt became deliverable",
    "preempt": "preemption check: #BR once the timer thread wants the CPU",
    "reenter": "invalidated: re-dispatch on the guest PC",
    "insn-limit": "--max-insns budget spent",
    "breakpoint": "a debugger's breakpoint",
}


def _monitor_name(off: int) -> str | None:
    if off in _GS_NAMES:
        return _GS_NAMES[off]
    if R.COUNTERS <= off < R.COUNTERS + 8 * R.COUNTER_SLOTS:
        return f"counter[{(off - R.COUNTERS) // 8}]" + (".hi" if off % 8 else "")
    return None


_syntax = Syntax("", "nasm", theme="monokai", background_color="default")


def console(file=None) -> Console:
    c = Console(file=file, highlight=False)
    if not c.is_terminal and c.width < 160:
        c = Console(file=file, highlight=False, width=160)
    return c


def asm(text: str) -> Text:
    t = _syntax.highlight(text)
    t.rstrip()
    return t


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


# --- stats ----------------------------------------------------------------------------
STAT_LABELS = {
    "tus_translated": "CCFs (TUs translated)", "ccfs_live": "  live at the end",
    "ccfs_invalidated": "  invalidated", "ccfs_flushed": "  dropped by flushes",
    "generations": "TC generations",
    "guest_bytes_translated": "guest bytes translated", "ccf_bytes": "CCF bytes",
    "expansion_ratio": "expansion ratio (CCF/guest)",
    "guest_insns_translated": "guest insns translated", "ident_insns": "IDENT insns",
    "ident_share": "IDENT share", "insns_by_kind": "insns by kind",
    "exit_sites": "direct exit sites", "exit_sites_chained": "  chained at least once",
    "chained_exit_share": "chained-exit share", "chained_exits": "chainings made",
    "callouts_total": "callouts taken", "callouts_by_reason": "callouts by reason",
    "exits_total": "exits (all, engine)", "exits_by_reason": "exits by reason (engine)",
    "tc_lookups": "in-TC lookups", "tc_lookup_misses": "lookup misses",
    "tc_lookup_hit_rate": "lookup hit rate",
    "invalidations_by_reason": "invalidations by reason", "flushes_by_reason": "flushes by reason",
    "tc_occupancy_peak_bytes": "TC occupancy peak", "tc_capacity_bytes": "TC capacity",
    "tc_occupancy_peak_share": "  peak share of capacity",
    "ccf_executions": "CCF executions", "guest_insns_executed_from_tc": "guest insns executed from TC",
}


def print_stats(p: Profile, data: dict[str, Any], con: Console) -> None:
    title = f"TC profile {p.path}"
    if data.get("guest"):
        title += f" (guest {data['guest']})"
    table = Table(title=title, show_header=False)
    table.add_column("counter", style="bold")
    table.add_column("value", justify="right")
    for key in ("wall_seconds", "exit_status"):
        if data.get(key) is not None:
            table.add_row(key.replace("_", " "), _fmt(data[key]))
    for key, label in STAT_LABELS.items():
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, dict):
            table.add_row(label, "" if value else "none")
            for k, v in value.items():
                table.add_row(f"  {k}", _fmt(v), style="dim" if key == "exits_by_reason" else None)
        else:
            table.add_row(label, _fmt(value))
    con.print(table)
    problems = p.check()
    if problems:
        con.print(Text("profile disagrees with the engine's counters: " + "; ".join(problems),
                       style="bold red"))


# --- top ------------------------------------------------------------------------------
def top_rows(p: Profile, n: int, by: str) -> list[dict[str, Any]]:
    total = sum(c.guest_insns_executed for c in p) or 1
    rows = []
    for rank, c in enumerate(p.top(n, by), 1):
        first = c.insns[0].text if c.insns else ""
        rows.append({"rank": rank, "id": c.id, "generation": c.generation, "pc": c.pc,
                     "insns": len(c.insns), "first_insn": first, "end_reason": c.end_reason,
                     "executions": c.executions, "guest_insns_executed": c.guest_insns_executed,
                     "share": round(c.guest_insns_executed / total, 4),
                     "exits": c.exits_total, "exits_by_reason": c.exits_by_reason,
                     "guest_bytes": len(c.guest_bytes), "ccf_bytes": c.size, "state": c.state()})
    return rows


def print_top(p: Profile, rows: list[dict[str, Any]], by: str, con: Console) -> None:
    table = Table(title=f"hottest CCFs by {by} ({len(p)} CCFs in {p.path})")
    for name, just in (("#", "right"), ("ccf", "right"), ("guest pc", "left"), ("insns", "right"),
                       ("executions", "right"), ("insns executed", "right"), ("share", "right"),
                       ("exits", "right"), ("top exit", "left"), ("bytes g→tc", "right"),
                       ("ends with", "left"), ("state", "left")):
        table.add_column(name, justify=just)
    for r in rows:
        top_exit = next(iter(r["exits_by_reason"].items()), None)
        table.add_row(str(r["rank"]), f"#{r['id']}", f"{r['pc']:#010x}", str(r["insns"]),
                      f"{r['executions']:,}", f"{r['guest_insns_executed']:,}", f"{r['share']:.1%}",
                      f"{r['exits']:,}", f"{top_exit[0]} ×{top_exit[1]:,}" if top_exit else "",
                      f"{r['guest_bytes']}→{r['ccf_bytes']}", r["end_reason"],
                      r["state"], style="dim" if r["state"] != "live" else None)
    con.print(table)


# --- show -----------------------------------------------------------------------------
def describe(p: Profile, c: CCFRecord) -> dict[str, Any]:
    """Everything `tc show` says about one CCF, as plain data."""
    callouts = {s.addr: s for s in c.callouts}
    exits_by_field = {e.field: e for e in c.exits}
    lookup = p.meta.get("lookup_routine")

    def tc_rows(start: int, end: int) -> list[dict[str, Any]]:
        out = []
        for addr, size, mnemonic, op_str in tc_insns(c.code, c.tc, start, end):
            text = f"{mnemonic} {op_str}".strip()
            notes = []
            s = callouts.get(addr)
            if s is not None and mnemonic in ("int3", "bound"):
                why = _CALLOUT_WHY.get(s.kind)
                notes.append(f"callout {s.reason} ×{s.hits:,}" + (f" ({why})" if why else ""))
            e = exits_by_field.get(addr + size - 4)
            if e is not None and mnemonic.startswith("j"):
                chained = ", ".join(f"#{i}" for i in e.chained_to)
                notes.append(f"exit {e.kind} → guest {e.target:#x}: "
                             + (f"chained to CCF {chained}" if chained else "never chained (stub)"))
            if lookup is not None and mnemonic == "jmp" and op_str == f"{lookup:#x}":
                notes.append("→ in-TC lookup")
            names = [_monitor_name(int(m.group(1), 0)) for m in _GS_REF.finditer(op_str)]
            names += [_REGION_NAMES.get(int(m.group(1), 0) - R.lin(0)) for m in _ABS_REF.finditer(op_str)]
            out.append({"addr": addr, "bytes": c.code[addr - c.tc:addr - c.tc + size].hex(),
                        "text": text, "monitor": ", ".join(n for n in names if n),
                        "note": "; ".join(notes)})
        return out

    rows = []
    parts = [("insn", i) for i in c.insns] + [("region", r) for r in c.regions]
    parts.sort(key=lambda kv: kv[1].tc_start if kv[0] == "insn" else kv[1][0])
    for what, x in parts:
        if what == "insn":
            rows.append({"guest": x.addr, "text": x.text, "kind": x.kind, "rewrite": REWRITES.get(
                x.kind, x.kind), "tc": tc_rows(x.tc_start, x.tc_end)})
        else:
            start, end, name, guest = x
            rows.append({"guest": None, "text": "", "kind": name, "rewrite": REGIONS.get(name, name),
                         "tc": tc_rows(start, end)})
    return {
        "id": c.id, "generation": c.generation, "pc": c.pc, "end": c.end, "end_reason": c.end_reason,
        "tc": c.tc, "tc_end": c.tc_end, "entry": c.entry, "body": c.body,
        "guest_bytes": len(c.guest_bytes), "ccf_bytes": c.size,
        "executions": c.executions, "guest_insns_executed": c.guest_insns_executed,
        "exits_total": c.exits_total, "exits_by_reason": c.exits_by_reason,
        "state": c.state(), "born": c.born, "died": c.died,
        "rewrites": sum(1 for i in c.insns if i.kind != "ident"),
        "exits": [{"index": e.index, "kind": e.kind, "target": e.target,
                   "chained_to": list(e.chained_to)} for e in c.exits],
        "incoming": [{"from": f, "exit": i} for f, i in c.incoming],
        "lookup_misses_for_pc": c.lookup_misses, "lookup_collisions": c.lookup_collisions,
        "rows": rows,
    }


def print_show(d: dict[str, Any], con: Console) -> None:
    ratio = d["ccf_bytes"] / d["guest_bytes"] if d["guest_bytes"] else 0
    head = Text()
    head.append(f"CCF #{d['id']}", style="bold")
    head.append(f"  generation {d['generation']}  {d['state']}\n")
    head.append(f"guest {d['pc']:#010x}-{d['end']:#010x} ({d['guest_bytes']} bytes, ends: "
                f"{d['end_reason']})  →  TC {d['tc']:#010x}-{d['tc_end']:#010x} "
                f"({d['ccf_bytes']} bytes, {ratio:.1f}x)\n")
    head.append(f"executions {d['executions']:,}  guest insns executed "
                f"{d['guest_insns_executed']:,}  rewrites {d['rewrites']}  exits taken "
                f"{d['exits_total']:,}")
    if d["exits_by_reason"]:
        head.append(" (" + ", ".join(f"{k} ×{v:,}" for k, v in d["exits_by_reason"].items()) + ")")
    if d["born"] is not None:
        head.append(f"\ntranslated at {d['born']:.3f} s")
        if d["died"] is not None:
            head.append(f", dropped at {d['died']:.3f} s")
    table = Table(expand=False)
    table.add_column("guest", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("translation in the TC", no_wrap=True)
    table.add_column("what")
    for r in d["rows"]:
        rewritten = r["kind"] != "ident" and r["guest"] is not None
        notes = [t["note"] for t in r["tc"]] or [""]
        if r["rewrite"]:
            free = next((n for n, note in enumerate(notes) if not note), None)
            if free is None:
                notes[0] = f"{notes[0]}: {r['rewrite']}"
            else:
                notes[free] = r["rewrite"]
        for n, t in enumerate(r["tc"] or [None]):
            guest, kind = Text(""), Text("")
            if n == 0:
                if r["guest"] is not None:
                    guest = Text(f"{r['guest']:08x}  ", style="cyan")
                    guest.append_text(asm(r["text"]))
                kind = Text(("▶ " if rewritten else "") + r["kind"],
                            style="bold yellow" if rewritten else
                            ("dim" if r["guest"] is None else "green"))
            tc = Text()
            if t is not None:
                tc.append(f"{t['addr']:08x}  ", style="dim")
                tc.append_text(asm(t["text"]))
                if t["monitor"]:
                    tc.append(f"  ; {t['monitor']}", style="dim italic")
            note = notes[n]
            style = ("bold red" if note.startswith("callout") else
                     "magenta" if note.startswith(("exit", "→")) else
                     "yellow" if rewritten else "dim")
            table.add_row(guest, kind, tc, Text(note, style=style))
        table.add_section()
    links = Text()
    for e in d["exits"]:
        to = ", ".join(f"#{i}" for i in e["chained_to"]) or "not chained"
        links.append(f"exit {e['index']} ({e['kind']}) → guest {e['target']:#x}: {to}\n")
    if d["incoming"]:
        links.append("chained into from: " + ", ".join(
            f"#{x['from']} exit {x['exit']}" for x in d["incoming"]) + "\n")
    links.append(f"in-TC lookup misses for {d['pc']:#x}: {d['lookup_misses_for_pc']}, "
                 f"misses at this entry by other PCs: {d['lookup_collisions']}")
    con.print(Panel(Group(head, table, links), title=f"TU {d['pc']:#x}", expand=False))


# --- timeline (text) --------------------------------------------------------------------
def timeline_buckets(series: dict[str, Any], buckets: int = 20) -> list[dict[str, Any]]:
    end = max([series["end"] or 0.0] + [t for t, _ in series["translations"]]) or 1e-9
    width = end / buckets
    out = [{"from": round(i * width, 6), "to": round((i + 1) * width, 6), "translations": 0,
            "chains": 0, "lookup_misses": 0, "invalidations": 0, "flushes": 0, "occupancy": 0}
           for i in range(buckets)]

    def at(t: float) -> dict[str, Any]:
        return out[min(buckets - 1, int(t / width))]
    for t, _ in series["translations"]:
        at(t)["translations"] += 1
    for t in series["chains"]:
        at(t)["chains"] += 1
    for t in series["lookup_misses"]:
        at(t)["lookup_misses"] += 1
    for t, *_ in series["invalidations"]:
        at(t)["invalidations"] += 1
    for t, *_ in series["flushes"]:
        at(t)["flushes"] += 1
    occ, k = 0, 0
    points = series["occupancy"]
    for b in out:
        while k < len(points) and points[k][0] < b["to"]:
            occ = points[k][1]
            k += 1
        b["occupancy"] = occ
    return out


def print_timeline(series: dict[str, Any], con: Console, path: str) -> None:
    rows = timeline_buckets(series)
    peak = max((r["occupancy"] for r in rows), default=0) or 1      # bars scale to the peak
    table = Table(title=f"TC timeline of {path} ({series['time_unit']})")
    for name in ("time s", "translations", "chains", "lookup misses", "invalidations", "flushes",
                 "TC occupancy"):
        table.add_column(name, justify="right" if name != "TC occupancy" else "left")
    for r in rows:
        bar = "█" * round(20 * r["occupancy"] / peak)
        table.add_row(f"{r['from']:.2f}-{r['to']:.2f}", str(r["translations"] or ""),
                      str(r["chains"] or ""), str(r["lookup_misses"] or ""),
                      str(r["invalidations"] or ""), Text(str(r["flushes"] or ""), style="red"),
                      f"{bar} {r['occupancy']:,}")
    con.print(table)
