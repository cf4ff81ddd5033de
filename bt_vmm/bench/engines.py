"""The engines `bt-vmm bench` can measure: BT always, trap-and-emulate when
`bt_vmm.engines.trap.TrapEngine` imports (both take a Machine and
EngineOptions and have run(entry) -> RunResult and an `exits` Counter)."""

from __future__ import annotations

from collections import Counter


def available_engines() -> tuple[dict[str, type], dict[str, str]]:
    """({name: engine class}, {name: why it is unavailable})."""
    from bt_vmm.engines.bt import BTEngine
    engines: dict[str, type] = {"bt": BTEngine}
    missing: dict[str, str] = {}
    try:
        from bt_vmm.engines.trap import TrapEngine
    except Exception as e:      # not written yet, or mid-edit: bench what there is
        missing["trap"] = f"{type(e).__name__}: {e}"
    else:
        engines["trap"] = TrapEngine
    return engines, missing


def exit_count(engine) -> int:
    """Transitions from the guest into the monitor's Python so far: the
    engine's exits (every reason), plus stores caught by a write trace
    (unicorn calls the monitor back without leaving emulation, which the
    engine does not count as an exit). Device MMIO callbacks (the local APIC)
    are not counted anywhere."""
    if engine is None:
        return 0
    n = sum(getattr(engine, "exits", {}).values())
    traces = getattr(engine, "traces", None)
    return n + int(getattr(traces, "trace_faults", 0) or 0)


def exit_reasons(engine) -> Counter:
    c = Counter(getattr(engine, "exits", {}) if engine is not None else {})
    traces = getattr(engine, "traces", None) if engine is not None else None
    tf = int(getattr(traces, "trace_faults", 0) or 0)
    if tf:
        c["trace-fault"] += tf
    return c
