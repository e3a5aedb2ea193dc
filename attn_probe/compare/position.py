"""Position bias: how much of a head's attention would position alone give?

A head that always looks at the previous token, or decays with distance, produces an attention map that
*looks* like an explanation but would be the same for any input. Two views, one for each kind of model:

**Logits (our own models, ground truth).** :func:`position_logit_share` splits each head's pre-softmax
logits into content and position parts (:meth:`MultiHeadAttention.split_logits`) and reports how much of
their variation the position part explains. Protocol, per (example, layer, head):

- the pairs are the valid (query, key) pairs: both real tokens, and key ≤ query in a causal model;
- variances are *within query rows*: each row is centred on its own mean over its valid keys before
  squaring, because softmax ignores whatever is constant along a row (a per-query offset moves no
  weight). ``total_var = Σ_i Σ_{j∈S_i} (t_ij - t̄_i)² / Σ_i |S_i|``, likewise ``content_var`` and
  ``position_var``;
- ``position_share = 1 - content_var / total_var``: the R² of the total logits explained by the position
  term alone (the residual ``total - position`` is the content). 1 when the content part is constant along
  every row (zeroed q/k projections), 0 without any position term, negative when content and position
  cancel each other; NaN when the logits are constant along every row (``total_var = 0``).
- ``exact`` (from :class:`LogitParts`): True for additive variants (ALiBi, T5, Shaw keys: the position term
  is a separate summand), False for rotary, whose "position part" is the interaction position adds to the
  dot product (it depends on the content too). Variants acting at the input (learned, sinusoidal) are
  refused: there every layer's content already carries position, so there is nothing to split.

**Weights (any model).** :func:`attention_by_distance` pools a capture's attention by relative distance
``d = key - query`` (in tokens: real tokens are contiguous, so this is the distance between positions):
per (layer, head, d) the mean weight a query puts on the key at distance d, over every real query row of
every example that has a key there. :func:`position_explained` then predicts each head's attention from
that profile alone and reports how much of the pattern it recovers. Protocol, per (example, layer, head):

- allowed keys ``S_i`` of query i: the real keys, and in a causal model only those at ``d ≤ 0``
  (``causal=None``: causal when the main stack is a decoder-only model's);
- *forced rows are left out*, from the profile and from the scores: a query with a single allowed key (a
  decoder's first token) has no choice to make, so its weight says nothing about a preference;
- the prediction ``P_ij = p(j - i) / Σ_{j'∈S_i} p(j' - i)``: the profile ``p`` of the layer and head
  (``mean_weight``), renormalised over each row's allowed keys (uniform over them if ``p`` is 0 there);
- ``r2_position = 1 - Σ (A_ij - P_ij)² / Σ (A_ij - Ā)²`` over the allowed pairs of the kept rows, ``Ā``
  their mean weight; ``r2_uniform`` the same for the uniform pattern ``U_ij = 1 / |S_i|`` — the baseline:
  in a causal model rows of different lengths already make uniform attention vary a lot.
  ``r2_position_vs_uniform = 1 - Σ (A - P)² / Σ (A - U)²``: the share of the head's departure from uniform
  that position recovers. ``tv_position``, ``tv_uniform``: the mean over kept rows of the total variation
  distance ``½ Σ_j |A_ij - P_ij|`` (the weight that would have to move), a scale-free companion.
  A ratio is NaN where its denominator is 0 up to the rounding of the weights' dtype (no pair scored, a
  constant pattern, or — for the last R² — a head that is exactly uniform).

The profile is the batch's own by default (a head is predicted from the mean of the very rows it is
scored on, which flatters long batches slightly); pass ``profile=attention_by_distance(...)`` of a larger
capture for a dataset-mean profile, held out if you like. With ``max_distance`` distances beyond it are
pooled into the edge bins (marked ``clipped``), so a profile from short inputs still covers long ones.
Padding never enters: padded rows and keys are dropped before anything is computed.

This weights-only view is what exists for Hugging Face models; it measures what position *could*
explain, not what the model computed from position (that is the logit view, for our models).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from attn_probe.attention.hooks import record
from attn_probe.attention.models import DecoderLM, EncoderClassifier, TransformerStack
from attn_probe.attention.multi_head import LogitParts
from attn_probe.capture import AttentionCapture, TokenizedBatch
from attn_probe.compare.sinks import self_attention_stack

LOGIT_SHARE_COLUMNS = [
    "example_id",
    "layer",
    "head",
    "variant",
    "exact",
    "n_pairs",
    "total_var",
    "content_var",
    "position_var",
    "position_share",
]
DISTANCE_COLUMNS = ["layer", "head", "distance", "mean_weight", "share", "count", "clipped"]
EXPLAINED_COLUMNS = [
    "example_id",
    "layer",
    "head",
    "n_queries",
    "profile",
    "r2_position",
    "r2_uniform",
    "r2_position_vs_uniform",
    "tv_position",
    "tv_uniform",
]


# ----------------------------------------------------------------------------------------------------
# logits: our own models
# ----------------------------------------------------------------------------------------------------
def logit_parts(
    model: nn.Module, inputs: TokenizedBatch | Mapping[str, torch.Tensor]
) -> tuple[list[LogitParts], torch.Tensor]:
    """Every layer's pre-softmax logits split into content and position parts, and the valid pairs.

    ``model``, ``inputs``: as in :func:`position_logit_share`. One forward pass records what enters every block
    (``layers.{i}.hook_resid_pre``); each layer's attention then splits its logits with ``split_logits`` on the
    same input and positions the forward pass used. Returns ``(parts, valid)``: one
    :class:`~attn_probe.attention.multi_head.LogitParts` per layer (``total``, ``content``, ``position``, each
    ``[batch, heads, n, n]``, and ``exact``), and ``valid [batch, 1, n, n]`` (True where query and key are both
    real tokens, and key <= query in a causal model).
    """
    stack, prefix, accepted = _our_stack(model)
    if stack.embed.position is not None:
        raise ValueError(
            f"this model's positions ({stack.config.position!r}) enter at the embeddings: every layer's content "
            "already carries them, so its logits do not split into content and position. Measure the position "
            "bias of its weights instead: position_explained(capture(model, inputs)) / attention_by_distance(...)"
        )
    model_inputs = _model_inputs(inputs, accepted)
    device = next(model.parameters()).device
    model_inputs = {key: value.to(device) for key, value in model_inputs.items()}
    input_ids = model_inputs["input_ids"]
    batch, n = input_ids.shape
    real = model_inputs.setdefault("attention_mask", torch.ones_like(input_ids)).bool()  # [b, n]
    if tuple(real.shape) != (batch, n):
        raise ValueError(
            f"attention_mask must be [batch, n] = {(batch, n)} (1 = real token), got {tuple(real.shape)}: "
            "the valid pairs are read from a padding mask"
        )
    positions = model_inputs.get("positions")
    if positions is None:
        positions = torch.arange(n, device=device)  # what TransformerStack uses by default
    valid = real[:, :, None] & real[:, None, :]  # [b, q, k]
    if stack.causal:
        valid = valid & torch.ones(n, n, dtype=torch.bool, device=device).tril()
    names = [f"{prefix}.layers.{index}.hook_resid_pre" for index in range(len(stack.layers))]
    with torch.no_grad():
        with record(model, names) as cache:
            model(**model_inputs)
        parts = [
            block.attention.split_logits(block.attention_input(cache[names[index]]), positions=positions)
            for index, block in enumerate(stack.layers)
        ]
    return parts, valid[:, None]  # valid: [b, 1, q, k]


def position_logit_share(model: nn.Module, inputs: TokenizedBatch | Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """Share of each head's logit variation explained by its position term, per (example, layer, head).

    ``model``: an :class:`~attn_probe.attention.EncoderClassifier` or :class:`~attn_probe.attention.DecoderLM`
    whose position variant acts inside attention (``t5``, ``alibi``, ``shaw``, ``rotary``; ``none`` gives 0).
    ``inputs``: a :class:`TokenizedBatch` or a mapping with ``input_ids`` ``[batch, n]`` and
    ``attention_mask`` (1 = real token), plus ``token_type_ids`` / ``positions`` where the model takes them.

    The logits ``[batch, heads, n, n]`` of every layer are split by :func:`logit_parts`. Columns:
    ``example_id, layer, head, variant, exact, n_pairs, total_var, content_var, position_var, position_share``
    (definitions in the module docstring).
    """
    variant = _our_stack(model)[0].config.position
    parts, valid = logit_parts(model, inputs)
    columns = {
        name: [_within_row_variance(getattr(part, name).double(), valid) for part in parts]  # each [b, H]
        for name in ("total", "content", "position")
    }
    total, content, position = (torch.stack(columns[name], dim=1).cpu() for name in ("total", "content", "position"))
    batch, num_layers, num_heads = total.shape
    exact = [part.exact for part in parts]
    share = torch.where(total > 0, 1 - content / total.where(total > 0, 1.0), torch.nan)  # [b, L, H]
    pairs = valid.sum(dim=(-1, -2)).cpu()  # [b, 1]
    example_id, layer, head = _grid(batch, num_layers, num_heads)
    return pd.DataFrame(
        {
            "example_id": example_id,
            "layer": layer,
            "head": head,
            "variant": variant,
            "exact": np.broadcast_to(np.array(exact)[None, :, None], (batch, num_layers, num_heads)).ravel(),
            "n_pairs": pairs.expand(batch, num_layers * num_heads).reshape(-1).numpy().astype(np.int64),
            "total_var": total.reshape(-1).numpy(),
            "content_var": content.reshape(-1).numpy(),
            "position_var": position.reshape(-1).numpy(),
            "position_share": share.reshape(-1).numpy(),
        }
    )


def _within_row_variance(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[b, H]``: ``Σ_i Σ_{j∈S_i} (x_ij - x̄_i)² / Σ_i |S_i|`` of ``logits [b, H, q, k]`` over ``valid [b, 1, q, k]``.

    Each row is centred on its own mean over its valid keys (softmax is blind to a per-row constant).
    """
    mask = valid.to(logits.dtype)
    count = mask.sum(-1, keepdim=True)  # [b, 1, q, 1]
    kept = torch.where(valid, logits, torch.zeros_like(logits))  # padding can hold anything: never multiplied in
    mean = kept.sum(-1, keepdim=True) / count.clamp_min(1)
    squared = torch.where(valid, (logits - mean) ** 2, torch.zeros_like(logits)).sum(dim=(-1, -2))  # [b, H]
    pairs = mask.sum(dim=(-1, -2)).clamp_min(1)  # [b, 1]
    return squared / pairs


