"""A stand-in trainer module for launch tests: prints what torchrun gave this worker, as JSON."""

import json
import os
import sys

if __name__ == "__main__":
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")
    print("WORKER " + json.dumps({**{k: os.environ.get(k) for k in keys}, "argv": sys.argv[1:]}), flush=True)
