"""A trained model in its parallel layout: weights, optimizer, schedule and an optional reference.

The large model (TP x PP, DP over the rest) and the small model (DP over all ranks) are both a
`Policy`; they differ only in config and layout. Every method is collective over the model's
group: all its ranks call it with the same (replica-local) arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from megatron_codistill.config import ModelConfig, model_arch
from megatron_codistill.log import get_logger
from megatron_codistill.models.arch import ModelArch
from megatron_codistill.models.provider import build_gpt_model
from megatron_codistill.parallel import optimizer as optim
from megatron_codistill.parallel.layout import ModelLayout
from megatron_codistill.parallel.logprobs import forward_logprobs
from megatron_codistill.parallel.schedule import FP8_SEQ_MULTIPLE, unwrap
from megatron_codistill.parallel.train_step import train_step

log = get_logger(__name__)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LossFn = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], tuple[torch.Tensor, dict]]


class Policy:
    """One model: `logprobs(tokens)`, `update(tokens, loss_fn)`, weight export and state."""

    def __init__(self, name: str, cfg: ModelConfig, layout: ModelLayout, *, total_steps: int,
                 seed: int, with_reference: bool = False, trainable: bool = True,
                 warm_start: bool = False):
        """trainable: the model learns in RL; warm_start: it takes supervised steps first (a frozen
        model then keeps an optimizer until `freeze`)."""
        self.name, self.cfg, self.layout = name, cfg, layout
        self.arch: ModelArch = model_arch(cfg, name)
        self.trainable = trainable
        torch.manual_seed(seed)  # identical init on every rank; Megatron splits the full CPU init
        build = lambda: build_gpt_model(  # noqa: E731
            self.arch, pg_collection=layout.pg_collection, pre_process=layout.is_first_stage,
            post_process=layout.is_last_stage, params_dtype=DTYPES[cfg.dtype],
            transformer_impl=cfg.transformer_impl, fp8=cfg.fp8, recompute=cfg.recompute,
            recompute_method=cfg.recompute_method, recompute_num_layers=cfg.recompute_num_layers,
        )
        module = build()
        if cfg.checkpoint:
            load_weights(module, self.arch, layout, cfg.checkpoint)
        self.model, self.optimizer, self.scheduler = module, None, None
        if trainable or warm_start:
            o = cfg.optimizer
            self.model, self.optimizer, self.scheduler = optim.build_optimizer(
                module, layout, lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay,
                adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2, adam_eps=o.adam_eps,
                clip_grad=o.clip_grad, warmup_steps=min(o.warmup_steps, max(total_steps - 1, 0)),
                total_steps=max(total_steps, 1), decay_style=o.decay_style,
                use_distributed_optimizer=o.use_distributed_optimizer,
            )
        self.reference = None
        if with_reference:  # a second model built alike (its random init drawn off the run's RNG), same weights
            with torch.random.fork_rng(devices=[]):
                self.reference = build().eval()
            self.reset_reference()
        n = sum(p.numel() for p in module.parameters())
        log.info("%s model: %.3fM parameters on this rank (%s)", name, n / 1e6, layout.describe())

    @property
    def module(self):
        """The bare GPTModel chunk of this rank."""
        return unwrap(self.model)

    def _micro_batching(self, lengths: torch.Tensor | None) -> dict:
        """How `tokens` are cut into micro-batches (parallel.schedule.split_micro_batches)."""
        return dict(micro_batch_size=self.cfg.micro_batch_size, micro_batch_tokens=self.cfg.micro_batch_tokens,
                    lengths=lengths, seq_multiple=FP8_SEQ_MULTIPLE if self.cfg.fp8 else 1)

    def logprobs(self, tokens: torch.Tensor, *, with_entropy: bool = False, reference: bool = False,
                 lengths: torch.Tensor | None = None):
        """Per-token log-probs [B, T-1] of `tokens` [B, T] (replica-local rows), on every rank.
        lengths: [B] real tokens per row (lets micro_batch_tokens pack rows)."""
        model = self.reference if reference else self.model
        if reference and model is None:
            raise RuntimeError(f"{self.name} model has no reference copy (algorithm.kl_beta is 0)")
        model.eval()
        return forward_logprobs(model, self.layout, tokens, with_entropy=with_entropy,
                                **self._micro_batching(lengths))

    def update(self, tokens: torch.Tensor, loss_fn: LossFn, *, with_entropy: bool = False,
               lr: float | None = None, lengths: torch.Tensor | None = None,
               batch_metrics: dict | None = None) -> dict:
        """One optimizer step on `tokens` [B, T] with the per-micro-batch `loss_fn` (see train_step).

        lr: None steps the RL schedule (the step runs at its current value, then it advances);
        a number runs this step at `lr` and leaves the schedule where it is (the warm start).
        lengths: [B] real tokens per row; batch_metrics: reported with the step's (see train_step).
        """
        if self.optimizer is None:
            raise RuntimeError(f"{self.name} model is frozen in this mode")
        if lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.model.train()
        return train_step(self.model, self.optimizer, self.layout, tokens, loss_fn,
                          scheduler=self.scheduler if lr is None else None, with_entropy=with_entropy,
                          batch_metrics=batch_metrics, **self._micro_batching(lengths))

    def reset_optimizer(self) -> None:
        """Forget Adam moments and return to the start of the RL schedule (after a warm start).

        The warm start never advances the schedule (see `update(lr=...)`); the rewind also covers a
        schedule stepped by anything else before RL, so RL step k always runs at the schedule's value k.
        """
        for sub in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
            sub.optimizer.state.clear()
        self.scheduler.num_steps = 0
        self.scheduler.step(increment=0)

    def reset_reference(self) -> None:
        """Make the frozen KL reference a copy of the current weights (after a warm start)."""
        if self.reference is not None:
            self.reference.load_state_dict(self.module.state_dict())

    def freeze(self) -> None:
        """Drop the optimizer of a model that learns only in the warm start (a frozen teacher)."""
        self.optimizer = self.scheduler = None
        self.trainable = False

    def export_hf(self, bucket_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """Full HF-named weights in buckets, on every rank of the model group (collective)."""
        from megatron_codistill.convert.export import export_hf_weights

        return export_hf_weights(self.module, self.arch, tp_group=self.layout.tp_group,
                                 pp_group=self.layout.pp_group, bucket_bytes=bucket_bytes)

    def state_dict(self, *, saved: dict | None = None) -> dict:
        """This rank's state as a Megatron sharded state dict, for `dist_checkpointing.save` / `load`.

        Weights (and the KL reference's) are ShardedTensorFactories of the live parameters under
        layout-independent keys `<name>.<Megatron key>` (`reference.<name>.` for the reference); the
        optimizer's moments and main copies follow their parameters (`parallel.optimizer`); the
        schedule and what the state holds are plain values. Saved at one TP/PP/DP, it loads at any.
        saved: None to save; to load, the checkpoint's plain values of this model (`load_common`): a
        frozen model saved without optimizer state freezes this one.
        """
        holds = {"optimizer": self.optimizer is not None, "reference": self.reference is not None}
        if saved is not None:
            holds = self._check_saved(saved["holds"])
        state = {"holds": holds, "model": self._sharded(self.module, f"{self.name}.")}
        if holds["optimizer"]:
            state["optimizer"] = optim.sharded_state_dict(self.optimizer, self.scheduler, state["model"],
                                                          saved=None if saved is None else saved["optimizer"])
        if holds["reference"]:
            state["reference"] = self._sharded(self.reference, f"reference.{self.name}.")
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore from what `dist_checkpointing.load` returned for `state_dict(saved=...)`."""
        self._copy_into(self.module, state["model"])
        if "optimizer" in state:
            optim.load_sharded_state_dict(self.optimizer, self.scheduler, state["optimizer"])
        if "reference" in state:
            self._copy_into(self.reference, state["reference"])

    def _check_saved(self, saved: dict) -> dict:
        """What to load given what the checkpoint holds; a frozen teacher saved after its warm start has
        no optimizer state, and loading it freezes this one too."""
        if self.optimizer is not None and not saved["optimizer"]:
            if self.trainable:
                raise ValueError(f"the checkpoint has no optimizer state for the {self.name} model, "
                                 "which trains in this run")
            self.freeze()
        if self.reference is not None and not saved["reference"]:
            raise ValueError(f"the checkpoint has no KL reference of the {self.name} model, which this run "
                             "keeps (algorithm.kl_beta > 0); resume with the saved algorithm.kl_beta")
        return {"optimizer": self.optimizer is not None, "reference": self.reference is not None}

    def _sharded(self, module, prefix: str) -> dict:
        """{local parameter name: ShardedTensorFactory of the parameter} of `module` (this rank's chunk)."""
        from megatron_codistill.convert.mcore_ckpt import param_factory
        from megatron_codistill.convert.model_io import local_entries

        lay = self.layout
        names = [name for name, _ in unwrap(module).named_parameters()]
        return {name: param_factory(entry, param, key=prefix + entry.ckpt, num_layers=self.arch.num_layers,
                                    tp_rank=lay.tp_rank, tp=lay.tp, dp_rank=lay.dp_rank)
                for name, (param, entry) in zip(names, local_entries(module, self.arch, lay.tp), strict=True)}

    @staticmethod
    @torch.no_grad()
    def _copy_into(module, loaded: dict) -> None:
        for name, param in unwrap(module).named_parameters():
            if loaded[name].data_ptr() != param.data_ptr():
                param.copy_(loaded[name])


def load_weights(module, arch: ModelArch, layout: ModelLayout, path: str) -> None:
    """Fill this rank's shard from an HF checkpoint (dir or hub name) or a converted Megatron one."""
    from megatron_codistill.convert.live import load_checkpoint_into_model

    load_checkpoint_into_model(module, arch, path, tp_group=layout.tp_group)