def _our_stack(model: nn.Module) -> tuple[TransformerStack, str, tuple[str, ...]]:
    """The model's ``TransformerStack``, its module name, and the inputs its forward takes."""
    if isinstance(model, EncoderClassifier):
        return model.encoder, "encoder", ("input_ids", "attention_mask", "token_type_ids")
    if isinstance(model, DecoderLM):
        return model.decoder, "decoder", ("input_ids", "attention_mask", "positions")
    raise ValueError(
        f"position_logit_share splits logits into content and position, which only attn_probe's own models "
        f"expose (attn_probe.attention.EncoderClassifier / DecoderLM); {type(model).__name__} is not one. For "
        "any model, measure the position bias of the weights: attention_by_distance(capture(model, inputs)) "
        "and position_explained(...)"
    )


def _model_inputs(inputs: TokenizedBatch | Mapping[str, torch.Tensor], accepted: tuple[str, ...]) -> dict:
    if isinstance(inputs, TokenizedBatch):
        source: Mapping[str, Any] = inputs.model_inputs()
    elif isinstance(inputs, Mapping):
        source = inputs
    else:
        raise ValueError(f"inputs must be a TokenizedBatch or a mapping with input_ids, got {type(inputs).__name__}")
    if "input_ids" not in source:
        raise ValueError(f"inputs have no 'input_ids' (got keys {sorted(source)})")
    if source["input_ids"].dim() != 2:
        raise ValueError(f"input_ids must be [batch, n], got shape {tuple(source['input_ids'].shape)}")
    return {key: source[key] for key in accepted if torch.is_tensor(source.get(key))}


