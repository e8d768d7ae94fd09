"""A deterministic stand-in for an SGLang 0.5.23 HTTP server: its routes, JSON shapes and the state
machine of its weight updates, no model.

Generation rule (row with input ids p, k-th new token): token (p[-1] + k + 1) % 50, log-prob
-0.01 * (k + 1); "output_token_sampling_logprobs" (asked with return_sampling_mask) are half
those, so a test can tell which field was read.

State machine (SGLang's tokenizer manager and scheduler weight updater, main branch of mid 2026):
- `model_update_lock`: /generate holds it shared; /update_weights_from_disk,
  /update_weights_from_distributed, /begin_weight_update and /end_weight_update hold it exclusively,
  so an update waits for running generations and new generations wait for the update.
- weight-update session: /begin_weight_update opens it (refused while open), /end_weight_update
  closes it (refused while closed); /update_weights_from_distributed outside a session is refused
  with HTTP 400 and the server does not join the broadcast. /update_weights_from_disk needs no session.
- /flush_cache while a /generate runs is refused (HTTP 400, nothing flushed); a flush asked by an
  update (`flush_cache`, true by default as in SGLang) runs under the exclusive lock and succeeds.
- weight version: set by the `weight_version` of a disk or distributed update and by
  /update_weight_version; every /generate result carries the version it was served with.

Failure modes, chosen per server:
  ok | http500 | flaky:K (first K /generate answer 503) | slow:S (sleep S s in /generate)
  | malformed (no meta_info) | short (one result missing) | abort | fail_update | mismatch (wrong ids)
  | refuse_bucket:K (the K-th /update_weights_from_distributed, from 1, answers 400 without joining)
  | refuse_group (/init_weights_update_group answers 400 without joining the rendezvous)

`state.generate_gate` (a threading.Event, set) holds every /generate while cleared, to make a
generation "running" deterministically. `events` records ("in" | "out", path) when a request
arrives and when its answer is sent, in order.

In-process: `start_fake(mode)`; as a process (for launch and weight-group tests):
`python fake_sglang.py --model-path M --tp-size 1 --mem-fraction-static F --host H --port P
 [--mode MODE] [--startup-delay S] [--exit-code C]`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VOCAB = 50
NO_SESSION = "update_weights_from_distributed requires an open begin_weight_update session"
BUSY_FLUSH = ("Cache flushed.\nPlease check backend logs for more details. (When there are running or waiting "
              "requests, the operation will not be performed.)\n")


class ModelUpdateLock:
    """SGLang's model_update_lock: shared for /generate, exclusive for weight updates."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.readers = 0
        self.writing = False

    @contextmanager
    def shared(self):
        with self.cond:
            self.cond.wait_for(lambda: not self.writing)
            self.readers += 1
            self.cond.notify_all()  # for whoever waits to see a generation running
        try:
            yield
        finally:
            with self.cond:
                self.readers -= 1
                self.cond.notify_all()

    @contextmanager
    def exclusive(self):
        with self.cond:
            self.cond.wait_for(lambda: not self.writing and self.readers == 0)
            self.writing = True
        try:
            yield
        finally:
            with self.cond:
                self.writing = False
                self.cond.notify_all()


class FakeState:
    def __init__(self, mode: str = "ok", tp_size: int = 1, ready_at: float = 0.0) -> None:
        self.mode, self.tp_size, self.ready_at = mode, tp_size, ready_at
        self.requests: list[tuple[str, object]] = []
        self.events: list[tuple[str, str]] = []
        self.weight_version = "default"
        self.session_open = False
        self.generate_calls = 0
        self.distributed_calls = 0
        self.flushes = 0
        self.group = None
        self.received: dict[str, list] = {}
        self.lock = threading.Lock()
        self.model_lock = ModelUpdateLock()
        self.generate_gate = threading.Event()
        self.generate_gate.set()

    def log(self, phase: str, path: str) -> None:
        with self.lock:
            self.events.append((phase, path))


