"""SGLangEngine against deterministic fake servers on 127.0.0.1: requests, parsing, error paths.

What a real server does with these requests is tested in test_sglang_gpu.py (marked gpu).
"""

import socket
import sys
from pathlib import Path

import pytest

from megatron_codistill.rollout.base import SamplingParams
from megatron_codistill.rollout.http_client import RolloutServerError
from megatron_codistill.rollout.sglang import SGLangEngine, build_launch_command
from megatron_codistill.rollout.sglang_protocol import build_generate_request
from tests.rollout.fake_sglang import VOCAB, start_fake

# Keys of SGLang 0.5.23's /generate sampling_params schema (sglang/api/v1/api_types.py), which
# rejects any other key.
SGLANG_SAMPLING_KEYS = {
    "max_new_tokens",
    "stop",
    "stop_token_ids",
    "stop_regex",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "min_new_tokens",
    "n",
    "json_schema",
    "regex",
    "ebnf",
    "structural_tag",
    "ignore_eos",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "no_stop_trim",
    "stream_interval",
    "logit_bias",
    "sampling_seed",
    "custom_params",
    "beam_width",
    "watermark",
    "choice",
}
PROMPTS = [[1, 2, 3], [10], [20, 21], [30, 31, 32, 33], [40]]


@pytest.fixture
def fakes():
    servers = []

    def make(mode="ok", **kw):
        url, state, server = start_fake(mode, **kw)
        servers.append(server)
        return url, state

    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


def expected_ids(prompt, max_new, stop=()):
    out = []
    for k in range(max_new):
        out.append((prompt[-1] + k + 1) % VOCAB)
        if out[-1] in stop:
            break
    return out


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def generate_bodies(state):
    return [b for path, b in state.requests if path == "/generate"]


# ------------------------------------------------------------------ request building


def test_request_uses_only_sglang_sampling_keys_and_maps_our_fields():
    sp = SamplingParams(temperature=0.7, top_p=1.0, top_k=0, max_new_tokens=9, stop_token_ids=(5, 6))
    body = build_generate_request([[1, 2], [1, 2]], sp)
    assert body["input_ids"] == [[1, 2], [1, 2]] and body["return_logprob"] is True
    assert "return_sampling_mask" not in body  # no filter: output_token_logprobs are the behaviour ones
    params = body["sampling_params"]
    assert set(params) <= SGLANG_SAMPLING_KEYS
    assert params == {
        "max_new_tokens": 9,
        "temperature": 0.7,
        "top_p": 1.0,
        "top_k": -1,
        "stop_token_ids": [5, 6],
    }


def test_seeds_are_per_row_and_filters_ask_for_renormalised_logprobs():
    sp = SamplingParams(temperature=1.0, top_k=20, top_p=0.9, max_new_tokens=4, seed=7)
    body = build_generate_request([[1], [1], [1]], sp, row_offset=6)
    assert body["return_sampling_mask"] is True
    assert [p["sampling_seed"] for p in body["sampling_params"]] == [7 * 1_000_003 + r for r in (6, 7, 8)]
    assert all(set(p) <= SGLANG_SAMPLING_KEYS for p in body["sampling_params"])
    greedy = build_generate_request([[1]], SamplingParams(temperature=0.0, top_k=20))
    assert "return_sampling_mask" not in greedy


def test_top_p_without_top_k_is_refused_unless_unrenormalised_logprobs_are_accepted():
    sp = SamplingParams(temperature=1.0, top_p=0.9)
    with pytest.raises(ValueError, match="top_p 0.9 without top_k.*filtered_logprobs='unrenormalized'"):
        build_generate_request([[1]], sp)
    assert "return_sampling_mask" not in build_generate_request([[1]], sp, filtered_logprobs="unrenormalized")


def test_launch_command():
    cmd = build_launch_command(
        "/m",
        port=31000,
        tp=2,
        mem_fraction=0.7,
        extra_args=["--sampling-backend", "x"],
        launcher=["py", "-m", "sglang.launch_server"],
    )
    assert cmd == [
        "py",
        "-m",
        "sglang.launch_server",
        "--model-path",
        "/m",
        "--tp-size",
        "2",
        "--mem-fraction-static",
        "0.7",
        "--host",
        "127.0.0.1",
        "--port",
        "31000",
        "--sampling-backend",
        "x",
    ]


# ------------------------------------------------------------------ generation


