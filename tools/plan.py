#!/usr/bin/env python
"""Same as `codistill plan ...`: memory per GPU and step time of a model pair on a GPU cluster.

    python tools/plan.py 1.5B/7B --gpu h200 --gpus 16
"""

import argparse
import sys

from megatron_codistill.planner.cli import add_plan_args

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="tools/plan.py")
    sub = parser.add_subparsers(dest="command", required=True)
    add_plan_args(sub)
    args = parser.parse_args(["plan", *sys.argv[1:]])
    sys.exit(args.func(args))
