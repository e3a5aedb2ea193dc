"""T5's bucketed relative position bias (Raffel et al. 2020).

Distances map to ``num_buckets`` buckets: exact for small distances, logarithmically wider up to
``max_distance``, one bucket beyond. Bidirectional (encoder) variants keep separate buckets for keys
to the right; unidirectional (decoder) ones only see the past. Each bucket has a learned scalar per
head, added to the logits. Unlike T5, which learns the table in its first layer and reuses it, each
layer of our models owns its table.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attn_probe.attention.position.base import PositionEncoding, as_head_term, relative_distance


def t5_bucket(distance: torch.Tensor, *, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bucket of each ``key - query`` distance, as T5 defines it."""
    bucket = torch.zeros_like(distance)
    if bidirectional:
        num_buckets //= 2
        bucket += (distance > 0).long() * num_buckets  # keys to the right get the upper half
        span = distance.abs()
    else:
        span = (-distance).clamp_min(0)  # future keys all fall in bucket 0
    exact = num_buckets // 2
    # Logarithmic buckets from `exact` up to `max_distance`; the clamp keeps log() away from 0.
    log_ratio = torch.log(span.clamp_min(1).float() / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (num_buckets - exact)).long()).clamp_max(num_buckets - 1)
    return bucket + torch.where(span < exact, span, far)


class T5RelativeBias(PositionEncoding):
    name = "t5"
    acts_on = "logits"

    def __init__(
        self, num_heads: int, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True
    ) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.bias = nn.Embedding(num_buckets, num_heads)  # [buckets, heads]

    def buckets(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
        distance = relative_distance(query_positions, key_positions)
        return t5_bucket(
            distance, bidirectional=self.bidirectional, num_buckets=self.num_buckets, max_distance=self.max_distance
        )  # [(batch,) q, k]

    def logit_term(self, query, query_positions, key_positions, scale):
        values = self.bias(self.buckets(query_positions, key_positions))  # [(batch,) q, k, heads]
        return as_head_term(values.movedim(-1, -3)).to(query.dtype)  # [batch or 1, heads, q, k]
