"""Many cases: the case mix, worker processes, and the per-case summary.

Case i of a run with seed S is drawn from its own PRNG (seeded with "S:i"), so
any case can be run again alone (`bt-vmm selfcheck --seed S --case i`). Cases
run in worker processes (one per core by default); a worker that dies -- a
crash inside unicorn is a finding too -- is replaced, and the case it was
running is reported as a divergence.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import random
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import wait

from bt_vmm.selfcheck.draw import RandomDraw
from bt_vmm.selfcheck.generate import CATEGORIES, AssemblyError, gen_spec, realize

# Share of the cases that are TUs cut from kernels (the rest is generated,
# spread evenly over the generator's categories).
KERNEL_SHARE = 0.15


@dataclass
class Result:
    index: int
    category: str
    end: str = ""                   # how the reference run ended (end/fault/halt/next/exit)
    vector: int | None = None
    diverged: bool = False
    inconclusive: str | None = None
    consumer: bool = False          # consumed an undefined flag
    cut: bool = False               # ... and was compared up to the consuming instruction only
    report: str = ""                # for divergences: the (shrunk) case, both states
    seconds: float = 0.0


@dataclass
class Plan:
    seed: int
    kernels: list[str] = field(default_factory=list)     # paths given with --kernel
    categories: list[str] = field(default_factory=list)  # restrict the generator (empty: all)
    shrink: bool = True
    kernel_share: float = KERNEL_SHARE
    report_all: bool = False        # a report for every case, not only divergences (--case)


class _Worker:
    """Per-process state: the kernels, loaded once."""

    def __init__(self, plan: Plan) -> None:
        from bt_vmm.selfcheck.realcode import bundled_kernels, load_kernel
        self.plan = plan
        self.kernels = list(bundled_kernels())
        for path in plan.kernels:
            with open(path, "rb") as f:
                k = load_kernel(path, f.read())
            k.name = os.path.basename(path)
            self.kernels.append(k)
        self.categories = plan.categories or list(CATEGORIES)

    def case_source(self, index: int):
        """(category, spec or None, case) for case `index`."""
        from bt_vmm.selfcheck.realcode import kernel_case
        rng = random.Random(f"{self.plan.seed}:{index}")
        d = RandomDraw(rng)
        share = self.plan.kernel_share if self.kernels else 0.0
        if rng.random() < share:
            k = self.kernels[rng.randrange(len(self.kernels))]
            case = kernel_case(d, k)
            return case.category, None, case
        category = self.categories[rng.randrange(len(self.categories))]
        for _ in range(10):
            spec = gen_spec(d, category)
            try:
                return category, spec, realize(spec)
            except AssemblyError:
                continue
        raise RuntimeError(f"case {index}: no {category} program assembled")

    def run(self, index: int) -> Result:
        from bt_vmm.selfcheck.harness import run_case
        from bt_vmm.selfcheck.shrink import shrink
        t0 = time.perf_counter()
        category = "?"
        try:
            category, spec, case = self.case_source(index)
            out = run_case(case)
            res = Result(index, category, out.ref.end, out.ref.vector, out.diverged, out.inconclusive,
                         out.consumer is not None, out.cut)
            if out.diverged:
                if spec is not None and self.plan.shrink:
                    _, small = shrink(spec)
                    out = small or out
                res.report = out.report()
            elif self.plan.report_all:
                res.report = out.report() + (f"\ninconclusive: {out.inconclusive}" if out.inconclusive else "")
        except Exception:
            res = Result(index, category, "error", diverged=True,
                         report=f"the harness failed on case {index}:\n{traceback.format_exc()}")
        res.seconds = time.perf_counter() - t0
        return res


def _worker_main(plan: Plan, conn) -> None:
    w = _Worker(plan)
    n = 0
    while True:
        index = conn.recv()
        if index is None:
            return
        conn.send(w.run(index))
        n += 1
        if n % 25 == 0:
            gc.collect()      # unicorn instances sit in reference cycles: free them in time


def run_cases(plan: Plan, indices: list[int], jobs: int, on_result) -> None:
    """Run the cases `indices`, calling on_result(Result) as each finishes."""
    if jobs <= 1:
        w = _Worker(plan)
        for n, i in enumerate(indices, 1):
            on_result(w.run(i))
            if n % 25 == 0:
                gc.collect()
        return
    ctx = mp.get_context("spawn")
    todo = list(reversed(indices))
    workers: dict = {}          # connection -> (process, index in flight)

    def start() -> None:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker_main, args=(plan, child), daemon=True)
        p.start()
        child.close()
        workers[parent] = [p, None]
        feed(parent)

    def feed(conn) -> None:
        if todo:
            i = todo.pop()
            workers[conn][1] = i
            conn.send(i)
        else:
            workers[conn][1] = None
            conn.send(None)

    for _ in range(min(jobs, len(indices))):
        start()
    while any(v[1] is not None for v in workers.values()):
        busy = {c: v for c, v in workers.items() if v[1] is not None}
        ready = wait(list(busy) + [v[0].sentinel for v in busy.values()])
        for r in ready:
            conn = r if r in busy else next((c for c, v in busy.items() if v[0].sentinel == r), None)
            if conn is None or workers[conn][1] is None:
                continue
            p, i = workers[conn]
            try:
                res = conn.recv()
            except (EOFError, OSError):
                p.join(1)
                on_result(Result(i, "?", "crash", diverged=True,
                                 report=f"case {i}: the worker process died (exit code {p.exitcode}); "
                                        f"run it alone with --case {i} to see it"))
                del workers[conn]
                start()
                continue
            on_result(res)
            feed(conn)
    for conn, (p, _) in workers.items():
        p.join(5)


@dataclass
class Summary:
    cases: int = 0
    diverged: int = 0
    inconclusive: int = 0
    seconds: float = 0.0
    by_category: dict = field(default_factory=dict)   # category -> Counter of outcomes
    reasons: Counter = field(default_factory=Counter)  # inconclusive reasons
    reports: list = field(default_factory=list)
    shown: list = field(default_factory=list)          # non-diverging cases with a report (--case)

    def add(self, r: Result) -> None:
        self.cases += 1
        c = self.by_category.setdefault(r.category, Counter())
        c["cases"] += 1
        if r.diverged:
            self.diverged += 1
            c["diverged"] += 1
            self.reports.append(r)
        else:
            if r.report:
                self.shown.append(r)
            if r.inconclusive:
                self.inconclusive += 1
                c["inconclusive"] += 1
                self.reasons[r.inconclusive] += 1
            else:
                c[r.end] += 1
        if r.consumer:
            c["undef-flag"] += 1
        if r.cut:
            c["cut"] += 1
