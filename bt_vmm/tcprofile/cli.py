"""`bt-vmm tc ...`: inspecting a profile written by `bt-vmm run --tc-profile`.

    bt-vmm tc stats FILE [--json]
    bt-vmm tc top FILE [-n N] [--by executions|exits|size|insns] [--json]
    bt-vmm tc show FILE ADDR [--json]        ADDR: guest PC (hex), START-END, TC address or #ID
    bt-vmm tc timeline FILE [--png OUT] [--json]

A missing, corrupt or foreign FILE ends with status 2 and one line on stderr.
"""

from __future__ import annotations

import json
import sys

from bt_vmm.errors import BadInput

SUBCOMMANDS = ("stats", "top", "show", "timeline")


def add_parser(sub) -> None:
    """Add the `tc` command group to the top-level subparsers `sub`."""
    tc = sub.add_parser("tc", help="inspect a translation-cache profile (from run --tc-profile)",
                        description="Inspect a TC profile written by `bt-vmm run --tc-profile FILE`.")
    tsub = tc.add_subparsers(dest="tc_command", parser_class=type(tc))
    s = tsub.add_parser("stats", help="totals: CCFs, bytes, expansion, chaining, callouts, lookups, "
                                      "invalidations, flushes, occupancy")
    s.add_argument("file", metavar="FILE")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    t = tsub.add_parser("top", help="the hottest CCFs")
    t.add_argument("file", metavar="FILE")
    t.add_argument("-n", type=_count, default=20, metavar="N", help="how many (default 20)")
    t.add_argument("--by", choices=["executions", "exits", "size", "insns"], default="executions",
                   help="rank by executions (default), exits taken, CCF size or guest insns executed")
    t.add_argument("--json", action="store_true", help="print JSON instead of a table")
    w = tsub.add_parser("show", help="a TU's guest instructions beside its translation")
    w.add_argument("file", metavar="FILE")
    w.add_argument("addr", metavar="ADDR",
                   help="guest PC in hex (0x100040 or 100040), a range START-END, a TC address, or #ID")
    w.add_argument("--json", action="store_true", help="print JSON instead of tables")
    m = tsub.add_parser("timeline", help="translations, invalidations, flushes and occupancy over time")
    m.add_argument("file", metavar="FILE")
    m.add_argument("--png", metavar="OUT", help="draw the timeline into a PNG file (matplotlib)")
    m.add_argument("--json", action="store_true", help="print the event series as JSON")


def _count(text: str) -> int:
    import argparse
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return v


def parse_addr(text: str) -> tuple[str, int, int]:
    """('id', n, n) for #N; ('range', lo, hi) for START-END / START..END; ('addr', a, a)."""
    t = text.strip()

    def num(s: str) -> int:
        s = s.strip().lower()
        try:
            return int(s, 16)
        except ValueError:
            raise BadInput(f"tc show: bad address '{text}' (expected hex like 0x100040, "
                           f"START-END, or #ID)") from None
    if t.startswith("#"):
        try:
            n = int(t[1:])
        except ValueError:
            raise BadInput(f"tc show: bad CCF id '{text}'") from None
        return "id", n, n
    for sep in ("..", "-"):
        if sep in t:
            lo, hi = t.split(sep, 1)
            a, b = num(lo), num(hi)
            if b <= a:
                raise BadInput(f"tc show: empty range '{text}'")
            return "range", a, b
    a = num(t)
    return "addr", a, a


def run_tc(args, parser) -> int:
    if args.tc_command is None:
        parser.error(f"missing tc command (choose from {', '.join(repr(c) for c in SUBCOMMANDS)})")
    from bt_vmm.tcprofile import render
    from bt_vmm.tcprofile.profile import load_profile
    p = load_profile(args.file)
    con = render.console()
    cmd = args.tc_command
    if cmd == "stats":
        data = p.stats()
        if args.json:
            data["consistency_problems"] = p.check()
            _json(data)
        else:
            render.print_stats(p, data, con)
    elif cmd == "top":
        rows = render.top_rows(p, args.n, args.by)
        if args.json:
            _json({"by": args.by, "ccfs": len(p), "top": rows})
        else:
            render.print_top(p, rows, args.by, con)
    elif cmd == "show":
        what, lo, hi = parse_addr(args.addr)
        if what == "id":
            try:
                ccfs = [p.ccf(lo)]
            except KeyError:
                raise BadInput(f"tc show: no CCF #{lo} in {args.file} (ids 0-{len(p) - 1})") from None
        elif what == "range":
            ccfs = p.in_range(lo, hi)
        else:
            ccfs = p.find(lo)
        if not ccfs:
            raise BadInput(f"tc show: no TU at or containing {args.addr} in {args.file}")
        described = [render.describe(p, c) for c in ccfs]
        if args.json:
            _json({"query": args.addr, "ccfs": described})
        else:
            for d in described:
                render.print_show(d, con)
    elif cmd == "timeline":
        series = p.timeline()
        if args.png:
            from bt_vmm.hosted.console import check_writable
            from bt_vmm.tcprofile.timeline import plot_png
            check_writable("--png", args.png)
            plot_png(series, args.png, f"TC timeline: {p.meta.get('guest') or args.file}")
        if args.json:
            series["buckets"] = render.timeline_buckets(series)
            _json(series)
        elif args.png:
            print(f"wrote {args.png}", file=sys.stderr)
        else:
            render.print_timeline(series, con, args.file)
    return 0


def _json(data) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


# --- the `run` side -------------------------------------------------------------------
def start_recording():
    """A recorder for `run --tc-profile`."""
    from bt_vmm.tcprofile.recorder import TCRecorder
    return TCRecorder()


def recorded_profile(recorder, engine, result, guest: str) -> bytes:
    """The profile file's bytes (the host world writes them to --tc-profile's FILE)."""
    from bt_vmm.tcprofile.format import encode_profile
    return encode_profile(recorder.profile(engine, result, guest=guest))
