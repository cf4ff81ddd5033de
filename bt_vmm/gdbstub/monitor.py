"""gdb's `monitor` commands: bt_vmm's own view of the stopped machine.

The translation cache is shown the way `bt-vmm tc` shows a recorded profile
(the same renderer, over a profile made from the live TC: per-callout hit
counts are only known when the run records one, with --tc-profile).
"""

from __future__ import annotations

import io
from typing import Callable

from bt_vmm.errors import BtVmmError

HELP = """bt-vmm monitor commands:
  tc stats          the translation cache's statistics so far (as `bt-vmm tc stats`)
  tc show ADDR      the TU at or containing guest ADDR, beside its CCF (as `bt-vmm tc show`)
  stats             the run's statistics so far (as --stats)
  snapshot FILE     save the machine as it stands (run it on with `bt-vmm run --restore FILE`)
  help              this list
"""


class Monitor:
    def __init__(self, engine, snapshot: Callable[[str], str] | None = None) -> None:
        self.engine = engine
        self._snapshot = snapshot      # FILE -> a line saying what was written

    def __call__(self, command: str) -> str:
        words = command.split()
        try:
            if words in ([], ["help"]):
                return HELP
            if words == ["tc", "stats"]:
                return self._tc_stats()
            if words[:2] == ["tc", "show"] and len(words) == 3:
                return self._tc_show(words[2])
            if words == ["stats"]:
                return self._stats()
            if words[0] == "snapshot" and len(words) == 2:
                if self._snapshot is None:
                    return "snapshots are not available in this run\n"
                return self._snapshot(words[1]) + "\n"
        except BtVmmError as e:
            return f"error: {e}\n"
        return f"unknown monitor command '{command}' (try: monitor help)\n"

    def _profile(self):
        from bt_vmm.tcprofile.profile import Profile
        from bt_vmm.tcprofile.recorder import TCRecorder
        rec = TCRecorder()
        rec.tcache = self.engine.tcache
        return Profile(rec.profile(self.engine), path="live TC")

    def _tc_stats(self) -> str:
        from bt_vmm.tcprofile import render
        p = self._profile()
        out = io.StringIO()
        render.print_stats(p, p.stats(), render.console(out))
        return out.getvalue()

    def _tc_show(self, text: str) -> str:
        from bt_vmm.tcprofile import render
        try:
            addr = int(text, 0)
        except ValueError:
            return f"tc show: expected a guest address, got '{text}'\n"
        p = self._profile()
        found = p.find(addr)
        live = [c for c in found if c.live]
        if not found:
            return f"tc show: no TU at or containing {addr:#x} has been translated\n"
        out = io.StringIO()
        con = render.console(out)
        for c in live or found[-1:]:
            render.print_show(render.describe(p, c), con)
        return out.getvalue()

    def _stats(self) -> str:
        from bt_vmm import stats as stats_mod
        from bt_vmm.engines.bt import RunResult
        data = stats_mod.collect(self.engine, RunResult(0, "running"), bool(self.engine.opts.count))
        out = io.StringIO()
        stats_mod.print_table(data, file=out)
        return out.getvalue()
