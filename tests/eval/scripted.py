"""A rollout engine that answers from a script, for checking the harness's bookkeeping exactly
(the real embedded engine is run end to end in test_cli.py)."""

from megatron_codistill.rollout.base import Rollout, RolloutEngine

ALPHABET = "abcdefghijklmnopqrstuvwxyzP0123456789 +=?\\{}#\n.,()^-/$[]"


class ScriptedEngine(RolloutEngine):
    """Greedy calls answer `greedy[question]`; sampled calls answer `sampled[question][:n]`.

    The question is the prompt's first line (the `boxed` template puts the instruction after it).
    `fail_after` generate calls, the next one raises KeyboardInterrupt (an interrupted evaluation).
    """

    def __init__(self, tokenizer, greedy, sampled, *, truncated=(), fail_after=None):
        self.tok, self.greedy, self.sampled, self.truncated = tokenizer, greedy, sampled, set(truncated)
        self.fail_after, self.calls, self.generate_calls = fail_after, [], 0

    def generate(self, prompts, n, sampling):
        if self.fail_after is not None and self.generate_calls >= self.fail_after:
            raise KeyboardInterrupt
        self.generate_calls += 1
        out = []
        for ids in prompts:
            question = self.tok.decode(ids).split("\n")[0]
            self.calls.append((question, n, sampling.temperature))
            texts = [self.greedy[question]] if sampling.temperature == 0 else self.sampled[question][:n]
            assert len(texts) == n
            out.append([self._rollout(ids, t, question, sampling.temperature == 0) for t in texts])
        return out

    def _rollout(self, ids, text, question, greedy):
        resp = self.tok(text, add_special_tokens=False)["input_ids"]
        finish = "length" if greedy and question in self.truncated else "stop"
        return Rollout(list(ids), resp, [-0.1] * len(resp), finish)

    def update_weights(self, named_tensors, version):
        raise NotImplementedError

    @property
    def version(self):
        return 0
