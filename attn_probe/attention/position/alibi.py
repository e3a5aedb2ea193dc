"""ALiBi: a fixed linear penalty on distance, one slope per head (Press, Smith & Lewis 2022).

``bias_ij = -m_h * |j - i|``. With causal masking this is the paper's ``m_h * (j - i)`` for ``j <= i``;
the absolute value lets the same module serve an encoder.
"""

from __future__ import annotations

import math

import torch

from attn_probe.attention.position.base import PositionEncoding, as_head_term, relative_distance


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """Geometric slopes ``2^(-8/n), 2^(-16/n), ...``; for a head count that is not a power of two,
    the slopes of the next lower power of two plus every other slope of the one above (the paper's rule)."""

    def geometric(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    lower = 2 ** math.floor(math.log2(num_heads))
    slopes = geometric(lower)
    if lower < num_heads:
        slopes += geometric(2 * lower)[0::2][: num_heads - lower]
    return torch.tensor(slopes, dtype=torch.float32)


class ALiBi(PositionEncoding):
    name = "alibi"
    acts_on = "logits"

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(num_heads), persistent=False)  # [heads]

    def logit_term(self, query, query_positions, key_positions, scale):
        distance = relative_distance(query_positions, key_positions).abs().to(self.slopes.dtype)
        slopes = self.slopes.view(-1, 1, 1)  # [heads, 1, 1]
        if distance.dim() == 3:  # per-example positions: [batch, q, k] -> [batch, heads, q, k]
            return (-slopes * distance.unsqueeze(1)).to(query.dtype)
        return as_head_term(-slopes * distance).to(query.dtype)
