"""Model presets (Qwen2.5 base-model architectures) and how a model argument is resolved.

A model argument is a preset name ("7B"), or a Hugging Face config directory / config.json.
A pair argument "SMALL/LARGE" names two of them ("1.5B/7B", "0.5B/./my-model").
"""

from __future__ import annotations

import os

from megatron_codistill.models.arch import ModelArch

# Fields of the published Qwen2.5 config.json files (base models; the instruct models share them).
# hidden, layers, heads, kv heads, ffn, vocab, tied embeddings
_QWEN25 = {
    "0.5B": (896, 24, 14, 2, 4864, 151936, True),
    "1.5B": (1536, 28, 12, 2, 8960, 151936, True),
    "3B": (2048, 36, 16, 2, 11008, 151936, True),
    "7B": (3584, 28, 28, 4, 18944, 152064, False),
    "14B": (5120, 48, 40, 8, 13824, 152064, False),
    "32B": (5120, 64, 40, 8, 27648, 152064, False),
    "72B": (8192, 80, 64, 8, 29568, 152064, False),
}
PRESETS: dict[str, dict] = {
    name: dict(family="qwen2", hidden_size=h, num_layers=n, num_attention_heads=a, num_key_value_heads=kv,
               ffn_hidden_size=f, vocab_size=v, tie_word_embeddings=tied, max_position_embeddings=32768,
               rope_theta=1e6, rms_norm_eps=1e-6)
    for name, (h, n, a, kv, f, v, tied) in _QWEN25.items()
}
# The (small, large) pairs of the scaling study.
PAIRS = ("0.5B/1.5B", "1.5B/7B", "3B/32B", "7B/72B")


def load_model(spec: str) -> tuple[str, ModelArch]:
    """(display name, architecture) of a preset name or an HF config directory / config.json."""
    key = spec.upper().removeprefix("QWEN2.5-")
    if key in PRESETS:
        return f"Qwen2.5-{key}", ModelArch(**PRESETS[key])
    if os.path.exists(spec):
        return os.path.basename(os.path.normpath(spec)) or spec, ModelArch.from_hf_config(spec)
    raise ValueError(f"model {spec!r} is neither a preset ({', '.join(PRESETS)}) nor an existing HF config "
                     "directory or config.json")


def load_pair(spec: str) -> tuple[tuple[str, ModelArch], tuple[str, ModelArch]]:
    """((small name, arch), (large name, arch)) of "SMALL/LARGE" (a preset pair or two config paths)."""
    if spec.upper() in PAIRS or spec.count("/") == 1 and all(s.upper() in PRESETS for s in spec.split("/")):
        small, large = spec.split("/")
        return load_model(small), load_model(large)
    raise ValueError(f"model pair {spec!r} is not 'SMALL/LARGE' of presets; preset pairs: {', '.join(PAIRS)} "
                     "(give HF config directories with --small and --large instead)")