# ----------------------------------------------------------------------------------------------------
# weights: any model
# ----------------------------------------------------------------------------------------------------
def attention_by_distance(
    captured: AttentionCapture,
    *,
    max_distance: int | None = None,
    causal: bool | None = None,
    stack: str | None = None,
) -> pd.DataFrame:
    """Mean attention weight by relative distance ``d = key - query``, per (layer, head, d), over the batch.

    ``captured``: weights ``[batch, layers, heads, n, n]`` of the main stack. ``max_distance``: pool
    ``|d| > max_distance`` into the bins ``±max_distance`` (their ``clipped`` is True). ``causal``: whether
    keys after the query are disallowed (None: the main stack is a decoder-only model's).

    Columns: ``layer, head, distance``; ``mean_weight`` the mean of ``α_{i,i+d}`` over the (example, query)
    pairs counted (real query rows that are not forced, with an allowed key at d); ``count`` how many;
    ``share`` the fraction of those rows' whole attention that lands at d (sums to 1 over d for each head).
    Only distances with ``count > 0`` appear.
    """
    sums, counts, width = _distance_sums(captured, max_distance=max_distance, causal=causal, stack=stack)
    num_layers, num_heads, bins = sums.shape
    present = counts > 0  # [bins]
    mean = sums / counts.clamp_min(1).to(sums.dtype)  # [L, H, bins]
    totals = sums.sum(-1, keepdim=True)
    share = torch.where(totals > 0, sums / totals.where(totals > 0, 1.0), torch.nan)
    distance = torch.arange(-width, width + 1)  # [bins]
    layer, head, distance_grid = torch.meshgrid(
        torch.arange(num_layers), torch.arange(num_heads), distance, indexing="ij"
    )  # [L, H, bins] each
    keep = present.expand(num_layers, num_heads, bins)
    clipped = (
        distance.abs() == max_distance if max_distance is not None else torch.zeros(bins, dtype=torch.bool)
    ).expand(num_layers, num_heads, bins)
    return pd.DataFrame(
        {
            "layer": layer[keep].numpy().astype(np.int64),
            "head": head[keep].numpy().astype(np.int64),
            "distance": distance_grid[keep].numpy().astype(np.int64),
            "mean_weight": mean[keep].numpy(),
            "share": share[keep].numpy(),
            "count": counts.expand(num_layers, num_heads, bins)[keep].numpy().astype(np.int64),
            "clipped": clipped[keep].numpy(),
        }
    )


