"""The `bench` subcommand's options and entry point (bt_vmm/cli/main.py
adds the subparser and dispatches here).

Exit status: 0 when every requested measurement was made, 1 when some failed
(the table says which, and why), 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import sys

from bt_vmm.errors import BadInput


def _positive_int(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got '{text}'") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got '{text}'")
    return v


def configure(p: argparse.ArgumentParser) -> None:
    p.description = ("Measure nanobenchmarks (syscall, in, tprwr, cli/sti, pushf/popf, call/ret, "
                     "pgfault, divzero, ptemod, cr3) and macrobenchmarks (compute, sysheavy, "
                     "forkwait, boot) under each engine and, where no monitor is needed, "
                     "natively in bare unicorn.")
    p.add_argument("--engine", default=None, metavar="NAMES",
                   help="comma-separated engines (default: every available one: bt, and trap "
                        "once bt_vmm.engines.trap exists)")
    p.add_argument("--only", default=None, metavar="NAMES",
                   help="comma-separated operations (default: all), e.g. syscall,call/ret,boot")
    p.add_argument("--repeat", type=_positive_int, default=5, metavar="R",
                   help="runs of each measurement; medians and min/max are reported (default 5)")
    p.add_argument("--iterations", type=_positive_int, default=None, metavar="N",
                   help="iterations of every loop (default: calibrated so that each loop "
                        "takes about --target seconds)")
    p.add_argument("--target", type=_positive_float, default=0.2, metavar="SECONDS",
                   help="how long a calibrated loop should run (default 0.2)")
    p.add_argument("--forkwait", type=_positive_int, default=30, metavar="N",
                   help="children per forkwait measurement (default 30)")
    p.add_argument("--no-native", action="store_true", help="skip the native (bare unicorn) column")
    p.add_argument("--json", metavar="FILE", help="also write the full results as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="also draw a log-scale bar chart (PNG)")
    p.add_argument("--quick", action="store_true",
                   help="a run under a minute: one repeat, short loops, a small forkwait")
    p.add_argument("--kernel", metavar="PATH", help="bench guest image (default: the bundled one)")
    p.add_argument("--testos", metavar="PATH", help="test OS image (default: the bundled one)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise BadInput(f"--{what}: cannot read {path}: {e.strerror}") from None


def main(args) -> int:
    from bt_vmm.bench.harness import BenchConfig, run_bench
    from bt_vmm.bench.report import print_report, write_json
    from bt_vmm.hosted.console import check_writable

    if args.json is not None:
        check_writable("--json", args.json)
    if args.plot is not None:
        check_writable("--plot", args.plot)
    if args.quick:
        args.repeat, args.target, args.forkwait = 1, 0.03, 10
    engines = [e.strip() for e in args.engine.split(",") if e.strip()] if args.engine else None
    if args.engine is not None and not engines:
        raise BadInput("--engine: no engine named")

    def progress(msg: str) -> None:
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    cfg = BenchConfig(engines=engines, only=args.only, repeat=args.repeat,
                      iterations=args.iterations, target=args.target, forkwait=args.forkwait,
                      native=not args.no_native, bench_kernel=_read(args.kernel, "kernel"),
                      testos_kernel=_read(args.testos, "testos"),
                      progress=None if args.quiet else progress)
    try:
        report = run_bench(cfg)
    except ValueError as e:
        raise BadInput(str(e)) from None
    print_report(report)
    if args.plot is not None:
        from bt_vmm.bench.report import write_plot
        write_plot(report, args.plot)
    if args.json is not None:
        try:
            write_json(report, args.json)
        except OSError as e:
            raise BadInput(f"--json: cannot write {args.json}: {e.strerror}") from None
    return 1 if report["errors"] else 0
