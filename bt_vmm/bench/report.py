"""The bench report: the machine it ran on, the table, the JSON file."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys

from rich.console import Console
from rich.table import Table


def machine_facts() -> dict:
    import capstone
    import unicorn
    from bt_vmm import __version__
    cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "unicorn": unicorn.__version__,
        "capstone": capstone.__version__,
        "bt_vmm": __version__,
        "loadavg_start": load,
    }


def fmt_time(ns: float | None) -> str:
    """3 significant digits in ns, µs, ms or s."""
    if ns is None:
        return "-"
    a = abs(ns)
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if a >= scale:
            v = ns / scale
            break
    else:
        unit, v = "ns", ns
    digits = 0 if abs(v) >= 100 else 1 if abs(v) >= 10 else 2
    return f"{v:.{digits}f} {unit}"


def fmt_cost(s: dict | None) -> str:
    if s is None:
        return "-"
    text = fmt_time(s["median"])
    if len(s["samples"]) > 1 and s["median"]:
        half = 50 * (s["max"] - s["min"]) / abs(s["median"])
        text += f" ±{half:.0f}%" if half >= 1 else f" ±{half:.1f}%"
    return text


def fmt_exits(s: dict | None) -> str:
    if s is None:
        return "-"
    v = s["median"]
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.2f}"


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x" if r < 100 else f"{r:,.0f}x"


def build_table(report: dict) -> Table:
    engines = report["config"]["engines"]
    m = report["machine"]
    title = (f"bt-vmm bench: median of {report['config']['repeat']} runs "
             f"(± half the min-max range)")
    caption = (f"{m['date']} · {m['cpu_count']} CPUs ({m['cpu_model']}) · {m['python']} · "
               f"unicorn {m['unicorn']} · load {m['loadavg_start']} · {report['wall_seconds']:.0f} s")
    t = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    t.add_column("operation", no_wrap=True)
    t.add_column("per", no_wrap=True)
    for e in engines:
        t.add_column(f"{e} /op", justify="right", no_wrap=True)
    t.add_column("native /op", justify="right", no_wrap=True)
    if "bt" in engines and "trap" in engines:
        t.add_column("trap/bt", justify="right", no_wrap=True)
    for e in engines:
        t.add_column(f"{e}/native", justify="right", no_wrap=True)
    for e in engines:
        t.add_column(f"exits/op {e}", justify="right", no_wrap=True)
    kind = None
    for row in report["operations"]:
        if kind is not None and row["kind"] != kind:
            t.add_section()
        kind = row["kind"]
        cells = [row["label"], row["unit"]]
        for e in engines:
            r = row["engines"][e]
            cells.append("failed" if r["error"] else fmt_cost(r["ns_per_op"]))
        cells.append(fmt_cost(row["native"]["ns_per_op"]) if row["native"] else "n/a")
        if "bt" in engines and "trap" in engines:
            cells.append(fmt_ratio(row["ratios"].get("trap/bt")))
        for e in engines:
            cells.append(fmt_ratio(row["ratios"].get(f"{e}/native")) if row["native"] else "n/a")
        for e in engines:
            r = row["engines"][e]
            cells.append("-" if r["error"] else fmt_exits(r["exits_per_op"]))
        t.add_row(*cells)
    return t


def print_report(report: dict, file=None) -> None:
    file = file if file is not None else sys.stdout
    width = None if getattr(file, "isatty", lambda: False)() else 160
    console = Console(file=file, width=width)
    console.print(build_table(report))
    unavailable = report["config"].get("unavailable_engines") or {}
    for name, why in unavailable.items():
        if name not in report["config"]["engines"]:
            console.print(f"engine {name} not measured: {why}", markup=False, highlight=False)
    for err in report["errors"]:
        console.print(f"failed: {err}", markup=False, highlight=False)


def write_json(report: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")


def write_plot(report: dict, path: str) -> None:
    """A log-scale bar chart of cost per operation, engines side by side (the
    shape of Adams and Agesen's nanobenchmark figure), written as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["operations"] if r["kind"] == "nano"] or report["operations"]
    columns = list(report["config"]["engines"]) + ["native"]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4.5))
    width = 0.8 / len(columns)
    for i, col in enumerate(columns):
        values = []
        for r in rows:
            if col == "native":
                cost = r["native"]["ns_per_op"] if r["native"] else None
            else:
                cost = None if r["engines"][col]["error"] else r["engines"][col]["ns_per_op"]
            values.append(cost["median"] if cost and cost["median"] > 0 else 0.0)
        xs = [j + (i - (len(columns) - 1) / 2) * width for j in range(len(rows))]
        ax.bar(xs, [v if v > 0 else float("nan") for v in values], width, label=col)
    ax.set_yscale("log")
    ax.set_ylabel("ns per operation (log scale)")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["label"] for r in rows], rotation=30, ha="right")
    m = report["machine"]
    ax.set_title(f"bt-vmm bench, {m['date'][:10]}, {m['cpu_count']} CPUs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
