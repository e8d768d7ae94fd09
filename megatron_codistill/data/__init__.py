"""Datasets of math problems: loading (local files or hub names, through `datasets`), field presets,
prompt templates, token-length filtering and deterministic shuffled epochs with a resumable cursor."""

from megatron_codistill.data.loading import load_examples, load_rows
from megatron_codistill.data.presets import PRESETS, Example, FieldPreset, get_preset, to_example
from megatron_codistill.data.prompts import Prompt, build_prompts
from megatron_codistill.data.sampler import EpochSampler
from megatron_codistill.data.templates import (
    BOXED_INSTRUCTION,
    TEMPLATES,
    PromptTemplate,
    get_template,
    register_template,
)

__all__ = [
    "BOXED_INSTRUCTION",
    "PRESETS",
    "TEMPLATES",
    "EpochSampler",
    "Example",
    "FieldPreset",
    "Prompt",
    "PromptTemplate",
    "build_prompts",
    "get_preset",
    "get_template",
    "load_examples",
    "load_rows",
    "register_template",
    "to_example",
]