def test_generate_parses_tokens_logprobs_and_finish_reasons(fakes):
    url, state = fakes()
    engine = SGLangEngine([url])
    out = engine.generate(PROMPTS, 2, SamplingParams(temperature=1.0, max_new_tokens=4, stop_token_ids=(12,)))
    assert len(out) == len(PROMPTS)
    for prompt, group in zip(PROMPTS, out):
        want = expected_ids(prompt, 4, stop=(12,))
        for r in group:
            assert r.prompt_ids == prompt and r.response_ids == want
            assert r.logprobs == pytest.approx([-0.01 * (k + 1) for k in range(len(want))])
            assert r.finish_reason == ("stop" if want[-1] == 12 else "length")
    assert out[1][0].finish_reason == "stop"  # prompt [10] reaches 12 on its second token


def test_filtered_sampling_reads_the_renormalised_field(fakes):
    url, state = fakes()
    out = SGLangEngine([url]).generate([[1]], 1, SamplingParams(top_k=8, max_new_tokens=3))
    assert out[0][0].logprobs == pytest.approx([-0.005, -0.01, -0.015])
    assert generate_bodies(state)[0]["return_sampling_mask"] is True


def test_prompts_are_spread_over_servers_with_all_copies_together(fakes):
    (u0, s0), (u1, s1) = fakes(), fakes()
    engine = SGLangEngine([u0, u1], max_prompts_per_request=2)
    sp = SamplingParams(max_new_tokens=2, seed=3)
    out = engine.generate(PROMPTS, 3, sp)
    assert [[r.prompt_ids for r in g] for g in out] == [[p] * 3 for p in PROMPTS]
    # chunks of at most 2 prompts x 3 copies, sent concurrently (arrival order is free)
    bodies0 = sorted((b["input_ids"] for b in generate_bodies(s0)), key=len, reverse=True)
    bodies1 = [b["input_ids"] for b in generate_bodies(s1)]
    assert bodies0 == [[PROMPTS[0]] * 3 + [PROMPTS[2]] * 3, [PROMPTS[4]] * 3]
    assert bodies1 == [[PROMPTS[1]] * 3 + [PROMPTS[3]] * 3]
    # seeds follow the global row (prompt b, sample g -> b*3+g), not the server it landed on
    seeds = {}
    for state in (s0, s1):
        for b in generate_bodies(state):
            for row, p in zip(b["input_ids"], b["sampling_params"]):
                seeds.setdefault(tuple(row), []).append(p["sampling_seed"] - 3 * 1_000_003)
    assert seeds == {tuple(p): [3 * b, 3 * b + 1, 3 * b + 2] for b, p in enumerate(PROMPTS)}


def test_dead_server_error_names_the_server_and_the_batch():
    url = closed_port_url()
    engine = SGLangEngine([url], retries=1, retry_backoff=0.01)
    with pytest.raises(RolloutServerError, match=r"connection failed") as info:
        engine.generate(PROMPTS[:3], 2, SamplingParams(max_new_tokens=2))
    msg = str(info.value)
    assert url in msg and "prompts [0-2]" in msg and "after 2 attempts" in msg
    assert info.value.url == url and info.value.prompt_indices == [0, 1, 2]


def test_timeout_is_retried_then_reported(fakes):
    url, state = fakes("slow:1.0")
    engine = SGLangEngine([url], timeout=0.3, retries=1, retry_backoff=0.01)
    with pytest.raises(RolloutServerError, match=r"timed out after 0.3s") as info:
        engine.generate([[1]], 1, SamplingParams(max_new_tokens=1))
    assert url in str(info.value) and state.generate_calls == 2


def test_transient_503_is_retried_to_success(fakes):
    url, state = fakes("flaky:1")
    out = SGLangEngine([url], retries=2, retry_backoff=0.01).generate(
        [[5]], 1, SamplingParams(max_new_tokens=2)
    )
    assert out[0][0].response_ids == [6, 7] and state.generate_calls == 2


@pytest.mark.parametrize(
    "mode,message",
    [
        ("malformed", r"malformed result .*result 0: KeyError: 'meta_info'"),
        ("short", r"malformed result .*expected a list of 2 results, got 1"),
        ("abort", r"aborted by the server: out of memory"),
        ("mismatch", r"do not match output_ids"),
    ],
)
def test_malformed_or_aborted_results_are_errors(fakes, mode, message):
    url, _ = fakes(mode)
    with pytest.raises(RolloutServerError, match=message) as info:
        SGLangEngine([url]).generate([[1], [2]], 1, SamplingParams(max_new_tokens=2))
    assert url in str(info.value) and "prompts [0-1]" in str(info.value)


