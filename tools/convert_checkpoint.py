"""Convert checkpoints between Hugging Face and Megatron-Core (same as `codistill convert`).

    python tools/convert_checkpoint.py hf-to-mcore --hf DIR --out DIR [--tp N --pp N --dtype bf16|fp32]
    python tools/convert_checkpoint.py mcore-to-hf --mcore DIR --out DIR [--max-shard-size 5GB]
"""

import sys

from megatron_codistill.convert.cli import main

if __name__ == "__main__":
    sys.exit(main())
