"""Absolute positions added to the token representations: learned (BERT) and sinusoidal (Vaswani)."""

from __future__ import annotations

import math

import torch
from torch import nn

from attn_probe.attention.position.base import PositionEncoding


def _check_range(positions: torch.Tensor, max_positions: int) -> None:
    if positions.numel() and int(positions.max()) >= max_positions:
        raise ValueError(
            f"position {int(positions.max())} is beyond the {max_positions} learned positions: "
            "shorten the input or build the model with a larger max_positions"
        )


class LearnedAbsolute(PositionEncoding):
    """One trained vector per position, added to the embeddings (BERT, GPT-2)."""

    name = "learned"
    acts_on = "input"

    def __init__(self, embed_dim: int, max_positions: int = 512) -> None:
        super().__init__()
        self.max_positions = max_positions
        self.table = nn.Embedding(max_positions, embed_dim)  # [max_positions, embed]

    def encodings(self, positions: torch.Tensor) -> torch.Tensor:
        _check_range(positions, self.max_positions)
        return self.table(positions)  # [(batch,) n, embed]

    def embed(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return hidden + self.encodings(positions)


class Sinusoidal(PositionEncoding):
    """Fixed sines and cosines at geometric frequencies (Vaswani et al. 2017), any length.

    ``PE[p, 2i] = sin(p / base^(2i/d))`` and ``PE[p, 2i+1] = cos(p / base^(2i/d))``.
    """

    name = "sinusoidal"
    acts_on = "input"

    def __init__(self, embed_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if embed_dim % 2:
            raise ValueError(f"sinusoidal positions need an even embed_dim, got {embed_dim}")
        self.embed_dim = embed_dim
        self.base = base

    def encodings(self, positions: torch.Tensor) -> torch.Tensor:
        even_dims = torch.arange(0, self.embed_dim, 2, device=positions.device, dtype=torch.float64)
        frequencies = torch.exp(-math.log(self.base) * even_dims / self.embed_dim)  # [embed / 2]
        angles = positions.to(torch.float64).unsqueeze(-1) * frequencies  # [(batch,) n, embed / 2]
        table = torch.stack([angles.sin(), angles.cos()], dim=-1)  # [(batch,) n, embed / 2, 2]
        return table.flatten(-2).to(torch.float32)  # [(batch,) n, embed], sin/cos interleaved

    def embed(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return hidden + self.encodings(positions).to(hidden.dtype)
