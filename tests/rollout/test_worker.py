"""The rollout worker process: the embedded engine in a child, answering in the order it was asked.

The in-process EmbeddedEngine with the same weights and seed is the reference: a worker's rollouts, its
RNG state and its log-probs are the same, a generation started before a weight update sees the old
weights, and every failure reaches the caller with the child's traceback."""

import os
import signal

import pytest
import torch

from megatron_codistill.rollout.base import SamplingParams
from megatron_codistill.rollout.embedded import EmbeddedEngine
from megatron_codistill.rollout.worker import WorkerEngine, WorkerError
from tests.rollout.helpers import tiny_config, tiny_model

SAMPLING = SamplingParams(temperature=1.0, max_new_tokens=8, stop_token_ids=(1,))
PROMPTS = [[3, 4, 5], [6, 7], [8, 9, 10, 11]]


def weights(seed):
    return list(tiny_model(seed=seed).state_dict().items())


KW = dict(pad_token_id=0, max_batch_size=4, seed=5)


@pytest.fixture(scope="module")
def started():
    worker = WorkerEngine(tiny_config(), **KW)
    yield worker
    worker.shutdown()


@pytest.fixture
def pair(started):
    """(worker, in-process reference) of one architecture, generator state and weights."""
    reference = EmbeddedEngine.from_config(tiny_config(), **KW)
    for engine in (started, reference):
        engine.update_weights(weights(0), version=1)
    started.set_rng_state(reference.rng_state())
    return started, reference


def same(a, b):
    return [[(r.response_ids, r.logprobs, r.finish_reason, r.weight_version) for r in g] for g in a] == \
        [[(r.response_ids, r.logprobs, r.finish_reason, r.weight_version) for r in g] for g in b]


def test_worker_rollouts_equal_the_in_process_engine(pair):
    worker, reference = pair
    for _ in range(2):  # the generator state carries over between calls
        assert same(worker.generate(PROMPTS, 3, SAMPLING), reference.generate(PROMPTS, 3, SAMPLING))
    assert torch.equal(worker.rng_state()["generator"], reference.rng_state()["generator"])
    assert worker.score([[3, 4, 5, 6]]) == reference.score([[3, 4, 5, 6]])
    assert worker.version == 1


def test_a_generation_started_before_an_update_sees_the_old_weights(pair):
    worker, reference = pair
    pending = worker.generate_async(PROMPTS, 2, SAMPLING)  # queued before the update below
    worker.update_weights(weights(1), version=2)
    expected_old = reference.generate(PROMPTS, 2, SAMPLING)
    reference.update_weights(weights(1), version=2)
    assert same(worker.generate(PROMPTS, 2, SAMPLING), reference.generate(PROMPTS, 2, SAMPLING))
    assert same(pending.result(), expected_old)  # read after later replies: kept in order
    start, end = pending.interval
    assert start <= end


def test_rng_state_round_trip_replays_the_same_samples(pair):
    worker, _ = pair
    state = worker.rng_state()
    first = worker.generate(PROMPTS, 2, SAMPLING)
    worker.set_rng_state(state)
    assert same(worker.generate(PROMPTS, 2, SAMPLING), first)


def test_errors_in_the_child_reach_the_caller_with_its_traceback(pair):
    worker, _ = pair
    with pytest.raises(WorkerError, match="outside the vocabulary") as e:
        worker.generate([[3, 99]], 1, SAMPLING)
    assert "Traceback" in str(e.value)
    worker.begin_weight_update()
    worker.load_weights([("model.no_such_weight", torch.zeros(2))])
    with pytest.raises(WorkerError, match="unknown weight 'model.no_such_weight'"):
        worker.commit_weight_update(3)  # the sync's first error surfaces when it is committed
    assert worker.version == 1


def test_preemption_signals_are_left_to_the_trainer_and_a_dead_worker_is_reported():
    worker, reference = WorkerEngine(tiny_config(), **KW), EmbeddedEngine.from_config(tiny_config(), **KW)
    try:
        with pytest.raises(WorkerError, match="weights are random"):  # built from a config: no sync yet
            worker.generate(PROMPTS, 1, SAMPLING)
        for engine in (worker, reference):
            engine.update_weights(weights(0), version=1)
        os.kill(worker._proc.pid, signal.SIGTERM)  # what SLURM sends every process of a job step
        assert same(worker.generate(PROMPTS, 1, SAMPLING), reference.generate(PROMPTS, 1, SAMPLING))
        os.kill(worker._proc.pid, signal.SIGKILL)
        worker._proc.join(timeout=10)
        with pytest.raises(WorkerError, match="died"):
            worker.generate(PROMPTS, 1, SAMPLING)
    finally:
        worker.shutdown()
    assert not worker._proc.is_alive()
