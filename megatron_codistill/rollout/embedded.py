"""An in-process rollout engine: a transformers causal LM sampling with a KV cache.

Legend: B prompts, G (= n) samples per prompt, R rows decoded together (<= max_batch_size),
T tokens, V vocab.

The engine is the CPU default and works on GPU too. Its weights are meant to arrive the way an
SGLang server's do, as (HF name, full tensor) pairs through `update_weights` (or the
begin / load / commit steps it is made of), so the trainer's export path is exercised on CPU.
A full sync must cover every parameter: a missing, unknown or mis-shaped tensor raises, and after a
failed sync the engine refuses to generate until a complete one succeeds.

Decoding: prompts are left padded; the attention mask hides the padding and position ids count
only real tokens, so every row sees exactly what it would see alone. Rows that finished keep being
fed a pad token (their outputs are dropped) until the whole chunk is done. Sampling follows
`rollout.sampling` (joint top-k / top-p, greedy reports temperature-1 log-probs).
"""

from __future__ import annotations

import difflib
import inspect
import logging
from collections.abc import Iterable
from pathlib import Path

import torch

from megatron_codistill.rollout.base import Rollout, RolloutEngine, SamplingParams
from megatron_codistill.rollout.sampling import next_tokens

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROMPT_OVERFLOW = ("error", "truncate_left")


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