def test_partial_failure_returns_nothing_and_names_the_failed_server(fakes):
    (good, _), (bad, bad_state) = fakes(), fakes("http500")
    engine = SGLangEngine([good, bad], retries=1, retry_backoff=0.01)
    with pytest.raises(RolloutServerError) as info:
        engine.generate(PROMPTS, 1, SamplingParams(max_new_tokens=2))
    msg = str(info.value)
    assert bad in msg and good not in msg and "prompts [1, 3]" in msg and "illegal memory access" in msg
    assert bad_state.generate_calls == 2


def test_score_reads_input_token_logprobs(fakes):
    url, state = fakes()
    got = SGLangEngine([url]).score([[4, 5, 6], [7, 8]])
    assert got == [pytest.approx([-0.1, -0.2]), pytest.approx([-0.1])]
    body = generate_bodies(state)[0]
    assert body["sampling_params"]["max_new_tokens"] == 0 and body["logprob_start_len"] == 0


# ------------------------------------------------------------------ weights


def test_update_from_disk_sets_the_version_and_results_are_checked_against_it(fakes):
    (u0, s0), (u1, s1) = fakes(), fakes()
    engine = SGLangEngine([u0, u1])
    engine.update_weights_from_disk("/ckpt/step3", version=3)
    assert engine.version == 3
    for s in (s0, s1):
        assert (
            "/update_weights_from_disk",
            {"model_path": "/ckpt/step3", "weight_version": "3"},
        ) in s.requests
    out = engine.generate(PROMPTS, 1, SamplingParams(max_new_tokens=1))
    assert all(r.weight_version == 3 for g in out for r in g)
    s1.weight_version = "2"  # a server that missed the update
    with pytest.raises(
        RolloutServerError, match=rf"{u1} served the batch of prompts \[1, 3\] with weight version"
    ):
        engine.generate(PROMPTS, 1, SamplingParams(max_new_tokens=1))


def test_failed_update_names_the_server_and_keeps_the_version(fakes):
    (u0, _), (u1, s1) = fakes(), fakes("fail_update")
    engine = SGLangEngine([u0, u1])
    with pytest.raises(RolloutServerError, match=rf"{u1}.*no such file"):
        engine.update_weights_from_disk("/ckpt/x", version=9)
    assert engine.version == 0
    assert sum(path == "/update_weights_from_disk" for path, _ in s1.requests) == 1  # 4xx is not retried


def test_flush_cache_reaches_every_server(fakes):
    (u0, s0), (u1, s1) = fakes(), fakes()
    SGLangEngine([u0, u1]).flush_cache()
    assert ("/flush_cache", None) in s0.requests and ("/flush_cache", None) in s1.requests


# ------------------------------------------------------------------ launching

FAKE = str(Path(__file__).with_name("fake_sglang.py"))


def free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
        with socket.socket() as b:
            try:
                b.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports")


def test_launch_waits_for_health_assigns_gpus_and_shuts_down(tmp_path):
    engine = SGLangEngine.launch(
        "/models/tiny",
        num_servers=2,
        tp=2,
        base_port=free_port_pair(),
        launcher=[sys.executable, FAKE],
        extra_args=["--startup-delay", "1.0"],
        startup_timeout=60,
        log_dir=tmp_path,
    )
    try:
        out = engine.generate(PROMPTS, 1, SamplingParams(max_new_tokens=1))
        assert [g[0].response_ids for g in out] == [expected_ids(p, 1) for p in PROMPTS]
        infos = [engine.client.call(u, "/server_info", method="GET") for u in engine.urls]
        assert [i["cuda_visible_devices"] for i in infos] == ["0,1", "2,3"]
        assert [i["tp_size"] for i in infos] == [2, 2]
        procs = list(engine._processes)
    finally:
        engine.shutdown()
    assert all(p.poll() is not None for p in procs)
    engine.shutdown()  # idempotent


def test_launch_reports_a_server_that_dies_while_starting(tmp_path):
    with pytest.raises(RolloutServerError, match=r"exited with code 3 while starting(.|\n)*model not found"):
        SGLangEngine.launch(
            "/models/missing",
            base_port=free_port_pair(),
            launcher=[sys.executable, FAKE],
            extra_args=["--exit-code", "3"],
            startup_timeout=60,
            log_dir=tmp_path,
        )


def test_requests_bypass_the_environment_proxy(fakes, monkeypatch):
    url, _ = fakes()
    proxy = closed_port_url()  # a proxy that is down: any request sent to it fails
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, proxy)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    import urllib.request

    with pytest.raises(OSError):  # what urllib alone does with this environment
        urllib.request.urlopen(url + "/health", timeout=10)
    out = SGLangEngine([url], retries=0).generate([[5]], 1, SamplingParams(max_new_tokens=2))
    assert out[0][0].response_ids == [6, 7]
