"""A character-level Hugging Face tokenizer built offline (the tiny example needs no download)."""

from __future__ import annotations

from pathlib import Path

PAD, EOS = "<pad>", "<eos>"


def build_char_tokenizer(alphabet: str, out_dir: str | Path | None = None):
    """A `PreTrainedTokenizerFast` with ids 0 = <pad>, 1 = <eos>, then one id per character.

    Text is split into single characters and decoded without separators. Saved with
    `save_pretrained(out_dir)` when `out_dir` is given, so it loads with AutoTokenizer.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if len(set(alphabet)) != len(alphabet):
        raise ValueError(f"alphabet {alphabet!r} repeats characters")
    vocab = {PAD: 0, EOS: 1, **{c: i + 2 for i, c in enumerate(alphabet)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # "." would skip newlines
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS)
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast
