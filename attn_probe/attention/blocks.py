"""One Transformer layer: attention and a feed-forward network, each inside a residual connection.

Both layouts of the literature are here because both families are what we probe:
post-norm (BERT: ``x = norm(x + attn(x))``) and pre-norm (Llama: ``x = x + attn(norm(x))``).

Hook points of a block (besides those of its ``attention``):

    hook_resid_pre   [batch, n, embed]   what enters the block
    hook_attn_out    [batch, n, embed]   the attention's contribution to the residual stream
    hook_resid_mid   [batch, n, embed]   after the attention's residual (and its norm, post-norm)
    hook_mlp_out     [batch, n, embed]   the feed-forward network's contribution
    hook_resid_post  [batch, n, embed]   what leaves the block
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attn_probe.attention.hooks import HookPoint
from attn_probe.attention.multi_head import MultiHeadAttention


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight``, computed in float32 (as Llama does)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normalised = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normalised.to(x.dtype)


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm '{kind}'; choose 'layernorm' or 'rmsnorm'")


class FeedForward(nn.Module):
    """``gelu``: down(gelu(up(x))) as in BERT; ``swiglu``: down(silu(gate(x)) * up(x)) as in Llama."""

    def __init__(self, embed_dim: int, ffn_dim: int, kind: str = "gelu", bias: bool = True) -> None:
        super().__init__()
        if kind not in ("gelu", "swiglu"):
            raise ValueError(f"unknown feed-forward kind '{kind}'; choose 'gelu' or 'swiglu'")
        self.kind = kind
        self.up = nn.Linear(embed_dim, ffn_dim, bias=bias)
        self.gate = nn.Linear(embed_dim, ffn_dim, bias=bias) if kind == "swiglu" else None
        self.down = nn.Linear(ffn_dim, embed_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(F.gelu(self.up(x)))


class TransformerBlock(nn.Module):
    def __init__(
        self,
        attention: MultiHeadAttention,
        feed_forward: FeedForward,
        attention_norm: nn.Module,
        ffn_norm: nn.Module,
        *,
        prenorm: bool,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.attention = attention
        self.feed_forward = feed_forward
        self.attention_norm = attention_norm
        self.ffn_norm = ffn_norm
        self.prenorm = prenorm
        self.dropout = nn.Dropout(dropout)
        self.hook_resid_pre = HookPoint("[batch, n, embed]")
        self.hook_attn_out = HookPoint("[batch, n, embed]")
        self.hook_resid_mid = HookPoint("[batch, n, embed]")
        self.hook_mlp_out = HookPoint("[batch, n, embed]")
        self.hook_resid_post = HookPoint("[batch, n, embed]")

    def attention_input(self, resid_pre: torch.Tensor) -> torch.Tensor:
        """What the attention sees of the block's input (normalised first in a pre-norm block)."""
        return self.attention_norm(resid_pre) if self.prenorm else resid_pre

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        positions: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x [batch, n, embed] -> ([batch, n, embed], weights [batch, heads, n, n] or None)``."""
        x = self.hook_resid_pre(x)
        attention_input = self.attention_input(x)
        attended, weights = self.attention(
            attention_input, mask=mask, causal=causal, positions=positions, need_weights=need_weights
        )
        attended = self.hook_attn_out(self.dropout(attended))
        x = x + attended if self.prenorm else self.attention_norm(x + attended)
        x = self.hook_resid_mid(x)

        ffn_input = self.ffn_norm(x) if self.prenorm else x
        transformed = self.hook_mlp_out(self.dropout(self.feed_forward(ffn_input)))
        x = x + transformed if self.prenorm else self.ffn_norm(x + transformed)
        return self.hook_resid_post(x), weights
