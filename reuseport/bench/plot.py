"""The comparison chart: one row per scenario, per-worker share and latency.

Rules: matplotlib is an optional extra (``reuseport[bench]``), imported only
here and only when a plot is asked for, with the Agg backend (no display).
The chart is drawn from the JSON document, so a saved run can be re-plotted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import MissingToolError

__all__ = ["PLOT_SUFFIXES", "check_matplotlib", "write_plot"]

PLOT_SUFFIXES = (".png", ".svg")
INSTALL_HINT = "matplotlib is not installed: pip install 'reuseport[bench]'"
_LATENCY = ("p50", "p90", "p99", "p99.9", "max")


def check_matplotlib() -> None:
    """Fail early (before minutes of load) if the plot cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingToolError(INSTALL_HINT) from None


def _label(summary: Mapping[str, Any]) -> str:
    mode, eff = summary["mode"], summary["effective_mode"]
    same = str(mode).partition("+")[0] == str(eff).partition("+")[0]
    return str(mode) if same else f"{mode} ({eff})"


def write_plot(doc: Mapping[str, Any], path: Path) -> None:
    """Draw the chart for a ``report.document`` into ``path`` (.png or .svg)."""
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise ValueError(f"cannot plot to {path}: use a .png or .svg file name")
    check_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _pos: f"{value:g}")
    # Label only the 2s and 5s between decades: every minor tick is too crowded.
    sparse = FuncFormatter(lambda value, _pos: f"{value:g}" if f"{value:e}"[0] in "25" else "")

    summaries: Sequence[Mapping[str, Any]] = doc["summaries"]
    scenarios = list(dict.fromkeys(s["scenario"] for s in summaries))
    modes = list(dict.fromkeys(s["mode"] for s in summaries))
    colors = {m: c for m, c in zip(modes, ("#1f77b4", "#ff7f0e", "#2ca02c"), strict=False)}
    fig, axes = plt.subplots(
        len(scenarios), 2, figsize=(13, 3.8 * len(scenarios) + 0.9), squeeze=False
    )
    width = 0.8 / max(1, len(modes))
    for row, scenario in enumerate(scenarios):
        ax_share, ax_lat = axes[row]
        rows = [s for s in summaries if s["scenario"] == scenario]
        slots = sorted({int(k) for s in rows for k in s["requests_per_worker"]})
        rates = []
        for i, s in enumerate(rows):
            per = {int(k): float(v) for k, v in s["requests_per_worker"].items()}
            total = sum(per.values()) or 1.0
            xs = [slot + (i - (len(rows) - 1) / 2) * width for slot in slots]
            fair = s["fairness"]
            label = _label(s) + (f"  (Jain {fair:.2f})" if fair is not None else "")
            ax_share.bar(
                xs,
                [100 * per.get(k, 0.0) / total for k in slots],
                width,
                label=label,
                color=colors.get(s["mode"]),
            )
            rates.append(f"{_label(s)} {s['requests_per_s']:,.0f} req/s")
            lat = [s["latency_ms"].get(k, 0.0) for k in _LATENCY]
            lx = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(_LATENCY))]
            ax_lat.bar(lx, lat, width, label=_label(s), color=colors.get(s["mode"]))
        if slots:
            ax_share.axhline(
                100 / len(slots), color="grey", linewidth=0.8, linestyle="--", label="even share"
            )
            ax_share.set_xticks(slots, [f"slot {k}" for k in slots])
        # Head room above the tallest bar so the legend never hides one.
        ax_share.set_ylim(0, min(100.0, max(ax_share.get_ylim()[1], 50.0)) * 1.3)
        ax_share.set_ylabel("share of requests (%)")
        ax_share.set_title(f"{scenario}: requests per worker\n" + ", ".join(rates), fontsize=10)
        # Below the axes, so the legend never hides a bar.
        ax_share.legend(
            fontsize=8,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.12),
            ncol=len(rows) + 1,
            frameon=False,
        )
        ax_lat.set_xticks(range(len(_LATENCY)), list(_LATENCY))
        ax_lat.set_yscale("log")
        ax_lat.yaxis.set_major_formatter(plain)
        ax_lat.yaxis.set_minor_formatter(sparse)
        ax_lat.tick_params(axis="y", which="minor", labelsize=7)
        ax_lat.set_ylabel("latency (ms, log)")
        ax_lat.set_title(f"{scenario}: latency percentiles", fontsize=10)
        ax_lat.legend(fontsize=8, loc="upper left")
        ax_lat.grid(axis="y", which="both", alpha=0.3)
    cfg = doc.get("config", {})
    machine = doc.get("machine", {})
    fig.suptitle(
        f"reuseport bench: {cfg.get('workers')} workers, {cfg.get('connections')} connections, "
        f"{cfg.get('duration_s')} s x {cfg.get('repeat')} runs per mode (medians) — "
        f"Linux {machine.get('kernel')}, {machine.get('cpus_usable')} CPUs",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=path.suffix.lower().lstrip("."), dpi=110)
    plt.close(fig)
