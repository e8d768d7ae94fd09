import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# no model or dataset is downloaded in tests: a hub name fails at once instead of after network retries
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# one thread: with several test processes on 2 cores, intra-op threads oversubscribe badly
torch.set_num_threads(1)


LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _no_launcher_env_leaks():
    """An in-process run sets RANK / MASTER_PORT ... for its one-process group (whose store keeps that
    port); the commands later tests start must not inherit them."""
    saved = {k: os.environ.get(k) for k in LAUNCHER_VARS}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
