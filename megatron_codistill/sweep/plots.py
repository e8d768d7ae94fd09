"""Mean curves over seeds with 95% bands, one PNG per metric: `<out>/plots/<metric>.png`.

With `compare`, one panel per value of the other axes and one line per value of the compared axis;
otherwise one panel with one line per cell group. At each step the line is the mean over the finished
cells of the line that logged the metric at that step, the band its 95% t-interval (two or more cells).
"""

from __future__ import annotations

from pathlib import Path

from megatron_codistill.sweep.spec import SweepSpec
from megatron_codistill.sweep.stats import estimate


def _label(values: dict[str, str]) -> str:
    return ",".join(f"{a}={v}" for a, v in values.items()) or "all"


def curves(spec: SweepSpec, data: list, key: str) -> list[dict]:
    """[{"panel", "lines": [{"label", "points": [{"step", n, mean, sd, lo, hi, half}]}]}] of metric `key`."""
    seed = spec.seed_axis
    line_axis = spec.compare.axis if spec.compare is not None else None
    panels: dict[str, dict[str, dict[int, list[float]]]] = {}
    for d in data:
        if d.status != "finished":
            continue
        v = d.cell.values
        panel = _label({a: x for a, x in v.items() if a not in (seed, line_axis)}) if line_axis else "all"
        line = _label({line_axis: v[line_axis]} if line_axis else {a: x for a, x in v.items() if a != seed})
        pts = panels.setdefault(panel, {}).setdefault(line, {})
        for r in d.rows:
            if key in r and r[key] is not None:
                pts.setdefault(r["step"], []).append(r[key])
    return [{"panel": panel, "lines": [{"label": line, "points": [{"step": s, **estimate(xs).to_dict()}
                                                                  for s, xs in sorted(steps.items())]}
                                       for line, steps in lines.items()]}
            for panel, lines in panels.items()]


def plot_curves(spec: SweepSpec, all_curves: dict[str, list[dict]]) -> list[Path]:
    """Draw every metric's curves; the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = spec.out / "plots"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, panels in all_curves.items():
        if not panels:
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.4), squeeze=False)
        for ax, panel in zip(axes[0], panels):
            for line in panel["lines"]:
                pts = line["points"]
                steps = [p["step"] for p in pts]
                (drawn,) = ax.plot(steps, [p["mean"] for p in pts], marker="." if len(pts) < 50 else None,
                                   label=f"{line['label']} (n={max(p['n'] for p in pts)})")
                band = [p for p in pts if p["lo"] is not None]
                if band:
                    ax.fill_between([p["step"] for p in band], [p["lo"] for p in band], [p["hi"] for p in band],
                                    color=drawn.get_color(), alpha=0.2, linewidth=0)
            ax.set_title(panel["panel"] if len(panels) > 1 else key, fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        if len(panels) > 1:
            fig.suptitle(key, fontsize=10)
        fig.tight_layout()
        path = out / (key.replace("/", "_") + ".png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
