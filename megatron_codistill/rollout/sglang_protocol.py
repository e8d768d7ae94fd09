"""The JSON of SGLang's /generate (0.5.23): request bodies from SamplingParams, Rollouts from results.

Request: {"input_ids": [[...], ...], "sampling_params": {...} or one per row, "return_logprob": true,
"return_sampling_mask": true when top-k / top-p are active}. Result, per row: {"output_ids": [...],
"meta_info": {"finish_reason": {"type": "stop" | "length" | "abort", ...},
"output_token_logprobs": [[log-prob, token id, text], ...], "output_token_sampling_logprobs": [...],
"weight_version": "..."}} (see `rollout.sglang` for which log-probs are the behaviour ones).
"""

from __future__ import annotations

from typing import Any

from megatron_codistill.rollout.base import Rollout, SamplingParams

SGLANG_SOURCE_VERSION = "0.5.23"
FILTERED_LOGPROBS = ("renormalized", "unrenormalized")
_SEED_STRIDE = 1_000_003


def build_sampling_params(sampling: SamplingParams, max_new_tokens: int | None = None) -> dict[str, Any]:
    """SGLang `sampling_params` (its API rejects unknown keys, so only real ones are sent)."""
    params: dict[str, Any] = {
        "max_new_tokens": sampling.max_new_tokens if max_new_tokens is None else max_new_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k if sampling.top_k > 0 else -1,  # -1: whole vocabulary
    }
    if sampling.stop_token_ids:
        params["stop_token_ids"] = list(sampling.stop_token_ids)
    return params


def needs_sampling_mask(sampling: SamplingParams) -> bool:
    """True when output_token_logprobs would not be the behaviour log-probs (filters are active)."""
    return sampling.temperature > 0 and (sampling.top_k > 0 or sampling.top_p < 1.0)


def build_generate_request(
    rows: list[list[int]],
    sampling: SamplingParams,
    row_offset: int = 0,
    filtered_logprobs: str = "renormalized",
) -> dict[str, Any]:
    """Body of one /generate call; `rows` are prompts already repeated G times (prompt-major).

    `row_offset` is the global index of rows[0], so that per-row seeds do not depend on how the
    rows were spread over servers.
    """
    params = build_sampling_params(sampling)
    body: dict[str, Any] = {"input_ids": rows, "return_logprob": True}
    if sampling.seed is None:
        body["sampling_params"] = params
    else:
        body["sampling_params"] = [
            {**params, "sampling_seed": (sampling.seed * _SEED_STRIDE + row_offset + i) % 2**63}
            for i in range(len(rows))
        ]
    if needs_sampling_mask(sampling) and filtered_logprobs == "renormalized":
        if sampling.top_k == 0:
            raise ValueError(
                f"sampling.top_p {sampling.top_p} without top_k: SGLang {SGLANG_SOURCE_VERSION} returns "
                "renormalised (behaviour) log-probs only for a finite top_k, 1 <= top_k <= "
                "--sampling-mask-max-tokens; set top_k, or filtered_logprobs='unrenormalized' to accept "
                "log softmax(logits / T) instead"
            )
        body["return_sampling_mask"] = True
    return body


def parse_generate_response(
    response: Any, rows: list[list[int]], use_sampling_logprobs: bool, version: int
) -> list[Rollout]:
    """One Rollout per row; raises ValueError describing the first malformed item."""
    if not isinstance(response, list):
        response = [response] if isinstance(response, dict) and len(rows) == 1 else response
    if not isinstance(response, list) or len(response) != len(rows):
        got = len(response) if isinstance(response, list) else type(response).__name__
        raise ValueError(f"expected a list of {len(rows)} results, got {got}")
    out = []
    for i, (item, prompt) in enumerate(zip(response, rows)):
        try:
            meta = item["meta_info"]
            ids = [int(t) for t in item["output_ids"]]
            finish = meta["finish_reason"]
            kind = finish.get("type") if isinstance(finish, dict) else None
            if kind == "abort":
                raise ValueError(f"aborted by the server: {finish.get('message')}")
            if kind not in ("stop", "length"):
                raise ValueError(f"finish_reason {finish!r} is neither stop nor length")
            triples = meta["output_token_logprobs"]
            if len(triples) != len(ids) or [int(t[1]) for t in triples] != ids:
                raise ValueError(
                    f"output_token_logprobs ({len(triples)} entries) do not match "
                    f"output_ids ({len(ids)} tokens)"
                )
            if use_sampling_logprobs:
                logprobs = [float(x) for x in meta["output_token_sampling_logprobs"]]
                if len(logprobs) != len(ids):
                    raise ValueError(
                        f"output_token_sampling_logprobs has {len(logprobs)} entries for {len(ids)} tokens"
                    )
            else:
                logprobs = [float(t[0]) for t in triples]
        except (KeyError, TypeError, IndexError, ValueError) as e:
            raise ValueError(f"result {i}: {type(e).__name__}: {e}") from None
        out.append(Rollout(list(prompt), ids, logprobs, kind, weight_version=version))
    return out


def merge_bodies(bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate per-prompt /generate bodies (same flags) into one batched body."""
    merged = dict(bodies[0])
    merged["input_ids"] = [row for b in bodies for row in b["input_ids"]]
    if isinstance(bodies[0]["sampling_params"], list):
        merged["sampling_params"] = [p for b in bodies for p in b["sampling_params"]]
    return merged
