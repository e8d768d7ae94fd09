import pytest
import torch

from megatron_codistill.rollout.base import SamplingParams
from megatron_codistill.rollout.embedded import EmbeddedEngine
from tests.rollout.helpers import tiny_config, tiny_model

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=5)
PROMPTS = [[3, 4, 5], [7, 2]]


def responses(engine):
    return [g[0].response_ids for g in engine.generate(PROMPTS, 1, GREEDY)]


def hf_items(model):
    """(HF name, tensor) pairs as an exporter sends them: every state-dict entry, lm_head included."""
    return [(k, v.clone()) for k, v in model.state_dict().items() if "rotary_emb" not in k]


@pytest.mark.parametrize("tie", [True, False])
def test_from_config_waits_for_a_sync_then_serves_the_synced_weights(tie):
    source = tiny_model(seed=7, tie=tie)
    engine = EmbeddedEngine.from_config(tiny_config(tie=tie))
    with pytest.raises(RuntimeError, match="random"):
        engine.generate(PROMPTS, 1, GREEDY)
    engine.update_weights(hf_items(source), version=3)
    assert engine.version == 3
    assert responses(engine) == responses(EmbeddedEngine(source, pad_token_id=0))
    assert all(r.weight_version == 3 for g in engine.generate(PROMPTS, 2, GREEDY) for r in g)


def test_buckets_through_begin_load_commit():
    source = tiny_model(seed=8)
    items = hf_items(source)
    engine = EmbeddedEngine.from_config(tiny_config())
    engine.begin_weight_update()
    with pytest.raises(RuntimeError, match="sync is open"):
        engine.generate(PROMPTS, 1, GREEDY)
    for start in range(0, len(items), 4):
        engine.load_weights(items[start : start + 4])
    engine.commit_weight_update(1)
    assert responses(engine) == responses(EmbeddedEngine(source, pad_token_id=0))


def test_tied_lm_head_alone_covers_the_embedding():
    source = tiny_model(seed=9, tie=True)
    items = [(k, v) for k, v in hf_items(source) if k != "model.embed_tokens.weight"]
    assert any(k == "lm_head.weight" for k, _ in items)
    engine = EmbeddedEngine.from_config(tiny_config(tie=True))
    engine.update_weights(items, version=1)
    assert responses(engine) == responses(EmbeddedEngine(source, pad_token_id=0))


def test_tied_weights_sent_twice_must_agree():
    items = hf_items(tiny_model(seed=9, tie=True))
    items = [(k, v + 1 if k == "lm_head.weight" else v) for k, v in items]
    engine = EmbeddedEngine.from_config(tiny_config(tie=True))
    with pytest.raises(ValueError, match="'lm_head.weight' is tied to 'model.embed_tokens.weight'"):
        engine.update_weights(items, version=1)


def test_missing_parameter_fails_the_commit_and_blocks_generation():
    engine = EmbeddedEngine(tiny_model(seed=1), pad_token_id=0)
    items = [(k, v) for k, v in hf_items(tiny_model(seed=2)) if k != "model.norm.weight"]
    msg = r"incomplete: 1 of \d+ parameters never arrived, e.g. \['model.norm.weight'\]"
    with pytest.raises(ValueError, match=msg):
        engine.update_weights(items, version=5)
    assert engine.version == 0
    with pytest.raises(RuntimeError, match="missed 1 parameters"):
        engine.generate(PROMPTS, 1, GREEDY)
    engine.update_weights(hf_items(tiny_model(seed=2)), version=6)  # a full sync repairs it
    assert engine.version == 6 and responses(engine)


def test_unknown_name_and_wrong_shape_are_named():
    engine = EmbeddedEngine(tiny_model(seed=1), pad_token_id=0)
    with pytest.raises(KeyError, match=r"unknown weight 'model.layers.0.mlp.gate.weight'.*gate_proj"):
        engine.update_weights([("model.layers.0.mlp.gate.weight", torch.zeros(1))], version=1)
    with pytest.raises(RuntimeError, match="failed part way"):
        engine.generate(PROMPTS, 1, GREEDY)
    with pytest.raises(ValueError, match=r"'model.norm.weight' has shape \(31,\), the model expects \(32,\)"):
        engine.update_weights([("model.norm.weight", torch.ones(31))], version=1)


def test_dtype_is_cast_to_the_engine_dtype():
    source = tiny_model(seed=3)
    engine = EmbeddedEngine.from_config(tiny_config(), dtype="bf16")
    engine.update_weights(hf_items(source), version=1)
    w = engine.model.get_parameter("model.norm.weight")
    assert w.dtype == torch.bfloat16
    torch.testing.assert_close(w.float(), source.model.norm.weight.bfloat16().float())


def test_from_pretrained_and_update_from_disk(tmp_path):
    a, b = tiny_model(seed=4), tiny_model(seed=5)
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    engine = EmbeddedEngine.from_pretrained(tmp_path / "a")
    assert responses(EmbeddedEngine(a, pad_token_id=0)) != responses(EmbeddedEngine(b, pad_token_id=0))
    assert responses(engine) == responses(EmbeddedEngine(a, pad_token_id=0))
    engine.update_weights_from_disk(tmp_path / "b", version=2)
    assert engine.version == 2
    assert responses(engine) == responses(EmbeddedEngine(b, pad_token_id=0))
