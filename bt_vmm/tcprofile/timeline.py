"""`bt-vmm tc timeline --png`: translations, invalidations, flushes and TC
occupancy over guest time (wall seconds since the engine was created), drawn
with matplotlib's non-interactive Agg backend."""

from __future__ import annotations

from typing import Any

from bt_vmm.errors import BadInput


def plot_png(series: dict[str, Any], out: str, title: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:   # pragma: no cover - a runtime dependency
        raise BadInput("tc timeline --png needs matplotlib (pip install matplotlib)") from None
    end = series["end"] or max([t for t, _ in series["translations"]] + [1e-3])
    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(10, 6),
                                   gridspec_kw={"height_ratios": [3, 2]})
    tr = series["translations"]
    xs = [0.0] + [t for t, _ in tr] + [end]
    ys = [0] + [n for _, n in tr] + [tr[-1][1] if tr else 0]
    ax1.step(xs, ys, where="post", color="tab:blue", label="CCFs translated (cumulative)")
    inv = series["invalidations"]
    if inv:
        xs = [0.0] + [t for t, *_ in inv] + [end]
        ys = [0] + list(range(1, len(inv) + 1)) + [len(inv)]
        ax1.step(xs, ys, where="post", color="tab:orange", label="invalidations (cumulative)")
    misses = series["lookup_misses"]
    if misses:
        xs = [0.0] + misses + [end]
        ys = [0] + list(range(1, len(misses) + 1)) + [len(misses)]
        ax1.step(xs, ys, where="post", color="tab:green", alpha=0.6, label="in-TC lookup misses")
    for n, (t, reason, dropped) in enumerate(series["flushes"]):
        for ax in (ax1, ax2):
            ax.axvline(t, color="tab:red", linestyle="--", linewidth=1,
                       label=f"flush ({reason})" if n == 0 and ax is ax1 else None)
    ax1.set_ylabel("count")
    ax1.legend(loc="upper left", fontsize="small")
    ax1.set_title(title)
    occ = series["occupancy"]
    xs = [0.0] + [t for t, _ in occ] + [end]
    ys = [0] + [b / 1024 for _, b in occ] + [occ[-1][1] / 1024 if occ else 0]
    ax2.step(xs, ys, where="post", color="tab:purple", label="TC occupancy")
    ax2.fill_between(xs, ys, step="post", color="tab:purple", alpha=0.2)
    cap = series.get("tc_capacity_bytes")
    if cap and max(ys) > 0.5 * cap / 1024:
        ax2.axhline(cap / 1024, color="grey", linestyle=":", label="TC capacity")
    ax2.set_ylabel("TC occupancy (KiB)")
    ax2.set_xlabel(f"guest time: {series['time_unit']}")
    ax2.legend(loc="upper left", fontsize="small")
    ax2.set_xlim(0, end)
    fig.tight_layout()
    try:
        fig.savefig(out, format="png", dpi=100)
    except OSError as e:
        raise BadInput(f"--png: cannot write {out}: {e.strerror}") from None
    finally:
        plt.close(fig)
