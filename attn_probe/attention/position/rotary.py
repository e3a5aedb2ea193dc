"""Rotary position embedding, RoPE (Su et al. 2021), in the half-split layout Llama uses.

Dimension ``i`` and ``i + d/2`` of each head form a plane that is rotated by ``p * base^(-2i/d)`` at
position ``p``. Rotations keep norms, and ``R_m q · R_n k`` depends on ``n - m`` only.
"""

from __future__ import annotations

import torch

from attn_probe.attention.position.base import PositionEncoding


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the last dimension: a quarter turn in every plane."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


class Rotary(PositionEncoding):
    name = "rotary"
    acts_on = "rotary"

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary positions need an even head_dim, got {head_dim}")
        inverse_frequency = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inverse_frequency", inverse_frequency, persistent=False)  # [head_dim / 2]

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos`` and ``sin`` of every angle, ``[n, head_dim]`` or ``[batch, 1, n, head_dim]``."""
        angles = positions.float().unsqueeze(-1) * self.inverse_frequency  # [(batch,) n, head_dim / 2]
        angles = torch.cat([angles, angles], dim=-1)  # [(batch,) n, head_dim]
        if angles.dim() == 3:
            angles = angles.unsqueeze(1)  # broadcast over heads
        return angles.cos(), angles.sin()

    def apply(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        cos, sin = self.cos_sin(positions)
        rotated = x.float() * cos + rotate_half(x.float()) * sin
        return rotated.to(x.dtype)

    def rotate(self, query, key, query_positions, key_positions):
        return self.apply(query, query_positions), self.apply(key, key_positions)
