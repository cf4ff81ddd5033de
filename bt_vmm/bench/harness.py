"""`bt-vmm bench`: measure each operation under each engine and natively.

For every engine the bench guest is booted twice or more: calibration runs
find, per operation, an iteration count whose loop takes about `target`
seconds (unless --iterations fixes it), then one run does a warm-up pass and
`repeat` rounds over all selected loops and the baselines. Per round and
operation:

    ns/op    = (T_op - T_null) / n_op - (T_empty - T_null) / n_empty
    exits/op = the same with exit counts instead of times

with the ring-3 baselines (unull, uempty) for ring-3 loops. The test OS is
booted `repeat` times per engine; each boot gives one boot time and one
forkwait sample. The native column runs the monitor-free loops in a bare
unicorn (native.py). Reported: median, min and max over the rounds.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

from bt_vmm.bench import catalog
from bt_vmm.bench.catalog import BASELINES, BY_ID, Op
from bt_vmm.bench.engines import available_engines
from bt_vmm.bench.guest import WARM, GuestRun, cmdline, run_guest
from bt_vmm.bench.testos import CMDLINE as TESTOS_CMDLINE, run_testos

NMIN, NMAX = 8, 1 << 22          # iteration counts the calibration may choose
CAL_START = 16                   # first calibration run's iteration count
CAL_MIN_S = 2e-3                 # a calibration sample must last this long to be trusted
CAL_RUNS = 5                     # calibration boots at most, per engine
CAL_WARM = 4


@dataclass
class BenchConfig:
    engines: list[str] | None = None      # None: every available engine
    only: str | list[str] | None = None   # operation names; None: all
    repeat: int = 5
    iterations: int | dict[str, int] | None = None   # fixed iteration counts (no calibration):
                                          # one for every loop, or per loop id ("empty" too)
    target: float = 0.2                   # seconds per calibrated loop
    forkwait: int = 30                    # children per forkwait sample
    native: bool = True
    bench_kernel: bytes | None = None     # default: the bundled guests
    testos_kernel: bytes | None = None
    timeout: float = 900.0                # per guest run
    testos_timeout: float = 180.0
    progress: Callable[[str], None] | None = None


@dataclass
class Measured:
    """One operation under one engine (or native)."""
    iterations: int | None = None
    ns: list[float] = field(default_factory=list)
    exits: list[float] = field(default_factory=list)
    reasons: dict[str, float] = field(default_factory=dict)
    results: list[int] = field(default_factory=list)
    error: str | None = None


def summary(values: list[float]) -> dict | None:
    if not values:
        return None
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    return {"median": med, "min": lo, "max": hi,
            "spread_pct": 100 * (hi - lo) / abs(med) if med else None,
            "samples": values}


def _fixed(iterations: int | dict[str, int], op: str) -> int:
    if isinstance(iterations, int):
        return iterations
    if op in iterations:
        return iterations[op]
    if op in ("empty", "uempty"):
        return max(iterations.values())
    raise ValueError(f"no iteration count given for {op}")


def _is_user(op_id: str) -> bool:
    return op_id in ("unull", "uempty") or (op_id in BY_ID and BY_ID[op_id].user)


def _baselines(op_id: str) -> tuple[str, str]:
    return BASELINES[_is_user(op_id)]


class _Bench:
    def __init__(self, cfg: BenchConfig) -> None:
        self.cfg = cfg
        self.say = cfg.progress or (lambda msg: None)

    # --- the bench guest ------------------------------------------------------
    def _run_robust(self, engine: str, engine_cls, kernel: bytes, ops: list[str],
                    iters: dict[str, int], rounds: int, warm: int) -> tuple[GuestRun | None, dict]:
        """Run the guest; when it fails inside an operation's loop, drop that
        operation and run again. Returns the last run and {op: error}."""
        failed: dict[str, str] = {}
        ops = list(ops)
        while True:
            order = [b for b in catalog.BASELINE_IDS] + [op for op in ops if op not in failed]
            line = cmdline(order, {**iters, "null": 0, "unull": 0}, rounds, warm)
            run = run_guest(engine_cls, kernel, line, self.cfg.timeout)
            if run.error is None:
                return run, failed
            culprit = run.failed_in
            if culprit is None or culprit in catalog.BASELINE_IDS or culprit in failed:
                for op in ops:
                    failed.setdefault(op, run.error)
                return None, failed
            self.say(f"{engine}: {culprit} failed ({run.error}); running the rest again without it")
            failed[culprit] = run.error

    def calibrate(self, engine: str, engine_cls, kernel: bytes, ops: list[str]) -> tuple[dict, dict]:
        n = {op: CAL_START for op in ops + ["empty", "uempty"]}
        est: dict[str, float] = {}
        failed: dict[str, str] = {}
        pending = list(n)
        for attempt in range(CAL_RUNS):
            if not pending:
                break
            self.say(f"{engine}: calibrating {len(pending)} loops (run {attempt + 1})")
            run, bad = self._run_robust(engine, engine_cls, kernel,
                                        [op for op in pending if op not in ("empty", "uempty")],
                                        n, 1, CAL_WARM)
            failed.update(bad)
            if run is None:
                return {}, failed
            by = run.by_op()
            still = []
            for op in pending:
                if op in failed or op not in by:
                    continue
                s = by[op][0]
                dt = s.seconds - by[_baselines(op)[0]][0].seconds
                if dt >= CAL_MIN_S or n[op] >= NMAX:
                    est[op] = max(dt, 1e-10) / n[op]
                else:
                    grow = min(64, max(4, math.ceil(4 * CAL_MIN_S / max(dt, 1e-6))))
                    n[op] = min(NMAX, n[op] * grow)
                    still.append(op)
            pending = still
        for op in pending:
            est[op] = 1e-10          # never long enough: as many iterations as allowed
        iters = {op: min(NMAX, max(NMIN, round(self.cfg.target / e))) for op, e in est.items()}
        return iters, failed

    def bench_guest(self, engine: str, engine_cls, kernel: bytes, ops: list[Op],
                    native_result) -> dict[str, Measured]:
        cfg = self.cfg
        ids = [op.id for op in ops]
        out = {op: Measured() for op in ids}
        if cfg.iterations:
            iters = {op: _fixed(cfg.iterations, op) for op in ids + ["empty", "uempty"]}
            failed: dict[str, str] = {}
        else:
            iters, failed = self.calibrate(engine, engine_cls, kernel, ids)
            for op in ("empty", "uempty"):
                if op not in iters:                  # a baseline failed: nothing can be measured
                    for m in out.values():
                        m.error = failed.get(op) or next(iter(failed.values()), "calibration failed")
                    return out
        todo = [op for op in ids if op not in failed]
        self.say(f"{engine}: measuring {len(todo)} loops x {cfg.repeat} rounds")
        run, bad = self._run_robust(engine, engine_cls, kernel, todo, iters, cfg.repeat, WARM)
        failed.update(bad)
        for op, err in failed.items():
            if op in out:
                out[op].error = err
        if run is None:
            return out
        by = run.by_op()
        for op in todo:
            if op in failed:
                continue
            m = out[op]
            m.iterations = iters[op]
            z_id, e_id = _baselines(op)
            for r, s in enumerate(by.get(op, [])):
                z, e = by[z_id][r], by[e_id][r]
                loop_s = (e.seconds - z.seconds) / e.n
                loop_x = (e.exits - z.exits) / e.n
                m.ns.append(1e9 * ((s.seconds - z.seconds) / s.n - loop_s))
                m.exits.append((s.exits - z.exits) / s.n - loop_x)
                if s.result is not None:
                    m.results.append(s.result)
                if r == len(by[op]) - 1 and s.r0 is not None:
                    reasons = {}
                    for k in set(s.r1) | set(s.r0) | set(z.r1) | set(z.r0):
                        v = ((s.r1[k] - s.r0[k]) - (z.r1[k] - z.r0[k])) / s.n
                        if abs(v) >= 0.0005:
                            reasons[k] = round(v, 3)
                    m.reasons = dict(sorted(reasons.items(), key=lambda kv: -abs(kv[1])))
            m.error = self._check_results(op, m, native_result)
        return out

    @staticmethod
    def _check_results(op: str, m: Measured, native_result) -> str | None:
        if not m.ns:
            return "no samples"
        if len(m.results) != len(m.ns):
            return "the guest reported no result"
        want = None
        if op in catalog.RETURNS_N:
            want = m.iterations
        elif op == "ptemod":
            want = catalog.PTEMOD_RESULT
        elif op == "compute" and native_result is not None:
            want = native_result(op, m.iterations)
        bad = [r for r in m.results if (want is not None and r != want) or r != m.results[0]]
        if bad:
            return (f"wrong result: the loop returned {bad[0]:#x}"
                    + (f", expected {want:#x}" if want is not None else " (rounds disagree)"))
        return None

    # --- native ---------------------------------------------------------------
    def native(self, kernel: bytes, ops: list[Op]) -> tuple[dict[str, Measured], object]:
        from bt_vmm.bench.native import NativeCPU
        cfg = self.cfg
        cpu = NativeCPU(kernel)
        names = [op.id for op in ops if op.native and op.id in cpu.loops]
        out = {name: Measured() for name in names}
        if not names:
            return out, cpu
        self.say(f"native: measuring {len(names)} loops x {cfg.repeat} rounds")
        n: dict[str, int] = {}
        for name in names + ["empty"]:
            cpu.call(name, CAL_WARM)
            if cfg.iterations:
                n[name] = _fixed(cfg.iterations, name)
                continue
            k = CAL_START
            while True:
                t, _ = cpu.call(name, k)
                dt = t - cpu.call("empty", 0)[0]
                if dt >= CAL_MIN_S or k >= NMAX:
                    break
                k = min(NMAX, k * min(64, max(4, math.ceil(4 * CAL_MIN_S / max(dt, 1e-6)))))
            n[name] = min(NMAX, max(NMIN, round(cfg.target / (max(dt, 1e-10) / k))))
        for _ in range(cfg.repeat):
            tz = cpu.call("empty", 0)[0]
            loop = (cpu.call("empty", n["empty"])[0] - tz) / n["empty"]
            for name in names:
                t, v = cpu.call(name, n[name])
                out[name].ns.append(1e9 * ((t - tz) / n[name] - loop))
                out[name].results.append(v)
        for name in names:
            out[name].iterations = n[name]
        return out, cpu

    # --- the test OS ----------------------------------------------------------
    def testos(self, engine: str, engine_cls, kernel: bytes, ops: list[Op]) -> dict[str, Measured]:
        cfg = self.cfg
        out = {op.id: Measured() for op in ops}
        errors: dict[str, str] = {}
        for r in range(cfg.repeat):
            self.say(f"{engine}: test OS boot + forkwait {cfg.forkwait} ({r + 1}/{cfg.repeat})")
            run = run_testos(engine_cls, kernel, cfg.forkwait, cfg.testos_timeout)
            got = {"boot": run.boot_s is not None, "forkwait": run.forkwait_s is not None}
            if "boot" in out and got["boot"]:
                out["boot"].ns.append(run.boot_s * 1e9)
                out["boot"].exits.append(run.boot_exits)
            if "forkwait" in out and got["forkwait"]:
                out["forkwait"].ns.append(run.forkwait_s * 1e9)
                out["forkwait"].exits.append(run.forkwait_exits)
            for op in out:
                if not got[op]:
                    errors.setdefault(op, (run.forkwait_error if op == "forkwait" else None)
                                      or run.error or "no measurement")
            if not any(got[op] for op in out):
                break                  # the engine cannot run the test OS this far: stop trying
        for op, m in out.items():
            m.iterations = 1 if op == "boot" else cfg.forkwait
            if not m.ns:
                m.error = errors.get(op, "no measurement")
        return out


def _ratio(a: dict | None, b: dict | None) -> float | None:
    if not a or not b or not b["median"] or b["median"] <= 0 or a["median"] <= 0:
        return None
    return a["median"] / b["median"]


def run_bench(cfg: BenchConfig) -> dict:
    """Run the benchmarks; the report as a JSON-ready dictionary.
    ValueError for a bad configuration (unknown engine or operation)."""
    from bt_vmm.bench.report import machine_facts
    from bt_vmm.guests.registry import guest_path

    start = time.perf_counter()
    engines, missing = available_engines()
    names = cfg.engines or list(engines)
    for name in names:
        if name not in engines:
            why = f" ({missing[name]})" if name in missing else ""
            raise ValueError(f"engine '{name}' is not available{why}; available: {', '.join(engines)}")
    ops = catalog.resolve(cfg.only)
    bench_ops = [op for op in ops if op.guest == "bench"]
    testos_ops = [op for op in ops if op.guest == "testos"]
    kernel = cfg.bench_kernel if cfg.bench_kernel is not None else (
        guest_path("bench").read_bytes() if bench_ops or cfg.native else b"")
    tkernel = cfg.testos_kernel if cfg.testos_kernel is not None else (
        guest_path("testos").read_bytes() if testos_ops else b"")
    facts = machine_facts()
    b = _Bench(cfg)

    native: dict[str, Measured] = {}
    native_result = None
    if cfg.native and any(op.native for op in bench_ops):
        native, cpu = b.native(kernel, bench_ops)
        native_result = lambda name, n: cpu.call(name, n)[1]      # noqa: E731
    per_engine: dict[str, dict[str, Measured]] = {}
    for name in names:
        res: dict[str, Measured] = {}
        if bench_ops:
            res.update(b.bench_guest(name, engines[name], kernel, bench_ops, native_result))
        if testos_ops:
            res.update(b.testos(name, engines[name], tkernel, testos_ops))
        per_engine[name] = res

    rows = []
    errors = []
    for op in ops:
        row = {"id": op.id, "label": op.label, "kind": op.kind, "guest": op.guest, "unit": op.unit,
               "description": op.description, "engines": {}, "native": None, "ratios": {}}
        for name in names:
            m = per_engine[name][op.id]
            ok = m.error is None
            row["engines"][name] = {
                "iterations": m.iterations,
                "ns_per_op": summary(m.ns) if ok else None,
                "exits_per_op": summary(m.exits) if ok else None,
                "exit_reasons_per_op": m.reasons if ok else None,
                "error": m.error,
            }
            if m.error:
                errors.append(f"{name} {op.label}: {m.error}")
        if op.id in native:
            m = native[op.id]
            row["native"] = {"iterations": m.iterations, "ns_per_op": summary(m.ns)}
        cost = {name: row["engines"][name]["ns_per_op"] for name in names}
        if "bt" in cost and "trap" in cost:
            row["ratios"]["trap/bt"] = _ratio(cost["trap"], cost["bt"])
        if row["native"]:
            for name in names:
                row["ratios"][f"{name}/native"] = _ratio(cost[name], row["native"]["ns_per_op"])
        rows.append(row)
    facts["loadavg_end"] = _loadavg()
    return {
        "benchmark": "bt-vmm bench",
        "format": 1,
        "machine": facts,
        "config": {"engines": names, "unavailable_engines": missing, "repeat": cfg.repeat,
                   "iterations": cfg.iterations, "target_s": cfg.target, "forkwait": cfg.forkwait,
                   "native": cfg.native, "testos_cmdline": TESTOS_CMDLINE,
                   "operations": [op.id for op in ops]},
        "wall_seconds": round(time.perf_counter() - start, 3),
        "operations": rows,
        "errors": errors,
    }


def _loadavg():
    import os
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
