"""The one home of the Hugging Face <-> Megatron-Core GPTModel name and layout mapping.

One table per model family (dispatch by `ModelArch.family`, never by substrings of a model name);
every direction is derived from it: HF -> Megatron (checkpoint loading, conversion), Megatron -> HF
(export, weight sync to rollout engines, conversion back), and the Megatron distributed-checkpoint key
of each tensor. Names hold "{i}", the global layer index. Names not in the table raise.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from megatron_codistill.convert.errors import CheckpointError
from megatron_codistill.convert.layouts import Replicated, get_layout
from megatron_codistill.models.arch import ModelArch

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Rule:
    """One Megatron tensor: its GPTModel parameter name, HF sources and layout."""

    mcore: str
    """GPTModel (local spec) parameter name; "{i}" is the layer index."""
    hf: tuple[str, ...]
    """HF tensor names, in the order the layout fuses them."""
    layout: str
    """Key into `layouts.LAYOUTS`."""
    shape: Callable[[ModelArch], Shape]
    """Full Megatron shape (TP=1, vocab not padded)."""
    ckpt: str | None = None
    """Megatron dist-checkpoint key; None: `mcore` with "layers.{i}." -> "layers." (layers stacked)."""
    when: Callable[[ModelArch], bool] = lambda arch: True
    """Whether the model has this tensor."""
    aliases: tuple[str, ...] = ()
    """Other GPTModel names of the same tensor (Transformer Engine spec fuses norms into linears)."""
    exported: bool = True
    """False for a copy of another tensor (tied output layer on the last PP stage): loaded, never saved."""


_L = "decoder.layers.{i}."
_H = "model.layers.{i}."
_hidden = lambda a: (a.hidden_size,)
_qkv_rows = lambda a: (a.num_attention_heads + 2 * a.num_key_value_heads) * a.head_dim
_tied = lambda a: a.tie_word_embeddings

# Llama 2/3/3.x (llama3 rope scaling lives in ModelArch, not in tensors).
LLAMA_TABLE: tuple[Rule, ...] = (
    Rule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "vocab",
         lambda a: (a.vocab_size, a.hidden_size)),
    Rule(_L + "input_layernorm.weight", (_H + "input_layernorm.weight",), "replicated", _hidden,
         ckpt="decoder.layers.self_attention.linear_qkv.layer_norm_weight",
         aliases=(_L + "self_attention.linear_qkv.layer_norm_weight",)),
    Rule(_L + "self_attention.linear_qkv.weight",
         tuple(_H + f"self_attn.{p}_proj.weight" for p in "qkv"), "qkv",
         lambda a: (_qkv_rows(a), a.hidden_size)),
    Rule(_L + "self_attention.linear_qkv.bias",
         tuple(_H + f"self_attn.{p}_proj.bias" for p in "qkv"), "qkv",
         lambda a: (_qkv_rows(a),), when=lambda a: a.qkv_bias),
    Rule(_L + "self_attention.linear_proj.weight", (_H + "self_attn.o_proj.weight",), "row",
         lambda a: (a.hidden_size, a.num_attention_heads * a.head_dim)),
    Rule(_L + "pre_mlp_layernorm.weight", (_H + "post_attention_layernorm.weight",), "replicated", _hidden,
         ckpt="decoder.layers.mlp.linear_fc1.layer_norm_weight",
         aliases=(_L + "mlp.linear_fc1.layer_norm_weight",)),
    Rule(_L + "mlp.linear_fc1.weight", (_H + "mlp.gate_proj.weight", _H + "mlp.up_proj.weight"), "gate_up",
         lambda a: (2 * a.ffn_hidden_size, a.hidden_size)),
    Rule(_L + "mlp.linear_fc2.weight", (_H + "mlp.down_proj.weight",), "row",
         lambda a: (a.hidden_size, a.ffn_hidden_size)),
    Rule("decoder.final_layernorm.weight", ("model.norm.weight",), "replicated", _hidden),
    Rule("output_layer.weight", ("lm_head.weight",), "vocab", lambda a: (a.vocab_size, a.hidden_size),
         when=lambda a: not a.tie_word_embeddings),
    # Tied embeddings: the last PP stage keeps a copy of the input embedding as its output layer.
    Rule("output_layer.weight", ("model.embed_tokens.weight",), "vocab",
         lambda a: (a.vocab_size, a.hidden_size), ckpt="embedding.word_embeddings.weight", when=_tied,
         exported=False),
)
# Qwen2 / Qwen2.5 / Qwen2.5-Math use Llama's HF names; their QKV bias comes from ModelArch.qkv_bias.
QWEN2_TABLE: tuple[Rule, ...] = LLAMA_TABLE
TABLES = {"llama": LLAMA_TABLE, "qwen2": QWEN2_TABLE}


@dataclass(frozen=True)
class Entry:
    """A rule bound to one model and one global layer: concrete names and shapes."""

    rule: Rule
    layer: int | None
    mcore: str
    hf: tuple[str, ...]
    ckpt: str
    shape: Shape
    hf_shapes: tuple[Shape, ...]

    @property
    def layout(self) -> Replicated:
        return get_layout(self.rule.layout)


def rules_for(arch: ModelArch) -> tuple[Rule, ...]:
    """The table of `arch.family`, restricted to the tensors this model has."""
    if arch.family not in TABLES:
        raise ValueError(f"no mapping table for family {arch.family!r}; valid: {sorted(TABLES)}")
    return tuple(r for r in TABLES[arch.family] if r.when(arch))


def _bind(rule: Rule, arch: ModelArch, layer: int | None) -> Entry:
    fill = (lambda s: s.format(i=layer)) if layer is not None else (lambda s: s)
    shape = tuple(rule.shape(arch))
    ckpt = rule.ckpt or rule.mcore.replace("layers.{i}.", "layers.")
    return Entry(rule, layer, fill(rule.mcore), tuple(fill(n) for n in rule.hf), ckpt, shape,
                 tuple(get_layout(rule.layout).hf_shapes(shape, arch)))


def entries(arch: ModelArch, layers: range | None = None, *, pre: bool = True, post: bool = True,
            exported_only: bool = True) -> list[Entry]:
    """Entries of a whole model (default) or of one PP stage, in HF order.

    layers: global layer indices of the stage; pre / post: the stage holds the embedding / the output.
    """
    layers = range(arch.num_layers) if layers is None else layers
    # A tied output layer is a parameter of its own only on a last stage without the embedding.
    rules = [r for r in rules_for(arch) if r.exported or not (exported_only or pre)]
    out = [_bind(r, arch, None) for r in rules if pre and r.mcore.startswith("embedding.")]
    for i in layers:
        out += [_bind(r, arch, i) for r in rules if "{i}" in r.mcore]
    if post:
        out += [_bind(r, arch, None) for r in rules if r.mcore.startswith(("decoder.final", "output_layer"))]
    return out


_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def entry_for_param(arch: ModelArch, name: str, layer_offset: int) -> Entry:
    """The entry of a live GPTModel parameter `name` (local layer index + `layer_offset` = global)."""
    match = _LAYER.match(name)
    template, layer = (f"{_L}{match.group(2)}", int(match.group(1)) + layer_offset) if match else (name, None)
    for rule in rules_for(arch):
        if template == rule.mcore or template in rule.aliases:
            return _bind(rule, arch, layer)
    known = sorted({r.mcore for r in rules_for(arch)} | {a for r in rules_for(arch) for a in r.aliases})
    raise CheckpointError(f"GPTModel parameter {name!r} has no mapping for family {arch.family!r}; "
                          f"known names: {known}")


# Buffers some HF checkpoints carry that are derived from the config, not weights (older Llama
# exports saved RoPE inverse frequencies); transformers itself ignores them on load.
IGNORED_HF = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


def hf_weights(found: dict[str, Shape]) -> dict[str, Shape]:
    """The tensors of a HF checkpoint that are weights (drops `IGNORED_HF` buffers)."""
    return {n: s for n, s in found.items() if not IGNORED_HF.match(n)}


def expected_hf_tensors(arch: ModelArch) -> dict[str, Shape]:
    """Every tensor name -> shape a HF checkpoint of `arch` holds (tied models have no lm_head)."""
    return {n: s for e in entries(arch) for n, s in zip(e.hf, e.hf_shapes)}


def check_tensor_set(found: dict[str, Shape], expected: dict[str, Shape], where: str) -> None:
    """Raise CheckpointError listing missing / unexpected tensors and shape mismatches."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{where}: tensors do not match the model config: missing {missing}; "
                              f"unexpected {unexpected}")
    wrong = [f"{n}: expected {list(expected[n])}, found {list(found[n])}"
             for n in expected if tuple(found[n]) != tuple(expected[n])]
    if wrong:
        raise CheckpointError(f"{where}: shape mismatch: " + "; ".join(wrong))


def stage_layers(num_layers: int, pp: int, pp_rank: int) -> range:
    """Global layer indices of PP stage `pp_rank` under the even split models.provider builds.

    Loaders and the exporter read each stage's layers from the live model (`layer_number`), which
    also covers uneven splits; this is the plan for a layout that does not exist yet.
    """
    if num_layers % pp:
        raise ValueError(f"pipeline_model_parallel_size={pp} must divide num_layers={num_layers}")
    per = num_layers // pp
    return range(pp_rank * per, (pp_rank + 1) * per)


def mcore_shape(entry: Entry, arch: ModelArch, tp: int = 1, *, local: bool = False) -> Shape:
    """Megatron shape of `entry` in a model with tensor parallel size `tp`: the full tensor (vocab rows
    padded to a multiple of 128 * tp) or, with `local`, one rank's shard."""
    shape = list(entry.shape)
    if entry.rule.layout == "vocab":
        shape[0] = arch.padded_vocab_size(tp)
    axis = entry.layout.tp_axis
    if local and axis is not None:
        shape[axis] //= tp
    return tuple(shape)
