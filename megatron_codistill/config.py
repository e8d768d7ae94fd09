"""The run configuration: one YAML file -> a typed tree of dataclasses.

Every field has a docstring; `codistill config show FILE` prints the resolved tree. Loading checks
unknown keys, types and enumerations (`ConfigError` names the key, the value and what is valid);
`validate(cfg, world_size)` then checks what spans components (layouts vs heads and world size, batch
vs ranks) before any compute. Stdlib only, so every layer may read it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from megatron_codistill.config_loader import ConfigError, apply_overrides, from_dict, to_dict

__all__ = ["Config", "ConfigError", "load_config", "validate", "to_yaml"]


@dataclass
class OptimizerConfig:
    """Adam with warmup and decay (Megatron's optimizer and OptimizerParamScheduler)."""

    lr: float = 1e-6
    """Peak learning rate."""
    min_lr: float = 0.0
    """Learning rate at the end of the decay."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.999
    """Adam beta2."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    clip_grad: float = 1.0
    """Global gradient-norm clip; 0 disables clipping."""
    warmup_steps: int = 0
    """Linear warmup, in optimizer steps."""
    decay_style: Literal["constant", "linear", "cosine"] = "constant"
    """Decay after warmup, over the run's optimizer steps."""
    use_distributed_optimizer: bool = False
    """Shard optimizer states over data-parallel ranks (Megatron distributed optimizer)."""


@dataclass
class ModelConfig:
    """One of the two models. The architecture comes from `hf_config` or `arch` (exactly one)."""

    hf_config: str | None = None
    """Hugging Face config: a local directory / config.json or a hub name (read offline from the cache)."""
    arch: dict[str, Any] | None = None
    """Inline architecture: fields of `models.arch.ModelArch` (family, hidden_size, num_layers, ...)."""
    checkpoint: str | None = None
    """Initial weights: an HF checkpoint directory or hub name, or a converted Megatron checkpoint.
    None starts from random weights (tests, the tiny example's pretraining)."""
    tokenizer: str | None = None
    """Tokenizer directory or hub name; defaults to `checkpoint`, then `hf_config`."""
    tensor_parallel: int = 1
    """Tensor-parallel size (the small model must stay at 1: it is data parallel)."""
    pipeline_parallel: int = 1
    """Pipeline-parallel size (the small model must stay at 1)."""
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Parameter dtype. bf16/fp16 keep fp32 master weights in the optimizer."""
    fp8: str | None = None
    """Transformer Engine FP8 format ("e4m3" or "hybrid"); needs Transformer Engine and a GPU."""
    transformer_impl: Literal["auto", "local", "transformer_engine"] = "auto"
    """Layer implementation; auto = Transformer Engine when it and CUDA are present, else local."""
    micro_batch_size: int = 8
    """Sequences per forward/backward micro-batch (gradient accumulation over micro-batches)."""
    micro_batch_tokens: int | None = None
    """Token budget per micro-batch instead of micro_batch_size: rows of similar length are packed while
    rows x longest row <= budget, each micro-batch cut to its longest row (less padding; the loss,
    gradients and metrics are the same). Must hold the longest sequence. None = micro_batch_size rows."""
    recompute: Literal["none", "selective", "full"] = "none"
    """Activation recomputation (Megatron-Core): none; selective = core attention; full = whole layers."""
    recompute_method: Literal["uniform", "block"] | None = None
    """Full recompute only: uniform (default) checkpoints every recompute_num_layers layers; block
    recomputes the first recompute_num_layers layers of each pipeline stage and keeps the rest."""
    recompute_num_layers: int | None = None
    """Full recompute only: layers per checkpointed chunk (uniform, default 1) or recomputed layers per
    pipeline stage (block, default all)."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Optimizer and schedule of this model."""


@dataclass
class SamplingConfig:
    """How the rollout engine samples (see rollout.base.SamplingParams)."""

    temperature: float = 1.0
    """Softmax temperature; 0 is greedy."""
    top_p: float = 1.0
    """Nucleus mass in (0, 1]."""
    top_k: int = 0
    """Top-k; 0 disables it."""
    max_new_tokens: int = 1024
    """Maximum response length in tokens."""
    stop: list[str] = field(default_factory=list)
    """Extra stop strings, each a single token of the tokenizer (EOS always stops)."""


@dataclass
class SGLangConfig:
    """SGLang servers: attach to `urls`, or launch `num_servers` of them."""

    urls: list[str] = field(default_factory=list)
    """Running servers (http://host:port). Empty with launch=true starts servers here."""
    launch: bool = False
    """Start `python -m sglang.launch_server` subprocesses on this node."""
    num_servers: int = 1
    """Servers to launch."""
    tp: int = 1
    """Tensor parallel size of each launched server."""
    mem_fraction: float = 0.6
    """`--mem-fraction-static` of each launched server."""
    base_port: int = 30000
    """Port of the first launched server; the next ones count up."""
    extra_args: list[str] = field(default_factory=list)
    """More command-line arguments for launch_server."""
    timeout_s: float = 600.0
    """HTTP timeout of one request."""
    retries: int = 2
    """Retries of a failed request before the server is declared dead."""
    weight_group_address: str = ""
    """Address of the trainer's global rank 0 that the servers dial for `weight_sync: nccl`; empty =
    MASTER_ADDR unless it is a loopback name (slurm/codistill.sbatch exports the first trainer host),
    else this host's address on the route to the first server. Never gethostname()'s 127.0.1.1."""


@dataclass
class RolloutConfig:
    """Rollout generation (only the small model generates, except in `grpo` on the large model)."""

    engine: Literal["embedded", "sglang"] = "embedded"
    """embedded: transformers in the trainer process (CPU default); sglang: HTTP servers."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Training-time sampling."""
    max_prompt_length: int = 1024
    """Prompts longer than this (tokens) are handled by `prompt_overflow`."""
    prompt_overflow: Literal["error", "truncate_left"] = "error"
    """What to do with a prompt over max_prompt_length."""
    max_batch_size: int = 64
    """Sequences sampled at once by the embedded engine."""
    worker_process: bool = False
    """Run the embedded engine in a rollout worker process of its own, so that generation overlaps
    training (`scheduler.mode` overlap / async); false keeps it in the trainer process."""
    worker_threads: int = 1
    """Torch threads of the rollout worker process."""
    weight_sync: Literal["auto", "direct", "disk", "nccl"] = "auto"
    """How new weights reach the engine; auto = direct for embedded, disk for sglang."""
    bucket_mb: float = 512.0
    """Weight-sync bucket size in MB."""
    sync_dir: str = ""
    """Directory for `disk` syncs, visible to the servers; empty = <run.dir>/weight_sync."""
    verify_sync: bool = False
    """After each sync, check engine log-probs on a probe batch equal the trainer's."""
    verify_atol: float = 1e-3
    """Tolerance of that check (nats)."""
    sglang: SGLangConfig = field(default_factory=SGLangConfig)
    """SGLang servers."""


@dataclass
class SFTConfig:
    """Chain-of-thought distillation warm start (mode = sft)."""

    file: str | None = None
    """JSONL of {prompt, response} to fine-tune on; None = the teacher (large model) samples them."""
    samples_per_problem: int = 4
    """Teacher samples per problem; correct ones are kept."""
    temperature: float = 0.7
    """Teacher sampling temperature."""
    epochs: int = 1
    """Passes over the kept solutions."""
    train_large: bool = False
    """Also fine-tune the large model on the same data (warm start of both models)."""


@dataclass
class WarmStartConfig:
    """Supervised warm start on the training set's gold solutions before RL (fresh runs only).

    Used by the tiny example so that rewards are not all zero at the first RL step; real runs start
    from pretrained checkpoints and leave both step counts at 0.
    """

    small_steps: int = 0
    """Supervised steps of the small model (0 skips it)."""
    large_steps: int = 0
    """Supervised steps of the large model (0 skips it)."""
    small_lr: float = 3e-3
    """Peak learning rate of the small model's warm start (cosine decay to min_lr_ratio of it)."""
    large_lr: float = 3e-3
    """Peak learning rate of the large model's warm start (cosine decay to min_lr_ratio of it)."""
    min_lr_ratio: float = 0.0
    """The warm start's last learning rate as a fraction of its peak: 0 anneals to 0, 1 keeps the peak
    (e.g. a warm start that ends at the rate RL starts at)."""
    batch_size: int = 64
    """Sequences per warm-start step (split over data-parallel ranks)."""
    data: str | None = None
    """Problems with gold solutions to imitate (read with `data.preset`); None = `data.train`. A warm
    start on other (e.g. easier) data than RL is how SFT then RL usually goes."""
    checkpoint_every: int = 100
    """Checkpoint the warm start's progress every N of its steps (a signal also checkpoints it); 0 = only
    on a signal."""


@dataclass
class AlgorithmConfig:
    """CoDistill-GRPO and its baselines (DESIGN §2). Defaults follow the paper."""

    mode: Literal["codistill", "grpo", "opd", "kd_grpo", "sft"] = "codistill"
    """codistill: both models learn; grpo: one model on its own rollouts; opd: small model, KD reward only,
    frozen large; kd_grpo: small model, KD + task reward, frozen large; sft: CoT distillation."""
    grpo_model: Literal["small", "large"] = "small"
    """Which model `grpo` trains (it also generates)."""
    group_size: int = 8
    """G, rollouts per prompt."""
    prompts_per_step: int = 32
    """Prompts sampled per step."""
    epochs_per_step: int = 1
    """Passes over the step's rollouts."""
    mini_batches: int = 1
    """Optimizer steps per pass (the rollouts split into this many mini-batches)."""
    advantage_std: bool = True
    """Divide by the group std (GRPO); false for Dr.GRPO."""
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"
    """Loss aggregation: token mean over the batch, per-sequence mean then mean, Dr.GRPO sum/(G*L_max)."""
    clip_eps_low: float = 0.2
    """Lower clip: ratio >= 1 - eps_low."""
    clip_eps_high: float = 0.2
    """Upper clip: ratio <= 1 + eps_high (DAPO clip-higher: 0.28)."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 for negative advantages; None disables it."""
    ratio: Literal["token", "gspo", "gspo_token"] = "token"
    """Importance ratio: per token, GSPO sequence ratio, or GSPO's token variant."""
    kl_beta: float = 0.0
    """Weight of the KL to a frozen reference copy of the trained model; 0 keeps no reference."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """KL estimator."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose task rewards are all equal."""
    overlong_buffer: int = 0
    """DAPO soft over-length penalty: tokens before max_new_tokens where the penalty ramps; 0 disables."""
    overlong_penalty: float = 1.0
    """Penalty at max_new_tokens."""
    kd_alpha: float = 0.5
    """alpha: weight of the clipped sequence KD reward in the small model's reward."""
    kd_kappa: float = 10.0
    """kappa: the KD reward is clipped to [-kappa, kappa]."""
    kd_reduction: Literal["mean", "sum"] = "mean"
    """KD_i = mean (or sum) over o_i of d_it = l^L - l^S."""
    kd_token_alpha: float = 0.0
    """Token-level variant: A_it += kd_token_alpha * d_it after whitening; 0 disables it."""
    kd_reference: Literal["none", "gold", "teacher"] = "none"
    """Reference-conditioned ("ghost response") KD: the large model scores the small model's rollouts with a
    reference solution in its context (`kd_context`) for the small model's KD term; gold: the training row's
    solution; teacher: a large-model sample the verifier accepts (needs rollout.engine=embedded); none: off.
    The large model's own update keeps its unconditioned log-probs."""
    kd_context: str = "Reference solution:\n{reference}\n\n{prompt}"
    """The teacher's context with kd_reference: {reference} and {prompt} (the rollout's own prompt tokens),
    once each; the literal text around them is tokenised without special tokens."""
    kd_teacher_samples: int = 4
    """kd_reference=teacher: large-model samples per prompt per step; the first the verifier accepts is the
    reference (none accepted: that prompt's rollouts keep the plain teacher)."""
    supervision: Literal["outcome", "process"] = "outcome"
    """outcome: one task reward per rollout; process (DeepSeekMath): a reward per reasoning step (cut by
    `step_delimiters`) from the exact checker or `reward.process_model`, normalised over the group's steps,
    A_it = sum of normalised step rewards at or after t. For the generator's GRPO and the large model's
    importance-weighted update; the small model's KD reward is whitened on its own and added."""
    step_delimiters: list[str] = field(default_factory=lambda: ["\n\n"])
    """supervision=process: strings that end a reasoning step (the text after the last one is the final
    step); the arithmetic task's steps end with "," and ";"."""
    pods_n: int | None = None
    """PODS: draw pods_n > G rollouts per prompt, keep the G with the largest reward variance."""
    is_weight: Literal["token_tis", "token_mis", "seq_geo", "seq_mis"] = "token_tis"
    """Large model's importance weight for small-model rollouts."""
    is_cap: float = 2.0
    """C: truncation cap (TIS) or mask bound [1/C, C] (MIS)."""
    is_seq_cap: float = 2.0
    """C_s: sequence-MIS bound."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Settings of mode = sft."""


@dataclass
class RetrainConfig:
    """Iterative RL (DeepSeekMath): the learned reward model in use (`reward.model`, or `reward.process_model`
    with supervision=process) is retrained in the job on the newest rollouts labelled by the verifier."""

    every: int = 0
    """Train the reward model every N RL steps on the rollouts since its last round; 0 = never."""
    replay_frac: float = 0.1
    """Fraction of each round's examples drawn from older labelled rollouts (replay), in [0, 1)."""
    buffer_size: int = 4096
    """Older labelled rollouts kept for replay (the oldest are dropped)."""
    epochs: int = 1
    """Passes over each round's examples."""
    batch_size: int = 32
    """Examples per Adam step."""
    lr: float = 1e-4
    """Learning rate of the reward model's Adam (no weight decay)."""
    reset_reference: bool = False
    """After each round, reset the KL reference of every trained model to its current weights (needs
    algorithm.kl_beta > 0)."""


@dataclass
class RewardConfig:
    """Task reward."""

    kind: Literal["math", "arith", "plugin", "model"] = "math"
    """math: math-verify on extracted answers; arith: exact match of the tiny task; plugin: `plugin`;
    model: the learned outcome reward model `model` (the rollouts are still labelled by `verifier`)."""
    model: str | None = None
    """kind=model: an HF sequence-classification checkpoint (directory or hub name; a directory with only a
    config.json starts from fresh weights) reading the policies' token ids; its score is the log-odds that
    the rollout is correct and the task reward is correct * sigmoid(score)."""
    verifier: Literal["math", "arith", "plugin"] = "math"
    """kind=model: the rule-based reward that labels rollouts (reward-model retraining, the generator's
    task_reward metric, evaluation accuracy, kd_reference=teacher)."""
    process_model: str | None = None
    """algorithm.supervision=process: an HF token-classification checkpoint whose score at a step's last token
    is the log-odds that the step is right (step reward: its sigmoid); None = the exact step checker, each
    step against the gold solution's (the arithmetic task, whose worked steps are unique)."""
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    """Iterative RL: retraining of the learned reward model during the run."""
    correct: float = 1.0
    """Reward of a correct answer."""
    format_think: float = 0.0
    """Bonus for a closing </think> tag (paper: 0.25 with the R1-Zero template)."""
    format_answer: float = 0.0
    """Bonus for a closing </answer> tag (paper: 0.25)."""
    timeout_s: float = 5.0
    """Per-answer verification budget in CPU seconds of the verifier worker (so a loaded machine gives the
    verdicts of an idle one); a worker also gets at most 10x that in wall-clock time."""
    workers: int = 2
    """Verification worker processes."""
    plugin: str | None = None
    """Import path "package.module:function" of a user reward (kind = plugin)."""


@dataclass
class EvalSetConfig:
    """One held-out benchmark."""

    name: str = "heldout"
    """Name used in metric keys (eval/<name>/accuracy)."""
    path: str = ""
    """Local jsonl/json/parquet file or hub name. Read and checked when the run is built (before the warm
    start), by the loader `codistill eval` uses."""
    preset: str = "math"
    """Field preset (see data presets): gsm8k, math, math500, minerva, aime24, amc23, olympiadbench, arith."""
    limit: int | None = None
    """Evaluate on the first `limit` problems only."""
    prompt_field: str | None = None
    """Override of the preset's problem field for this set (data.prompt_field is the training set's)."""
    answer_field: str | None = None
    """Override of the preset's answer field for this set (a list-valued field is joined as the gold)."""


@dataclass
class DataConfig:
    """Training prompts and held-out evaluation sets."""

    train: str = ""
    """Local jsonl/json/parquet file or hub name."""
    train_limit: int | None = None
    """Use only the first N rows of data.train (quick runs); None: every row."""
    split: str = "train"
    """Split of a hub dataset."""
    preset: str = "math"
    """Field preset: gsm8k, math, minerva, arith (the tiny task), ..."""
    template: str = "r1_zero"
    """Prompt template: r1_zero, boxed, chat, plain."""
    prompt_field: str | None = None
    """Override of the preset's prompt field."""
    answer_field: str | None = None
    """Override of the preset's reference-answer field."""
    max_prompt_tokens: int | None = None
    """Drop training prompts longer than this (tokens)."""
    shuffle_seed: int | None = None
    """Seed of the shuffled epochs; None = run.seed (so the seeds of a study see different prompt orders)."""
    eval: list[EvalSetConfig] = field(default_factory=list)
    """Held-out sets evaluated every run.eval_every steps."""


@dataclass
class CheckpointConfig:
    """Checkpoints of both models, optimizers, schedules, RNG states and the data cursor."""

    every: int = 50
    """Save every N steps (and always at the end and on SIGTERM/SIGUSR1); 0 = only then."""
    keep_last: int = 2
    """Complete checkpoints kept; older ones are deleted after a new one is complete."""
    export_hf: bool = False
    """Also write both models as Hugging Face checkpoints at each save."""


@dataclass
class LoggingConfig:
    """Metrics: JSONL always; TensorBoard and W&B optional."""

    tensorboard: bool = True
    """Write TensorBoard event files under <run.dir>/tensorboard."""
    wandb_project: str | None = None
    """Weights & Biases project; None disables W&B."""
    wandb_run_name: str | None = None
    """W&B run name (defaults to the run directory's name)."""
    progress: bool = True
    """Progress bar with ETA on rank 0."""
    plots: bool = True
    """Draw PNG curves under <run.dir>/plots at the end of training (`codistill plot` draws them later)."""


@dataclass
class RunConfig:
    """The job."""

    dir: str = "runs/codistill"
    """Run directory: metrics.jsonl, checkpoints/, config.yaml, plots."""
    steps: int = 100
    """RL (or SFT) steps."""
    seed: int = 1234
    """Seed of weights init, sampling and data order."""
    eval_every: int = 0
    """Evaluate on data.eval every N steps (and at the end); 0 disables it."""
    eval_greedy: bool = True
    """Report greedy accuracy (eval/<set>/<model>_accuracy)."""
    eval_sampled: bool = False
    """Also report accuracy under the training sampling (eval/<set>/<model>_sampled_accuracy)."""
    eval_models: list[str] = field(default_factory=lambda: ["small", "large"])
    """Models to evaluate (of those the mode builds)."""


@dataclass
class SchedulerConfig:
    """What may run at the same time within and across RL steps (DESIGN §2, "Schedules of the step")."""

    mode: Literal["sequential", "overlap", "async"] = "overlap"
    """sequential: generate, reward, score, update small, update large, push weights, one after another.
    overlap: the large update of step t runs while step t+1 is generated with the small model's new
    weights; every input equals the sequential order's, so results are identical. async: generation also
    runs ahead of the small update, on weights at most `max_staleness` versions old (off-policy)."""
    max_staleness: int = 1
    """async: how many weight versions a rollout may lag behind the small model it trains (k >= 0;
    0 is the sequential order)."""
    behaviour_weight_cap: float = 2.0
    """async: cap of the small model's proximal/behaviour importance weight on stale rollouts."""


@dataclass
class Config:
    """Everything one `codistill train` run needs."""

    run: RunConfig = field(default_factory=RunConfig)
    """The job."""
    large: ModelConfig = field(default_factory=ModelConfig)
    """The large model (TP x PP, DP over the rest); never decodes in codistill mode."""
    small: ModelConfig = field(default_factory=ModelConfig)
    """The small model (data parallel over all ranks); writes every rollout."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Rollout engine."""
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    """Objectives and mode."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Task reward."""
    data: DataConfig = field(default_factory=DataConfig)
    """Prompts and evaluation sets."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpointing."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Metrics sinks."""
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    """Optional supervised warm start before RL."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    """The order and overlap of the phases of RL steps."""


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read YAML `path`, apply `section.key=value` overrides, return the typed tree (no layout checks)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [])
    base = path.parent.resolve()
    cfg = from_dict(Config, raw, where=str(path))
    _resolve_paths(cfg, base)
    return cfg


def _resolve_paths(cfg: Config, base: Path) -> None:
    """Paths in the YAML that start with ./ or ../ are relative to the YAML file."""

    def fix(p: str | None) -> str | None:
        if p and (p.startswith("./") or p.startswith("../")):
            return str((base / p).resolve())
        return p

    for m in (cfg.large, cfg.small):
        m.hf_config, m.checkpoint, m.tokenizer = fix(m.hf_config), fix(m.checkpoint), fix(m.tokenizer)
    cfg.data.train = fix(cfg.data.train) or ""
    cfg.warm_start.data = fix(cfg.warm_start.data)
    for e in cfg.data.eval:
        e.path = fix(e.path) or ""
    cfg.algorithm.sft.file = fix(cfg.algorithm.sft.file)
    cfg.reward.model, cfg.reward.process_model = fix(cfg.reward.model), fix(cfg.reward.process_model)


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (what `codistill config show` prints and runs save)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def validate(cfg: Config, world_size: int) -> None:
    """Cross-component checks, before any compute. Raises ConfigError naming key, value and fix."""
    for name in ("large", "small"):
        m: ModelConfig = getattr(cfg, name)
        _check(
            (m.hf_config is not None) + (m.arch is not None) == 1
            or (m.hf_config is None and m.arch is None and m.checkpoint is not None),
            f"{name}: give exactly one of {name}.hf_config or {name}.arch "
            f"(or only {name}.checkpoint), got hf_config={m.hf_config!r}, arch={m.arch!r}",
        )
        for key in ("tensor_parallel", "pipeline_parallel", "micro_batch_size"):
            _check(getattr(m, key) >= 1, f"{name}.{key} ({getattr(m, key)}) must be >= 1")
        for key in ("checkpoint", "hf_config", "tokenizer"):
            _check_location(getattr(m, key), f"{name}.{key}")
    _check(
        cfg.small.tensor_parallel == 1 and cfg.small.pipeline_parallel == 1,
        f"small.tensor_parallel ({cfg.small.tensor_parallel}) and small.pipeline_parallel "
        f"({cfg.small.pipeline_parallel}) must be 1: the small model is data parallel over all ranks",
    )
    tp, pp = cfg.large.tensor_parallel, cfg.large.pipeline_parallel
    _check(
        world_size % (tp * pp) == 0,
        f"world size ({world_size}) must be divisible by large.tensor_parallel * large.pipeline_parallel "
        f"({tp} * {pp} = {tp * pp}); valid world sizes are multiples of {tp * pp}",
    )
    for name in ("large", "small"):
        m = getattr(cfg, name)
        arch = model_arch(m, name)
        try:
            arch.validate_layout(m.tensor_parallel, m.pipeline_parallel)
            _check_recompute(m, arch.num_layers // m.pipeline_parallel)
        except ValueError as e:
            raise ConfigError(f"{name}: {e}") from None
        longest = cfg.rollout.max_prompt_length + cfg.rollout.sampling.max_new_tokens
        _check(m.micro_batch_tokens is None or m.micro_batch_tokens >= longest,
               f"{name}.micro_batch_tokens ({m.micro_batch_tokens}) must hold the longest rollout: "
               f"rollout.max_prompt_length + sampling.max_new_tokens = {longest} tokens")
    a = cfg.algorithm
    _check(a.group_size >= 2, f"algorithm.group_size ({a.group_size}) must be >= 2: a group of one "
           "rollout has no baseline, its whitened advantage is always 0")
    _check(a.prompts_per_step >= 1, f"algorithm.prompts_per_step ({a.prompts_per_step}) must be >= 1")
    n_seq = a.prompts_per_step * a.group_size
    _check(
        a.prompts_per_step % world_size == 0,
        f"algorithm.prompts_per_step ({a.prompts_per_step}) must be divisible by the world size "
        f"({world_size}) so that every data-parallel rank gets whole groups",
    )
    dp_large = world_size // (tp * pp)
    _check(
        n_seq % (dp_large * a.mini_batches) == 0 and (n_seq // world_size) % a.mini_batches == 0,
        f"prompts_per_step * group_size ({n_seq}) must split evenly into algorithm.mini_batches "
        f"({a.mini_batches}) on each of the {world_size} small-model and {dp_large} large-model "
        "data-parallel ranks",
    )
    if a.pods_n is not None:
        _check(a.pods_n > a.group_size, f"algorithm.pods_n ({a.pods_n}) must exceed group_size "
               f"({a.group_size}): PODS keeps group_size of pods_n rollouts")
    _check(a.clip_eps_low >= 0 and a.clip_eps_high >= 0, "algorithm.clip_eps_low/high must be >= 0")
    _check(a.dual_clip is None or a.dual_clip > 1, f"algorithm.dual_clip ({a.dual_clip}) must be > 1")
    _check(a.is_cap >= 1 and a.is_seq_cap >= 1, f"algorithm.is_cap ({a.is_cap}) and is_seq_cap "
           f"({a.is_seq_cap}) must be >= 1")
    if cfg.reward.kind == "plugin":
        _check(bool(cfg.reward.plugin), "reward.kind is plugin but reward.plugin is empty; give "
               "'package.module:function'")
    _check(0.0 <= cfg.warm_start.min_lr_ratio <= 1.0,
           f"warm_start.min_lr_ratio ({cfg.warm_start.min_lr_ratio}) must be in [0, 1]")
    if a.mode in ("kd_grpo", "opd"):
        _check(bool(cfg.large.checkpoint) or cfg.warm_start.large_steps > 0,
               f"algorithm.mode={a.mode} keeps the large model frozen as the teacher, but it has no weights: "
               "set large.checkpoint (HF or converted Megatron checkpoint) or warm_start.large_steps > 0")
    _check(bool(cfg.data.train) or (a.mode == "sft" and bool(a.sft.file)),
           "data.train is empty: give a jsonl/json/parquet file or a hub dataset name")
    _check(cfg.data.train_limit is None or cfg.data.train_limit >= 1,
           f"data.train_limit ({cfg.data.train_limit}) must be >= 1 (or null for every row)")
    sc = cfg.scheduler
    _check(sc.max_staleness >= 0, f"scheduler.max_staleness ({sc.max_staleness}) must be >= 0")
    _check(sc.behaviour_weight_cap >= 1, f"scheduler.behaviour_weight_cap ({sc.behaviour_weight_cap}) must be >= 1")
    _check(cfg.rollout.worker_threads >= 1, f"rollout.worker_threads ({cfg.rollout.worker_threads}) must be >= 1")
    _check_objectives(cfg)
    if cfg.rollout.engine == "sglang":
        s = cfg.rollout.sglang
        _check(bool(s.urls) or s.launch, "rollout.engine is sglang: give rollout.sglang.urls or set "
               "rollout.sglang.launch=true")


def _check_objectives(cfg: Config) -> None:
    """Reference-conditioned KD, process supervision and learned reward models, before any compute."""
    a, r = cfg.algorithm, cfg.reward
    teacher_modes = ("codistill", "kd_grpo", "opd")
    if a.kd_reference != "none":
        _check(a.mode in teacher_modes, f"algorithm.kd_reference={a.kd_reference} conditions the large model's KD "
               f"scores, which mode {a.mode!r} has none of; use a mode of {list(teacher_modes)} or kd_reference=none")
        for name in ("prompt", "reference"):
            _check(a.kd_context.count("{" + name + "}") == 1, f"algorithm.kd_context must hold {{{name}}} once, "
                   f"got {a.kd_context!r}")
    if a.kd_reference == "teacher":
        _check(cfg.rollout.engine == "embedded" and a.kd_teacher_samples >= 1,
               f"algorithm.kd_reference=teacher samples the large model in this process (an embedded engine of "
               f"its own), which needs rollout.engine=embedded (got {cfg.rollout.engine}) and kd_teacher_samples "
               f">= 1 (got {a.kd_teacher_samples}); with SGLang use kd_reference=gold")
    verifier = r.verifier if r.kind == "model" else r.kind
    if a.supervision == "process":
        _check(a.mode not in ("opd", "sft"), f"algorithm.supervision=process needs a task reward; mode {a.mode!r} "
               "has none (opd) or is supervised (sft)")
        _check(bool(r.process_model) or verifier == "arith",
               f"algorithm.supervision=process: the {verifier!r} reward has no exact step checker (only the arith "
               "task has one); set reward.process_model to a token-classification checkpoint")
        _check(bool(a.step_delimiters) and all(a.step_delimiters), "algorithm.step_delimiters must be a non-empty "
               f"list of non-empty strings, got {a.step_delimiters!r}")
    if (a.kd_reference != "none" or (a.supervision == "process" and verifier == "arith")) \
            and cfg.rollout.prompt_overflow != "error":
        _check(False, "algorithm.kd_reference and the exact step checker find each rollout's training problem by "
               "its prompt tokens: rollout.prompt_overflow must be error (truncated prompts match no problem)")
    if r.kind == "model":
        _check(bool(r.model), "reward.kind=model needs reward.model (an HF sequence-classification checkpoint)")
        _check(a.pods_n is None, "algorithm.pods_n selects rollouts by the verifier's reward, before the reward "
               "model scores them: use one of reward.kind=model and algorithm.pods_n")
        if r.verifier == "plugin":
            _check(bool(r.plugin), "reward.verifier=plugin needs reward.plugin ('package.module:function')")
    t = r.retrain
    if t.every:
        learned = [k for k, on in (("reward.model", r.kind == "model"),
                                   ("reward.process_model", a.supervision == "process" and bool(r.process_model)))
                   if on]
        _check(len(learned) == 1, f"reward.retrain.every={t.every} trains the one learned reward model in use; "
               f"this run uses {learned or 'none'} (set reward.kind=model or supervision=process with "
               "reward.process_model)")
        _check(t.every >= 1 and 0 <= t.replay_frac < 1 and t.buffer_size >= 0 and t.epochs >= 1
               and t.batch_size >= 1 and t.lr > 0, f"reward.retrain: need every >= 1, 0 <= replay_frac < 1, "
               f"buffer_size >= 0, epochs >= 1, batch_size >= 1, lr > 0; got {t}")
        _check(learned != ["reward.process_model"] or verifier == "arith", "reward.retrain of a process model "
               f"learns from exact step labels, which the {verifier!r} reward has none of (only arith)")
    _check(not t.reset_reference or (t.every and a.kl_beta > 0), "reward.retrain.reset_reference resets the KL "
           f"reference after each round: it needs reward.retrain.every > 0 (got {t.every}) and algorithm.kl_beta > 0 "
           f"(got {a.kl_beta})")


def _check_recompute(m: ModelConfig, layers_per_stage: int) -> None:
    """The recompute fields as Megatron-Core accepts them (ValueError otherwise; see models.provider)."""
    from megatron_codistill.models.provider import recompute_options

    recompute_options(m.recompute, method=m.recompute_method, num_layers=m.recompute_num_layers,
                      layers_per_stage=layers_per_stage)


def _check_location(value: str | None, key: str) -> None:
    """A local path must exist; `org/name` (one slash, no leading . or /) is read as a hub id."""
    if not value or Path(value).exists():
        return
    hub_like = value.count("/") == 1 and not value.startswith((".", "/", "~"))
    _check(hub_like, f"{key}: {value} does not exist (give an existing directory or a hub id like "
           "Qwen/Qwen2.5-Math-1.5B)")


def model_arch(m: ModelConfig, name: str):
    """The ModelArch of a model section (inline `arch`, or read from `hf_config` / `checkpoint`)."""
    from megatron_codistill.models.arch import ModelArch

    try:
        if m.arch is not None:
            return ModelArch(**m.arch)
        return ModelArch.from_hf_config(m.hf_config or m.checkpoint)
    except TypeError as e:
        fields = ", ".join(f.name for f in dataclasses.fields(ModelArch))
        raise ConfigError(f"{name}.arch: {e}; valid fields: {fields}") from None
    except (ValueError, OSError) as e:
        raise ConfigError(f"{name}: {e}") from None
