import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# no model or dataset is downloaded in tests: a hub name fails at once instead of after network retries
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# one thread: with several test processes on 2 cores, intra-op threads oversubscribe badly
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
