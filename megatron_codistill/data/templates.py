"""Prompt templates: how a question becomes the text the model continues.

| name    | prompt                                                                           |
|---------|----------------------------------------------------------------------------------|
| r1_zero | DeepSeek-R1-Zero's conversation prompt (reason in `<think>`, answer in `<answer>`) |
| boxed   | the question, then "Please reason step by step, and put your final answer within \\boxed{}." |
| chat    | the tokenizer's chat template around the `boxed` prompt (one user turn)          |
| plain   | the question as is                                                               |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

R1_ZERO = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
    "The Assistant first thinks about the reasoning process in the mind and then provides the User with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>.\nUser: {question}\nAssistant:"
)
"""The R1-Zero template (DeepSeek-R1 report, table 1), which CoDistill-GRPO trains with."""


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    build: Callable[[str, object], str]
    needs_tokenizer: bool = False

    def render(self, question: str, tokenizer=None) -> str:
        """The prompt text for `question` (`tokenizer` is only read by templates that need one)."""
        if self.needs_tokenizer and tokenizer is None:
            raise ValueError(f"prompt template {self.name!r} needs a tokenizer")
        return self.build(question, tokenizer)


def _chat(question: str, tokenizer) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"prompt template 'chat': tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat "
            "template; use 'boxed' or 'r1_zero'"
        )
    messages = [{"role": "user", "content": f"{question}\n{BOXED_INSTRUCTION}"}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


TEMPLATES: dict[str, PromptTemplate] = {
    t.name: t
    for t in (
        PromptTemplate("r1_zero", lambda q, _: R1_ZERO.format(question=q)),
        PromptTemplate("boxed", lambda q, _: f"{q}\n{BOXED_INSTRUCTION}"),
        PromptTemplate("chat", _chat, needs_tokenizer=True),
        PromptTemplate("plain", lambda q, _: q),
    )
}


def get_template(name: str) -> PromptTemplate:
    """A template by name; ValueError listing the templates otherwise."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown prompt template {name!r}; valid templates: {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def register_template(
    name: str, build: Callable[[str, object], str], *, needs_tokenizer: bool = False
) -> None:
    """Add a template `build(question, tokenizer) -> str`; ValueError if the name is taken."""
    if name in TEMPLATES:
        raise ValueError(f"prompt template {name!r} is already registered")
    TEMPLATES[name] = PromptTemplate(name, build, needs_tokenizer)
