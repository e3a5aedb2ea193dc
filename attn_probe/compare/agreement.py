"""Do two explanations rank the tokens alike? Rank correlation and top-k overlap, per example.

Every function compares token scores ``[batch, n]`` of :class:`~attn_probe.methods.Explanation` objects
computed on the same batch, one example at a time, on that example's real tokens only:

- padding never enters (``Explanation.real``);
- special tokens ([CLS], [SEP], BOS, ...; ``Explanation.special``) enter only with ``include_special=True``.
  Attention methods pile weight on them while gradient methods often do not, so leaving them in can make
  two methods look more (or less) alike for reasons unrelated to the content tokens.

Statistics (on the same vectors of ``n_tokens`` scores; computed for many pairs at once by
:mod:`attn_probe.compare.rank_stats`, equal to :mod:`scipy.stats`' to 1e-12):

- ``kendall_tau``, ``kendall_p``: Kendall's tau-b (ties corrected) and its two-sided p-value
  (Kendall 1938; :func:`scipy.stats.kendalltau`, exact p for small samples without ties).
- ``spearman_rho``, ``spearman_p``: Spearman's rank correlation and its two-sided p-value
  (:func:`scipy.stats.spearmanr`; the p-value is NaN for 2 tokens: its t-test has no degree of freedom).
- ``topk_jaccard``: ``|T_a ∩ T_b| / |T_a ∪ T_b|`` where ``T_m`` is the set of method m's ``k`` highest-scored
  tokens, ``k`` the effective ``min(k, n_tokens)``.
- ``topk_tau``: Kendall's tau-b of the two score vectors restricted to the tokens in ``T_a ∪ T_b``: whether
  the tokens that either method puts at the top are ordered alike by both. When ``k >= n_tokens`` it equals
  ``kendall_tau``. (A restriction to the union rather than the intersection keeps the tokens on which the
  methods disagree about membership; see Fagin, Kumar & Sivakumar 2003 for the family of top-k measures.)

**Top-k and ties.** ``T_m`` takes tokens in descending score order with a *stable* sort: among equal
scores the earlier token (lower column) comes first. ``[1, 1, 1, 0]`` has top-2 ``{0, 1}``.

**Undefined values are NaN, not errors:** a correlation (and its p-value) is NaN when fewer than 2 tokens
are compared or when either score vector is constant over them (no ranking to correlate); ``topk_tau`` is
NaN likewise on the union; ``topk_jaccard`` is NaN when no token is compared at all (an example made of
special tokens only, with ``include_special=False``).

**Signed methods.** Gradient methods give signed scores (negative: pushes the target down). With
``absolute=True`` both explanations are ranked by ``|score|`` ("how much does the token matter, either
way"), which is the usual way to compare them with non-negative attention scores (e.g. DeYoung et al.
2020, Atanasova et al. 2020). The choice is recorded in the ``absolute`` column.

    explanations = explain(model, batch, ["attention_rollout", "saliency", "integrated_gradients"])
    agreement_table(explanations, k=5, absolute=True)
    layer_agreement(explanations["attention_rollout"], explanations["integrated_gradients"], absolute=True)
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch

from attn_probe.compare.rank_stats import pair_statistics
from attn_probe.methods.base import Explanation

AGREEMENT_COLUMNS = [
    "example_id",
    "method_a",
    "method_b",
    "absolute",
    "include_special",
    "n_tokens",
    "k",
    "kendall_tau",
    "kendall_p",
    "spearman_rho",
    "spearman_p",
    "topk_tau",
    "topk_jaccard",
]
_STATISTICS = AGREEMENT_COLUMNS[5:]  # == rank_stats.STATISTICS


def rank_agreement(
    a: Explanation,
    b: Explanation,
    *,
    k: int = 5,
    absolute: bool = False,
    include_special: bool = False,
) -> pd.DataFrame:
    """Agreement of two explanations' token rankings, one row per example of the batch.

    ``a.scores`` and ``b.scores`` are ``[batch, n]`` on the same batch (same shape and padding). Columns:
    ``example_id, method_a, method_b, absolute, include_special, n_tokens, k, kendall_tau, kendall_p,
    spearman_rho, spearman_p, topk_tau, topk_jaccard`` (definitions in the module docstring; ``k`` is the
    effective ``min(k, n_tokens)``). ``method_a`` / ``method_b`` are ``a.method`` / ``b.method``.
    """
    return _agreement(a, b, a.method, b.method, k=k, absolute=absolute, include_special=include_special)


def agreement_table(
    explanations: Mapping[str, Explanation],
    *,
    pairs: Sequence[tuple[str, str]] | None = None,
    k: int = 5,
    absolute: bool = False,
    include_special: bool = False,
) -> pd.DataFrame:
    """:func:`rank_agreement` for every unordered pair of methods (or the given ``pairs``), stacked.

    ``explanations``: by name, as :func:`~attn_probe.methods.explain` returns them; the names go into
    ``method_a`` / ``method_b`` (so two runs of one method with different options can be told apart).
    Default pairs: every unordered pair in the mapping's order (``(x, y)`` with x before y). Columns as
    :func:`rank_agreement`, one row per (pair, example).
    """
    _check_k(k)
    names = list(explanations)
    if pairs is None:
        if len(names) < 2:
            raise ValueError(
                f"agreement_table needs at least two explanations to pair, got {len(names)} ({names}); "
                "run explain() with several methods"
            )
        chosen = list(itertools.combinations(names, 2))
    else:
        chosen = [tuple(pair) for pair in pairs]
        for pair in chosen:
            if len(pair) != 2:
                raise ValueError(f"each pair must be two method names, got {pair!r}")
            missing = [name for name in pair if name not in explanations]
            if missing:
                raise ValueError(f"pair {pair!r} names {missing}, which are not among the explanations {names}")
    if not chosen:
        return _empty(AGREEMENT_COLUMNS)
    for x, y in chosen:
        _check_same_batch(explanations[x], explanations[y])
    masks = _token_masks(explanations[chosen[0][0]], include_special)
    scores = {}
    for name in dict.fromkeys(name for pair in chosen for name in pair):
        scores[name] = _as_numpy(explanations[name].scores)
        _check_finite(scores[name][masks], name, "scores")
    # every pair of one example in one stack: one vectorised call per example, rows in (pair, example) order
    statistics = np.empty((len(chosen), masks.shape[0], len(_STATISTICS)))
    for example in range(masks.shape[0]):
        keep = masks[example]
        x = _prepare(np.stack([scores[a][example, keep] for a, _ in chosen]), absolute)
        y = _prepare(np.stack([scores[b][example, keep] for _, b in chosen]), absolute)
        statistics[:, example] = pair_statistics(x, y, k)
    frame = pd.DataFrame(statistics.reshape(-1, len(_STATISTICS)), columns=_STATISTICS)
    frame.insert(0, "example_id", np.tile(np.arange(masks.shape[0]), len(chosen)))
    frame.insert(1, "method_a", np.repeat([a for a, _ in chosen], masks.shape[0]))
    frame.insert(2, "method_b", np.repeat([b for _, b in chosen], masks.shape[0]))
    frame.insert(3, "absolute", bool(absolute))
    frame.insert(4, "include_special", bool(include_special))
    return frame.astype({"example_id": "int64", "n_tokens": "int64", "k": "int64"})


def layer_agreement(
    layered: Explanation,
    reference: Explanation,
    *,
    level: Literal["layer", "head"] = "layer",
    k: int = 5,
    absolute: bool = False,
    include_special: bool = False,
) -> pd.DataFrame:
    """Agreement of each layer's (or head's) scores of ``layered`` with the final scores of ``reference``.

    ``level="layer"`` reads ``layered.layer_scores`` ``[batch, layers, n]``, ``level="head"`` reads
    ``layered.head_scores`` ``[batch, layers, heads, n]``; ``reference.scores`` is ``[batch, n]`` on the
    same batch. Which layer of a model already ranks tokens like a gradient method? Is one head enough?

    Columns: ``example_id, layer, head`` (``head`` is nullable Int64, NA at ``level="layer"``),
    ``level``, then those of :func:`rank_agreement` from ``method_a`` on, with ``method_a = layered.method``.
    One row per (example, layer) or (example, layer, head).
    """
    return layer_agreement_table(
        layered, [reference], level=level, k=k, absolute=absolute, include_special=include_special
    )


def layer_agreement_table(
    layered: Explanation,
    references: Sequence[Explanation],
    *,
    level: Literal["layer", "head"] = "layer",
    k: int = 5,
    absolute: bool = False,
    include_special: bool = False,
) -> pd.DataFrame:
    """:func:`layer_agreement` of ``layered`` with each of ``references``, stacked in their order (the same rows as
    concatenating one call per reference), every reference of an example in one vectorised pass."""
    if level not in ("layer", "head"):
        raise ValueError(f"level must be 'layer' or 'head', got {level!r}")
    _check_k(k)
    view = layered.layer_scores if level == "layer" else layered.head_scores
    if view is None:
        field = "layer_scores" if level == "layer" else "head_scores"
        raise ValueError(
            f"explanation {layered.method!r} has no per-{level} view ({field} is None): use a method that "
            f"returns one (raw_attention and attention_norm have per-layer and per-head views, "
            f"attention_rollout a per-layer one)"
        )
    expected_dims = 3 if level == "layer" else 4
    batch, n = layered.scores.shape
    if view.dim() != expected_dims or view.shape[0] != batch or view.shape[-1] != n:
        raise ValueError(
            f"{layered.method!r} per-{level} scores have shape {tuple(view.shape)}, expected "
            f"[batch={batch}, layers, {'heads, ' if level == 'head' else ''}n={n}]"
        )
    references = list(references)
    if not references:
        raise ValueError("no reference explanations given: pass at least one (e.g. 'integrated_gradients')")
    for reference in references:
        _check_same_batch(layered, reference)
    if level == "layer":
        view = view.unsqueeze(2)  # [b, L, 1, n]: one pseudo-head, so both levels share the loop below
    num_layers, num_heads = view.shape[1], view.shape[2]
    masks = _token_masks(layered, include_special)
    view_np = _as_numpy(view)  # [b, L, H', n]
    _check_finite(view_np[np.broadcast_to(masks[:, None, None, :], view_np.shape)], layered.method, f"{level}_scores")
    references_np = np.stack([_as_numpy(reference.scores) for reference in references])  # [R, b, n]
    for reference, scores in zip(references, references_np, strict=True):
        _check_finite(scores[masks], reference.method, "scores")
    heads, count = num_layers * num_heads, len(references)
    statistics = np.empty((count, batch, heads, len(_STATISTICS)))
    for example in range(batch):
        keep = masks[example]
        x = _prepare(view_np[example][..., keep].reshape(heads, -1), absolute)  # [L * H', m]
        y = _prepare(references_np[:, example][:, keep], absolute)  # [R, m]
        # every (reference, head) pair of the example in one stack, reference-major
        pairs = pair_statistics(np.tile(x, (count, 1)), np.repeat(y, heads, axis=0), k)
        statistics[:, example] = pairs.reshape(count, heads, len(_STATISTICS))
    layer_of, head_of = np.divmod(np.arange(heads), num_heads)
    frame = pd.DataFrame(statistics.reshape(-1, len(_STATISTICS)), columns=_STATISTICS)
    frame.insert(0, "example_id", np.tile(np.repeat(np.arange(batch), heads), count))
    frame.insert(1, "layer", np.tile(layer_of, count * batch))
    frame.insert(2, "head", np.tile(head_of, count * batch))
    # head is nullable (NA at level="layer") so that both levels share one schema and stack cleanly.
    frame = frame.astype({"example_id": "int64", "layer": "int64", "head": "Int64", "n_tokens": "int64", "k": "int64"})
    if level == "layer":
        frame["head"] = pd.array([pd.NA] * len(frame), dtype="Int64")
    frame.insert(3, "level", level)
    frame.insert(4, "method_a", layered.method)
    frame.insert(5, "method_b", np.repeat([reference.method for reference in references], batch * heads))
    frame.insert(6, "absolute", bool(absolute))
    frame.insert(7, "include_special", bool(include_special))
    return frame


# ----------------------------------------------------------------------------------------------------
def _agreement(
    a: Explanation, b: Explanation, name_a: str, name_b: str, *, k: int, absolute: bool, include_special: bool
) -> pd.DataFrame:
    _check_k(k)
    _check_same_batch(a, b)
    masks = _token_masks(a, include_special)
    scores_a, scores_b = _as_numpy(a.scores), _as_numpy(b.scores)
    _check_finite(scores_a[masks], name_a, "scores")
    _check_finite(scores_b[masks], name_b, "scores")
    rows = []
    for example in range(scores_a.shape[0]):
        keep = masks[example]
        x = _prepare(scores_a[example, keep][None, :], absolute)
        y = _prepare(scores_b[example, keep][None, :], absolute)
        rows.append([example, name_a, name_b, bool(absolute), bool(include_special), *pair_statistics(x, y, k)[0]])
    if not rows:
        return _empty(AGREEMENT_COLUMNS)
    frame = pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)
    return frame.astype({"example_id": "int64", "n_tokens": "int64", "k": "int64"})


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest ``scores`` ``[n]``, highest first; ties keep the earlier index first.

    A stable sort of the negated scores: the order of equal scores is their order in the input, so the
    result never depends on the sorting algorithm (``np.argsort``'s default quicksort is not stable).
    """
    return np.argsort(-scores, kind="stable")[:k]