def position_explained(
    captured: AttentionCapture,
    *,
    profile: pd.DataFrame | None = None,
    max_distance: int | None = None,
    causal: bool | None = None,
    stack: str | None = None,
) -> pd.DataFrame:
    """How much of each head's attention its attention-by-distance profile recovers, per (example, layer, head).

    ``profile``: an :func:`attention_by_distance` table (layer, head, distance, mean_weight, clipped) for the
    same model, e.g. of a larger dataset; default: this capture's own (``max_distance`` and ``causal`` go to
    it). Columns: ``example_id, layer, head, n_queries, profile`` (``"batch"`` or ``"given"``), ``r2_position,
    r2_uniform, r2_position_vs_uniform, tv_position, tv_uniform`` (the protocol is in the module docstring).
    """
    chosen = self_attention_stack(captured, stack)
    weights = chosen.weights.detach()  # [b, L, H, n, n]
    batch, num_layers, num_heads = weights.shape[:3]
    is_causal = _is_causal(captured, causal)
    if profile is None:
        profile = attention_by_distance(captured, max_distance=max_distance, causal=is_causal, stack=stack)
        source = "batch"
    else:
        source = "given"
    table, offset, clip_at = _profile_tensor(profile, num_layers, num_heads)  # [L, H, bins]
    table = table.to(weights.device)
    real = captured.attention_mask.bool().to(weights.device)

    results: dict[str, list[torch.Tensor]] = {name: [] for name in EXPLAINED_COLUMNS if name != "profile"}
    for example in range(batch):
        keys = real[example]
        m = int(keys.sum())
        allowed, kept_rows, distance = _layout(m, is_causal, weights.device)  # [m, m], [m], [m, m]
        alpha = weights[example][:, :, keys][..., keys].to(torch.float64)  # [L, H, m, m]
        pairs = allowed & kept_rows[:, None]  # [m, m]: the pairs scored
        if clip_at is not None:
            distance = distance.clamp(-clip_at, clip_at)
        index = distance + offset
        outside = (index < 0) | (index >= table.shape[-1])
        looked_up = table[:, :, index.clamp(0, table.shape[-1] - 1)]  # [L, H, m, m]
        missing = pairs & (outside | torch.isnan(looked_up).any(dim=(0, 1)))
        if bool(missing.any()):
            query, key = (int(v) for v in torch.nonzero(missing)[0])
            raise ValueError(
                f"the profile has no mean_weight at distance {key - query} (example {example}): compute it on "
                "inputs at least as long as these, or with max_distance so that far distances are pooled"
            )
        predicted = torch.where(allowed, looked_up, torch.zeros_like(looked_up))
        normaliser = predicted.sum(-1, keepdim=True)  # [L, H, m, 1]
        uniform = allowed.to(torch.float64) / allowed.sum(-1, keepdim=True).clamp_min(1)  # [m, m]
        predicted = torch.where(normaliser > 0, predicted / normaliser.where(normaliser > 0, 1.0), uniform)

        observed, by_position, by_uniform = alpha[..., pairs], predicted[..., pairs], uniform[pairs]  # [L, H, P]
        spread = ((observed - observed.mean(-1, keepdim=True)) ** 2).sum(-1)  # [L, H]; NaN mean when P = 0
        error_position = ((observed - by_position) ** 2).sum(-1)
        error_uniform = ((observed - by_uniform) ** 2).sum(-1)
        # A sum of squares within rounding of the weights' precision is 0: a ratio to it is noise.
        noise = observed.shape[-1] * torch.finfo(weights.dtype).eps ** 2
        results["r2_position"].append(_one_minus_ratio(error_position, spread, noise))
        results["r2_uniform"].append(_one_minus_ratio(error_uniform, spread, noise))
        results["r2_position_vs_uniform"].append(_one_minus_ratio(error_position, error_uniform, noise))
        rows = int(kept_rows.sum())
        for name, prediction in (("tv_position", predicted), ("tv_uniform", uniform.expand_as(alpha))):
            distance_tv = 0.5 * torch.where(allowed, (alpha - prediction).abs(), 0.0).sum(-1)  # [L, H, m]
            value = distance_tv[..., kept_rows].sum(-1) / rows if rows else torch.full_like(spread, torch.nan)
            results[name].append(value)
        results["n_queries"].append(torch.full((num_layers, num_heads), rows))

    example_id, layer, head = _grid(batch, num_layers, num_heads)
    frame = pd.DataFrame({"example_id": example_id, "layer": layer, "head": head})
    for name in EXPLAINED_COLUMNS[3:]:
        if name == "profile":
            frame[name] = source
        elif batch:
            frame[name] = torch.stack(results[name]).cpu().reshape(-1).numpy()
        else:
            frame[name] = pd.Series(dtype="float64")
    return frame.astype({"n_queries": "int64"})


