"""Attention sinks: where does attention pile up, and does it carry anything there?

Many heads send most of their weight to a few tokens that carry little content: [CLS] / [SEP] in BERT
(Clark et al. 2019, *What Does BERT Look At?*), the first token of a decoder (Xiao et al. 2024, *Efficient
Streaming Language Models with Attention Sinks*). Such weight is often a "no-op": the sink's value vector
is small, so the head adds almost nothing (Kobayashi et al. 2020, *Attention is Not Only a Weight*). A raw
attention map then overstates the sink, and any explanation read from raw weights inherits it.

:func:`attention_sinks` measures both sides, per (example, layer, head):

- ``special_share``: the mean, over the chosen query rows, of the weight on the sink tokens ``S``
  (special tokens by default) — ``mean_i Σ_{j∈S} α_ij``;
- ``first_share``: the same for the first real token alone;
- ``special_share_norm``, ``first_share_norm``: the same shares after weighting each key by the length
  of what it contributes, ``||α_ij f(x_j)|| = α_ij ||f(x_j)||`` with ``f(x_j) = v_j W_O^h`` (the value
  vector, bias included, through the head's slice of the output projection; the output bias belongs to
  no token and is left out, as in Kobayashi et al.): ``mean_i Σ_{j∈S} α_ij ||f(x_j)|| / Σ_{j real}
  α_ij ||f(x_j)||``. A row whose every contribution is zero has no share and is left out of the mean;
  the column is NaN when no row has one.
- ``value_norm_ratio``: ``mean_{j∈S} ||f(x_j)|| / mean_{j real, j∉S} ||f(x_j)||``: below 1, the sink tokens
  carry less than the others (NaN when either set is empty or the denominator is 0).

Protocol: only real (non-padding) tokens are read, as queries and as keys; the rows averaged are every
real query row (``rows="all"``), the row that produces the target (``rows="target"``: the first real token
of an encoder — [CLS] — and the last real token of a decoder-only model — the predicting position of the
default next-token target), or one padded column per example (a ``[batch]`` integer tensor). In a causal
model the first query row can only attend to itself, so with ``rows="all"`` it adds ``1 / n_real`` of
forced weight to ``first_share``.

Sink tokens ``S`` (the ``special`` argument, ``[batch, n]`` bool, intersected with the real tokens): by
default the special tokens of the :class:`~attn_probe.capture.TokenizedBatch` the capture was made from
(``captured.batch.special_tokens_mask``). Without one (the inputs were a tokenizer's raw output) they
are guessed by position, which is what tokenizers add: the first real token, and for an encoder (a
bidirectional main stack) also the last real token ([CLS] … [SEP], <s> … </s>); for a decoder-only model
the first real token only (BOS, the sink of Xiao et al.). Pass ``special`` to be exact.

    captured = capture(model, tokenize(tokenizer, texts))
    sinks = attention_sinks(captured)                           # one row per (example, layer, head)
    sinks.groupby("layer")[["special_share", "special_share_norm"]].mean()
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import torch

from attn_probe.capture import AttentionCapture
from attn_probe.capture.capture import StackCapture

SINK_COLUMNS = [
    "example_id",
    "layer",
    "head",
    "n_queries",
    "n_special",
    "special_share",
    "first_share",
    "special_share_norm",
    "first_share_norm",
    "value_norm_ratio",
]
_NORM_COLUMNS = ("special_share_norm", "first_share_norm", "value_norm_ratio")


def attention_sinks(
    captured: AttentionCapture,
    special: torch.Tensor | None = None,
    *,
    rows: Literal["all", "target"] | torch.Tensor = "all",
    stack: str | None = None,
    norm: bool = True,
) -> pd.DataFrame:
    """Share of attention on sink tokens, raw and norm-weighted, one row per (example, layer, head).

    ``captured``: an :func:`~attn_probe.capture.capture` with weights ``[batch, layers, heads, n, n]`` and,
    for the norm-based columns, values ``[batch, layers, heads, n, head_dim]`` (``keep_values=True``, the
    default) and the output projection ``[layers, embed, heads * head_dim]``. ``special``: ``[batch, n]``
    bool sink tokens (default: see the module docstring). ``rows``: ``"all"``, ``"target"`` or a ``[batch]``
    integer tensor of padded columns. ``stack``: the main stack only (the one whose padding mask the capture
    holds); the argument exists to say so explicitly. ``norm=False`` leaves out the norm-based columns,
    for captures without values.

    Columns: ``example_id, layer, head, n_queries, n_special, special_share, first_share,
    special_share_norm, first_share_norm, value_norm_ratio`` (see the module docstring).
    """
    chosen = self_attention_stack(captured, stack)
    weights = chosen.weights.detach()  # [b, L, H, n, n]
    batch, num_layers, num_heads, n = weights.shape[:4]
    real = captured.attention_mask.bool().to(weights.device)  # [b, n]
    sinks = _sink_tokens(captured, special).to(weights.device) & real  # [b, n]
    query_rows = _query_rows(captured, rows, n).to(weights.device)  # [b, n]
    gram = None
    if norm:
        _require_norm_inputs(captured, chosen)
        output_weight = chosen.output_weight.detach().to(device=weights.device, dtype=torch.float64)
        gram = head_gram(output_weight, num_heads)  # [L, H, d, d], once for the batch

    columns: dict[str, list[torch.Tensor]] = {name: [] for name in SINK_COLUMNS}
    for example in range(batch):
        keys = real[example]  # [n]
        columns["example_id"].append(torch.full((num_layers, num_heads), example))
        columns["layer"].append(torch.arange(num_layers)[:, None].expand(num_layers, num_heads))
        columns["head"].append(torch.arange(num_heads)[None, :].expand(num_layers, num_heads))
        columns["n_queries"].append(torch.full((num_layers, num_heads), int(query_rows[example].sum())))
        columns["n_special"].append(torch.full((num_layers, num_heads), int(sinks[example].sum())))
        if not bool(keys.any()):  # an all-padding row (an empty text): nothing to measure, NaN rather than a fail
            for name in SINK_COLUMNS[5:]:
                columns[name].append(torch.full((num_layers, num_heads), torch.nan))
            continue
        alpha = weights[example][:, :, query_rows[example]][..., keys].to(torch.float64)  # [L, H, q', m]
        sink = sinks[example][keys]  # [m]; the first real token is key 0 of the real keys
        columns["special_share"].append(alpha[..., sink].sum(-1).mean(-1))  # [L, H]
        columns["first_share"].append(alpha[..., 0].mean(-1))
        if gram is not None:
            values = chosen.values[example].detach().to(device=weights.device, dtype=torch.float64)  # [L, H, n, d]
            lengths = _norms(values, gram)[..., keys]  # [L, H, m] = ||f(x_j)||
            contribution = alpha * lengths[:, :, None, :]  # [L, H, q', m] = ||α_ij f(x_j)||
            total = contribution.sum(-1)  # [L, H, q']
            defined = total > 0  # rows whose every contribution is zero have no share
            safe_total = torch.where(defined, total, torch.ones_like(total))
            special_part = torch.where(defined, contribution[..., sink].sum(-1) / safe_total, torch.nan)
            first_part = torch.where(defined, contribution[..., 0] / safe_total, torch.nan)
            columns["special_share_norm"].append(torch.nanmean(special_part, dim=-1))
            columns["first_share_norm"].append(torch.nanmean(first_part, dim=-1))
            columns["value_norm_ratio"].append(_ratio(lengths[..., sink], lengths[..., ~sink]))

    names = [name for name in SINK_COLUMNS if norm or name not in _NORM_COLUMNS]
    frame = pd.DataFrame(
        {name: np.concatenate([t.cpu().numpy().ravel() for t in columns[name]]) if batch else [] for name in names}
    )
    return frame.astype({name: "int64" for name in ("example_id", "layer", "head", "n_queries", "n_special")})


def value_norms(values: torch.Tensor, output_weight: torch.Tensor) -> torch.Tensor:
    """``||f^{l,h}(x_j)|| = ||W_O^{l,h} v^{l,h}_j||`` for one example: ``[layers, heads, n]``.

    ``values``: ``[layers, heads, n, head_dim]``; ``output_weight``: ``[layers, embed, heads * head_dim]``
    (``nn.Linear`` layout; head h owns columns ``h·d .. (h+1)·d``).
    """
    return _norms(values, head_gram(output_weight.to(values.dtype), values.shape[1]))


def head_gram(output_weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``G^{l,h} = W_O^{l,h T} W_O^{l,h}``, ``[layers, heads, d, d]``, from ``[layers, embed, heads * d]``.

    ``||W_O^h v||² = v G^h v``: with it the norms never form the ``[layers, heads, n, embed]`` tensor of
    transformed values (768-wide in BERT-base), and it is computed once per batch.
    """
    num_layers, embed, width = output_weight.shape
    if width % num_heads:
        raise ValueError(f"output projection width {width} is not a multiple of the {num_heads} heads")
    w_o = output_weight.reshape(num_layers, embed, num_heads, width // num_heads)  # [L, E, H, d]
    return torch.einsum("lehd,lehf->lhdf", w_o, w_o)


def _norms(values: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``sqrt(v G v)`` per key: values ``[L, H, n, d]``, gram ``[L, H, d, d]`` -> ``[L, H, n]``."""
    squared = torch.einsum("lhkd,lhdf,lhkf->lhk", values, gram, values)
    return squared.clamp_min(0).sqrt()  # rounding can leave tiny negative values where the norm is ~0


def self_attention_stack(captured: AttentionCapture, stack: str | None = None) -> StackCapture:
    """The stack an analysis over ``captured.input_ids`` may read: the main one.

    Only the main stack (an encoder's, or a decoder-only model's) attends from and to the tokens whose
    padding mask the capture holds; a seq2seq decoder's self-attention runs over ``decoder_input_ids``
    (its mask is not kept) and cross-attention over both, so their real rows and keys are unknown here.
    """
    name = captured.main_stack if stack is None else stack
    if name not in captured.stacks:
        raise ValueError(f"the capture has no stack {name!r}; it has {sorted(captured.stacks)}")
    if name != captured.main_stack:
        raise ValueError(
            f"stack {name!r} does not attend over input_ids: only the main stack {captured.main_stack!r} does, "
            "and the capture holds the padding mask of those tokens only. Use stack=None (the main stack)"
        )
    chosen = captured.stacks[name]
    batch, n = captured.attention_mask.shape
    if chosen.weights.dim() != 5 or tuple(chosen.weights.shape[-2:]) != (n, n) or chosen.weights.shape[0] != batch:
        raise ValueError(
            f"stack {name!r} weights have shape {tuple(chosen.weights.shape)}, expected "
            f"[batch={batch}, layers, heads, {n}, {n}] to match the attention mask"
        )
    return chosen


def first_real(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[batch]`` padded column of each example's first real token (whatever the padding side)."""
    return attention_mask.bool().long().argmax(dim=1)


def last_real(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[batch]`` padded column of each example's last real token."""
    n = attention_mask.shape[1]
    return n - 1 - attention_mask.bool().long().flip(1).argmax(dim=1)


def _sink_tokens(captured: AttentionCapture, special: torch.Tensor | None) -> torch.Tensor:
    """``[batch, n]`` bool sink tokens (padding may be marked: it is intersected with the real tokens)."""
    mask = captured.attention_mask
    if special is not None:
        if tuple(special.shape) != tuple(mask.shape):
            raise ValueError(
                f"special must be a [batch, n] mask like the attention mask {tuple(mask.shape)}, "
                f"got {tuple(special.shape)}"
            )
        if special.dtype != torch.bool:
            raise ValueError(f"special must be a bool mask (True = sink token), got dtype {special.dtype}")
        return special
    if captured.batch is not None:
        return captured.batch.special_tokens_mask.bool()
    rows = torch.arange(mask.shape[0], device=mask.device)
    guessed = torch.zeros(mask.shape, dtype=torch.bool, device=mask.device)
    guessed[rows, first_real(mask)] = True
    if captured.main_stack != "decoder":  # an encoder's tokenizer closes the sequence too ([SEP], </s>)
        guessed[rows, last_real(mask)] = True
    return guessed & mask.bool()


def _query_rows(captured: AttentionCapture, rows: str | torch.Tensor, n: int) -> torch.Tensor:
    """``[batch, n]`` bool: the real query rows to average over."""
    real = captured.attention_mask.bool()
    batch = real.shape[0]
    if isinstance(rows, str):
        if rows == "all":
            return real
        if rows != "target":
            raise ValueError(f"rows must be 'all', 'target' or a [batch] tensor of columns, got {rows!r}")
        columns = last_real(real) if captured.main_stack == "decoder" else first_real(real)
    elif isinstance(rows, torch.Tensor):
        if rows.dim() != 1 or rows.shape[0] != batch or rows.dtype.is_floating_point or rows.dtype == torch.bool:
            raise ValueError(
                f"rows as a tensor must hold one integer padded column per example, shape [{batch}], "
                f"got {rows.dtype} of shape {tuple(rows.shape)}"
            )
        columns = rows.to(real.device).long()
        if bool(((columns < 0) | (columns >= n)).any()):
            raise ValueError(f"rows {columns.tolist()} fall outside the columns 0..{n - 1}")
        if not bool(real[torch.arange(batch, device=real.device), columns].all()):
            raise ValueError(f"rows {columns.tolist()} include padding columns: pick a real token per example")
    else:
        raise ValueError(f"rows must be 'all', 'target' or a [batch] tensor of columns, got {type(rows).__name__}")
    chosen = torch.zeros_like(real)
    chosen[torch.arange(batch, device=real.device), columns] = True
    return chosen & real


def _require_norm_inputs(captured: AttentionCapture, chosen: StackCapture) -> None:
    if chosen.values is None:
        raise ValueError(
            "the norm-based sink shares need the value vectors, but this capture has none: capture with "
            "keep_values=True (the default), or pass norm=False for the raw-weight shares only"
        )
    if chosen.output_weight is None:
        raise ValueError(
            f"the norm-based sink shares need each layer's output projection W_O, which the capture of this "
            f"{captured.family!r} model does not hold (attn_probe.models.families.output_projection found none "
            "beside its attention modules); pass norm=False for the raw-weight shares only"
        )


def _ratio(sink_lengths: torch.Tensor, other_lengths: torch.Tensor) -> torch.Tensor:
    """``mean(sink) / mean(other)`` over the last axis, NaN where undefined."""
    shape = sink_lengths.shape[:-1]
    if sink_lengths.shape[-1] == 0 or other_lengths.shape[-1] == 0:
        return torch.full(shape, torch.nan, dtype=torch.float64, device=sink_lengths.device)
    numerator, denominator = sink_lengths.mean(-1), other_lengths.mean(-1)
    return torch.where(denominator > 0, numerator / denominator.where(denominator > 0, 1.0), torch.nan)
