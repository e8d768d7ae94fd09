import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from megatron_codistill.rollout.base import SamplingParams
from megatron_codistill.rollout.embedded import EmbeddedEngine
from megatron_codistill.rollout.sglang import SGLangEngine
from megatron_codistill.rollout.weight_sync import (
    DiskSync,
    WeightSyncMismatch,
    logprob_mismatch,
    make_strategy,
    probe_tokens,
    rebucket,
    sync_weights,
    verify_sync,
)
from tests.rollout.fake_sglang import start_fake
from tests.rollout.helpers import tiny_config, tiny_model

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=5)
PROMPTS = [[3, 4, 5], [7, 2]]


def responses(engine):
    return [g[0].response_ids for g in engine.generate(PROMPTS, 1, GREEDY)]


def hf_items(model):
    return [(k, v.clone()) for k, v in model.state_dict().items() if "rotary_emb" not in k]


@torch.no_grad()
def hf_logprobs(model, tokens):
    ids = torch.tensor(tokens)
    logp = torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), -1)
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1)


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"'rsync' is not one of \['direct', 'disk', 'nccl'\]"):
        make_strategy("rsync")


def test_rebucket_respects_the_byte_budget_and_order():
    items = [(f"t{i}", torch.zeros(n, dtype=torch.float32)) for i, n in enumerate([10, 10, 30, 5, 5, 5])]
    buckets = list(rebucket(items, bucket_bytes=80))  # 4 bytes per element: 20 elements per bucket
    assert [[n for n, _ in b] for b in buckets] == [["t0", "t1"], ["t2"], ["t3", "t4", "t5"]]
    with pytest.raises(ValueError, match="bucket_bytes"):
        list(rebucket(items, 0))


def test_direct_sync_in_buckets_counts_what_it_moved():
    source = tiny_model(seed=11)
    engine = EmbeddedEngine.from_config(tiny_config())
    items = hf_items(source)
    stats = sync_weights(engine, rebucket(items, 4096), version=2, strategy="direct")
    assert engine.version == 2 and responses(engine) == responses(EmbeddedEngine(source, pad_token_id=0))
    assert stats.tensors == len(items) and stats.buckets > 1
    assert stats.bytes == sum(t.numel() * t.element_size() for _, t in items)
    assert set(stats.metrics()) == {"rollout/sync_seconds", "rollout/sync_mb", "rollout/sync_mb_per_s"}


def test_direct_sync_falls_back_to_update_weights():
    class Recorder:
        def update_weights(self, named, version):
            self.got = (list(named), version)

    engine = Recorder()
    a, b = ("a", torch.ones(2)), ("b", torch.zeros(3))
    sync_weights(engine, [[a], [b]], version=7)
    assert [n for n, _ in engine.got[0]] == ["a", "b"] and engine.got[1] == 7


