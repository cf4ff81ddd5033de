"""The `bt-vmm` command line.

This process is the host world (hosted/host_world.py): with `--hosted
process`, the default, the guest runs in a VMM world it spawns.

Exit statuses: 0 clean power-off or final hlt; (V << 1) | 1 when the guest
writes V to the debug-exit port; 2 bad command line or image; 4 guest triple
fault; 6 the guest used something the monitor does not virtualize (or a
monitor error); 8 --max-insns reached; 10 the guest asked for a reset; 12 the
host world died (the VMM world's status: it stopped the guest); 14 the VMM
world died (the host world closed the disks and restored the terminal); 16
the debugger ended the run (gdb's kill); 124 --timeout reached; 130
interrupted (SIGINT, SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from bt_vmm import __version__
from bt_vmm.cli.debugging import Session
from bt_vmm.errors import (EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_MONITOR, BadInput, BtVmmError,
                           read_input)

_SIZE = re.compile(r"^(\d+)([KMG]?)(i?B)?$", re.IGNORECASE)
_UNITS = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:   # one line, status 2 (no usage dump)
        print(f"bt-vmm: {message} (see bt-vmm {self.prog.split()[-1]} --help)"
              if " " in self.prog else f"bt-vmm: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def parse_size(text: str) -> int:
    """QEMU-style -m: a number of MiB, or with a K/M/G suffix."""
    m = _SIZE.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"invalid memory size '{text}' (examples: 64, 64M, 1G)")
    size = int(m.group(1)) * _UNITS[m.group(2).upper()]
    if size % 4096:
        raise argparse.ArgumentTypeError(f"memory size '{text}' is not a multiple of 4 KiB")
    return size


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


def _tc_size(text: str) -> int:
    """--tc-size: bytes, or with a K/M suffix; at least one CCF, at most the TC region."""
    from bt_vmm.tcache import region as R
    m = _SIZE.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"invalid TC size '{text}' (examples: 65536, 64K, 1M)")
    size = int(m.group(1)) * (_UNITS[m.group(2).upper()] if m.group(2) else 1)
    lo, hi = R.TC_MIN_SIZE, R.TC_END - R.TC_BASE
    if size < lo:
        raise argparse.ArgumentTypeError(
            f"TC size '{text}' is below the minimum of {lo >> 10} KiB (the largest CCF must fit)")
    if size > hi:
        raise argparse.ArgumentTypeError(
            f"TC size '{text}' is above the {hi >> 10} KiB the monitor region holds for the TC")
    return size


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bt-vmm", description="Binary-translation hypervisor for 32-bit x86 guests.")
    p.add_argument("--version", action="version", version=f"bt-vmm {__version__}")
    # Not required=True: argparse would then report a missing command before an
    # unknown option (`bt-vmm --bogus`); main() checks both, unknown options first.
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    r = sub.add_parser("run", help="boot a guest kernel")
    r.add_argument("kernel", nargs="?",
                   help="kernel image: Multiboot (ELF or a.out kludge) or a Linux bzImage "
                        "(default: the bundled guest)")
    r.add_argument("--kernel", dest="kernel_opt", metavar="KERNEL",
                   help="the same as the KERNEL argument (QEMU's spelling)")
    r.add_argument("--initrd", metavar="FILE", help="initial ramdisk for a Linux bzImage")
    r.add_argument("--guest", default=None, help="boot a bundled guest by name (default: demo)")
    r.add_argument("--append", default="", help="kernel command line")
    r.add_argument("--module", action="append", default=[], metavar="'PATH [ARGS]'",
                   help="multiboot module (repeatable); the string is passed to the guest as is")
    r.add_argument("--disk", action="append", default=[], metavar="PATH[,ro|,overlay]",
                   help="raw disk image on IDE (repeatable, up to 4: primary master, slave, "
                        "secondary master, slave); ',ro' leaves the file untouched, ',overlay' "
                        "keeps the guest's writes in memory (for snapshots)")
    r.add_argument("-m", "--mem", type=parse_size, default=None, help="guest RAM (default 64M)")
    r.add_argument("--serial", default="stdio", help="stdio | none | file:PATH (default stdio)")
    r.add_argument("--engine", choices=["bt", "trap"], default="bt",
                   help="bt: binary translation; trap: trap-and-emulate by ring compression")
    r.add_argument("--audit", action="store_true",
                   help="(--engine trap) count the sensitive instructions that do not trap at ring 1")
    r.add_argument("--stats", nargs="?", const="table", metavar="live",
                   help="print statistics to stderr at the end; `--stats live` also shows "
                        "the main counters live while the guest runs")
    r.add_argument("--stats-json", metavar="FILE", help="write statistics as JSON")
    r.add_argument("--tc-profile", metavar="FILE",
                   help="record a translation-cache profile (inspect it with bt-vmm tc)")
    r.add_argument("--max-insns", type=_positive_int, help="stop after about N guest instructions")
    r.add_argument("--timeout", type=_positive_float, help="stop after SECONDS of wall time")
    r.add_argument("--check", action="store_true",
                   help="verify that no guest kernel instruction runs outside the TC")
    r.add_argument("--hosted", choices=["process", "inproc"], default=None,
                   help="process: the host world (terminal, disks, files, timer pacing) in this "
                        "process and the VMM world in another, meeting by world switches "
                        "(default); inproc: both in one process, for debugging (and what "
                        "--gdb, --restore and --snapshot-on-exit use)")
    r.add_argument("--tc-size", type=_tc_size, metavar="SIZE",
                   help="bytes of translation cache, or with a K/M suffix (16K to 3M, default "
                        "3M); a full TC is flushed")
    from bt_vmm.cli.debugging import add_options as add_debugging_options
    add_debugging_options(r)
    sub.add_parser("guests", help="list the bundled guests")
    from bt_vmm.tcprofile.cli import add_parser as add_tc_parser
    add_tc_parser(sub)
    from bt_vmm.selfcheck.cli import add_parser as add_selfcheck_parser
    add_selfcheck_parser(sub)
    from bt_vmm.bench.cli import configure as configure_bench
    configure_bench(sub.add_parser("bench", help="run the benchmarks: nanobenchmarks and "
                                                 "macrobenchmarks per engine, and native"))
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.error("missing command (choose from 'run', 'guests', 'tc')")
    try:
        if args.command == "guests":
            return _guests()
        if args.command == "tc":
            from bt_vmm.tcprofile.cli import run_tc
            return run_tc(args, parser)
        if args.command == "selfcheck":
            from bt_vmm.selfcheck.cli import main as run_selfcheck
            return run_selfcheck(args)
        if args.command == "bench":
            from bt_vmm.bench.cli import main as run_bench_cli
            return run_bench_cli(args)
        return _run(args)
    except BtVmmError as e:
        print(f"bt-vmm: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        print("bt-vmm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:   # a monitor bug: one line unless asked for the traceback
        if os.environ.get("BT_VMM_DEBUG"):
            raise
        print(f"bt-vmm: internal error: {type(e).__name__}: {e} (set BT_VMM_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return EXIT_MONITOR


def _guests() -> int:
    from bt_vmm.guests.registry import GUESTS
    for name, (filename, desc) in GUESTS.items():
        print(f"{name:<10} {desc}")
    return 0


def _read_kernel(args) -> tuple[str, bytes]:
    from bt_vmm.guests.registry import guest_path
    if args.kernel_opt is not None:
        if args.kernel is not None:
            raise BadInput("give the kernel once: either KERNEL or --kernel")
        args.kernel = args.kernel_opt
    if args.kernel and args.guest:
        raise BadInput("give either a KERNEL file or --guest, not both")
    if args.kernel:
        return args.kernel, read_input(args.kernel, "kernel file")
    try:
        path = guest_path(args.guest or "demo")
    except KeyError as e:
        raise BadInput(str(e.args[0])) from None
    return path.name, path.read_bytes()


def _stdin_fd() -> int | None:
    """The standard input's descriptor, if there is one to read the console from."""
    try:
        fd = sys.stdin.fileno()
        os.fstat(fd)
        return fd
    except (AttributeError, ValueError, OSError):
        return None


