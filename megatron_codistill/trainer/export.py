"""Hugging Face exports of training checkpoints, from the checkpoint files alone.

`codistill export RUN_DIR [--step N] --out DIR [--model small|large|both]` and `checkpoint.export_hf`
run the same code: read each rank file of a complete checkpoint (checksums verified), put each
model's TP shards back together with the mapping table's `merge` (the first data-parallel replica of
every pipeline stage), and write safetensors with that model's own config, generation config,
tokenizer and token ids. Any layout it was saved at exports to the same bytes.

Exports live in `<run_dir>/exports/step_N/<model>/`, outside `checkpoints/`, so `keep_last` never
deletes them; each is written atomically (a marker last).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_codistill.config import Config, load_config, model_arch
from megatron_codistill.faults import fault_point
from megatron_codistill.log import get_logger
from megatron_codistill.trainer.checkpoint import (
    MARKER,
    STATE,
    CheckpointManager,
    DamagedCheckpoint,
    _verify,
    order_key,
    step_dir_name,
)
from megatron_codistill.trainer.tokenizers import load, tokenizer_path

log = get_logger(__name__)


def export_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "exports" / step_dir_name(step)


def is_exported(out: Path) -> bool:
    from megatron_codistill.convert.output_dir import MARKER as HF_MARKER

    return (out / HF_MARKER).is_file()


def has_export(run, checkpoint: Path) -> bool:
    """Whether every model of `checkpoint` has its complete export (same answer on every rank)."""
    step = json.loads((checkpoint / STATE).read_text())["step"]
    return all(is_exported(export_dir(run.cfg.run.dir, step) / name) for name in run.policies)


def export_step(run, checkpoint: Path) -> None:
    """The HF export of a just-saved (or resumed) checkpoint; rank 0 writes, every rank waits."""
    if run.rank == 0:
        step = json.loads((checkpoint / STATE).read_text())["step"]
        out = export_dir(run.cfg.run.dir, step)
        export_checkpoint(checkpoint, run.cfg, lambda name: out / name)
    if dist.is_initialized():
        dist.barrier()


def find_checkpoint(run_dir: str | Path, step: int | None) -> Path:
    """The checkpoint of RL step `step` in `run_dir` (the newest complete one if None)."""
    root = Path(run_dir) / "checkpoints"
    steps = [p for p in CheckpointManager(run_dir, rank=0, world_size=1).candidates() if order_key(p.name)[0] == 1]
    if not steps:
        raise ValueError(f"{root}: no complete training checkpoint (step_N with a {MARKER} marker)")
    if step is None:
        return steps[0]
    path = root / step_dir_name(step)
    if path not in steps:
        raise ValueError(f"{path} is not a complete checkpoint; complete ones: {[p.name for p in steps]}")
    return path


def export_checkpoint(checkpoint: Path, cfg: Config, out_of: Callable[[str], Path], *,
                      models: list[str] | None = None, overwrite: bool = True) -> dict[str, Path]:
    """Write each model of `checkpoint` (`models`, default all it holds) as a HF directory at `out_of(name)`."""
    files = rank_files(checkpoint)
    held = list(files[0]["policies"])
    missing = sorted(set(models or []) - set(held))
    if missing:
        raise ValueError(f"{checkpoint} holds no {missing[0]} model (it holds {held})")
    outs = {}
    for name in models or held:
        m = getattr(cfg, name)
        arch = model_arch(m, name)
        tensors = full_hf_tensors(arch, [(f["layouts"][name], f["policies"][name]["model"]) for f in files])
        outs[name] = out_of(name)
        write_hf(outs[name], arch, tensors, source=m.hf_config or m.checkpoint,
                 tokenizer=tokenizer_path(m) or tokenizer_path(cfg.small), overwrite=overwrite)
        log.info("exported the %s model of %s to %s", name, checkpoint.name, outs[name])
    return outs


def rank_files(checkpoint: Path) -> list[dict]:
    """Every rank file of `checkpoint`, verified against its marker, memory-mapped."""
    marker = json.loads((checkpoint / MARKER).read_text())
    names = sorted(n for n in marker.get("files", {}) if n.startswith("rank_"))
    if not names:
        raise DamagedCheckpoint(f"{checkpoint / MARKER}: lists no rank files")
    out = []
    for n in names:
        _verify(checkpoint / n, marker["files"][n])
        out.append(torch.load(checkpoint / n, map_location="cpu", weights_only=False, mmap=True))
    if any("layouts" not in f for f in out):
        raise ValueError(f"{checkpoint}: saved without layout coordinates; export it from a running job")
    return out


def full_hf_tensors(arch, shards: list[tuple[dict, dict]]) -> dict[str, torch.Tensor]:
    """HF name -> full tensor from (layout coordinates, GPTModel state dict) of every rank."""
    from megatron_codistill.convert.mapping import entry_for_param, expected_hf_tensors

    stages: dict[int, dict[int, tuple[dict, dict]]] = {}
    for coords, state in shards:
        if coords["dp_rank"] == 0:
            stages.setdefault(coords["pp_rank"], {})[coords["tp_rank"]] = (coords, state)
    out: dict[str, torch.Tensor] = {}
    for pp_rank in sorted(stages):
        by_tp = [stages[pp_rank][r] for r in sorted(stages[pp_rank])]
        coords, first = by_tp[0]
        if len(by_tp) != coords["tp"]:
            raise ValueError(f"pipeline stage {pp_rank}: {len(by_tp)} of {coords['tp']} tensor-parallel shards")
        for key, value in first.items():
            if not isinstance(value, torch.Tensor):
                continue  # Megatron's _extra_state entries
            entry = entry_for_param(arch, key, coords["layer_offset"])
            if not entry.rule.exported:
                continue
            full = entry.layout.merge([state[key] for _, state in by_tp], arch)
            out.update(zip(entry.hf, entry.layout.to_hf(full, arch)))
    expected = expected_hf_tensors(arch)
    if set(out) != set(expected):
        raise ValueError(f"checkpoint shards do not cover the model: missing {sorted(set(expected) - set(out))}")
    return {n: out[n] for n in expected}


def write_hf(out: Path, arch, tensors: dict[str, torch.Tensor], *, source: str | None, tokenizer: str | None,
             overwrite: bool = True, max_shard_bytes: int = 5 << 30) -> None:
    """A HF directory: weights, config.json (the source's own when it has one) with the tokenizer's
    bos/eos/pad ids, generation_config.json (the source's, else from those ids) and the tokenizer."""
    from transformers import GenerationConfig

    from megatron_codistill.convert.output_dir import atomic_dir, write_marker
    from megatron_codistill.convert.safetensors_io import ShardWriter, plan_shards

    dtype = next(iter(tensors.values())).dtype
    config = _config(arch, source, dtype)
    tok = load(tokenizer) if tokenizer else None
    ids = {k: getattr(tok, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")} if tok else {}
    config.update({k: v for k, v in ids.items() if v is not None})
    with atomic_dir(str(out), overwrite=overwrite) as tmp:
        sizes = [(n, math.prod(t.shape) * t.element_size()) for n, t in tensors.items()]
        writer = ShardWriter(tmp, plan_shards(sizes, max_shard_bytes))
        for name, t in tensors.items():
            writer.add(name, t.contiguous())
        writer.finish()
        (Path(tmp) / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        gen = _local_file(source, "generation_config.json")
        if gen:
            shutil.copy2(gen, Path(tmp) / "generation_config.json")
        else:
            GenerationConfig(**{k: v for k, v in ids.items() if v is not None}).save_pretrained(tmp)
        if tok is not None:
            tok.save_pretrained(tmp)
        fault_point("export.before_marker")
        write_marker(tmp, {"format": "hf-safetensors", "source": "training checkpoint"})


def _config(arch, source: str | None, dtype: torch.dtype) -> dict:
    path = _local_file(source, "config.json")
    config = json.loads(Path(path).read_text()) if path else arch.to_hf_config().to_dict()
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    return config


def _local_file(source: str | None, name: str) -> str | None:
    """`name` in a local model directory (or hub cache snapshot) `source`, if there is one."""
    if not source:
        return None
    if os.path.isdir(source):
        path = os.path.join(source, name)
        return path if os.path.isfile(path) else None
    if os.path.isfile(source) and name == "config.json":
        return source
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(source, name)
        return hit if isinstance(hit, str) else None
    except (ImportError, ValueError):
        return None


def export_main(run_dir: str, out: str, *, step: int | None = None, model: str = "both",
                overwrite: bool = False) -> dict[str, Path]:
    """`codistill export`: `model` (or both) of one training checkpoint of `run_dir` as HF directories:
    `out` itself for one model, `out/small` and `out/large` for both."""
    config = Path(run_dir) / "config.yaml"
    if not config.is_file():
        raise ValueError(f"{config} not found: is {run_dir} a run directory of `codistill train`?")
    checkpoint = find_checkpoint(run_dir, step)
    out_of = (lambda name: Path(out) / name) if model == "both" else (lambda name: Path(out))
    return export_checkpoint(checkpoint, load_config(config), out_of, models=None if model == "both" else [model],
                             overwrite=overwrite)
