"""csm-loadtest --plot: throughput, TTFA and RTF percentiles against the load, as one PNG."""

from __future__ import annotations

from csm_client.loadtest_report import RunResult
from csm_client.loadtest_stats import PERCENTILES


class PlotUnavailable(RuntimeError):
    pass


def write_plot(result: RunResult, path: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable("--plot needs matplotlib: pip install matplotlib "
                              "(or install csm-serve with its dev extra)") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    steps = result.steps
    xs = [step.x for step in steps]
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(8.5, 9), sharex=True)
    top.plot(xs, [step.throughput for step in steps], marker="o", color="tab:green")
    top.set_ylabel("throughput (audio s / wall s)")
    top.set_title(f"csm-loadtest: {result.server.get('target', '')} ({result.server.get('preset') or 'model'}, "
                  f"{result.server.get('device', '')})")
    bottom.axhline(1.0, color="grey", linestyle=":", linewidth=1, label="real time")
    panels = ((middle, "ttfa_ms", "time to first audio (ms)", result.slo.ttfa_ms),
              (bottom, "rtf", "real-time factor", result.slo.rtf))
    for ax, key, unit, bound in panels:
        for q in PERCENTILES:
            ys = [getattr(step, key)[f"p{q}"] for step in steps]
            ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", label=f"p{q}")
        if bound is not None:
            ax.axhline(bound, color="tab:red", linestyle="--", linewidth=1, label=f"SLO (p{result.slo.percentile})")
        ax.set_ylabel(unit)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    if result.mode == "concurrency" and len(xs) > 1 and max(xs) / min(xs) >= 4:
        bottom.set_xscale("log", base=2)
    bottom.set_xticks(xs)
    bottom.set_xticklabels([f"{x:g}" for x in xs])
    bottom.set_xlabel("concurrent streams" if result.mode == "concurrency" else "arrival rate (requests / s)")
    for ax in (top, middle, bottom):
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
