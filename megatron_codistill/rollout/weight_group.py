"""The trainer's end of an SGLang weight-update process group.

SGLang (0.5.23, `srt/utils/common.py:init_custom_process_group`, called from its model runner's
`init_weights_update_group`) builds this group outside its default world: a `tcp://` rendezvous at
(master_address, master_port), the store wrapped in a `PrefixStore(group_name, ...)`, then torch's
internal `_new_process_group_helper`; its ranks are `rank_offset + tp_rank` and the trainer is
rank 0, the broadcast source. The trainer must build its end the same way so that both sides
exchange the same store keys, which is what this module does.
"""

from __future__ import annotations

from datetime import timedelta

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