class EmbeddedEngine(RolloutEngine):
    """Batched sampling from a transformers causal LM in the caller's process.

    Args:
        model: a transformers `*ForCausalLM` (moved to `device`, put in eval mode).
        pad_token_id: id fed at padded / finished positions (always masked out).
        max_batch_size: rows (prompt x sample) decoded together.
        max_context: prompt + response tokens per row; defaults to `max_position_embeddings`.
        prompt_overflow: "error" raises for a prompt longer than `max_context - 1`;
            "truncate_left" keeps its last `max_context - 1` tokens (and says so in the log).
            The returned `Rollout.prompt_ids` is the prompt the model actually saw.
        device: where the model runs.
        use_kv_cache: False recomputes the whole prefix every step (reference / benchmark only).
        seed: seed of the engine's own generator, used when `SamplingParams.seed` is None.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        pad_token_id: int,
        max_batch_size: int = 64,
        max_context: int | None = None,
        prompt_overflow: str = "error",
        device: str | torch.device = "cpu",
        use_kv_cache: bool = True,
        seed: int | None = None,
    ) -> None:
        if prompt_overflow not in PROMPT_OVERFLOW:
            raise ValueError(f"prompt_overflow {prompt_overflow!r} is not one of {list(PROMPT_OVERFLOW)}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size ({max_batch_size}) must be >= 1")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        config = model.config
        self.vocab_size: int = config.vocab_size
        self.max_context: int = max_context or config.max_position_embeddings
        if self.max_context < 2:
            raise ValueError(f"max_context ({self.max_context}) must be >= 2 (one prompt and one new token)")
        self.pad_token_id = pad_token_id
        self.max_batch_size = max_batch_size
        self.prompt_overflow = prompt_overflow
        self.use_kv_cache = use_kv_cache
        self._generator = torch.Generator(self.device)
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)
        self._logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        # Every accepted HF name -> canonical parameter name (tied weights share one canonical name).
        canonical = {id(p): n for n, p in model.named_parameters()}
        self._params = dict(model.named_parameters())
        self._alias = {n: canonical[id(p)] for n, p in model.named_parameters(remove_duplicate=False)}
        self._version = 0
        self._pending: set[str] | None = None  # canonical names still missing in the open sync
        self._received: dict[str, torch.Tensor] = {}
        self._unusable: str | None = None  # why generation is refused, if it is

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype: str = "fp32", device: str = "cpu", **kw
    ) -> EmbeddedEngine:
        """Load an HF checkpoint (local directory or hub name) and wrap it."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=resolve_dtype(dtype))
        kw.setdefault("pad_token_id", default_pad_token_id(model.config))
        return cls(model, device=device, **kw)

    @classmethod
    def from_config(cls, hf_config, dtype: str = "fp32", device: str = "cpu", **kw) -> EmbeddedEngine:
        """Random weights of the architecture in `hf_config`; generation waits for a first full sync."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(hf_config, dtype=resolve_dtype(dtype))
        kw.setdefault("pad_token_id", default_pad_token_id(hf_config))
        engine = cls(model, device=device, **kw)
        engine._unusable = "its weights are random (built from a config): run a full weight sync first"
        return engine

    # ---------------------------------------------------------------- weights

    @property
    def version(self) -> int:
        return self._version

    def expected_weight_names(self) -> list[str]:
        """Canonical HF names a full sync must cover (a tied lm_head counts as its embedding)."""
        return list(self._params)

    def begin_weight_update(self) -> None:
        """Open a sync: from now until `commit_weight_update`, every parameter must arrive once."""
        self._pending = set(self._params)
        self._received = {}

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy one bucket into the model (inside an open sync). Returns the number of tensors."""
        if self._pending is None:
            raise RuntimeError("load_weights outside a sync: call begin_weight_update() first")
        count = 0
        try:
            for name, tensor in named_tensors:
                self._load_one(name, tensor)
                count += 1
        except Exception:
            self._unusable = "a weight sync failed part way; its weights are mixed: run a full sync"
            self._pending = None
            raise
        return count

    def commit_weight_update(self, version: int) -> None:
        """Close the sync; raises (and keeps the engine unusable) if any parameter did not arrive."""
        if self._pending is None:
            raise RuntimeError("commit_weight_update without begin_weight_update")
        missing, self._pending, self._received = sorted(self._pending), None, {}
        if missing:
            self._unusable = f"the sync to version {version} missed {len(missing)} parameters"
            raise ValueError(
                f"weight sync to version {version} is incomplete: {len(missing)} of {len(self._params)} "
                f"parameters never arrived, e.g. {missing[:5]}"
            )
        self._version = version
        self._unusable = None

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """A full sync in one call: begin, load every (HF name, full tensor), commit."""
        self.begin_weight_update()
        self.load_weights(named_tensors)
        self.commit_weight_update(version)

    def update_weights_from_disk(self, model_path: str | Path, version: int) -> None:
        """A full sync from the `*.safetensors` files of an HF checkpoint directory."""
        from safetensors import safe_open

        files = sorted(Path(model_path).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors file in {model_path}")
        self.begin_weight_update()
        for f in files:
            with safe_open(str(f), framework="pt") as handle:
                self.load_weights((k, handle.get_tensor(k)) for k in handle.keys())
        self.commit_weight_update(version)

    def _load_one(self, name: str, tensor: torch.Tensor) -> None:
        canonical = self._alias.get(name)
        if canonical is None:
            close = difflib.get_close_matches(name, list(self._alias), n=3)
            raise KeyError(f"unknown weight {name!r} for {type(self.model).__name__}; closest: {close}")
        param = self._params[canonical]
        if tuple(tensor.shape) != tuple(param.shape):
            raise ValueError(
                f"weight {name!r} has shape {tuple(tensor.shape)}, the model expects {tuple(param.shape)}"
            )
        if canonical in self._received:
            # A tied weight sent under both names must be the same tensor both times.
            if not torch.equal(self._received[canonical], tensor.to(param.device, param.dtype)):
                raise ValueError(f"weight {name!r} is tied to {canonical!r} but arrived with other values")
            return
        with torch.no_grad():
            param.copy_(tensor)
        self._received[canonical] = param.detach()
        self._pending.discard(canonical)

    # ---------------------------------------------------------------- generation

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> list[list[Rollout]]:
        """Sample `n` responses per prompt; returns [B][n] rollouts in prompt order."""
        self._check_usable()
        if n < 1:
            raise ValueError(f"n ({n}) must be >= 1")
        fitted = [self._fit_prompt(i, p) for i, p in enumerate(prompts)]
        rows = [p for p in fitted for _ in range(n)]
        generator = self._generator
        if sampling.seed is not None:
            generator = torch.Generator(self.device).manual_seed(sampling.seed)
        flat: list[Rollout] = []
        for start in range(0, len(rows), self.max_batch_size):
            flat.extend(self._generate_chunk(rows[start : start + self.max_batch_size], sampling, generator))
        return [flat[b * n : (b + 1) * n] for b in range(len(prompts))]

    @torch.inference_mode()
    def _generate_chunk(
        self, prompts: list[list[int]], sp: SamplingParams, generator: torch.Generator
    ) -> list[Rollout]:
        R, L = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((R, L), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(R, L, dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, L - len(p) :] = torch.tensor(p)
            mask[r, L - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        budget = [min(sp.max_new_tokens, self.max_context - len(p)) for p in prompts]
        stop = set(sp.stop_token_ids)
        tokens: list[list[int]] = [[] for _ in range(R)]
        logprobs: list[list[float]] = [[] for _ in range(R)]
        finish = ["length"] * R
        done = [False] * R
        logits, cache = self._forward(ids, mask, pos, None)
        for _ in range(max(budget)):
            new, lp = next_tokens(logits, sp.temperature, sp.top_k, sp.top_p, generator)
            for r, (tok, val) in enumerate(zip(new.tolist(), lp.tolist())):
                if done[r]:
                    continue
                tokens[r].append(tok)
                logprobs[r].append(val)
                if tok in stop:
                    finish[r], done[r] = "stop", True
                elif len(tokens[r]) >= budget[r]:
                    done[r] = True
            if all(done):
                break
            feed = new.masked_fill(torch.tensor(done, device=self.device), self.pad_token_id)[:, None]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = torch.cat([pos, pos[:, -1:] + 1], dim=1)
            if self.use_kv_cache:
                logits, cache = self._forward(feed, mask, pos[:, -1:], cache)
            else:
                ids = torch.cat([ids, feed], dim=1)
                logits, _ = self._forward(ids, mask, pos, None)
        return [
            Rollout(list(p), t, lp, f, weight_version=self._version)
            for p, t, lp, f in zip(prompts, tokens, logprobs, finish)
        ]

    def _forward(self, ids, mask, pos, cache):
        """Logits of the last position [R, V] and the updated KV cache (None without one)."""
        kw = {"logits_to_keep": 1} if self._logits_to_keep else {}
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=pos,
            past_key_values=cache, use_cache=self.use_kv_cache, **kw,
        )
        return out.logits[:, -1], (out.past_key_values if self.use_kv_cache else None)

    @torch.inference_mode()
    def score(self, token_ids: list[list[int]]) -> list[list[float]]:
        """Temperature-1 log-probs of tokens 1..T-1 of each sequence ([B][T_b - 1]), full recompute."""
        self._check_usable()
        out: list[list[float]] = []
        for start in range(0, len(token_ids), self.max_batch_size):
            chunk = token_ids[start : start + self.max_batch_size]
            for i, seq in enumerate(chunk):
                self._check_tokens(start + i, seq, what="sequence")
                if len(seq) > self.max_context:
                    raise ValueError(
                        f"sequence {start + i} has {len(seq)} tokens, "
                        f"more than max_context {self.max_context}"
                    )
            T = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), T), self.pad_token_id, dtype=torch.long)
            mask = torch.zeros(len(chunk), T, dtype=torch.long)
            for r, s in enumerate(chunk):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
            lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            out.extend(lp[r, : len(s) - 1].tolist() for r, s in enumerate(chunk))
        return out

    # ---------------------------------------------------------------- checks

    def _check_usable(self) -> None:
        if self._pending is not None:
            raise RuntimeError("a weight sync is open (begin_weight_update without commit); cannot generate")
        if self._unusable is not None:
            raise RuntimeError(f"EmbeddedEngine cannot generate: {self._unusable}")

    def _check_tokens(self, index: int, ids: list[int], what: str = "prompt") -> None:
        if len(ids) == 0:
            raise ValueError(f"{what} {index} is empty")
        lo, hi = min(ids), max(ids)
        if lo < 0 or hi >= self.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{what} {index} holds token id {bad}, outside the vocabulary [0, {self.vocab_size})"
            )

    def _fit_prompt(self, index: int, prompt: list[int]) -> list[int]:
        """The prompt as the model will see it: checked, and left-truncated if so configured."""
        self._check_tokens(index, prompt)
        room = self.max_context - 1  # at least one new token must fit
        if len(prompt) <= room:
            return list(prompt)
        if self.prompt_overflow == "error":
            raise ValueError(
                f"prompt {index} has {len(prompt)} tokens; max_context {self.max_context} leaves room for at "
                f"most {room} prompt tokens (set prompt_overflow='truncate_left' to keep the last {room})"
            )
        logger.warning("prompt %d: %d tokens truncated on the left to %d", index, len(prompt), room)
        return list(prompt[-room:])

    def rng_state(self) -> dict:
        return {"generator": self._generator.get_state()}

    def set_rng_state(self, state: dict) -> None:
        if "generator" in state:
            self._generator.set_state(state["generator"])

    def shutdown(self) -> None:
        """Nothing to release beyond the model, which the caller owns."""


def default_pad_token_id(hf_config) -> int:
    """Pad id for an HF config: its pad id, else its (first) EOS id, else 0. Padding is always masked."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(hf_config, attr, None)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0
