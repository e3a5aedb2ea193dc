"""Relative keys and values with clipped distance (Shaw, Uszkoreit & Vaswani 2018).

``e_ij = q_i · (k_j + a^K_ij) * scale`` and ``z_i = sum_j alpha_ij (v_j + a^V_ij)`` where
``a_ij = w[clip(j - i, -max_distance, max_distance)]``: one learned vector per clipped distance,
shared by all heads. The key part is returned as a logit term; the value part as a value term.
"""

from __future__ import annotations

import torch
from torch import nn

from attn_probe.attention.position.base import PositionEncoding, relative_distance


class RelativeShaw(PositionEncoding):
    name = "shaw"
    acts_on = "logits"

    def __init__(self, head_dim: int, max_distance: int = 16, values: bool = True) -> None:
        super().__init__()
        if max_distance < 1:
            raise ValueError(f"max_distance must be at least 1, got {max_distance}")
        self.max_distance = max_distance
        self.key_table = nn.Embedding(2 * max_distance + 1, head_dim)  # [2D + 1, head_dim]
        self.value_table = nn.Embedding(2 * max_distance + 1, head_dim) if values else None
        nn.init.normal_(self.key_table.weight, std=head_dim**-0.5)
        if self.value_table is not None:
            nn.init.normal_(self.value_table.weight, std=head_dim**-0.5)

    def distance_index(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
        """Row of the tables for each pair: ``clip(k - q) + max_distance``, ``[(batch,) q, k]``."""
        distance = relative_distance(query_positions, key_positions)
        return distance.clamp(-self.max_distance, self.max_distance) + self.max_distance

    def _index_for(self, target: torch.Tensor, query_positions: torch.Tensor, key_positions: torch.Tensor):
        index = self.distance_index(query_positions, key_positions)
        if index.dim() == 3:  # per-example positions
            index = index.unsqueeze(1)
        batch, heads, queries = target.shape[:3]
        return index.expand(batch, heads, queries, index.shape[-1])  # [batch, heads, q, k]

    def logit_term(self, query, query_positions, key_positions, scale):
        # q against every distance vector once, then pick per pair: O(q * D) not O(q * k * d).
        per_distance = query @ self.key_table.weight.to(query.dtype).T  # [batch, heads, q, 2D + 1]
        index = self._index_for(query, query_positions, key_positions)
        return per_distance.gather(-1, index) * scale  # [batch, heads, q, k]

    def value_term(self, weights, query_positions, key_positions):
        if self.value_table is None:
            return None
        index = self._index_for(weights, query_positions, key_positions)
        buckets = weights.new_zeros(*weights.shape[:3], self.value_table.num_embeddings)
        buckets.scatter_add_(-1, index, weights)  # [batch, heads, q, 2D + 1]: weight per distance
        return buckets @ self.value_table.weight.to(weights.dtype)  # [batch, heads, q, head_dim]

    @property
    def needs_weights(self) -> bool:
        return self.value_table is not None
