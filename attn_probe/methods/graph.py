"""The attention graph that rollout and flow walk: heads averaged, the residual connection added.

Abnar & Zuidema (2020) account for the residual stream by mixing each layer's head-averaged attention
with the identity, ``A = 0.5 * mean_h(W) + 0.5 * I``, rows renormalised. Rows and columns of padding are
zeroed so that nothing flows through them (real queries already give padded keys zero weight).
"""

from __future__ import annotations

import torch


def residual_attention(
    weights: torch.Tensor, attention_mask: torch.Tensor, *, residual: float = 0.5, heads: str = "mean"
) -> torch.Tensor:
    """``weights [batch, layers, heads, n, n]`` -> ``[batch, layers, n, n]`` per-layer transition matrices.

    ``residual``: the identity's share (0 = raw attention). ``heads``: "mean" (the paper) or "max".
    """
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be within [0, 1], got {residual}")
    if heads not in ("mean", "max"):
        raise ValueError(f"heads must be 'mean' or 'max', got {heads!r}")
    combined = weights.float().mean(dim=2) if heads == "mean" else weights.float().amax(dim=2)  # [b, L, n, n]
    identity = torch.eye(combined.shape[-1], device=combined.device).expand_as(combined)
    mixed = (1.0 - residual) * combined + residual * identity
    real = attention_mask.bool().to(mixed.device)  # [b, n]
    pair = (real[:, :, None] & real[:, None, :])[:, None]  # [b, 1, n, n]
    mixed = mixed * pair
    return mixed / mixed.sum(dim=-1, keepdim=True).clamp_min(1e-12)
