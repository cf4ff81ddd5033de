"""`bt-vmm run --stats live`: a rich panel of the main counters, redrawn about
four times a second while the guest runs.

The panel is drawn in the host world, which owns the terminal, by rich.live's
own refresh thread; the counters are read in the VMM world by a
`CounterReader` (with the host world in its own process, on the VMM world's
event thread, asked with a "snapshot" event; with --hosted inproc, on the
refresh thread itself). The reader never calls unicorn: it reads Python-side
counters (the TC's, the engine's exits, the shadow MMU's) and the CCFs'
execution counters straight out of the monitor region's host memory (an mmap
the machine owns). Those reads race with the monitor thread, harmlessly: a
counter read a moment early is still a counter, and a dictionary that grows
while it is copied is read again at the next refresh. The guest pays only for
the GIL the reading thread holds.
"""

from __future__ import annotations

import struct
import sys
import time
from typing import Any, Callable

from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from bt_vmm.hosted.console import StdioSink
from bt_vmm.tcache import region as R

REFRESH_PER_SECOND = 4
_Q = struct.Struct("<Q")


class CounterReader:
    """The main counters of a running engine, read from another thread."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self._retired_seen = 0
        self._retired_insns = 0
        self._snap: dict[str, Any] = {}

    def snapshot(self) -> dict[str, Any]:
        for _ in range(3):
            try:
                self._snap = self._read(self.engine)
                return self._snap
            except RuntimeError:      # a dict grew while it was copied: try again
                continue
        return self._snap

    def _read(self, e) -> dict[str, Any]:
        tc = e.tcache
        s = tc.stats
        exits = dict(e.exits)
        mon = e.m.mon
        insns = None
        lookups = None
        if tc.translator.count:
            retired = tc.retired
            while self._retired_seen < len(retired):     # append-only: harvested counts
                c = retired[self._retired_seen]
                self._retired_insns += c.executions * len(c.code.tu.insns)
                self._retired_seen += 1
            live = 0
            for c in list(tc._ccfs):
                if c.dead:
                    live += c.executions * len(c.code.tu.insns)
                else:
                    live += _Q.unpack_from(mon, R.COUNTERS + 8 * c.slot)[0] * len(c.code.tu.insns)
            insns = self._retired_insns + live + e.insns_direct
            lookups = _Q.unpack_from(mon, R.N_LOOKUPS)[0]
        return {
            "translated": s["translated"], "guest_bytes": s["guest_bytes"], "ccf_bytes": s["ccf_bytes"],
            "chained": s["chained"], "occupancy": tc.occupancy, "capacity": tc._tc_hi - tc._alloc_lo,
            "generation": tc.generation,
            "exits": exits, "exits_total": sum(exits.values()),
            "lookups": lookups, "misses": exits.get("lookup-miss", 0),
            "invalidations": sum(dict(tc.invalidations).values()),
            "flushes": sum(dict(tc.flushes).values()),
            "trace_faults": e.traces.trace_faults,
            "insns": insns, "user": e.user_mode, "engine": e.name,
        }


class LivePanel:
    """Shows the counters a source gives (see `start`), redrawn from its own thread."""

    def __init__(self, console: Console | None = None, refresh_per_second: float = REFRESH_PER_SECOND,
                 title: str = "bt-vmm") -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self.title = title
        self._source: Callable[[], dict[str, Any]] | None = None
        self.refreshes = 0
        self.busy_seconds = 0.0      # CPU time the refresh thread spent reading and drawing
        self._rate = refresh_per_second
        self._live: Live | None = None
        self._t0 = time.perf_counter()
        self._last: tuple[float, int, int] | None = None      # (time, exits, insns)
        self._rates: tuple[float, float] | None = None

    # --- lifecycle ------------------------------------------------------------------
    def start(self, source) -> None:
        """Start drawing the counters of `source`: an engine in this process,
        or a function that returns a CounterReader snapshot (the VMM world's)."""
        self._source = source if callable(source) else CounterReader(source).snapshot
        self._t0 = time.perf_counter()
        self._live = Live(get_renderable=self._render, console=self.console,
                          refresh_per_second=self._rate, redirect_stdout=False,
                          redirect_stderr=False, transient=False)
        refresh = self._live.refresh

        def timed_refresh() -> None:
            t = time.thread_time()
            try:
                refresh()
            finally:
                self.busy_seconds += time.thread_time() - t
        self._live.refresh = timed_refresh
        self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()       # one last refresh: the final counters stay on screen
            self._live = None
            if not self.console.is_terminal:
                self.console.line()

    def print_above(self, text: str) -> None:
        """Print guest output above the panel (when both share the terminal)."""
        self.console.print(Text(text), end="", soft_wrap=True)

    @property
    def on_terminal(self) -> bool:
        return self.console.is_terminal

    def snapshot(self) -> dict[str, Any]:
        """The source's counters now, with the time since `start`."""
        if self._source is None:
            return {}
        snap = self._source()
        if snap:
            snap = dict(snap, elapsed=time.perf_counter() - self._t0)
        return snap

    def _render(self):
        self.refreshes += 1
        d = self.snapshot()
        if not d:
            return Text("starting ...")
        now = d["elapsed"]
        if self._last is not None and now - self._last[0] > 0.05:
            dt = now - self._last[0]
            self._rates = ((d["exits_total"] - self._last[1]) / dt,
                           ((d["insns"] or 0) - self._last[2]) / dt)
        if self._last is None or now - self._last[0] > 0.05:
            self._last = (now, d["exits_total"], d["insns"] or 0)
        exits_rate = "-" if self._rates is None else f"{self._rates[0]:,.0f}"
        mips = "-" if self._rates is None else f"{self._rates[1] / 1e6:,.2f}"
        occ = d["occupancy"] / d["capacity"] if d["capacity"] else 0
        ratio = d["ccf_bytes"] / d["guest_bytes"] if d["guest_bytes"] else 0
        lookups = "-" if d["lookups"] is None else f"{d['lookups']:,}"
        if d["lookups"]:
            lookups += f" ({1 - d['misses'] / d['lookups']:.2%} hit)"
        rows = [
            ("time", f"{now:,.1f} s", "mode", "user" if d["user"] else
             "kernel (TC)" if d["engine"] == "bt" else "kernel"),
            ("CCFs translated", f"{d['translated']:,}", "expansion", f"{ratio:.1f}x"),
            ("TC occupancy", f"{d['occupancy']:,} B ({occ:.1%})", "generation", str(d["generation"])),
            ("chained exits", f"{d['chained']:,}", "inval./flushes",
             f"{d['invalidations']:,} / {d['flushes']:,}"),
            ("in-TC lookups", lookups, "lookup misses", f"{d['misses']:,}"),
            ("exits", f"{d['exits_total']:,}", "exits/s", exits_rate),
        ]
        if d["insns"] is not None:
            rows.append(("guest insns", f"{d['insns']:,}", "MIPS", mips))
        rows.append(("trace faults", f"{d['trace_faults']:,}", "", ""))
        # Plain styled text: a rich Table.grid costs ~8 ms a refresh, this ~1 ms.
        t = Text()
        for a, av, b, bv in rows:
            t.append(f"{a:<16}", style="bold")
            t.append(f"{av:>20}   ")
            t.append(f"{b:<15}", style="bold")
            t.append(f"{bv:>12}\n")
        t.append("top exit reasons\n", style="bold")
        top = sorted(d["exits"].items(), key=lambda kv: -kv[1])[:8]
        for k, v in top:
            t.append(f"  {k:<34}", style="dim")
            t.append(f"{v:>12,}\n")
        t.rstrip()
        return Panel(t, title=self.title, expand=False)


class PanelStdioSink(StdioSink):
    """--serial stdio under the live panel: when the panel and standard output
    are the same terminal, guest output is printed above the panel instead of
    through it."""

    def __init__(self, panel: LivePanel) -> None:
        super().__init__()
        self.panel = panel

    def write(self, data: bytes) -> None:
        if self.panel._live is not None and self.panel.on_terminal and sys.stdout.isatty():
            if self.closed:
                raise ValueError("write to a closed serial sink")
            self.bytes_written += len(data)
            self.panel.print_above(data.decode("utf-8", "replace"))
        else:
            super().write(data)
