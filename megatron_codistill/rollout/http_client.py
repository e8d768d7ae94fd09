"""A small JSON-over-HTTP client (stdlib only) with timeouts and retries, for rollout servers.

Rollout servers are cluster-internal: requests never go through `http_proxy` / `HTTP_PROXY`, which
cluster nodes often set for outside access (a proxy cannot reach the servers' addresses).
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy, whatever the environment


class RolloutServerError(RuntimeError):
    """A rollout server failed. `url` names the server; `prompt_indices` the batch, when there is one."""

    def __init__(self, message: str, url: str, prompt_indices: list[int] | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.prompt_indices = prompt_indices


class _Retryable(Exception):
    """Connection refused / reset, timeout, or HTTP 5xx: the same request may succeed later."""


@dataclass
class HttpClient:
    timeout: float = 600.0
    """Seconds one attempt may take (connect + response)."""
    retries: int = 2
    """Extra attempts after a retryable failure (connection error, timeout, HTTP 5xx)."""
    backoff: float = 1.0
    """Seconds before the first retry; doubles each time."""

    def call(
        self,
        url: str,
        path: str,
        payload: Any = None,
        *,
        method: str = "POST",
        timeout: float | None = None,
        retries: int | None = None,
        expect_json: bool = True,
        what: str = "",
        prompt_indices: list[int] | None = None,
    ) -> Any:
        """`method url+path` with a JSON body; returns the parsed JSON (or the text).

        HTTP 4xx fails at once (the request is wrong: retrying cannot help); 5xx, timeouts and
        connection errors are retried. Every failure raises `RolloutServerError` naming the server,
        the endpoint, `what` the call was for and the prompt indices of the batch.
        """
        retries = self.retries if retries is None else retries
        delay, last = self.backoff, ""
        for attempt in range(retries + 1):
            try:
                return self._once(url, path, payload, method, timeout or self.timeout, expect_json)
            except _Retryable as e:
                last = str(e)
                if attempt < retries:
                    logger.warning(
                        "%s%s failed (%s); retry %d/%d in %.1fs", url, path, e, attempt + 1, retries, delay
                    )
                    time.sleep(delay)
                    delay *= 2
            except RolloutServerError as e:
                raise RolloutServerError(
                    self._describe(url, path, what, prompt_indices) + f": {e}", url, prompt_indices
                ) from None
        raise RolloutServerError(
            self._describe(url, path, what, prompt_indices) + f" failed after {retries + 1} attempts: {last}",
            url,
            prompt_indices,
        )

    @staticmethod
    def _describe(url: str, path: str, what: str, prompt_indices: list[int] | None) -> str:
        text = f"rollout server {url} ({path}"
        text += f", {what})" if what else ")"
        if prompt_indices is not None:
            text += f" on the batch of prompts {format_ranges(prompt_indices)}"
        return text

    @staticmethod
    def _once(url: str, path: str, payload: Any, method: str, timeout: float, expect_json: bool) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with _DIRECT.open(req, timeout=timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            if e.code >= 500:
                raise _Retryable(f"HTTP {e.code}: {detail}") from None
            raise RolloutServerError(f"HTTP {e.code}: {detail}", url) from None
        except (urllib.error.URLError, ConnectionError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise _Retryable(f"timed out after {timeout:g}s") from None
            raise _Retryable(f"connection failed: {reason}") from None
        except TimeoutError:
            raise _Retryable(f"timed out after {timeout:g}s") from None
        if not expect_json:
            return body.decode(errors="replace")
        try:
            return json.loads(body)
        except json.JSONDecodeError:
            raise RolloutServerError(f"response is not JSON: {body[:200]!r}", url) from None


def format_ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8' (the batch, short enough for an error message)."""
    out, start = [], None
    for i, v in enumerate(indices):
        if start is None:
            start = v
        if i + 1 == len(indices) or indices[i + 1] != v + 1:
            out.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return "[" + ", ".join(out) + "]"
