"""Rollouts from SGLang servers over HTTP, and pushing new weights to them.

Written against SGLang 0.5.23 (the PyPI wheel's source): `srt/entrypoints/http_server.py` for
the routes, `srt/managers/io_struct.py` for the request fields, `srt/layers/sampler.py` for what
the returned log-probs are. Nothing from sglang is imported: servers are reached over HTTP (stdlib
`urllib`) and launched as `python -m sglang.launch_server` subprocesses.

Legend: B prompts, G (= n) samples per prompt.

Routes used:
  GET  /health                          200 once the server is up (503 while starting)
  POST /generate                        {"input_ids": [[...]], "sampling_params", "return_logprob": true,
                                         "return_sampling_mask"?} -> one {"output_ids", "meta_info"} per row
  POST /update_weights_from_disk        {"model_path", "weight_version"} (flushes the cache itself)
  POST /init_weights_update_group       {"master_address", "master_port", "rank_offset", "world_size",
                                         "group_name", "backend"}
  POST /begin_weight_update             {} opens a weight-update session (refused while one is open)
  POST /update_weights_from_distributed {"names", "dtypes", "shapes", "group_name", "flush_cache",
                                         "weight_version"?}; refused outside a session
  POST /end_weight_update               {} closes the session
  POST /destroy_weights_update_group    {"group_name"}
  POST /flush_cache                     refused (HTTP 400) while requests run or wait
  GET  /server_info                     for "tp_size" when attaching without being told

Behaviour log-probs. SGLang's `meta_info.output_token_logprobs` holds, per output token,
[log-prob, token id, text]: log softmax(logits / T) for sampled requests, log softmax(logits) for
greedy ones (the embedded engine's convention too). That is the behaviour distribution only when no
top-k / top-p filter is active. With filters, this client asks for `return_sampling_mask` and reads
`meta_info.output_token_sampling_logprobs`, which SGLang renormalises over the kept support; SGLang
accepts that only with a finite top_k, 1 < top_k <= `--sampling-mask-max-tokens` (default 4096).
SGLang applies top-k and top-p jointly on the temperature-scaled distribution, as
`rollout.sampling` does.

Other SGLang behaviours to know: a request also stops at the model's own EOS ids (besides
`stop_token_ids`; `ignore_eos` would disable both); `sampling_seed` is sent per rollout
(seed * 1_000_003 + row) when `SamplingParams.seed` is set, but SGLang reproduces a seeded sample
only on servers started with `--enable-deterministic-inference` (pass it in
`rollout.sglang.extra_args` or slurm's `--sglang-args`); without it the same seed may give other
tokens, and its flashinfer top-k/top-p sampler does not honour seeds. The trainer itself sends no seed.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from megatron_codistill.rollout.base import Pending, Rollout, RolloutEngine, SamplingParams
from megatron_codistill.rollout.http_client import HttpClient, RolloutServerError, format_ranges
from megatron_codistill.rollout.sglang_protocol import (
    FILTERED_LOGPROBS,
    build_generate_request,
    merge_bodies,
    needs_sampling_mask,
    parse_generate_response,
)

logger = logging.getLogger(__name__)


def build_launch_command(
    model_path: str,
    *,
    port: int,
    tp: int = 1,
    mem_fraction: float = 0.8,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
    launcher: Sequence[str] | None = None,
) -> list[str]:
    """argv of one server: `python -m sglang.launch_server --model-path ... --tp-size ...`."""
    launcher = list(launcher or (sys.executable, "-m", "sglang.launch_server"))
    return [
        *launcher,
        "--model-path",
        str(model_path),
        "--tp-size",
        str(tp),
        "--mem-fraction-static",
        str(mem_fraction),
        "--host",
        host,
        "--port",
        str(port),
        *extra_args,
    ]


class SGLangEngine(RolloutEngine):
    """Rollouts from one or more SGLang servers; prompts are spread over them.

    Args:
        urls: base URLs of running servers ("http://host:port").
        timeout: seconds one /generate attempt may take.
        retries: extra attempts of a /generate after a timeout, connection error or HTTP 5xx.
        retry_backoff: seconds before the first retry (doubling after each).
        max_prompts_per_request: prompts (each with its G copies) per /generate call.
        filtered_logprobs: with top-k / top-p, "renormalized" reads SGLang's behaviour log-probs
            (return_sampling_mask); "unrenormalized" accepts log softmax(logits / T).
        tp_sizes: tensor-parallel size of each server (for the NCCL group); asked from
            /server_info when needed and not given.
        check_weight_version: after an update, every result must carry the new weight version.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout: float = 600.0,
        retries: int = 2,
        retry_backoff: float = 1.0,
        max_prompts_per_request: int = 64,
        filtered_logprobs: str = "renormalized",
        tp_sizes: Sequence[int] | None = None,
        check_weight_version: bool = True,
        update_timeout: float = 1800.0,
    ) -> None:
        if not urls:
            raise ValueError("SGLangEngine needs at least one server URL")
        if filtered_logprobs not in FILTERED_LOGPROBS:
            raise ValueError(
                f"filtered_logprobs {filtered_logprobs!r} is not one of {list(FILTERED_LOGPROBS)}"
            )
        self.urls = [u.rstrip("/") for u in urls]
        self.client = HttpClient(timeout=timeout, retries=retries, backoff=retry_backoff)
        self.max_prompts_per_request = max_prompts_per_request
        self.filtered_logprobs = filtered_logprobs
        self.tp_sizes = list(tp_sizes) if tp_sizes is not None else None
        self.check_weight_version = check_weight_version
        self.update_timeout = update_timeout
        self._version = 0
        self._updated = False  # results carry our version only after we set one
        self._group = None
        self._abandoned: list = []  # groups left to a failed collective (see _abandon_group)
        self._group_name = "weight_update_group"
        self._processes: list[subprocess.Popen] = []
        self._logs: list[Path] = []

    # ---------------------------------------------------------------- launching

    @classmethod
    def launch(
        cls,
        model_path: str,
        *,
        num_servers: int = 1,
        tp: int = 1,
        mem_fraction: float = 0.8,
        host: str = "127.0.0.1",
        base_port: int = 30000,
        gpu_ids: Sequence[Sequence[int]] | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 900.0,
        log_dir: str | Path | None = None,
        launcher: Sequence[str] | None = None,
        **engine_kw,
    ) -> SGLangEngine:
        """Start `num_servers` servers (ports base_port, base_port + 1, ...) and wait until healthy.

        Server i sees GPUs `gpu_ids[i]` (default: the i-th block of `tp` GPUs when there are several
        servers; the inherited CUDA_VISIBLE_DEVICES for one). Each server's output goes to
        `log_dir/sglang_<port>.log`, whose tail is quoted if it dies while starting.
        """
        if gpu_ids is None and num_servers > 1:
            gpu_ids = [list(range(i * tp, (i + 1) * tp)) for i in range(num_servers)]
        if gpu_ids is not None and len(gpu_ids) != num_servers:
            raise ValueError(f"gpu_ids has {len(gpu_ids)} entries for num_servers {num_servers}")
        log_root = Path(log_dir or tempfile.mkdtemp(prefix="sglang_logs_"))
        log_root.mkdir(parents=True, exist_ok=True)
        urls = [f"http://{host}:{base_port + i}" for i in range(num_servers)]
        engine = cls(urls, tp_sizes=[tp] * num_servers, **engine_kw)
        try:
            for i, url in enumerate(urls):
                port = base_port + i
                cmd = build_launch_command(
                    model_path,
                    port=port,
                    tp=tp,
                    mem_fraction=mem_fraction,
                    host=host,
                    extra_args=extra_args,
                    launcher=launcher,
                )
                env = dict(os.environ)
                if gpu_ids is not None:
                    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids[i])
                log = log_root / f"sglang_{port}.log"
                logger.info("launching %s (log %s): %s", url, log, " ".join(cmd))
                with open(log, "w") as fh:
                    proc = subprocess.Popen(
                        cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
                    )
                engine._processes.append(proc)
                engine._logs.append(log)
            engine.wait_healthy(startup_timeout)
        except BaseException:
            engine.shutdown()
            raise
        return engine

    def wait_healthy(self, timeout: float = 900.0, poll: float = 1.0) -> None:
        """Poll GET /health on every server until each answers 200; a server that exits raises."""
        deadline = time.monotonic() + timeout
        pending = list(range(len(self.urls)))
        while pending:
            for i in list(pending):
                proc = self._processes[i] if i < len(self._processes) else None
                if proc is not None and proc.poll() is not None:
                    raise RolloutServerError(
                        f"rollout server {self.urls[i]} exited with code {proc.returncode} while starting; "
                        f"log {self._logs[i]} ends with:\n{_tail(self._logs[i])}",
                        self.urls[i],
                    )
                try:
                    self.client.call(
                        self.urls[i],
                        "/health",
                        method="GET",
                        timeout=5.0,
                        retries=0,
                        expect_json=False,
                        what="health",
                    )
                    pending.remove(i)
                except RolloutServerError:
                    pass
            if pending and time.monotonic() > deadline:
                raise RolloutServerError(
                    f"rollout servers {[self.urls[i] for i in pending]} not healthy after {timeout:g}s",
                    self.urls[pending[0]],
                )
            if pending:
                time.sleep(poll)

    def shutdown(self) -> None:
        """Stop the servers this engine launched (their whole process groups). Idempotent."""
        if self._group is not None:
            from megatron_codistill.rollout.weight_group import destroy_weight_update_group

            destroy_weight_update_group(self._group)
            self._group = None
        for proc in self._processes:
            if proc.poll() is None:
                _signal_group(proc, 15)
        for proc in self._processes:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _signal_group(proc, 9)
                proc.wait(timeout=30)
        self._processes = []

    # ---------------------------------------------------------------- generation

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> list[list[Rollout]]:
        """Sample `n` responses per prompt; all G copies of a prompt go to one server (prefix cache).

        Prompts are dealt to servers in turn and sent in chunks of `max_prompts_per_request`, all
        chunks at once. Any failed chunk fails the whole call, naming its server and prompts.
        """
        return self._generate(prompts, n, sampling, self._version)

    def generate_async(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> Pending:
        """`generate` on a background thread (HTTP only: it calls no collective). The results must carry
        the weight version served now; a weight update sent meanwhile waits on the servers' model lock."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sglang-generate")
        future = pool.submit(self._generate, prompts, n, sampling, self._version)
        pool.shutdown(wait=False)
        return Pending(wait=future.result)

    def _generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams,
                  version: int) -> list[list[Rollout]]:
        if n < 1:
            raise ValueError(f"n ({n}) must be >= 1")
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty")
        jobs: list[tuple[str, list[int]]] = []
        for s, url in enumerate(self.urls):
            mine = list(range(s, len(prompts), len(self.urls)))
            for start in range(0, len(mine), self.max_prompts_per_request):
                jobs.append((url, mine[start : start + self.max_prompts_per_request]))
        use_mask = needs_sampling_mask(sampling) and self.filtered_logprobs == "renormalized"

        def run(job: tuple[str, list[int]]) -> list[Rollout]:
            url, indices = job
            rows = [list(prompts[b]) for b in indices for _ in range(n)]
            # seeds follow the global row index b*n + g, whatever the spread over servers
            bodies = [
                build_generate_request(rows[k * n : (k + 1) * n], sampling, b * n, self.filtered_logprobs)
                for k, b in enumerate(indices)
            ]
            body = merge_bodies(bodies)
            response = self.client.call(url, "/generate", body, what="generate", prompt_indices=indices)
            try:
                rollouts = parse_generate_response(response, rows, use_mask, version)
            except ValueError as e:
                raise RolloutServerError(
                    f"rollout server {url} (/generate) returned a malformed result for the batch of prompts "
                    f"{format_ranges(indices)}: {e}",
                    url,
                    indices,
                ) from None
            self._check_versions(url, indices, response, version)
            return rollouts

        results: dict[int, Rollout] = {}
        errors: list[RolloutServerError] = []
        with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), 32))) as pool:
            for (_, indices), future in zip(jobs, [pool.submit(run, j) for j in jobs]):
                try:
                    for k, r in enumerate(future.result()):
                        results[indices[k // n] * n + k % n] = r
                except RolloutServerError as e:
                    errors.append(e)
        if errors:
            if len(errors) == 1:
                raise errors[0]
            raise RolloutServerError(
                f"{len(errors)} of {len(jobs)} generate batches failed; no results are returned:\n"
                + "\n".join(str(e) for e in errors),
                errors[0].url,
                errors[0].prompt_indices,
            )
        return [[results[b * n + g] for g in range(n)] for b in range(len(prompts))]

    def _check_versions(self, url: str, indices: list[int], response: list, version: int) -> None:
        if not (self.check_weight_version and self._updated):
            return
        seen = {str(item.get("meta_info", {}).get("weight_version")) for item in response}
        if seen != {str(version)}:
            raise RolloutServerError(
                f"rollout server {url} served the batch of prompts {format_ranges(indices)} with weight version(s) "
                f"{sorted(seen)}, expected {version}",
                url,
                indices,
            )

    def score(self, token_ids: list[list[int]]) -> list[list[float]]:
        """Temperature-1 log-probs of tokens 1..T-1 of each sequence ([B][T_b - 1]), via prefill only."""
        url = self.urls[0]
        body = {
            "input_ids": [list(s) for s in token_ids],
            "sampling_params": {"max_new_tokens": 0, "temperature": 1.0},
            "return_logprob": True,
            "logprob_start_len": 0,
        }
        indices = list(range(len(token_ids)))
        response = self.client.call(url, "/generate", body, what="score", prompt_indices=indices)
        if not isinstance(response, list) or len(response) != len(token_ids):
            raise RolloutServerError(
                f"rollout server {url} (/generate, score) returned a malformed result", url
            )
        out = []
        for i, (item, seq) in enumerate(zip(response, token_ids)):
            try:
                triples = item["meta_info"]["input_token_logprobs"]
                if [int(t[1]) for t in triples] != list(seq):
                    raise ValueError("input_token_logprobs do not match the input ids")
                out.append([float(t[0]) for t in triples[1:]])  # the first token has no log-prob (None)
            except (KeyError, TypeError, IndexError, ValueError) as e:
                raise RolloutServerError(
                    f"rollout server {url} (/generate, score): sequence {i}: {type(e).__name__}: {e}",
                    url,
                    [i],
                ) from None
        return out

    # ---------------------------------------------------------------- weights

    @property
    def version(self) -> int:
        return self._version

    def _call_all(self, path: str, payload: Any, what: str, timeout: float | None = None) -> list[Any]:
        """POST the same body to every server at once (see `_call_each`)."""
        return self._call_each(path, dict.fromkeys(self.urls, payload), what, timeout)

    def _call_each(self, path: str, payloads: dict[str, Any], what: str, timeout: float | None = None) -> list[Any]:
        """POST `payloads[url]` to each server at once; raises naming every server that failed or said
        success=false. 4xx answers are final (no retry)."""

        def one(url: str) -> Any:
            out = self.client.call(
                url,
                path,
                payloads[url],
                timeout=timeout or self.update_timeout,
                retries=0,
                expect_json=path != "/flush_cache",
                what=what,
            )
            if isinstance(out, dict) and out.get("success") is False:
                raise RolloutServerError(f"rollout server {url} ({path}, {what}): {out.get('message')}", url)
            return out

        with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
            futures = [pool.submit(one, u) for u in payloads]
        errors, results = [], []
        for f in futures:
            try:
                results.append(f.result())
            except RolloutServerError as e:
                errors.append(e)
        if errors:
            raise RolloutServerError("; ".join(str(e) for e in errors), errors[0].url)
        return results

    def update_weights_from_disk(self, model_path: str | Path, version: int) -> None:
        """Every server reloads its weights from an HF checkpoint directory it can read.

        SGLang loads under its model-update lock (running generations finish first), flushes its
        cache (`flush_cache` defaults to true) and takes `weight_version` in the same request.
        """
        self._call_all(
            "/update_weights_from_disk",
            {"model_path": str(model_path), "weight_version": str(version)},
            what=f"load weights version {version}",
        )
        self._set_version(version)

    def flush_cache(self) -> None:
        """Drop every server's prefix cache. SGLang refuses (HTTP 400) while requests run or wait."""
        self._call_all("/flush_cache", None, what="flush cache")

    def init_weight_update_group(
        self,
        master_address: str,
        master_port: int,
        *,
        group_name: str | None = None,
        backend: str = "nccl",
        timeout: timedelta = timedelta(minutes=10),
    ) -> None:
        """Make one group of the trainer (rank 0) and every server's TP ranks (1 ... world - 1).

        `group_name` defaults to "weight_update_group_<master_port>": unique in this process, where a
        group abandoned by a failed update keeps its name registered.
        The servers' /init_weights_update_group calls return once everyone joined the rendezvous this
        process hosts; a server that refuses fails the call at once (see `weight_group.alongside`).
        `master_address` must be an address of this host the servers can reach.
        """
        from megatron_codistill.rollout.weight_group import alongside, init_weight_update_group

        group_name = group_name or f"weight_update_group_{master_port}"
        tp_sizes = self.tp_sizes or [
            int(self.client.call(u, "/server_info", method="GET")["tp_size"]) for u in self.urls
        ]
        world = 1 + sum(tp_sizes)
        bodies = {
            url: {
                "master_address": master_address,
                "master_port": master_port,
                "rank_offset": 1 + sum(tp_sizes[:i]),
                "world_size": world,
                "group_name": group_name,
                "backend": backend,
            }
            for i, url in enumerate(self.urls)
        }
        what = f"join the weight-update group at {master_address}:{master_port}"
        group = alongside(
            lambda: self._call_each("/init_weights_update_group", bodies, what, timeout.total_seconds()),
            lambda: init_weight_update_group(master_address, master_port, 0, world, group_name, backend, timeout),
        )
        self._group, self._group_name = group, group_name

    def update_weights_from_distributed(
        self, buckets: Iterable[Sequence[tuple[str, torch.Tensor]]], version: int
    ) -> None:
        """Broadcast every bucket from this process (rank 0) to all servers; they serve `version` after.

        One SGLang weight-update session: /begin_weight_update, per bucket one
        /update_weights_from_distributed (names, dtypes, shapes) answered once the server loaded the
        tensors this process broadcasts in that order, /end_weight_update. The last bucket carries
        `weight_version` and `flush_cache`, which SGLang applies under its model-update lock, so no
        separate /flush_cache can meet a running request. Finding the last bucket keeps the next one
        of the stream alive while a bucket is sent (two buckets in memory at most).
        A failure on any server raises at once, naming the server and the bucket; after a failure
        inside a bucket the group is dropped (the servers' weights are partly updated: restart them).
        """
        from megatron_codistill.rollout.weight_group import alongside, broadcast_tensors

        if self._group is None:
            raise RuntimeError("no weight-update group: call init_weight_update_group first")
        device = None
        if torch.cuda.is_available() and self._group_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        self._call_all("/begin_weight_update", {}, what=f"begin the weight update to version {version}")
        sent = 0
        for k, (bucket, last) in enumerate(_mark_last(b for b in map(list, buckets) if b), 1):
            body = {
                "names": [n for n, _ in bucket],
                "dtypes": [str(t.dtype).removeprefix("torch.") for _, t in bucket],
                "shapes": [list(t.shape) for _, t in bucket],
                "group_name": self._group_name,
                "flush_cache": last,
            }
            if last:
                body["weight_version"] = str(version)
            tensors = [t.detach().contiguous() if device is None else t.detach().to(device).contiguous()
                       for _, t in bucket]
            group, what = self._group, f"receive bucket {k} ({len(bucket)} tensors) of version {version}"
            alongside(
                lambda body=body, what=what: self._call_all("/update_weights_from_distributed", body, what),
                lambda tensors=tensors, group=group: broadcast_tensors(tensors, group, device),
                on_abandon=self._abandon_group,
            )
            sent += 1
        self._call_all("/end_weight_update", {}, what=f"end the weight update to version {version}")
        if sent == 0:
            raise ValueError(f"the weight update to version {version} had no tensors to send")
        self._set_version(version)

    def _abandon_group(self) -> None:
        """A collective on the group can no longer complete: stop using it (and never destroy it)."""
        from megatron_codistill.rollout.weight_group import abort_group

        if self._group is not None:
            abort_group(self._group)
            self._abandoned.append(self._group)
            self._group = None

    def _group_backend(self) -> str:
        return str(torch.distributed.get_backend(self._group))

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """One bucket through the NCCL group (see `rollout.weight_sync` for bucketed and disk syncs)."""
        self.update_weights_from_distributed([list(named_tensors)], version)

    def _set_version(self, version: int) -> None:
        self._version, self._updated = version, True


def _mark_last(items: Iterable[Any]) -> Iterator[tuple[Any, bool]]:
    """(item, is_last) for each item, reading one item ahead."""
    it = iter(items)
    try:
        current = next(it)
    except StopIteration:
        return
    for nxt in it:
        yield current, False
        current = nxt
    yield current, True


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the process group of a server this engine started (start_new_session=True)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(log unreadable: {e})"
