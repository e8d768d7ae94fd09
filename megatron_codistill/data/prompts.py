"""Examples -> tokenised prompts, dropping those over a token budget."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from megatron_codistill.data.presets import Example
from megatron_codistill.data.templates import get_template

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prompt:
    """A rendered, tokenised problem."""

    example: Example
    text: str
    ids: list[int]


def build_prompts(
    examples: list[Example], template: str, tokenizer, *, max_prompt_tokens: int | None = None
) -> list[Prompt]:
    """Render every example with `template`, tokenise it (no special tokens added: templates carry
    their own) and drop prompts longer than `max_prompt_tokens` tokens (None keeps all).

    ValueError when nothing is left, saying how many prompts were over the budget.
    """
    render = get_template(template).render
    out, dropped = [], 0
    for ex in examples:
        text = render(ex.question, tokenizer)
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            dropped += 1
            continue
        out.append(Prompt(ex, text, ids))
    if dropped:
        logger.info("dropped %d of %d prompts over %d tokens", dropped, len(examples), max_prompt_tokens)
    if not out:
        raise ValueError(
            f"no valid row: all {len(examples)} prompts are longer than max_prompt_tokens={max_prompt_tokens}"
        )
    return out
