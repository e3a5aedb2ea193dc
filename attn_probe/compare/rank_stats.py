"""Rank agreement of many score vectors at once: the numbers scipy gives, one vectorised pass per stack.

:mod:`attn_probe.compare.agreement` compares every head of every layer with a reference, per example: 72 pairs for
a 6 x 12 model, thousands for a batch. One :func:`scipy.stats.kendalltau` / :func:`~scipy.stats.spearmanr` call per
pair costs ~0.5 ms of Python around a few microseconds of arithmetic, so these statistics are computed here for a
whole stack ``X [p, m]`` against ``Y [p, m]`` (or one ``Y [1, m]`` shared by every row) with numpy, and equal
scipy's (``tests/compare/test_rank_stats.py`` checks them against scipy to 1e-12 on random vectors with and
without ties):

- Kendall's tau-b from the signs of every pair ``i < j``: ``S = sum sign(x_i - x_j) sign(y_i - y_j)`` (concordant
  minus discordant pairs), ``tau = S / sqrt((P - ties_x) (P - ties_y))`` with ``P = m (m - 1) / 2``. Its two-sided
  p-value as :func:`scipy.stats.kendalltau` chooses it (``method="auto"``): exact (Kendall's distribution of
  inversions, :func:`kendall_exact_p`) without ties when ``m <= 33`` or at most one pair is out of order, else the
  normal approximation with scipy's tie-corrected variance.
- Spearman's rho: the Pearson correlation of average ranks; its p-value from the t distribution with ``m - 2``
  degrees of freedom (NaN for 2 tokens: no degree of freedom).
- top-k: Jaccard overlap of the two top-``k`` sets (stable: earlier column first among equal scores) and tau-b
  restricted to their union.

Undefined values are NaN, as in :mod:`~attn_probe.compare.agreement`: a correlation of fewer than 2 tokens or of a
constant vector, a top-k tau whose union is shorter than 2 or constant on either side.

Memory: the pair signs take ``p * m (m - 1) / 2`` bytes (int8); stacks are cut into chunks of at most
:data:`PAIR_CELLS` of them (a 512-token example: 72 heads in two chunks).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import special, stats

PAIR_CELLS = 16 * 1024 * 1024  # int8 pair signs held at once (bytes)
STATISTICS = ("n_tokens", "k", "kendall_tau", "kendall_p", "spearman_rho", "spearman_p", "topk_tau", "topk_jaccard")
EXACT_KENDALL_MAX_TOKENS = 33  # scipy's "auto": exact p-values up to this many tokens (without ties)


def pair_statistics(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """``[p, 8]`` float64: :data:`STATISTICS` of each row of ``x [p, m]`` with the same row of ``y`` (``[p, m]``,
    or ``[1, m]`` for one reference shared by every row). ``k``: the requested top-k size (``min(k, m)`` is used)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or y.shape[1] != x.shape[1] or y.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"expected x [p, m] and y [p, m] or [1, m], got {x.shape} and {y.shape}")
    p, m = x.shape
    out = np.full((p, len(STATISTICS)), np.nan)
    out[:, 0] = m
    out[:, 1] = min(k, m)
    if p == 0 or m == 0:
        return out
    y = np.broadcast_to(y, x.shape)
    _top_k_columns(x, y, min(k, m), out)
    if m < 2:
        return out
    defined = ~(_constant(x) | _constant(y))
    if defined.any():
        rows = np.flatnonzero(defined)
        out[rows, 4], out[rows, 5] = _spearman(x[rows], y[rows])
        for chunk in _chunks(rows, m):
            out[chunk, 2], out[chunk, 3] = _kendall(x[chunk], y[chunk])
    return out


# ----------------------------------------------------------------------------------------------------
# Kendall's tau-b
# ----------------------------------------------------------------------------------------------------
def _pair_signs(values: np.ndarray) -> np.ndarray:
    """``[p, P]`` int8: ``sign(v_i - v_j)`` for every pair ``i < j`` of each row."""
    i, j = np.triu_indices(values.shape[1], k=1)
    return np.sign(values[:, i] - values[:, j]).astype(np.int8)


