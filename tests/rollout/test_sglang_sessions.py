"""SGLang's weight-update state machine (as the strict fake server models it) against the client.

- The fake's own rules: a distributed update outside a begin/end session is refused, sessions do not
  nest, /flush_cache is refused while a generation runs.
- One process, one server: the client opens a session, sends `flush_cache` and `weight_version` with
  the last bucket only, closes the session; a bucket (or a group join) the server refuses reaches
  the caller as an error naming the server, not a collective left waiting for the group timeout.
- Two trainer ranks, two servers in their own processes, strategies disk and nccl (the weight group
  over gloo): every /generate of either rank arrives after the sync that precedes it has finished
  on the servers, and is served with the new weight version.
"""

from __future__ import annotations

import sys
import threading
from datetime import timedelta

import pytest
import torch

from megatron_codistill.rollout.base import SamplingParams
from megatron_codistill.rollout.http_client import HttpClient, RolloutServerError
from megatron_codistill.rollout.sglang import SGLangEngine
from tests.distributed import free_port, run_distributed
from tests.rollout.fake_sglang import NO_SESSION, start_fake
from tests.rollout.test_sglang_client import FAKE, free_port_pair

UPDATES = ("/begin_weight_update", "/update_weights_from_distributed", "/end_weight_update",
           "/update_weights_from_disk", "/update_weight_version", "/flush_cache")
# A bound for a regression only: with the fix a refused bucket raises as soon as the 400 arrives.
GROUP_TIMEOUT = timedelta(seconds=120)


@pytest.fixture
def fake():
    url, state, server = start_fake()
    yield url, state
    server.shutdown()
    server.server_close()


def _buckets(scale: float) -> list[list[tuple[str, torch.Tensor]]]:
    return [
        [("model.embed_tokens.weight", torch.full((6, 4), scale)), ("model.norm.weight", torch.full((4,), -scale))],
        [("lm_head.weight", torch.full((6, 4), 2 * scale).to(torch.bfloat16))],
    ]


def _launch(tmp_path, n: int, mode: str = "ok") -> SGLangEngine:
    return SGLangEngine.launch("/models/tiny", num_servers=n, base_port=free_port_pair(),
                               launcher=[sys.executable, FAKE], extra_args=["--mode", mode],
                               startup_timeout=60, log_dir=tmp_path)


# ------------------------------------------------------------------ the fake's rules


def test_the_fake_refuses_updates_outside_a_session_nested_sessions_and_busy_flushes(fake):
    url, state = fake
    client = HttpClient(retries=0)
    body = {"names": [], "dtypes": [], "shapes": [], "group_name": "weight_update_group"}
    with pytest.raises(RolloutServerError, match=f"HTTP 400.*{NO_SESSION}"):
        client.call(url, "/update_weights_from_distributed", body)
    with pytest.raises(RolloutServerError, match="HTTP 400.*without begin_weight_update"):
        client.call(url, "/end_weight_update", {})
    client.call(url, "/begin_weight_update", {})
    with pytest.raises(RolloutServerError, match="HTTP 400.*already open"):
        client.call(url, "/begin_weight_update", {})
    client.call(url, "/end_weight_update", {})

    engine = SGLangEngine([url], retries=0)
    state.generate_gate.clear()  # the next generation stays running until the gate opens
    worker = threading.Thread(target=engine.generate, args=([[1]], 1, SamplingParams(max_new_tokens=1)))
    worker.start()
    with state.model_lock.cond:
        assert state.model_lock.cond.wait_for(lambda: state.model_lock.readers == 1, timeout=60)
    with pytest.raises(RolloutServerError, match=r"(?s)/flush_cache.*HTTP 400.*running or waiting requests"):
        engine.flush_cache()
    assert state.flushes == 0
    state.generate_gate.set()
    worker.join()
    engine.flush_cache()
    assert state.flushes == 1


# ------------------------------------------------------------------ one trainer process


def test_a_sync_is_one_session_with_the_version_and_flush_on_its_last_bucket(tmp_path):
    engine = _launch(tmp_path, 1)
    try:
        engine.init_weight_update_group("127.0.0.1", free_port(), backend="gloo", timeout=GROUP_TIMEOUT)
        engine.update_weights_from_distributed(_buckets(1.0), version=3)
        assert engine.version == 3
        url = engine.urls[0]
        calls = [(p, b) for p, b in engine.client.call(url, "/debug/requests", method="GET") if p in UPDATES]
        assert [p for p, _ in calls] == ["/begin_weight_update", "/update_weights_from_distributed",
                                          "/update_weights_from_distributed", "/end_weight_update"]
        first, last = calls[1][1], calls[2][1]
        assert first["flush_cache"] is False and "weight_version" not in first
        assert last["flush_cache"] is True and last["weight_version"] == "3"
        assert first["names"] == ["model.embed_tokens.weight", "model.norm.weight"]
        state = engine.client.call(url, "/debug/state", method="GET")
        assert state == {"weight_version": "3", "session_open": False, "flushes": 1}
        out = engine.generate([[4]], 1, SamplingParams(max_new_tokens=1))
        assert out[0][0].weight_version == 3
    finally:
        engine.shutdown()


