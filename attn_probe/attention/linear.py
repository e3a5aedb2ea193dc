"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"), feature map ``elu(x) + 1``.

Softmax's ``exp(q · k)`` is replaced by a kernel ``φ(q) · φ(k)`` with a positive feature map ``φ``:

    output_i = Σ_j (φ(q_i) · φ(k_j)) v_j / Σ_j φ(q_i) · φ(k_j)
             = φ(q_i)ᵀ (Σ_j φ(k_j) v_jᵀ) / φ(q_i)ᵀ (Σ_j φ(k_j))

Associativity turns the ``[q, k]`` matrix into a ``[d, d]`` summary: ``O(n d^2)`` time and ``O(n d)``
memory. Non-causal: one summary ``φ(K)ᵀ V`` for all queries. Causal: running sums over the keys up to
each query, computed by chunks of ``chunk_size`` (within a chunk the ``C x C`` masked kernel, across
chunks an exclusive prefix sum of the chunk summaries), so memory stays ``O(n (C + d^2 / C))``: the
per-position ``[d, d]`` state of a naive running sum is never stored. Padded keys (a ``[batch, k]`` mask)
get ``φ(k) = 0``: they contribute nothing. A query with no visible key gets a zero output.

**Implied attention.** The same output is ``A V`` with ``A_ij = φ(q_i) · φ(k_j) / Σ_j' φ(q_i) · φ(k_j')``
over the visible keys: a proper distribution per row (``φ > 0``). When weights are asked for (or a hook
needs them), :class:`~attn_probe.attention.MultiHeadAttention` forms ``A`` explicitly, through its usual
explicit path with ``logits = log(φ(q) · φ(k))`` (so ``softmax(logits)`` over the visible keys is exactly
``A``; ``hook_logits`` sees these log-kernel scores, ``hook_weights`` sees ``A``, and the edited ``A`` is
what multiplies ``V``). That path is ``O(n^2)``, as for any explicit weights.

No softmax means no logit scale and no temperature, and the position variants that add a term to the
logits (ALiBi, T5, Shaw) have nothing to add it to: they are refused. Absolute positions (``learned``,
``sinusoidal``) act on the inputs as usual. ``rotary`` rotates q and k *before* the feature map
(``φ(R_i q) · φ(R_j k)``): positions enter, but unlike softmax RoPE the score is not a function of
``j - i`` alone (``φ`` does not commute with rotations). It is not RoFormer's linear variant, which rotates
after ``φ`` and whose implied weights can be negative and do not sum to one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

#: Position variants linear attention accepts (the logit variants have no kernel form).
LINEAR_POSITIONS = ("none", "learned", "sinusoidal", "rotary")


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """``φ(x) = elu(x) + 1``: positive everywhere, the map of Katharopoulos et al. 2020."""
    return F.elu(x) + 1.0


@dataclass(frozen=True)
class LinearAttention:
    """Kernel (linear) attention with ``φ = elu + 1``; ``chunk_size``: chunk of the causal running sums.

    >>> MultiHeadAttention(64, 4, kind=LinearAttention())
    """

    name: ClassVar[str] = "linear"
    chunk_size: int = 64

    def __post_init__(self) -> None:
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {self.chunk_size!r}")

    @staticmethod
    def features(x: torch.Tensor) -> torch.Tensor:
        return elu_feature_map(x)


def kernel_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``φ(q) · φ(k)`` for every pair: ``[b, h, q, k]``, positive (the unnormalised implied attention)."""
    return elu_feature_map(q) @ elu_feature_map(k).transpose(-1, -2)


def kernel_logits(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``log(φ(q) · φ(k))``: logits whose softmax over the visible keys is the implied attention."""
    return torch.log(kernel_scores(q, k))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sums of many positive terms: at least float32."""
    return torch.promote_types(dtype, torch.float32)


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_padding: torch.Tensor | None = None,
    causal: bool = False,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Head outputs ``[b, h, q, dv]`` of linear attention, in ``O(n)`` time and memory.

    ``q [b, h, q, d]``, ``k [b, h, k, d]``, ``v [b, h, k, dv]``; ``key_padding [b, k]`` bool (True = real
    key) or None. ``causal`` needs ``q == k`` (query ``i`` sees keys ``0..i``).
    """
    dtype = v.dtype
    work = _compute_dtype(dtype)
    phi_q = elu_feature_map(q.to(work))
    phi_k = elu_feature_map(k.to(work))
    v = v.to(work)
    if key_padding is not None:
        phi_k = phi_k * key_padding[:, None, :, None].to(work)
    if not causal:
        summary = phi_k.transpose(-1, -2) @ v  # [b, h, d, dv]
        normaliser = phi_k.sum(dim=-2).unsqueeze(-1)  # [b, h, d, 1]
        numerator = phi_q @ summary  # [b, h, q, dv]
        denominator = phi_q @ normaliser  # [b, h, q, 1]
    else:
        if q.shape[2] != k.shape[2]:
            raise ValueError(f"causal linear attention needs as many queries as keys: {q.shape[2]} and {k.shape[2]}")
        numerator, denominator = _causal_sums(phi_q, phi_k, v, chunk_size)
    has_keys = denominator > 0
    output = torch.where(has_keys, numerator / torch.where(has_keys, denominator, 1.0), 0.0)
    return output.to(dtype)


def _causal_sums(
    phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ_{j<=i} (φq_i·φk_j) v_j`` and ``Σ_{j<=i} φq_i·φk_j`` by chunks: ``[b, h, n, dv]``, ``[b, h, n, 1]``."""
    batch, heads, n, _ = phi_q.shape
    num_chunks = -(-n // chunk)
    length = num_chunks * chunk

    def chunks(x: torch.Tensor) -> torch.Tensor:
        extra = length - n
        x = F.pad(x, (0, 0, 0, extra)) if extra else x
        return x.reshape(batch, heads, num_chunks, chunk, x.shape[-1])

    # Rows past n are zeros appended *after* φ: as keys they contribute nothing, as queries they are dropped.
    q_c, k_c, v_c = chunks(phi_q), chunks(phi_k), chunks(v)
    within = (q_c @ k_c.transpose(-1, -2)).tril()  # [b, h, nc, C, C]: keys of the same chunk up to the query
    numerator = within @ v_c  # [b, h, nc, C, dv]
    denominator = within.sum(dim=-1, keepdim=True)  # [b, h, nc, C, 1]
    del within
    summaries = k_c.transpose(-1, -2) @ v_c  # [b, h, nc, d, dv]
    key_sums = k_c.sum(dim=-2)  # [b, h, nc, d]
    # Exclusive prefix over chunks: what every earlier chunk contributes (no subtraction, no cancellation).
    before = torch.cat([torch.zeros_like(summaries[:, :, :1]), summaries.cumsum(dim=2)[:, :, :-1]], dim=2)
    keys_before = torch.cat([torch.zeros_like(key_sums[:, :, :1]), key_sums.cumsum(dim=2)[:, :, :-1]], dim=2)
    numerator = numerator + q_c @ before
    denominator = denominator + q_c @ keys_before.unsqueeze(-1)
    return (
        numerator.reshape(batch, heads, length, -1)[:, :, :n],
        denominator.reshape(batch, heads, length, 1)[:, :, :n],
    )
