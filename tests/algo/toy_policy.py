"""A tiny autoregressive categorical policy whose every sequence can be enumerated.

Vocabulary 3, responses of exactly 2 tokens: 9 sequences. Parameters are the first-token logits [3]
and the second-token logits given the first [3, 3]. Everything is float64 so that enumeration
identities hold to ~1e-12.
"""

from __future__ import annotations

import itertools

import torch

V, LENGTH = 3, 2
# all 9 sequences, row o = (o1, o2)
SEQS = torch.tensor(list(itertools.product(range(V), repeat=LENGTH)), dtype=torch.long)
N = SEQS.shape[0]
MASK = torch.ones(N, LENGTH, dtype=torch.float64)


class ToyPolicy:
    def __init__(self, seed: int, scale: float = 1.0, requires_grad: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.first = (scale * torch.randn(V, generator=g, dtype=torch.float64)).requires_grad_(requires_grad)
        self.second = (scale * torch.randn(V, V, generator=g, dtype=torch.float64)).requires_grad_(
            requires_grad
        )

    def parameters(self) -> list[torch.Tensor]:
        return [self.first, self.second]

    def token_logp(self) -> torch.Tensor:
        """[9, 2]: log pi(o_1) and log pi(o_2 | o_1) of every sequence."""
        l1 = torch.log_softmax(self.first, -1)[SEQS[:, 0]]
        l2 = torch.log_softmax(self.second, -1)[SEQS[:, 0], SEQS[:, 1]]
        return torch.stack([l1, l2], dim=1)

    def seq_logp(self) -> torch.Tensor:
        """[9]: log pi(o)."""
        return self.token_logp().sum(dim=1)

    def first_logp(self) -> torch.Tensor:
        """[3]: log pi(x) of the first token."""
        return torch.log_softmax(self.first, -1)

    def second_logp(self) -> torch.Tensor:
        """[3, 3]: log pi(x | first token) (row: first token)."""
        return torch.log_softmax(self.second, -1)


def grad(scalar: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """Flattened gradient of `scalar` with respect to `params`."""
    gs = torch.autograd.grad(scalar, params, allow_unused=True, retain_graph=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(gs, params)])
