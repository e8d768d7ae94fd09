"""The trainer end of the SGLang weight-update group, against two fake servers in their own processes.

The group runs on gloo here (SGLang's request takes the backend name; NCCL needs GPUs). Each fake
joins with the same construction as the trainer, so this checks the protocol (group layout, one
broadcast per tensor in the announced order, dtypes, shapes, version), not SGLang's own code; the
session rules are in test_sglang_sessions.py.
"""

import socket
import sys

import pytest
import torch

from megatron_codistill.rollout.base import SamplingParams
from megatron_codistill.rollout.sglang import SGLangEngine
from megatron_codistill.rollout.weight_sync import nccl_sync, rebucket
from tests.rollout.test_sglang_client import FAKE, free_port_pair


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_fakes(tmp_path):
    engine = SGLangEngine.launch(
        "/models/tiny",
        num_servers=2,
        base_port=free_port_pair(),
        launcher=[sys.executable, FAKE],
        startup_timeout=60,
        log_dir=tmp_path,
    )
    yield engine
    engine.shutdown()


def test_buckets_are_broadcast_to_every_server_and_the_version_is_set(two_fakes):
    engine = two_fakes
    engine.tp_sizes = None  # ask /server_info, as when attaching to running servers
    engine.init_weight_update_group("127.0.0.1", free_port(), backend="gloo")
    torch.manual_seed(0)
    buckets = [
        [("model.embed_tokens.weight", torch.randn(6, 4)), ("model.norm.weight", torch.randn(4))],
        [("lm_head.weight", torch.randn(6, 4).to(torch.bfloat16))],
        [],
    ]
    engine.update_weights_from_distributed(buckets, version=4)
    assert engine.version == 4
    want = {n: t for b in buckets for n, t in b}
    for url in engine.urls:
        got = engine.client.call(url, "/debug/received", method="GET")
        assert set(got) == set(want)
        for name, (dtype, shape, values) in got.items():
            assert dtype == str(want[name].dtype).removeprefix("torch.") and shape == list(want[name].shape)
            torch.testing.assert_close(torch.tensor(values), want[name].float().flatten())
        requests = engine.client.call(url, "/debug/requests", method="GET")
        init = next(body for path, body in requests if path == "/init_weights_update_group")
        assert init["world_size"] == 3 and init["rank_offset"] == 1 + engine.urls.index(url)
        updates = [body for path, body in requests if path == "/update_weights_from_distributed"]
        assert [(u["flush_cache"], u.get("weight_version")) for u in updates] == [(False, None), (True, "4")]
    out = engine.generate([[1], [2]], 1, SamplingParams(max_new_tokens=1))
    assert all(g[0].weight_version == 4 for g in out)

    # the trainer-facing path: sync_weights with the nccl strategy reuses the formed group
    new = torch.full((4,), 2.5)
    stats = nccl_sync(
        engine, rebucket([("model.norm.weight", new)], 1 << 20), 5, is_source=True, backend="gloo"
    )
    assert stats.tensors == 1 and engine.version == 5
    got = engine.client.call(engine.urls[1], "/debug/received", method="GET")["model.norm.weight"]
    assert got[2] == new.tolist()


def test_non_source_ranks_drain_the_export_and_record_the_version(two_fakes):
    drained = []

    def buckets():
        for i in range(3):
            drained.append(i)
            yield [("w", torch.zeros(1))]

    assert nccl_sync(two_fakes, buckets(), 7, is_source=False) is None
    assert drained == [0, 1, 2] and two_fakes.version == 7


def test_update_without_a_group_is_refused(two_fakes):
    with pytest.raises(RuntimeError, match="init_weight_update_group first"):
        two_fakes.update_weights([("a", torch.zeros(1))], version=1)
