"""`codistill plot RUN_DIR`: PNG curves of the main metrics of a run, and one figure per held-out set
with both models' greedy (solid) and sampled (dashed) accuracy over the steps."""

from __future__ import annotations

import re
from pathlib import Path

from megatron_codistill.trainer.metrics import read_metrics

DEFAULT_KEYS = (
    "small/task_reward", "small/kd/reward_mean", "kd/approx_kl_small_large", "small/response_length",
    "small/loss/clip_frac", "large/is/log_ratio_mean", "large/is/ess", "large/grad_norm", "time/step",
)
"""Metrics of a codistill run plotted by default; other modes plot those of them they log."""
_EVAL = re.compile(r"^eval/(?P<set>[^/]+)/(?P<model>[^_/]+)_(?P<kind>accuracy|sampled_accuracy)$")


def plot_run(run_dir: str | Path, keys: list[str] | None = None) -> list[Path]:
    """Write `<run_dir>/plots/<key>.png` for each key (default: DEFAULT_KEYS present and every eval/ key)
    and `eval_<set>.png` overlays of the models; return the paths. Asked-for keys must exist."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    present = {k for r in rows for k in r}
    wanted = list(keys) if keys else [k for k in DEFAULT_KEYS if k in present]
    wanted += sorted(k for k in present if k.startswith("eval/") and k not in wanted and not keys)
    missing = [k for k in wanted if k not in present]
    if missing:
        raise ValueError(f"{run_dir}: no metric {missing}; available: {sorted(present)}")
    out_dir = Path(run_dir) / "plots"
    out_dir.mkdir(exist_ok=True)
    paths = []
    for key in wanted:
        pts = _points(rows, key)
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 50 else None)
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        paths.append(_save(fig, out_dir / (key.replace("/", "_") + ".png")))
    if not keys:
        paths += _eval_overlays(rows, present, out_dir)
    return paths


def _eval_overlays(rows: list[dict], present: set[str], out_dir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    by_set: dict[str, list[tuple[str, str, str]]] = {}
    for key in sorted(present):
        m = _EVAL.match(key)
        if m:
            by_set.setdefault(m["set"], []).append((key, m["model"], m["kind"]))
    paths = []
    for name, curves in by_set.items():
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        colours = {}
        for key, model, kind in curves:
            pts = _points(rows, key)
            colour = colours.setdefault(model, f"C{len(colours)}")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", color=colour,
                    linestyle="-" if kind == "accuracy" else "--",
                    label=f"{model}, {'greedy' if kind == 'accuracy' else 'sampled'}")
        ax.set_xlabel("step (0 = after the warm start)")
        ax.set_ylabel("held-out accuracy")
        ax.set_title(f"{name}: small and large model")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        paths.append(_save(fig, out_dir / f"eval_{name}.png"))
    return paths


def _points(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in rows if key in r]


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
