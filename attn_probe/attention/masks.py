"""Which keys each query may attend to, as one boolean tensor (True = may attend).

Convention (the one of Hugging Face's ``attention_mask`` and of PyTorch's SDPA boolean masks):
``True`` / ``1`` marks a key that may be attended to. Accepted layouts:

- ``[batch, k]``: key padding (one row per example, as a tokenizer returns it);
- ``[batch, q, k]``: a full mask per example;
- ``[batch, heads, q, k]``: a mask per head.
"""

from __future__ import annotations

import torch


def causal_mask(num_queries: int, num_keys: int, device: torch.device | None = None) -> torch.Tensor:
    """``[q, k]``: query ``i`` sees keys up to its own position. With fewer queries than keys the
    queries are the last ones (keys hold the earlier context)."""
    return torch.ones(num_queries, num_keys, dtype=torch.bool, device=device).tril(diagonal=num_keys - num_queries)


def normalize_mask(mask: torch.Tensor, batch: int, num_queries: int, num_keys: int) -> torch.Tensor:
    """Return ``mask`` as a boolean ``[batch or 1, heads or 1, q, k]`` tensor, or explain what is wrong."""
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise TypeError(
            f"mask has dtype {mask.dtype}: pass a boolean or 0/1 integer mask where True/1 means "
            "'may attend' (additive float masks are not accepted, to avoid sign mix-ups)"
        )
    if mask.dtype != torch.bool:
        if ((mask != 0) & (mask != 1)).any():
            raise ValueError("an integer mask must hold only 0 (masked) and 1 (may attend)")
        mask = mask.bool()
    if mask.dim() == 2:
        mask = mask[:, None, None, :]  # key padding [batch, k] -> [batch, 1, 1, k]
    elif mask.dim() == 3:
        mask = mask[:, None, :, :]
    elif mask.dim() != 4:
        raise ValueError(
            f"mask has {mask.dim()} dimensions; expected [batch, k] (padding), [batch, q, k] or [batch, heads, q, k]"
        )
    expected = (batch, mask.shape[1], num_queries, num_keys)
    if any(have not in (1, want) for have, want in zip(mask.shape, expected, strict=True)):
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not fit batch={batch}, queries={num_queries}, "
            f"keys={num_keys}: a padding mask is [batch, k]"
        )
    return mask


def combine_masks(
    mask: torch.Tensor | None, causal: bool, batch: int, num_queries: int, num_keys: int, device: torch.device
) -> torch.Tensor | None:
    """The boolean ``[batch or 1, heads or 1, q, k]`` mask from a user mask and/or causality, or None."""
    allowed = normalize_mask(mask.to(device), batch, num_queries, num_keys) if mask is not None else None
    if causal:
        future_hidden = causal_mask(num_queries, num_keys, device)[None, None]  # [1, 1, q, k]
        allowed = future_hidden if allowed is None else allowed & future_hidden
    return allowed
