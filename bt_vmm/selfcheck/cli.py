"""`bt-vmm selfcheck`: differential runs of the translator, with a progress
bar and a summary table. Exit status 0 when no case diverged, 1 otherwise
(2 for a bad command line, as for every bt-vmm command)."""

from __future__ import annotations

import json
import os
import sys
import time

COLUMNS = ("cases", "end", "fault", "halt", "next", "exit", "inconclusive", "undef-flag", "cut", "diverged")


def main(args) -> int:
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    from bt_vmm.errors import BadInput
    from bt_vmm.selfcheck.runner import Plan, Summary, run_cases
    from bt_vmm.selfcheck.generate import CATEGORIES
    for path in args.kernel:
        if not os.path.isfile(path):
            raise BadInput(f"--kernel {path}: no such file")
    for c in args.category:
        if c not in CATEGORIES:
            raise BadInput(f"--category {c}: unknown (choose from {', '.join(CATEGORIES)})")
    seed = args.seed if args.seed is not None else int(time.time()) % 100000
    plan = Plan(seed, list(args.kernel), list(args.category), shrink=not args.no_shrink,
                kernel_share=0.0 if args.category else (0.3 if args.kernel else 0.15),
                report_all=args.case is not None)
    if args.kernel:
        # fail now on an unusable image, not in every worker
        from bt_vmm.selfcheck.realcode import load_kernel
        for path in args.kernel:
            with open(path, "rb") as f:
                load_kernel(path, f.read())
    indices = [args.case] if args.case is not None else list(range(args.cases))
    jobs = args.jobs or os.cpu_count() or 1
    console = Console(stderr=True)
    summary = Summary()
    t0 = time.perf_counter()
    progress = Progress(TextColumn("selfcheck"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]:>6.0f}/s  divergences {task.fields[div]}"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                        disable=not console.is_terminal or args.quiet)

    with progress:
        task = progress.add_task("cases", total=len(indices), rate=0.0, div=0)

        def on_result(r) -> None:
            summary.add(r)
            if r.diverged:
                progress.console.print(f"[red]case {r.index} ({r.category}) diverged[/red]")
            el = time.perf_counter() - t0
            progress.update(task, advance=1, rate=summary.cases / el if el else 0.0, div=summary.diverged)
            if not console.is_terminal and not args.quiet and summary.cases % 1000 == 0:
                print(f"selfcheck: {summary.cases}/{len(indices)} cases, {summary.diverged} divergences, "
                      f"{el:.0f} s", file=sys.stderr, flush=True)

        run_cases(plan, indices, jobs, on_result)
    summary.seconds = time.perf_counter() - t0
    out = Console(width=max(Console().width, 160))
    for r in sorted(summary.reports, key=lambda r: r.index):
        out.print(f"\n[bold red]divergence: case {r.index} of seed {seed} ({r.category})[/bold red]")
        out.print(r.report, markup=False, highlight=False)
    if args.case is not None and not summary.reports and summary.shown:
        out.print(f"\ncase {args.case} of seed {seed}: both sides agree")
        out.print(summary.shown[0].report, markup=False, highlight=False)
    out.print(summary_table(summary, seed, jobs))
    if summary.reasons:
        out.print("inconclusive (real code left the harness's model): "
                  + "; ".join(f"{n} {why}" for why, n in summary.reasons.most_common()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary_json(summary, seed, jobs), f, indent=2)
    return 1 if summary.diverged else 0


def summary_table(s, seed: int, jobs: int):
    from rich.table import Table
    t = Table(title=f"selfcheck: {s.cases} cases, seed {seed}, {jobs} worker(s), {s.seconds:.1f} s "
                    f"({s.cases / s.seconds if s.seconds else 0:.0f} cases/s) -- "
                    f"{s.diverged} divergence(s)")
    t.add_column("category")
    for c in COLUMNS:
        t.add_column(c, justify="right")
    total = {c: 0 for c in COLUMNS}
    for cat in sorted(s.by_category):
        row = s.by_category[cat]
        t.add_row(cat, *(str(row.get(c, 0)) for c in COLUMNS))
        for c in COLUMNS:
            total[c] += row.get(c, 0)
    t.add_row("total", *(str(total[c]) for c in COLUMNS), style="bold")
    return t


def summary_json(s, seed: int, jobs: int) -> dict:
    return {"seed": seed, "jobs": jobs, "cases": s.cases, "divergences": s.diverged,
            "inconclusive": s.inconclusive, "seconds": round(s.seconds, 1),
            "by_category": {k: dict(v) for k, v in sorted(s.by_category.items())},
            "inconclusive_reasons": dict(s.reasons),
            "diverged_cases": [r.index for r in s.reports]}


def add_parser(sub) -> None:
    """The `selfcheck` subcommand's options (called from bt_vmm.cli.main)."""
    from bt_vmm.cli.main import _positive_int
    p = sub.add_parser("selfcheck", help="differential check of the translator against untranslated unicorn")
    p.add_argument("--cases", type=_positive_int, default=2000, help="number of cases (default 2000)")
    p.add_argument("--seed", type=int, default=None, help="seed of the case generator (default: from the clock)")
    p.add_argument("--kernel", action="append", default=[], metavar="IMAGE",
                   help="also cut translation units from this kernel image (repeatable)")
    p.add_argument("--category", action="append", default=[], metavar="NAME",
                   help="only generated cases of this category (repeatable)")
    p.add_argument("--case", type=int, default=None, metavar="I", help="run only case I of the seed")
    p.add_argument("--jobs", type=int, default=0, help="worker processes (default: one per core)")
    p.add_argument("--no-shrink", action="store_true", help="report divergences without shrinking them")
    p.add_argument("--json", metavar="FILE", help="also write the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")