def fake_row(prompt, params, sampling_mask, weight_version):
    stop = set(params.get("stop_token_ids") or [])
    ids, finish = [], {"type": "length", "length": params["max_new_tokens"]}
    for k in range(params["max_new_tokens"]):
        tok = (prompt[-1] + k + 1) % VOCAB
        ids.append(tok)
        if tok in stop:
            finish = {"type": "stop", "matched": tok}
            break
    lps = [-0.01 * (k + 1) for k in range(len(ids))]
    meta = {
        "id": "x",
        "finish_reason": finish,
        "prompt_tokens": len(prompt),
        "weight_version": weight_version,
        "output_token_logprobs": [[lp, t, None] for lp, t in zip(lps, ids)],
        "completion_tokens": len(ids),
    }
    if sampling_mask:
        meta["output_token_sampling_logprobs"] = [lp / 2 for lp in lps]
    return {"text": "", "output_ids": ids, "meta_info": meta}


def fake_score(prompt, weight_version):
    triples = [[None, prompt[0], None]] + [[-0.1 * t, tok, None] for t, tok in enumerate(prompt[1:], 1)]
    return {
        "text": "",
        "output_ids": [],
        "meta_info": {
            "input_token_logprobs": triples,
            "finish_reason": {"type": "length", "length": 0},
            "weight_version": weight_version,
        },
    }