def _kendall(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """tau-b and its two-sided p-value of each row pair (rows neither constant nor shorter than 2)."""
    m = x.shape[1]
    sx, sy = _pair_signs(x), _pair_signs(y)
    total = m * (m - 1) // 2
    concordance = np.einsum("pq,pq->p", sx, sy, dtype=np.int64)  # concordant - discordant
    ties_x = total - np.count_nonzero(sx, axis=1)
    ties_y = total - np.count_nonzero(sy, axis=1)
    tau = np.clip(concordance / np.sqrt(total - ties_x) / np.sqrt(total - ties_y), -1.0, 1.0)
    discordant = np.count_nonzero((sx * sy) < 0, axis=1)
    out_of_order = np.minimum(discordant, total - discordant)
    untied = (ties_x == 0) & (ties_y == 0)
    exact = untied & ((m <= EXACT_KENDALL_MAX_TOKENS) | (out_of_order <= 1))
    pvalue = np.empty(len(tau))
    if exact.any():
        pvalue[exact] = _exact_p_table(m)[np.minimum(out_of_order[exact], total // 2)]
    for r in np.flatnonzero(~exact):
        pvalue[r] = _kendall_asymptotic_p(int(concordance[r]), m, x[r], y[r], int(ties_x[r]), int(ties_y[r]))
    return tau, pvalue


def _tie_terms(values: np.ndarray) -> tuple[int, int]:
    """``(sum t (t-1) (t-2), sum t (t-1) (2t+5))`` over the groups of ``t`` equal values (scipy's variance terms)."""
    _, counts = np.unique(values, return_counts=True)
    t = counts[counts > 1].astype(np.int64)
    return int((t * (t - 1) * (t - 2)).sum()), int((t * (t - 1) * (2 * t + 5)).sum())


def _kendall_asymptotic_p(concordance: int, m: int, x: np.ndarray, y: np.ndarray, ties_x: int, ties_y: int) -> float:
    """Normal approximation of ``concordant - discordant`` with the tie-corrected variance (Kendall 1970)."""
    x0, x1 = _tie_terms(x) if ties_x else (0, 0)
    y0, y1 = _tie_terms(y) if ties_y else (0, 0)
    pairs = m * (m - 1.0)
    variance = (pairs * (2 * m + 5) - x1 - y1) / 18 + (2 * ties_x * ties_y) / pairs + x0 * y0 / (9 * pairs * (m - 2))
    z = concordance / math.sqrt(variance)
    return float(min(1.0, 2 * special.ndtr(-abs(z))))


@lru_cache(maxsize=64)
def _inversion_counts(m: int) -> tuple[int, ...]:
    """How many permutations of ``m`` items have exactly ``c`` inversions, ``c = 0 .. m (m-1) / 4`` (the lower half:
    the distribution is symmetric), as exact integers (Mahonian numbers, built one item at a time)."""
    half = m * (m - 1) // 4
    counts = [1] + [0] * half
    for items in range(2, m + 1):  # the new item adds 0 .. items-1 inversions: a moving window sum
        window, out = 0, []
        for c in range(half + 1):
            window += counts[c]
            if c >= items:
                window -= counts[c - items]
            out.append(window)
        counts = out
    return tuple(counts)


@lru_cache(maxsize=64)
def _exact_p_table(m: int) -> np.ndarray:
    """``[m (m-1) / 4 + 1]``: :func:`kendall_exact_p` of ``m`` items at every count of pairs out of order up to half
    (for ``m`` above :data:`EXACT_KENDALL_MAX_TOKENS` only counts 0 and 1 are asked for: the rest stay NaN)."""
    half = m * (m - 1) // 4
    if m > EXACT_KENDALL_MAX_TOKENS:
        table = np.full(half + 1, np.nan)
        table[: min(2, half + 1)] = [kendall_exact_p(m, c) for c in range(min(2, half + 1))]
        return table
    return np.array([kendall_exact_p(m, c) for c in range(half + 1)])


def kendall_exact_p(m: int, out_of_order: int) -> float:
    """Two-sided exact p-value of Kendall's tau for ``m`` untied items with ``out_of_order`` pairs discordant (or
    concordant, whichever is fewer): twice the share of permutations with at most that many inversions, at most 1."""
    if m <= 2:
        return 1.0
    if out_of_order * 4 >= m * (m - 1):
        return 1.0
    if out_of_order <= 1:  # scipy's shortcuts, for any m: 2 / m! and 2 m / m! (0 once m! overflows a float)
        numerator = 2 if out_of_order == 0 else 2 * m
        return numerator / math.factorial(m) if m < 171 else 0.0
    at_most = sum(_inversion_counts(m)[: out_of_order + 1])
    return min(1.0, 2 * at_most / math.factorial(m))


# ----------------------------------------------------------------------------------------------------
# Spearman's rho
# ----------------------------------------------------------------------------------------------------
def _spearman(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """rho (Pearson of average ranks) and its two-sided t-test p-value of each row pair."""
    m = x.shape[1]
    rx = stats.rankdata(x, axis=1)
    ry = stats.rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    rho = (rx * ry).sum(axis=1) / np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    rho = np.clip(rho, -1.0, 1.0)
    degrees = m - 2
    if degrees <= 0:
        return rho, np.full(len(rho), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = rho * np.sqrt(degrees / ((rho + 1.0) * (1.0 - rho)))
    pvalue = np.where(np.abs(rho) >= 1.0, 0.0, 2 * special.stdtr(degrees, -np.abs(t)))
    return rho, np.minimum(pvalue, 1.0)


# ----------------------------------------------------------------------------------------------------
# top-k
# ----------------------------------------------------------------------------------------------------
def _top_k_columns(x: np.ndarray, y: np.ndarray, k: int, out: np.ndarray) -> None:
    """Fill ``out[:, 6]`` (tau-b on the union of the top-k sets) and ``out[:, 7]`` (their Jaccard overlap)."""
    p, m = x.shape
    rows = np.arange(p)[:, None]
    in_a = np.zeros((p, m), dtype=bool)
    in_b = np.zeros((p, m), dtype=bool)
    in_a[rows, np.argsort(-x, axis=1, kind="stable")[:, :k]] = True
    in_b[rows, np.argsort(-y, axis=1, kind="stable")[:, :k]] = True
    union = in_a | in_b
    size = union.sum(axis=1)
    with np.errstate(invalid="ignore"):
        out[:, 7] = np.where(size > 0, (in_a & in_b).sum(axis=1) / np.maximum(size, 1), np.nan)
    # The union has at most 2k tokens: gather them to the front, pad with the row's first union token (its pairs
    # with itself are ties, removed below by weighting each pair by "both are distinct union members").
    width = min(m, 2 * k)
    order = np.argsort(~union, axis=1, kind="stable")[:, :width]  # union columns first, in column order
    member = np.arange(width)[None, :] < size[:, None]
    xs, ys = np.take_along_axis(x, order, axis=1), np.take_along_axis(y, order, axis=1)
    if width < 2:
        return
    i, j = np.triu_indices(width, k=1)
    weight = (member[:, i] & member[:, j]).astype(np.int64)
    sx = np.sign(xs[:, i] - xs[:, j]).astype(np.int64) * weight
    sy = np.sign(ys[:, i] - ys[:, j]).astype(np.int64) * weight
    total = size * (size - 1) // 2
    untied_x = total - (weight.sum(axis=1) - np.count_nonzero(sx, axis=1))
    untied_y = total - (weight.sum(axis=1) - np.count_nonzero(sy, axis=1))
    defined = (size >= 2) & (untied_x > 0) & (untied_y > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = (sx * sy).sum(axis=1) / np.sqrt(untied_x) / np.sqrt(untied_y)
    out[:, 6] = np.where(defined, np.clip(tau, -1.0, 1.0), np.nan)


# ----------------------------------------------------------------------------------------------------
def _constant(values: np.ndarray) -> np.ndarray:
    return np.all(values == values[:, :1], axis=1)


def _chunks(rows: np.ndarray, m: int) -> list[np.ndarray]:
    per_chunk = max(1, PAIR_CELLS // max(1, m * (m - 1) // 2))
    return [rows[start : start + per_chunk] for start in range(0, len(rows), per_chunk)]
