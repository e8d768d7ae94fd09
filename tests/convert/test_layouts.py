"""Tensor layouts: hand-computed fused orders, TP shards against slices of the full tensor, inverses."""

from __future__ import annotations

import pytest
import torch

from megatron_codistill.convert.layouts import LAYOUTS, DictReader, get_layout
from megatron_codistill.models.arch import ModelArch


def _arch(**kw) -> ModelArch:
    fields = dict(family="llama", hidden_size=4, num_layers=1, num_attention_heads=4, num_key_value_heads=2,
                  ffn_hidden_size=4, vocab_size=10, head_dim=1)
    fields.update(kw)
    return ModelArch(**fields)


def _col(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).unsqueeze(1)  # [n, 1]


def test_qkv_fuses_per_query_group_and_splits_whole_groups():
    # 4 query heads, 2 KV heads, head dim 1: group g = [q 2g, q 2g+1, k g, v g]
    src = DictReader({"q": _col(0, 1, 2, 3), "k": _col(10, 11), "v": _col(20, 21)})
    qkv = get_layout("qkv")
    full = qkv.local_from_hf(src, ("q", "k", "v"), _arch(), 0, 1)
    assert full.squeeze(1).tolist() == [0, 1, 10, 20, 2, 3, 11, 21]
    assert qkv.local_from_hf(src, ("q", "k", "v"), _arch(), 1, 2).squeeze(1).tolist() == [2, 3, 11, 21]
    q, k, v = qkv.to_hf(full, _arch())
    assert q.squeeze(1).tolist() == [0, 1, 2, 3] and k.squeeze(1).tolist() == [10, 11]
    assert v.squeeze(1).tolist() == [20, 21]


def test_gate_up_rank_holds_its_gate_rows_then_its_up_rows():
    src = DictReader({"gate": _col(0, 1, 2, 3), "up": _col(10, 11, 12, 13)})
    gate_up, arch = get_layout("gate_up"), _arch()
    shards = [gate_up.local_from_hf(src, ("gate", "up"), arch, r, 2) for r in range(2)]
    assert shards[1].squeeze(1).tolist() == [2, 3, 12, 13]
    full = gate_up.merge(shards, arch)
    assert full.squeeze(1).tolist() == [0, 1, 2, 3, 10, 11, 12, 13]
    assert [t.squeeze(1).tolist() for t in gate_up.to_hf(full, arch)] == [[0, 1, 2, 3], [10, 11, 12, 13]]


def test_vocab_rows_are_padded_with_zeros_to_128_times_tp():
    emb = torch.arange(10 * 3, dtype=torch.float32).reshape(10, 3) + 1
    vocab, arch = get_layout("vocab"), _arch()
    shards = [vocab.local_from_hf(DictReader({"e": emb}), ("e",), arch, r, 2) for r in range(2)]
    assert [tuple(s.shape) for s in shards] == [(128, 3), (128, 3)]  # 10 -> 256 rows
    assert torch.equal(shards[0][:10], emb) and shards[0][10:].abs().sum() == 0 and shards[1].abs().sum() == 0
    assert torch.equal(vocab.to_hf(vocab.merge(shards, arch), arch)[0], emb)


def test_row_parallel_splits_columns():
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    row = get_layout("row")
    shards = [row.local_from_hf(DictReader({"w": w}), ("w",), _arch(), r, 2) for r in range(2)]
    assert torch.equal(shards[1], w[:, 2:]) and torch.equal(row.merge(shards, _arch()), w)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_shards_merge_to_the_tp1_tensor_and_invert_to_hf(tp):
    """For every layout: merge(shards at TP) == the TP=1 tensor, and to_hf(TP=1 tensor) == the HF inputs."""
    arch = _arch(hidden_size=8, num_attention_heads=8, num_key_value_heads=4, ffn_hidden_size=8,
                 vocab_size=300, head_dim=2)
    gen = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=gen)
    cases = {
        "qkv": {"q": rand(16, 8), "k": rand(8, 8), "v": rand(8, 8)},
        "gate_up": {"g": rand(8, 8), "u": rand(8, 8)},
        "row": {"w": rand(8, 16)},
        "vocab": {"e": rand(300, 8)},
        "replicated": {"n": rand(8)},
    }
    assert set(cases) == set(LAYOUTS)
    for name, tensors in cases.items():
        layout, src, names = get_layout(name), DictReader(tensors), tuple(tensors)
        full = layout.local_from_hf(src, names, arch, 0, 1)
        shards = [layout.local_from_hf(src, names, arch, r, tp) for r in range(tp)]
        if name == "vocab":  # TP=1 pads to 384 rows, TP=4 to 512: compare the true rows, rest is zero
            merged = layout.merge(shards, arch)
            assert torch.equal(merged[:300], full[:300]) and merged[300:].abs().sum() == 0
        else:
            assert torch.equal(layout.merge(shards, arch), full), name
            assert [list(t.shape) for t in tensors.values()] == \
                [list(s) for s in layout.hf_shapes(tuple(full.shape), arch)], name
        back = layout.to_hf(full, arch)
        assert all(torch.equal(b, t) for b, t in zip(back, tensors.values())), name


def test_unknown_layout_lists_valid_names():
    with pytest.raises(ValueError, match="valid: .*gate_up"):
        get_layout("column")
