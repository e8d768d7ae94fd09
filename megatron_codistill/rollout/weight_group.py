"""The trainer's end of an SGLang weight-update process group.

SGLang (0.5.23, `srt/utils/common.py:init_custom_process_group`, called from its model runner's
`init_weights_update_group`) builds this group outside its default world: a `tcp://` rendezvous at
(master_address, master_port), the store wrapped in a `PrefixStore(group_name, ...)`, then torch's
internal `_new_process_group_helper`; its ranks are `rank_offset + tp_rank` and the trainer is
rank 0, the broadcast source. The trainer must build its end the same way so that both sides
exchange the same store keys, which is what this module does.

`alongside` runs the servers' HTTP calls next to the trainer's side of a collective (rendezvous,
broadcast): a server that refuses answers HTTP 400 and never joins, so the first failure of either
side is raised at once instead of leaving the trainer in the collective until the group timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


def init_weight_update_group(
    master_address: str,
    master_port: int,
    rank: int,
    world_size: int,
    group_name: str = "weight_update_group",
    backend: str = "nccl",
    timeout: timedelta = timedelta(minutes=10),
) -> dist.ProcessGroup:
    """Join (rank 0 hosts the TCP store) a group of `world_size` ranks outside the default world."""
    from torch.distributed.distributed_c10d import (
        Backend,
        PrefixStore,
        _new_process_group_helper,
        _world,
        rendezvous,
    )

    store, rank, world_size = next(
        rendezvous(f"tcp://{master_address}:{master_port}", rank, world_size, timeout=timeout)
    )
    store.set_timeout(timeout)
    store = PrefixStore(group_name, store)
    group, _ = _new_process_group_helper(
        world_size, rank, [], Backend(backend), store, group_name=group_name, timeout=timeout
    )
    # Group ranks are global ranks of this private world, so broadcast(src=0) means the trainer.
    _world.pg_group_ranks[group] = {i: i for i in range(world_size)}
    return group


def destroy_weight_update_group(group: dist.ProcessGroup) -> None:
    dist.destroy_process_group(group)


def broadcast_tensors(tensors: list[torch.Tensor], group: dist.ProcessGroup, device: torch.device | None) -> None:
    """Broadcast `tensors` in order from group rank 0; on a CUDA `device`, return once they are sent."""
    if device is not None:
        torch.cuda.set_device(device)  # per thread: NCCL runs on the current device's streams
    for t in tensors:
        dist.broadcast(t, src=0, group=group)
    if device is not None:
        torch.cuda.synchronize(device)


def alongside(calls: Callable[[], Any], collective: Callable[[], Any],
              on_abandon: Callable[[], None] | None = None) -> Any:
    """Run the servers' `calls` and this process's `collective` at once; returns the collective's result.

    Raises the first exception of either. When the calls fail while the collective still waits (the
    servers that refused will never join it), `on_abandon` runs first: the collective's thread stays
    blocked until the group times out or is aborted, so its group must not be used again.
    """
    http, local = _in_thread(calls), _in_thread(collective)
    wait([http, local], return_when=FIRST_EXCEPTION)
    if http.done() and http.exception() is not None:
        if not local.done() and on_abandon is not None:
            on_abandon()
        raise http.exception()
    if local.exception() is not None:
        raise local.exception()
    http.result()  # the collective finished; the servers answer once they have loaded or joined
    return local.result()


def _in_thread(fn: Callable[[], Any]) -> Future:
    """`fn()` in a daemon thread (a thread stuck in a dead collective must not hold up exit)."""
    future: Future = Future()

    def run() -> None:
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn())
        except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
            future.set_exception(e)

    threading.Thread(target=run, daemon=True).start()
    return future


def abort_group(group: dist.ProcessGroup) -> None:
    """Best effort: unblock a collective left waiting on `group` (NCCL aborts; gloo times out)."""
    try:
        group.abort()
    except Exception:  # noqa: BLE001 - not every backend can abort
        pass
