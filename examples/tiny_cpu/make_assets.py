"""Regenerate the tiny example's tokenizer and data (deterministic; the outputs are committed).

    python examples/tiny_cpu/make_assets.py
"""

from pathlib import Path

from megatron_codistill.data.arith import ALPHABET, write_dataset
from megatron_codistill.data.char_tokenizer import build_char_tokenizer

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    build_char_tokenizer(ALPHABET, HERE / "tokenizer")
    write_dataset(HERE / "data" / "train.jsonl", n=20000, digits=3, seed=0)
    write_dataset(HERE / "data" / "test.jsonl", n=500, digits=3, seed=1)
    print(f"wrote {HERE / 'tokenizer'} and {HERE / 'data'}")
