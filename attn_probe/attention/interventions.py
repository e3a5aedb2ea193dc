"""Hook functions that replace attention weights: the counterfactuals later tests need.

``set_weights`` (a given matrix), ``scale_weights`` (multiply), ``uniform_weights`` (spread evenly)
and ``permute_weights`` (shuffle among the same keys) work on our own models' ``hook_weights`` points
and, through :func:`attn_probe.capture.intervene`, on Hugging Face models.

Each factory returns a hook for a ``hook_weights`` point (``[batch, heads, q, k]``). ``head`` picks
the heads to change (an int, a list, or ``None`` for all). The keys a query may attend to (its
*support*) are read from the weights themselves: masked keys have exactly zero weight (see
:class:`~attn_probe.attention.MultiHeadAttention`), so replacements never put weight on padding or on
future tokens. A key whose weight underflowed to exactly 0 (logit gap above ~100) counts as masked.

The efficient kinds hand these hooks the same dense weights (:mod:`~attn_probe.attention.multi_head`): a
sparse pattern's keys outside the pattern have exactly zero weight, so the support is the pattern; linear
attention's implied weights are positive on every visible key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from attn_probe.attention.hooks import HookFn, HookPoint

HeadSelection = int | Sequence[int] | None


def _heads_index(head: HeadSelection, num_heads: int) -> list[int]:
    if head is None:
        return list(range(num_heads))
    heads = [head] if isinstance(head, int) else list(head)
    for h in heads:
        if not 0 <= h < num_heads:
            raise IndexError(f"head {h} does not exist: this layer has heads 0..{num_heads - 1}")
    return heads


def _replace_heads(weights: torch.Tensor, heads: list[int], new: torch.Tensor) -> torch.Tensor:
    """Copy of ``weights`` with the chosen heads taken from ``new`` (both ``[batch, heads, q, k]``)."""
    out = weights.clone()
    out[:, heads] = new[:, heads].to(weights.dtype)
    return out


def set_weights(matrix: torch.Tensor, head: HeadSelection = None) -> HookFn:
    """Replace the weights of ``head`` by ``matrix`` (``[q, k]``, or anything broadcastable to
    ``[batch, heads, q, k]``). The caller is responsible for rows summing to one."""

    def hook(weights: torch.Tensor, _point: HookPoint) -> torch.Tensor:
        heads = _heads_index(head, weights.shape[1])
        new = torch.broadcast_to(matrix.to(weights.device), weights.shape)
        return _replace_heads(weights, heads, new)

    return hook


def scale_weights(factor: float, head: HeadSelection = None) -> HookFn:
    """Multiply the weights of ``head`` by ``factor``, without renormalising.

    ``factor=0`` removes what the head reads (its output becomes zero, a head ablation through its
    weights); ``factor=2`` doubles its contribution. Rows then no longer sum to one, on purpose.
    """

    def hook(weights: torch.Tensor, _point: HookPoint) -> torch.Tensor:
        heads = _heads_index(head, weights.shape[1])
        return _replace_heads(weights, heads, weights * factor)

    return hook


def uniform_weights(head: HeadSelection = None) -> HookFn:
    """Spread each query's weight evenly over the keys it may attend to."""

    def hook(weights: torch.Tensor, _point: HookPoint) -> torch.Tensor:
        heads = _heads_index(head, weights.shape[1])
        support = (weights > 0).to(weights.dtype)  # [batch, heads, q, k]
        count = support.sum(dim=-1, keepdim=True).clamp_min(1.0)
        return _replace_heads(weights, heads, support / count)

    return hook


def permute_weights(seed: int = 0, head: HeadSelection = None) -> HookFn:
    """Shuffle each query's weights among the keys it may attend to (Jain & Wallace 2019).

    The permutation of an example is drawn from ``seed`` for that example's own block of keys (the keys
    some query of it attends to), so the same seed gives the same counterfactual for an input alone or in
    any padded batch.
    """

    def hook(weights: torch.Tensor, _point: HookPoint) -> torch.Tensor:
        heads = _heads_index(head, weights.shape[1])
        num_keys = weights.shape[-1]
        support = weights > 0  # [batch, heads, q, k]
        keys = torch.arange(num_keys, device=weights.device).expand_as(weights)
        real = support.any(dim=1).any(dim=1)  # [batch, k]: the keys of each example (padding has no weight)
        random_keys = per_example_random(seed, real, weights.shape[1], torch.rand).to(weights.device)
        # Both orders list the support first: the original order, and a random order of it.
        original_order = torch.where(support, keys, keys + num_keys).argsort(dim=-1, stable=True)
        random_order = torch.where(support, random_keys, random_keys + 2.0).argsort(dim=-1, stable=True)
        permuted = torch.zeros_like(weights).scatter_(-1, random_order, weights.gather(-1, original_order))
        return _replace_heads(weights, heads, permuted)

    return hook


def per_example_random(
    seed: int, real: torch.Tensor, num_heads: int, draw: Callable[..., torch.Tensor]
) -> torch.Tensor:
    """``[batch, heads, n, n]`` (CPU, float32): for each example, ``draw(heads, m, m)`` from a generator seeded with
    ``seed``, placed on its ``m`` real rows and columns (``real [batch, n]`` bool); 0 elsewhere. What makes a
    random counterfactual independent of the batch an example is in."""
    batch, width = real.shape
    out = torch.zeros(batch, num_heads, width, width)
    for example in range(batch):
        columns = torch.nonzero(real[example].cpu()).flatten()
        generator = torch.Generator().manual_seed(seed)
        block = draw(num_heads, len(columns), len(columns), generator=generator)
        out[example, :, columns[:, None], columns[None, :]] = block
    return out