def _read_module(spec: str):
    from bt_vmm.loaders import Module
    path = spec.split(" ", 1)[0]
    if not path:
        raise BadInput(f"--module '{spec}': expected 'PATH [ARGS]'")
    return Module(path, read_input(path, "module file"), spec)


def _run(args) -> int:
    """`bt-vmm run`: check the command line and open what it names (this is
    the host world), then run the guest (hosted/host_world.py)."""
    from bt_vmm.hosted.console import check_writable, open_serial_sink
    from bt_vmm.hosted.disk import open_disk
    from bt_vmm.hosted.host_world import HostResources, run
    from bt_vmm.hosted.vmm_world import RunPlan, boot_fields
    from bt_vmm.loaders import Module, load_kernel
    from bt_vmm.machine.pc import MAX_DISKS

    if args.stats not in (None, "table", "live"):    # `--stats KERNEL`: the kernel, not a mode
        if args.kernel is not None:
            raise BadInput(f"--stats: expected 'live' or nothing, got '{args.stats}'")
        args.kernel, args.stats = args.stats, "table"
    # The debugger's socket and the snapshot files are not reached through the
    # world switch yet: runs that use them keep both worlds in this process.
    debugging = [o for o, v in (("--gdb", args.gdb), ("--restore", args.restore),
                                ("--snapshot-on-exit", args.snapshot_on_exit)) if v is not None]
    if debugging and args.hosted == "process":
        raise BadInput(f"{debugging[0]} runs with --hosted inproc (the debugger's socket and "
                       f"snapshot files do not go through the world switch yet)")
    mode = args.hosted or ("inproc" if debugging else "process")
    session = Session(args)          # --gdb, --wait-gdb, --snapshot-on-exit, --restore
    path, data = _read_kernel(args)
    modules = [_read_module(spec) for spec in args.module]
    initrd = None if args.initrd is None else Module(args.initrd, read_input(args.initrd, "initrd file"), "")
    mem = session.mem_size
    boot = None if session.snapshot is not None else load_kernel(path, data, mem, args.append, modules, initrd)
    sink = open_serial_sink(args.serial)
    panel = None
    if args.stats == "live":
        from bt_vmm.tcprofile.live import LivePanel, PanelStdioSink
        panel = LivePanel(title=f"bt-vmm {path}")
        if args.serial == "stdio":
            sink = PanelStdioSink(panel)    # guest output goes above the panel
    if args.stats_json is not None:
        check_writable("--stats-json", args.stats_json)   # fail now, not after the run
    if args.tc_profile is not None:
        if args.engine != "bt":
            raise BadInput("--tc-profile records the translation cache: it applies to --engine bt")
        check_writable("--tc-profile", args.tc_profile)
    counted = bool(args.stats or args.stats_json or args.max_insns or args.tc_profile)
    if args.audit and args.engine != "trap":
        raise BadInput("--audit applies to --engine trap")
    if args.check and args.engine != "bt":
        raise BadInput("--check proves that kernel code runs from the TC: it applies to --engine bt")
    if args.tc_size is not None and args.engine != "bt":
        raise BadInput("--tc-size sizes the translation cache: it applies to --engine bt")
    if len(args.disk) > MAX_DISKS:
        raise BadInput(f"--disk: at most {MAX_DISKS} disks (two IDE channels, master and slave)")
    disks = []
    try:
        for spec in args.disk:
            disks.append(open_disk(spec))
    except BadInput:
        for d in disks:
            d.close()
        raise
    console_fd = _stdin_fd() if args.serial == "stdio" else None
    plan = RunPlan(
        guest=path, mem=mem, boot=None if boot is None else boot_fields(boot), engine=args.engine,
        audit=args.audit, check=args.check, count=counted, max_insns=args.max_insns,
        timeout=args.timeout, tc_size=args.tc_size,
        disks=[(d.sectors, d.read_only) for d in disks], console_input=console_fd is not None,
        stats=bool(args.stats or args.stats_json), tc_profile=args.tc_profile is not None)
    res = HostResources(sink=sink, disks=disks, console_fd=console_fd, panel=panel,
                        stats_table=bool(args.stats), stats_json=args.stats_json,
                        tc_profile=args.tc_profile, session=session if debugging else None,
                        kernel=data)
    return run(plan, [] if boot is None else boot.chunks, res, mode)


if __name__ == "__main__":
    sys.exit(main())