class Handler(BaseHTTPRequestHandler):
    state: FakeState

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, code: int, payload=None, text: str | None = None) -> None:
        body = text.encode() if text is not None else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain" if text is not None else "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.state.log("out", self.path)

    def do_GET(self):  # noqa: N802 - http.server naming
        s = self.state
        if self.path == "/health":
            return self._send(200 if time.monotonic() >= s.ready_at else 503, text="")
        if self.path == "/server_info":
            gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
            return self._send(200, {"tp_size": s.tp_size, "version": "0.5.23", "cuda_visible_devices": gpus})
        if self.path == "/debug/requests":
            return self._send(200, s.requests)
        if self.path == "/debug/events":
            return self._send(200, s.events)
        if self.path == "/debug/received":
            return self._send(200, s.received)
        if self.path == "/debug/state":
            return self._send(200, {"weight_version": s.weight_version, "session_open": s.session_open,
                                    "flushes": s.flushes})
        self._send(404, {"detail": "Not Found"})

    def do_POST(self):  # noqa: N802
        s = self.state
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n)) if n else None
        with s.lock:
            s.requests.append((self.path, body))
        s.log("in", self.path)
        route = getattr(self, "_route_" + self.path.strip("/"), None)
        if route is None:
            return self._send(404, {"detail": "Not Found"})
        route(body)

    # ------------------------------------------------------------------ generation

    def _route_generate(self, body):
        s = self.state
        with s.lock:
            s.generate_calls += 1
            calls = s.generate_calls
        mode, _, arg = s.mode.partition(":")
        if mode == "http500":
            return self._send(500, {"error": {"message": "CUDA error: an illegal memory access"}})
        if mode == "flaky" and calls <= int(arg):
            return self._send(503, text="")
        with s.model_lock.shared():
            s.generate_gate.wait()
            if mode == "slow":
                time.sleep(float(arg))
            out = self._generate(body, mode)
        self._send(200, out)

    def _generate(self, body, mode):
        s = self.state
        rows, params = body["input_ids"], body["sampling_params"]
        params = params if isinstance(params, list) else [params] * len(rows)
        if params[0]["max_new_tokens"] == 0:
            return [fake_score(p, s.weight_version) for p in rows]
        mask = bool(body.get("return_sampling_mask"))
        out = [fake_row(p, sp, mask, s.weight_version) for p, sp in zip(rows, params)]
        if mode == "malformed":
            out = [{"output_ids": o["output_ids"]} for o in out]
        elif mode == "short":
            out = out[:-1]
        elif mode == "abort":
            out[0]["meta_info"]["finish_reason"] = {"type": "abort", "message": "out of memory"}
        elif mode == "mismatch":
            out[0]["output_ids"] = [o + 1 for o in out[0]["output_ids"]]
        return out

    def _route_flush_cache(self, body):
        s = self.state
        with s.model_lock.cond:
            busy = s.model_lock.readers > 0
        if busy:
            return self._send(400, text=BUSY_FLUSH)
        s.flushes += 1
        self._send(200, text=BUSY_FLUSH)

    # ------------------------------------------------------------------ weights

    def _refuse(self, message: str):
        self._send(400, {"success": False, "message": message})

    def _route_update_weights_from_disk(self, body):
        s = self.state
        if s.mode == "fail_update":
            return self._refuse("Failed to get weights iterator: no such file")
        with s.model_lock.exclusive():
            if body.get("weight_version") is not None:
                s.weight_version = body["weight_version"]
            if body.get("flush_cache", True):
                s.flushes += 1
        self._send(200, {"success": True, "message": "Succeeded to update model weights.",
                         "num_paused_requests": 0})

    def _route_update_weight_version(self, body):
        if self.state.mode == "fail_update":
            return self._refuse("Failed to update weight version")
        self.state.weight_version = body["new_version"]
        self._send(200, {"success": True, "message": "ok"})

    def _route_begin_weight_update(self, body):
        s = self.state
        with s.model_lock.exclusive():
            if s.session_open:
                return self._refuse("begin_weight_update called while a weight-update session is already open")
            s.session_open = True
        self._send(200, {"success": True, "message": "Success"})

    def _route_end_weight_update(self, body):
        s = self.state
        with s.model_lock.exclusive():
            if not s.session_open:
                return self._refuse("end_weight_update called without begin_weight_update")
            s.session_open = False
        self._send(200, {"success": True, "message": "Success"})

    def _route_init_weights_update_group(self, body):
        from megatron_codistill.rollout.weight_group import init_weight_update_group

        if self.state.mode == "refuse_group":
            return self._refuse("Failed to initialize custom process group: injected refusal")
        self.state.group = init_weight_update_group(
            body["master_address"],
            body["master_port"],
            body["rank_offset"],
            body["world_size"],
            body["group_name"],
            body["backend"],
        )
        self._send(200, {"success": True, "message": "Succeeded to initialize custom process group."})

    def _route_update_weights_from_distributed(self, body):
        import torch
        import torch.distributed as dist

        s = self.state
        with s.lock:
            s.distributed_calls += 1
            calls = s.distributed_calls
        mode, _, arg = s.mode.partition(":")
        if mode == "refuse_bucket" and calls == int(arg):
            return self._refuse("Failed to update parameter online: injected refusal")
        with s.model_lock.exclusive():
            if not s.session_open:
                return self._refuse(NO_SESSION)
            for name, dtype, shape in zip(body["names"], body["dtypes"], body["shapes"]):
                t = torch.empty(shape, dtype=getattr(torch, dtype))
                dist.broadcast(t, src=0, group=s.group)
                s.received[name] = [dtype, list(shape), t.float().flatten().tolist()]
            if body.get("flush_cache", True):
                s.flushes += 1
            if body.get("weight_version") is not None:
                s.weight_version = body["weight_version"]
        self._send(200, {"success": True, "message": "Succeeded to update parameter online."})


def start_fake(mode: str = "ok", host: str = "127.0.0.1", port: int = 0, **kw):
    """Serve a fake in a daemon thread. Returns (url, state, server); call server.shutdown() to stop."""
    state = FakeState(mode, **kw)
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://{host}:{server.server_address[1]}", state, server


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--tp-size", type=int, default=1)
    ap.add_argument("--mem-fraction-static", type=float, default=0.8)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", default="ok")
    ap.add_argument("--startup-delay", type=float, default=0.0)
    ap.add_argument("--exit-code", type=int, default=None)
    args = ap.parse_args(argv)
    print(f"fake sglang {args.model_path} tp={args.tp_size} port={args.port}", flush=True)
    if args.exit_code is not None:
        print("fatal: model not found", flush=True)
        sys.exit(args.exit_code)
    _, _, server = start_fake(
        args.mode, args.host, args.port, tp_size=args.tp_size, ready_at=time.monotonic() + args.startup_delay
    )
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
