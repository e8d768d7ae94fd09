"""megatron-codistill: CoDistill-GRPO, a large and a small language model trained together.

Layers (lower never imports higher): algo < rewards, data < models, convert < parallel < rollout
< trainer, eval < cli. `config` is plain dataclasses that every layer may read.
"""

__version__ = "0.1.0"
