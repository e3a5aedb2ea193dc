"""The contract every position variant follows, so one attention module can host any of them.

A variant can act at up to three places, and says which through ``acts_on``:

- ``"input"``: added to the token representations before attention (learned absolute,
  sinusoidal). In a model it is applied once to the embeddings; a standalone
  :class:`~attn_probe.attention.MultiHeadAttention` applies it to its own inputs.
- ``"logits"``: adds a term to the attention logits (Shaw relative keys, T5 bias, ALiBi). The term is
  returned separately by :meth:`logit_term`, so a head's logits split exactly into content + position.
- ``"rotary"``: rotates queries and keys by their positions (RoPE).

Positions are integer tensors ``[n]`` (shared by the batch) or ``[batch, n]``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


def relative_distance(query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
    """``key - query`` for every pair: ``[q, k]``, or ``[batch, q, k]`` for per-example positions.

    Negative values are keys to the left of the query (the past, in a decoder).
    """
    return key_positions.unsqueeze(-2) - query_positions.unsqueeze(-1)


def as_head_term(term: torch.Tensor) -> torch.Tensor:
    """Give a ``[heads, q, k]`` or ``[batch, heads, q, k]`` term the 4-d layout of the logits."""
    return term.unsqueeze(0) if term.dim() == 3 else term


class PositionEncoding(nn.Module):
    """Base class: every hook is the identity / absent until a variant overrides it."""

    name: ClassVar[str] = "none"
    acts_on: ClassVar[str] = "none"

    def embed(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Add position information to token representations ``[batch, n, embed]``."""
        return hidden

    def rotate(
        self, query: torch.Tensor, key: torch.Tensor, query_positions: torch.Tensor, key_positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate per-head queries ``[batch, heads, q, d]`` and keys ``[batch, heads, k, d]``."""
        return query, key

    def logit_term(
        self, query: torch.Tensor, query_positions: torch.Tensor, key_positions: torch.Tensor, scale: float
    ) -> torch.Tensor | None:
        """The additive position part of the logits, ``[batch or 1, heads, q, k]``, or None."""
        return None

    def value_term(
        self, weights: torch.Tensor, query_positions: torch.Tensor, key_positions: torch.Tensor
    ) -> torch.Tensor | None:
        """A position part of each head's output ``[batch, heads, q, d]`` (Shaw values), or None."""
        return None

    @property
    def needs_weights(self) -> bool:
        """True when the output depends on the weights beyond ``weights @ v`` (no fused kernel)."""
        return False