def _distance_sums(
    captured: AttentionCapture, *, max_distance: int | None, causal: bool | None, stack: str | None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per (layer, head, distance bin) the summed weight ``[L, H, 2W+1]`` and the pair count ``[2W+1]``."""
    if max_distance is not None and (isinstance(max_distance, bool) or int(max_distance) != max_distance):
        raise ValueError(f"max_distance must be a non-negative integer or None, got {max_distance!r}")
    if max_distance is not None and max_distance < 0:
        raise ValueError(f"max_distance must be a non-negative integer or None, got {max_distance!r}")
    chosen = self_attention_stack(captured, stack)
    weights = chosen.weights.detach()  # [b, L, H, n, n]
    batch, num_layers, num_heads, n = weights.shape[:4]
    is_causal = _is_causal(captured, causal)
    width = max(n - 1, 0) if max_distance is None else int(max_distance)
    sums = torch.zeros(num_layers, num_heads, 2 * width + 1, dtype=torch.float64, device=weights.device)
    counts = torch.zeros(2 * width + 1, dtype=torch.long, device=weights.device)
    real = captured.attention_mask.bool().to(weights.device)
    for example in range(batch):
        keys = real[example]
        allowed, kept_rows, distance = _layout(int(keys.sum()), is_causal, weights.device)
        pairs = allowed & kept_rows[:, None]  # [m, m]
        index = distance.clamp(-width, width)[pairs] + width  # [P]
        alpha = weights[example][:, :, keys][..., keys].to(torch.float64)  # [L, H, m, m]
        sums.index_add_(-1, index, alpha[..., pairs])
        counts.index_add_(0, index, torch.ones_like(index))
    return sums.cpu(), counts.cpu(), width


def _layout(m: int, causal: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For ``m`` real tokens: allowed keys ``[m, m]``, rows that choose (more than one allowed key) ``[m]``,
    and the distance ``key - query`` ``[m, m]``."""
    index = torch.arange(m, device=device)
    distance = index[None, :] - index[:, None]  # [q, k]
    allowed = distance <= 0 if causal else torch.ones(m, m, dtype=torch.bool, device=device)
    return allowed, allowed.sum(-1) > 1, distance


def _is_causal(captured: AttentionCapture, causal: bool | None) -> bool:
    # The main stack of a decoder-only model is named "decoder" (attn_probe.models.families.Family.main_stack).
    return captured.main_stack == "decoder" if causal is None else bool(causal)


def _profile_tensor(profile: pd.DataFrame, num_layers: int, num_heads: int) -> tuple[torch.Tensor, int, int | None]:
    """A profile table as ``[L, H, 2D+1]`` (NaN where absent), the offset of distance 0, and the clip width."""
    needed = {"layer", "head", "distance", "mean_weight"}
    if not needed <= set(profile.columns):
        raise ValueError(
            f"profile must be an attention_by_distance table with columns {sorted(needed)}, got {list(profile.columns)}"
        )
    if profile.empty:
        raise ValueError("the profile is empty: compute it with attention_by_distance on a non-empty capture")
    layers, heads = profile["layer"].to_numpy(), profile["head"].to_numpy()
    covered = {(int(a), int(b)) for a, b in zip(layers, heads, strict=True)}
    wanted = {(a, b) for a in range(num_layers) for b in range(num_heads)}
    if not wanted <= covered:
        missing = sorted(wanted - covered)[:4]
        raise ValueError(
            f"the profile does not cover every head of this capture ({num_layers} layers x {num_heads} heads); "
            f"missing e.g. (layer, head) {missing}: was it computed for another model?"
        )
    distances = profile["distance"].to_numpy().astype(np.int64)
    reach = int(np.abs(distances).max())
    table = torch.full((num_layers, num_heads, 2 * reach + 1), torch.nan, dtype=torch.float64)
    inside = (layers < num_layers) & (heads < num_heads)
    table[layers[inside], heads[inside], distances[inside] + reach] = torch.as_tensor(
        profile["mean_weight"].to_numpy(dtype=np.float64)[inside]
    )
    clip_at = None
    if "clipped" in profile.columns and bool(profile["clipped"].any()):
        clip_at = int(np.abs(distances[profile["clipped"].to_numpy(dtype=bool)]).max())
    return table, reach, clip_at


def _one_minus_ratio(numerator: torch.Tensor, denominator: torch.Tensor, noise: float) -> torch.Tensor:
    """``1 - numerator / denominator``, NaN where the denominator is at most ``noise`` (or NaN: no pair)."""
    defined = denominator > noise
    return torch.where(defined, 1 - numerator / denominator.where(defined, 1.0), torch.nan)


def _grid(batch: int, num_layers: int, num_heads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``example_id, layer, head`` columns for ``[batch, layers, heads]`` in C order."""
    example_id, layer, head = np.meshgrid(np.arange(batch), np.arange(num_layers), np.arange(num_heads), indexing="ij")
    return example_id.ravel(), layer.ravel(), head.ravel()
