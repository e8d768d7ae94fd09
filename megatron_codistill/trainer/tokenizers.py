"""The tokenizer of a run: each model's own, checked to be one vocabulary before any compute.

The KD reward compares the two models' log-probs of the same token ids (d_it = l^L - l^S), and the
large model trains on the small model's rollouts: both need one shared vocabulary. A mismatch stops
the run naming both tokenizers and the first token id on which they differ.
"""

from __future__ import annotations

from megatron_codistill.config import Config, ModelConfig


def tokenizer_path(m: ModelConfig) -> str | None:
    """Where a model's tokenizer comes from: `tokenizer`, else `checkpoint`, else `hf_config`."""
    return m.tokenizer or m.checkpoint or m.hf_config


def load(path: str):
    """A Hugging Face tokenizer from a directory or hub name; pad falls back to EOS."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"tokenizer {path}: cannot be loaded ({type(e).__name__}: {e})") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def first_difference(a, b) -> str | None:
    """How tokenizers `a` and `b` differ (vocabulary or special tokens), None when they agree."""
    va, vb = a.get_vocab(), b.get_vocab()
    ia, ib = {i: t for t, i in va.items()}, {i: t for t, i in vb.items()}
    for i in range(max(len(ia), len(ib))):
        if ia.get(i) != ib.get(i):
            return f"token id {i} is {ia.get(i)!r} in one and {ib.get(i)!r} in the other"
    for attr in ("eos_token_id", "pad_token_id", "bos_token_id"):
        if getattr(a, attr) != getattr(b, attr):
            return f"{attr} is {getattr(a, attr)} in one and {getattr(b, attr)} in the other"
    return None


def load_run_tokenizer(cfg: Config, models: list[str]):
    """The tokenizer of the run's models `models` (ValueError if they disagree or none is set)."""
    paths = {name: tokenizer_path(getattr(cfg, name)) for name in models}
    known = {name: p for name, p in paths.items() if p}
    if not known:
        raise ValueError(f"no tokenizer: set {models[0]}.tokenizer (or its checkpoint / hf_config)")
    loaded = {name: load(p) for name, p in known.items()}
    names = list(loaded)
    for other in names[1:]:
        diff = first_difference(loaded[names[0]], loaded[other])
        if diff:
            raise ValueError(
                f"{names[0]}.tokenizer ({known[names[0]]}) and {other}.tokenizer ({known[other]}) differ: {diff}. "
                "The KD reward and the large model's update read the small model's token ids: both models "
                "need one vocabulary")
    return loaded[names[0]]