def test_disk_sync_writes_a_loadable_hf_checkpoint_and_prunes_old_ones(tmp_path):
    source, other = tiny_model(seed=12), tiny_model(seed=13)
    engine = EmbeddedEngine.from_config(tiny_config())
    strategy = DiskSync(tmp_path, hf_config=source.config, keep_last=1)
    sync_weights(engine, rebucket(hf_items(source), 8192), version=3, strategy=strategy)
    assert engine.version == 3 and responses(engine) == responses(EmbeddedEngine(source, pad_token_id=0))
    index = json.loads((tmp_path / "v3" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "v3")  # a valid HF checkpoint
    assert responses(EmbeddedEngine(reloaded, pad_token_id=0)) == responses(engine)
    sync_weights(engine, [hf_items(other)], version=4, strategy=strategy)
    assert responses(engine) == responses(EmbeddedEngine(other, pad_token_id=0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v4"]


def test_disk_sync_tells_sglang_servers_the_directory(tmp_path):
    url, state, server = start_fake()
    try:
        engine = SGLangEngine([url])
        sync_weights(engine, [[("model.norm.weight", torch.ones(4))]], 5, DiskSync(tmp_path))
        assert ("/update_weights_from_disk", {"model_path": str(tmp_path / "v5"), "weight_version": "5"}) in (
            state.requests
        )
        assert engine.version == 5
    finally:
        server.shutdown()
        server.server_close()


def test_nccl_strategy_needs_an_sglang_engine():
    with pytest.raises(TypeError, match="needs an SGLang engine, got EmbeddedEngine"):
        sync_weights(EmbeddedEngine(tiny_model(), pad_token_id=0), [], 1, "nccl")


def test_logprob_mismatch_by_hand():
    engine = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]])
    trainer = torch.tensor([[-1.5, -2.0, -9.0], [-0.25, -0.5, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    got = logprob_mismatch(engine, trainer, mask)
    assert got == {"rollout/logprob_diff_mean": pytest.approx(0.75 / 4), "rollout/logprob_diff_max": 0.5}
    assert logprob_mismatch(engine, trainer, torch.zeros_like(mask))["rollout/logprob_diff_max"] == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        logprob_mismatch(engine, trainer[:, :2], mask)


def test_verify_sync_passes_on_equal_weights_and_names_the_worst_token_otherwise():
    source = tiny_model(seed=14)
    tokens = probe_tokens(16, batch=3, length=10)
    trainer = hf_logprobs(source, tokens)
    engine = EmbeddedEngine.from_config(tiny_config())
    sync_weights(engine, [hf_items(source)], version=1)
    metrics = verify_sync(engine, tokens, trainer, atol=1e-5, version=1)
    assert metrics["rollout/sync_probe_logprob_diff_max"] < 1e-5
    stale = hf_items(source)
    stale = [(k, v * 1.01 if k == "model.norm.weight" else v) for k, v in stale]
    sync_weights(engine, [stale], version=2)
    with pytest.raises(WeightSyncMismatch, match=r"version 2,.* worst at probe \d+, token \d+"):
        verify_sync(engine, tokens, trainer, atol=1e-5, version=2)


def test_weight_group_address_prefers_the_config_then_master_addr_then_the_route(monkeypatch):
    from megatron_codistill.rollout import weight_sync as ws

    routes = []
    monkeypatch.setattr(ws, "_route_address", lambda host: routes.append(host) or "10.1.2.3")
    # Debian-style hosts file: the host name resolves to 127.0.1.1, which no other node can dial
    monkeypatch.setattr(ws.socket, "gethostbyname", lambda name: "127.0.1.1")
    servers = ["http://gpu07:30000", "http://gpu08:30000"]
    assert ws.weight_group_address("trainer-ib0", servers, env={"MASTER_ADDR": "gpu01"}) == "trainer-ib0"
    assert ws.weight_group_address("", servers, env={"MASTER_ADDR": "gpu01"}) == "gpu01"
    for loopback in ("127.0.0.1", "localhost", "::1", "127.0.1.1"):
        assert ws.weight_group_address("", servers, env={"MASTER_ADDR": loopback}) == "10.1.2.3"
    assert ws.weight_group_address("", servers, env={}) == "10.1.2.3"
    assert routes == ["gpu07"] * 5
    with pytest.raises(ValueError, match="weight_group_address is empty and there is no server URL"):
        ws.weight_group_address("", [], env={})


def test_weight_group_address_route_to_a_local_server_is_loopback(monkeypatch):
    from megatron_codistill.rollout.weight_sync import weight_group_address

    assert weight_group_address("", ["http://127.0.0.1:30000"], env={}) == "127.0.0.1"

    def unreachable(host):
        raise OSError("Network is unreachable")

    monkeypatch.setattr("megatron_codistill.rollout.weight_sync._route_address", unreachable)
    with pytest.raises(ValueError, match=r"towards gpu07 \(Network is unreachable\); set rollout.sglang"):
        weight_group_address("", ["http://gpu07:30000"], env={})
