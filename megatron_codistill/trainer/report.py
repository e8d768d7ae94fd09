"""The end-of-run summary: held-out accuracy of each model at step 0 (after the warm start) and at the
last evaluation, as a markdown table printed and saved to `<run_dir>/summary.md`, with the plots."""

from __future__ import annotations

import re
from pathlib import Path

from megatron_codistill.log import get_logger
from megatron_codistill.trainer.metrics import read_metrics

log = get_logger(__name__)
_EVAL = re.compile(r"^eval/(?P<set>[^/]+)/(?P<model>small|large)_(?P<kind>accuracy|sampled_accuracy)$")


def accuracy_table(rows: list[dict]) -> str | None:
    """Markdown table of eval/<set>/<model>_{accuracy,sampled_accuracy}: first and last evaluation."""
    evals = [r for r in rows if any(_EVAL.match(k) for k in r)]
    if not evals:
        return None
    first, last = evals[0], evals[-1]
    cells: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    for key in sorted(set(first) & set(last)):
        m = _EVAL.match(key)
        if m:
            cells.setdefault((m["set"], m["model"]), {})[m["kind"]] = (first[key], last[key])
    lines = [f"| set | model | greedy, step {first['step']} | greedy, step {last['step']} | change "
             f"| sampled, step {first['step']} | sampled, step {last['step']} | change |",
             "|---|---|---|---|---|---|---|---|"]
    for (name, model), kinds in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1] != "small")):
        row = [name, model]
        for kind in ("accuracy", "sampled_accuracy"):
            if kind in kinds:
                a, b = kinds[kind]
                row += [f"{a:.3f}", f"{b:.3f}", f"{b - a:+.3f}"]
            else:
                row += ["-", "-", "-"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_summary(run_dir: str | Path, *, plots: bool = True) -> Path | None:
    """Write `<run_dir>/summary.md` and (with `plots`) the plots; log the table. None when the run has no
    evaluation."""
    from megatron_codistill.trainer.plots import plot_run

    rows = read_metrics(run_dir)
    table = accuracy_table(rows)
    drawn = plot_run(run_dir) if plots else []
    if table is None:
        return None
    plot_dir = Path(run_dir) / "plots"
    where = (f"{plot_dir} ({len(drawn)} files; `codistill plot {run_dir}` redraws them)" if plots else
             f"not drawn (logging.plots=false); `codistill plot {run_dir}` draws them into {plot_dir}")
    text = (f"# {Path(run_dir).name}: held-out accuracy at the warm start and at the end\n\n{table}\n\n"
            f"Plots: {where}.\n")
    path = Path(run_dir) / "summary.md"
    path.write_text(text)
    log.info("held-out accuracy:\n%s\nsummary: %s; plots: %s", table, path, plot_dir)
    return path