def _prepare(scores: np.ndarray, absolute: bool) -> np.ndarray:
    return np.abs(scores) if absolute else scores


def _token_masks(explanation: Explanation, include_special: bool) -> np.ndarray:
    """``[batch, n]`` bool: the tokens compared (real, and not special unless ``include_special``)."""
    keep = explanation.real.bool()
    if not include_special:
        keep = keep & ~explanation.special.bool().to(keep.device)
    return keep.cpu().numpy()


def _check_same_batch(a: Explanation, b: Explanation) -> None:
    if tuple(a.scores.shape) != tuple(b.scores.shape):
        raise ValueError(
            f"explanations {a.method!r} and {b.method!r} have scores of shapes {tuple(a.scores.shape)} and "
            f"{tuple(b.scores.shape)}: they come from different batches. Compare explanations computed by "
            "one explain() call (or on the very same inputs)"
        )
    for name in ("real", "special"):
        mask_a, mask_b = getattr(a, name), getattr(b, name)
        if tuple(mask_a.shape) != tuple(a.scores.shape) or tuple(mask_b.shape) != tuple(b.scores.shape):
            raise ValueError(
                f"the {name!r} masks of {a.method!r} / {b.method!r} have shapes {tuple(mask_a.shape)} / "
                f"{tuple(mask_b.shape)}, not the scores' {tuple(a.scores.shape)}"
            )
        if not torch.equal(mask_a.bool().cpu(), mask_b.bool().cpu()):
            raise ValueError(
                f"explanations {a.method!r} and {b.method!r} mark different tokens as {name}: they come from "
                "different batches (or one was computed from a tokenizer's output and the other from a "
                "TokenizedBatch, which knows special tokens). Compute both on the same inputs"
            )


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer (the size of the top-k sets), got {k!r}")


def _check_finite(scores: np.ndarray, method: str, what: str) -> None:
    """``scores``: the compared entries only (padding may hold anything a method leaves there)."""
    if not np.all(np.isfinite(scores)):
        raise ValueError(
            f"{method!r} {what} hold NaN or infinite values on compared tokens: a ranking of them is meaningless. "
            "Check the method's run (e.g. a model in half precision overflowing) before comparing"
        )


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(device="cpu", dtype=torch.float64).numpy()


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype="object") for column in columns})
