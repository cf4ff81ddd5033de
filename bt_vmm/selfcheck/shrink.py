"""Shrinking a diverging generated case to a minimal one.

Greedy and deterministic: drop runs of items (halving the run length down to
single items), then simplify what is left -- item seeds towards 0, the initial
registers towards 0, the data area to zeros, EFLAGS, control registers and the
FPU/SSE control words to their defaults, the code to the start of its page,
the engine profile to plain -- keeping each step only if the case still
diverges. Hypothesis does the same for the test suite with its own shrinker;
this one serves `bt-vmm selfcheck`, where cases come from a seeded PRNG.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

from bt_vmm.selfcheck.case import CaseSpec, Init, ItemSpec
from bt_vmm.selfcheck.harness import Outcome, run_spec


def still_fails(spec: CaseSpec) -> Outcome | None:
    try:
        out = run_spec(spec)
    except Exception:       # a case the harness cannot run is not a smaller divergence
        return None
    return out if out is not None and out.diverged else None


def shrink(spec: CaseSpec, fails: Callable[[CaseSpec], Outcome | None] = still_fails,
           budget: int = 400, seconds: float = 60.0) -> tuple[CaseSpec, Outcome | None]:
    best = spec
    best_out = fails(spec)
    if best_out is None:
        return spec, None
    tries = [0]
    deadline = time.monotonic() + seconds

    def attempt(cand: CaseSpec) -> bool:
        nonlocal best, best_out
        if tries[0] >= budget or cand == best or time.monotonic() > deadline:
            return False
        tries[0] += 1
        out = fails(cand)
        if out is not None:
            best, best_out = cand, out
            return True
        return False

    # 1. drop items (keep the fault in fault cases: removing it is a different case)
    n = len(best.items)
    size = max(1, n // 2)
    while size >= 1:
        i = 0
        while i < len(best.items):
            items = best.items[:i] + best.items[i + size:]
            if items and attempt(best.with_(items=items)):
                continue
            i += size
        size //= 2
    # 2. simplify the items that are left
    for i in range(len(best.items)):
        for seed in (0, 1, 2):
            it = best.items[i]
            if it.seed == seed:
                break
            if attempt(best.with_(items=best.items[:i] + (ItemSpec(it.kind, seed),) + best.items[i + 1:])):
                break
    # 3. the initial state and the run options
    default = Init()
    for k in range(8):
        g = list(best.init.gprs)
        if k == 4 or g[k] == 0:
            continue
        g[k] = 0
        attempt(best.with_(init=replace(best.init, gprs=tuple(g))))
    simplest = replace(default, cr0=0x10011) if best.init.paging else default   # paging needs CR0.WP
    for name in ("data_seed", "eflags", "cr0", "cr4", "fpcw", "mxcsr", "fs", "gs"):
        if getattr(best.init, name) != getattr(simplest, name):
            attempt(best.with_(init=replace(best.init, **{name: getattr(simplest, name)})))
    if best.init.gprs[4] != default.gprs[4]:
        g = list(best.init.gprs)
        g[4] = default.gprs[4]
        attempt(best.with_(init=replace(best.init, gprs=tuple(g))))
    if best.code_offset:
        attempt(best.with_(code_offset=0))
    if best.profile != "plain":
        attempt(best.with_(profile="plain"))
    return best, best_out
