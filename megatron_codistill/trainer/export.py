"""Hugging Face exports of training checkpoints, from the checkpoint files alone.

`codistill export RUN_DIR [--step N] --out DIR [--model small|large|both]` and `checkpoint.export_hf`
run the same code: read each model's full (TP=1) tensors from the checkpoint's layout-independent
Megatron distributed checkpoint (checksums verified first), convert them with the mapping table, and
write safetensors with that model's own config, generation config, tokenizer and token ids. Any
layout it was saved at exports to the same bytes.

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
    DIST,
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
    """The HF export of a just-saved (or resumed) checkpoint; collective: rank 0 reads and writes, the
    other ranks take part in the reads (torch.distributed.checkpoint plans them together)."""
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
    """Write each model of `checkpoint` (`models`, default all it holds) as a HF directory at `out_of(name)`.

    In one process, or collectively in a job: every rank calls it, rank 0 alone reads and writes."""
    from megatron.core import dist_checkpointing

    from megatron_codistill.convert.mcore_ckpt import process_group
    from megatron_codistill.convert.model_io import agree

    writer = not dist.is_initialized() or dist.get_rank() == 0
    error = None
    if writer:
        try:
            verify_files(checkpoint)
        except (DamagedCheckpoint, ValueError) as e:
            error = str(e)
    agree(error)
    source = str(checkpoint / DIST)
    held = list(dist_checkpointing.load_common_state_dict(source))
    missing = sorted(set(models or []) - set(held))
    if missing:
        raise ValueError(f"{checkpoint} holds no {missing[0]} model (it holds {held})")
    outs = {}
    with process_group():
        for name in models or held:
            m = getattr(cfg, name)
            arch = model_arch(m, name)
            tensors = full_hf_tensors(arch, source, prefix=f"{name}.", read=writer)
            outs[name] = out_of(name)
            if writer:
                write_hf(outs[name], arch, tensors, source=m.hf_config or m.checkpoint,
                         tokenizer=tokenizer_path(m) or tokenizer_path(cfg.small), overwrite=overwrite)
                log.info("exported the %s model of %s to %s", name, checkpoint.name, outs[name])
    return outs


def verify_files(checkpoint: Path) -> None:
    """Every file the marker of `checkpoint` lists, against its size and SHA-256."""
    marker = json.loads((checkpoint / MARKER).read_text())
    files = marker.get("files", {})
    if not any(n.startswith(f"{DIST}/") for n in files):
        raise ValueError(f"{checkpoint}: no {DIST}/ distributed checkpoint (model states in rank files, an older "
                         "format); export it with the version that wrote it")
    for name, expected in files.items():
        _verify(checkpoint / name, expected)


def full_hf_tensors(arch, source: str, *, prefix: str, read: bool = True) -> dict[str, torch.Tensor]:
    """HF name -> full tensor of the model stored under `prefix` in the distributed checkpoint `source`.

    Collective over the default process group; ranks with `read` False request nothing (empty result).
    """
    from megatron.core import dist_checkpointing

    from megatron_codistill.convert.mapping import entries
    from megatron_codistill.convert.mcore_ckpt import gather_loaded, load_sharded, sharded_tensors

    todo = entries(arch) if read else []
    meta = dist_checkpointing.load_tensors_metadata(source) if read else {}
    absent = sorted(prefix + e.ckpt for e in todo if prefix + e.ckpt not in meta)
    if absent:
        raise ValueError(f"{source}: the checkpoint does not cover the model: missing {absent}")
    request = {}
    for e in todo:
        empty = torch.empty(e.shape, dtype=meta[prefix + e.ckpt].dtype)  # vocab rows: the unpadded ones
        request.update(sharded_tensors(e, empty, num_layers=arch.num_layers, tp_rank=0, tp=1, key=prefix + e.ckpt))
    loaded = load_sharded(request, source)
    return {n: t for e in todo for n, t in zip(e.hf, e.layout.to_hf(gather_loaded(e, loaded), arch))}


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