def test_a_refused_bucket_reaches_the_caller_instead_of_a_hung_broadcast(tmp_path):
    engine = _launch(tmp_path, 1, mode="refuse_bucket:2")
    try:
        engine.init_weight_update_group("127.0.0.1", free_port(), backend="gloo", timeout=GROUP_TIMEOUT)
        with pytest.raises(RolloutServerError, match=rf"{engine.urls[0]}.*injected refusal") as info:
            engine.update_weights_from_distributed(_buckets(1.0), version=1)
        assert "bucket 2" in str(info.value)
        assert engine.version == 0
    finally:
        engine.shutdown()


def test_a_server_that_refuses_the_group_fails_the_rendezvous_at_once(tmp_path):
    engine = _launch(tmp_path, 1, mode="refuse_group")
    try:
        with pytest.raises(RolloutServerError, match=r"/init_weights_update_group.*injected refusal"):
            engine.init_weight_update_group("127.0.0.1", free_port(), backend="gloo", timeout=GROUP_TIMEOUT)
        assert engine._group is None
    finally:
        engine.shutdown()


def test_a_server_that_refuses_the_session_fails_before_any_broadcast(tmp_path):
    engine = _launch(tmp_path, 1)
    try:
        engine.init_weight_update_group("127.0.0.1", free_port(), backend="gloo", timeout=GROUP_TIMEOUT)
        engine.client.call(engine.urls[0], "/begin_weight_update", {})  # a session left open elsewhere
        with pytest.raises(RolloutServerError, match="/begin_weight_update.*already open"):
            engine.update_weights_from_distributed(_buckets(1.0), version=1)
        requests = engine.client.call(engine.urls[0], "/debug/requests", method="GET")
        assert not any(p == "/update_weights_from_distributed" for p, _ in requests)
    finally:
        engine.shutdown()


# ------------------------------------------------------------------ two trainer ranks


class _Arch:
    vocab_size = 6

    @staticmethod
    def to_hf_config() -> dict:
        return {"model_type": "qwen2", "vocab_size": 6}


class _Policy:
    """What sync_engine reads of a Policy: HF-named buckets of the current weights."""

    arch = _Arch()

    def __init__(self) -> None:
        self.scale = 0.0

    def export_hf(self, bucket_bytes: int):
        return iter(_buckets(self.scale))


def _sync_then_generate(urls: list[str], strategy: str, run_dir: str, address: str) -> list[int]:
    import torch.distributed as dist

    from megatron_codistill.config import RolloutConfig, SGLangConfig
    from megatron_codistill.trainer.engines import sync_engine

    rank = dist.get_rank()
    r = RolloutConfig(engine="sglang", weight_sync=strategy,
                      sglang=SGLangConfig(urls=list(urls), weight_group_address=address))
    engine = SGLangEngine(urls, tp_sizes=[1] * len(urls), retries=0)
    policy, served = _Policy(), []
    for version in (1, 2):
        policy.scale = float(version)
        sync_engine(engine, policy, r, version=version, run_dir=run_dir)
        out = engine.generate([[rank + 1], [rank + 3]], 1, SamplingParams(max_new_tokens=2))
        served += [g[0].weight_version for g in out]
        dist.barrier()  # the step's collectives: no rank pushes before every rank has generated
    return served


def _check_order(events: list[list[str]]) -> int:
    """Every /generate arrives with no update call in flight and no session open; returns their count."""
    open_session, in_flight, generates = False, 0, 0
    for phase, path in events:
        if path in UPDATES:
            in_flight += 1 if phase == "in" else -1
            if phase == "out" and path == "/begin_weight_update":
                open_session = True
            if phase == "out" and path == "/end_weight_update":
                open_session = False
        elif path == "/generate" and phase == "in":
            assert not open_session and in_flight == 0, f"a /generate arrived during a weight update: {events}"
            generates += 1
    return generates


@pytest.mark.parametrize("strategy", ["disk", "nccl"])
def test_two_ranks_generate_only_after_the_sync_finished(tmp_path, strategy):
    servers = _launch(tmp_path / "logs", 2)
    try:
        # nccl: the servers dial the configured address (this host by name); default: the route to them
        address = "localhost" if strategy == "nccl" else ""
        served = run_distributed(_sync_then_generate, 2, servers.urls, strategy, str(tmp_path), address, timeout=300)
        assert served == [[1, 1, 2, 2], [1, 1, 2, 2]]
        for url in servers.urls:
            requests = servers.client.call(url, "/debug/requests", method="GET")
            events = servers.client.call(url, "/debug/events", method="GET")
            assert _check_order(events) == 4  # 2 ranks x 2 versions, one batch each (prompts alternate servers)
            paths = [p for p, _ in requests if p in UPDATES]
            if strategy == "nccl":
                session = ["/begin_weight_update"] + ["/update_weights_from_distributed"] * 2 + ["/end_weight_update"]
                assert paths == session * 2
                (init,) = [b for p, b in requests if p == "/init_weights_update_group"]
                assert init["master_address"] == "localhost" and init["backend"] == "gloo"
                versions = [b.get("weight_version") for p, b in requests if p == "/update_weights_from_distributed"]
                assert versions == [None, "1", None, "2"]
                got = servers.client.call(url, "/debug/received", method="GET")
                assert got["model.norm.weight"][2] == [-2.0] * 4  # version 2's tensors arrived
            else:
                assert paths == ["/update_weights_from_disk"] * 2
                bodies = [b for p, b in requests if p == "/update_weights_from_disk"]
                assert [b["weight_version"] for b in bodies] == ["1", "2"]
                assert bodies[1]["model_path"] == str(tmp_path / "weight_sync" / "v2")
    finally:
        servers.shutdown()
