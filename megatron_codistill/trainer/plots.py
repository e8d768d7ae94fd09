"""`codistill plot RUN_DIR`: PNG curves of the main metrics of a run."""

from __future__ import annotations

from pathlib import Path

from megatron_codistill.trainer.metrics import read_metrics

DEFAULT_KEYS = (
    "small/task_reward", "large/task_reward", "kd/reward_mean", "small/response_length",
    "small/loss/clip_frac", "is/mean_log_ratio", "is/ess", "time/step",
)


def plot_run(run_dir: str | Path, keys: list[str] | None = None) -> list[Path]:
    """Write `<run_dir>/plots/<key>.png` for each key present (and eval/ keys); return the paths."""
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
        pts = [(r["step"], r[key]) for r in rows if key in r]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 50 else None)
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / (key.replace("/", "_") + ".png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
