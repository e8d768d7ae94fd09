"""What a run leaves for a person to read: the evaluation right after the warm start (step 0), the final
accuracy table (printed and in summary.md), the resolved config, and plots whose default keys are real
metrics of a codistill run."""

import json
import shutil

import yaml

from megatron_codistill.trainer.plots import DEFAULT_KEYS
from megatron_codistill.trainer.report import write_summary
from megatron_codistill.trainer.train import train_main
from tests.trainer.conftest import TINY


def test_shortened_example_writes_step0_eval_summary_config_and_plots(tiny_overrides, tmp_path, caplog):
    train_main(str(TINY), [*tiny_overrides, "run.eval_sampled=true", "logging.plots=true"])
    run_dir = tmp_path / "run"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    assert first["step"] == 0 and last["step"] == 2
    keys = [f"eval/arith/{m}_{k}" for m in ("small", "large") for k in ("accuracy", "sampled_accuracy")]
    assert all(k in first and k in last for k in keys)

    summary = (run_dir / "summary.md").read_text()
    lines = {line.split("|")[2].strip(): line for line in summary.splitlines() if line.startswith("| arith")}
    for model in ("small", "large"):
        cells = [c.strip() for c in lines[model].split("|")[3:-1]]
        expected = []
        for kind in ("accuracy", "sampled_accuracy"):
            a, b = first[f"eval/arith/{model}_{kind}"], last[f"eval/arith/{model}_{kind}"]
            expected += [f"{a:.3f}", f"{b:.3f}", f"{b - a:+.3f}"]
        assert cells == expected, model
    assert "greedy, step 0" in summary and "greedy, step 2" in summary
    assert str(run_dir / "plots") in summary and str(run_dir / "summary.md") in caplog.text
    assert lines["small"] in caplog.text  # the table is printed too

    step_rows = [r for r in rows if r["step"] > 0]
    missing = [k for k in DEFAULT_KEYS if not all(k in r for r in step_rows)]
    assert not missing, f"default plot keys that a codistill run does not log: {missing}"
    plots = run_dir / "plots"
    assert all((plots / (k.replace("/", "_") + ".png")).stat().st_size > 0 for k in DEFAULT_KEYS)
    assert (plots / "eval_arith.png").stat().st_size > 0  # both models on one figure

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["run"]["dir"] == str(run_dir) and config["algorithm"]["group_size"] == 4

    quiet = tmp_path / "quiet"  # logging.plots=false: the same table, no figure
    quiet.mkdir()
    shutil.copy(run_dir / "metrics.jsonl", quiet / "metrics.jsonl")
    write_summary(quiet, plots=False)
    assert not (quiet / "plots").exists() and "logging.plots=false" in (quiet / "summary.md").read_text()
    assert lines["small"] in (quiet / "summary.md").read_text()
