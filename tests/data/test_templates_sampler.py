import json

import pytest

from megatron_codistill.data import (
    BOXED_INSTRUCTION,
    TEMPLATES,
    EpochSampler,
    Example,
    build_prompts,
    get_template,
    register_template,
)
from megatron_codistill.data.char_tokenizer import build_char_tokenizer

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 +=?.<>/\n\\{}_'"


@pytest.fixture(scope="module")
def tokenizer():
    tok = build_char_tokenizer(ALPHABET)
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    return tok


def test_templates(tokenizer):
    q = "what is 2+2?"
    r1 = get_template("r1_zero").render(q)
    assert "<think> reasoning process here </think>" in r1 and "<answer> answer here </answer>" in r1
    assert r1.endswith(f"User: {q}\nAssistant:")
    boxed = "\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert get_template("boxed").render(q) == q + boxed
    assert get_template("plain").render(q) == q
    assert get_template("chat").render(q, tokenizer) == f"<user>{q}\n{BOXED_INSTRUCTION}\n<assistant>"


def test_template_errors(tokenizer):
    valid = r"unknown prompt template 'r1'; valid templates: \['boxed', 'chat', 'plain', 'r1_zero'\]"
    with pytest.raises(ValueError, match=valid):
        get_template("r1")
    with pytest.raises(ValueError, match="needs a tokenizer"):
        get_template("chat").render("q")
    bare = build_char_tokenizer(ALPHABET)
    with pytest.raises(ValueError, match="has no chat template; use 'boxed' or 'r1_zero'"):
        get_template("chat").render("q", bare)
    register_template("shout", lambda q, _: q.upper())
    try:
        assert get_template("shout").render("abc") == "ABC"
        with pytest.raises(ValueError, match="already registered"):
            register_template("shout", lambda q, _: q)
    finally:
        del TEMPLATES["shout"]


def test_length_filtering_counts_tokens(tokenizer):
    examples = [Example("a" * n, "1", None, i) for i, n in enumerate([3, 10, 5, 11])]
    kept = build_prompts(examples, "plain", tokenizer, max_prompt_tokens=5)  # one token per character
    assert [p.example.index for p in kept] == [0, 2]
    assert kept[1].ids == tokenizer("aaaaa", add_special_tokens=False)["input_ids"] and len(kept[1].ids) == 5
    assert len(build_prompts(examples, "plain", tokenizer)) == 4
    with pytest.raises(ValueError, match="no valid row: all 4 prompts are longer than max_prompt_tokens=2"):
        build_prompts(examples, "plain", tokenizer, max_prompt_tokens=2)


def test_epochs_are_seeded_permutations():
    s = EpochSampler(10, seed=1)
    epochs = [s.take(10) for _ in range(3)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3  # each epoch reshuffled
    assert EpochSampler(10, seed=1).take(30) == sum(epochs, [])  # deterministic
    assert EpochSampler(10, seed=2).take(10) != epochs[0]
    assert EpochSampler(4, shuffle=False).take(6) == [0, 1, 2, 3, 0, 1]


@pytest.mark.parametrize("first", [0, 3, 7, 10, 12])
def test_resume_yields_the_same_sequence(first):
    reference = EpochSampler(7, seed=5).take(first + 13)
    a = EpochSampler(7, seed=5)
    got = a.take(first)
    state = json.loads(json.dumps(a.state_dict()))  # survives a checkpoint file
    b = EpochSampler(7, seed=0)  # the seed comes from the state
    b.load_state_dict(state)
    assert got + b.take(13) == reference
    assert set(state) >= {"epoch", "position", "seed"}


def test_sampler_errors():
    with pytest.raises(ValueError, match="no valid row"):
        EpochSampler(0)
    s = EpochSampler(5)
    with pytest.raises(ValueError, match="sampler state is for 6 examples but this dataset has 5"):
        s.load_state_dict({"epoch": 0, "position": 0, "seed": 0, "num_examples": 6})
    with pytest.raises(ValueError, match=r"lacks \['seed'\]"):
        s.load_state_dict({"epoch": 0, "position": 0})
    with pytest.raises(ValueError, match="out of range"):
        s.load_state_dict({"epoch": 0, "position": 9, "seed": 0})
