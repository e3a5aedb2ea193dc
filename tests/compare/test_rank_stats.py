"""The vectorised rank statistics equal scipy's, pair by pair, with and without ties, at every size."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from attn_probe.compare.agreement import AGREEMENT_COLUMNS
from attn_probe.compare.rank_stats import STATISTICS, kendall_exact_p, pair_statistics


def scipy_row(x: np.ndarray, y: np.ndarray, k: int) -> list[float]:
    """The statistics one pair at a time with scipy (NaN where a vector is constant or shorter than 2)."""
    m = len(x)
    k = min(k, m)
    undefined = m < 2 or np.all(x == x[0]) or np.all(y == y[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tau = (math.nan, math.nan) if undefined else tuple(stats.kendalltau(x, y))
        rho = (math.nan, math.nan) if undefined else tuple(stats.spearmanr(x, y))
    top_a, top_b = np.argsort(-x, kind="stable")[:k], np.argsort(-y, kind="stable")[:k]
    union = np.union1d(top_a, top_b)
    jaccard = len(np.intersect1d(top_a, top_b)) / len(union) if len(union) else math.nan
    xu, yu = x[union], y[union]
    if len(union) < 2 or np.all(xu == xu[0]) or np.all(yu == yu[0]):
        topk_tau = math.nan
    else:
        topk_tau = stats.kendalltau(xu, yu).statistic
    return [m, k, *tau, *rho, topk_tau, jaccard]


def assert_rows_equal(got: np.ndarray, x: np.ndarray, y: np.ndarray, k: int) -> None:
    y = np.broadcast_to(y, x.shape)
    for r in range(x.shape[0]):
        want = np.array(scipy_row(x[r], y[r], k), dtype=float)
        np.testing.assert_array_equal(np.isnan(got[r]), np.isnan(want), err_msg=f"row {r}: NaN where scipy has none")
        np.testing.assert_allclose(got[r], want, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_statistics_are_the_agreement_columns():
    assert list(STATISTICS) == AGREEMENT_COLUMNS[5:]


@pytest.mark.parametrize("m", [0, 1, 2, 3, 5, 12, 33, 34, 60])
@pytest.mark.parametrize("ties", [False, True])
def test_equals_scipy(m: int, ties: bool):
    rng = np.random.default_rng(m * 2 + ties)
    if ties:
        x, y = rng.integers(0, 4, size=(6, m)).astype(float), rng.integers(0, 3, size=(6, m)).astype(float)
    else:
        x, y = rng.normal(size=(6, m)), rng.normal(size=(6, m))
    for k in (1, 3, 5, 100):
        assert_rows_equal(pair_statistics(x, y, k), x, y, k)


def test_one_reference_for_every_row_equals_repeating_it():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(72, 20)), rng.normal(size=(1, 20))
    shared = pair_statistics(x, y, 5)
    np.testing.assert_array_equal(shared, pair_statistics(x, np.repeat(y, 72, axis=0), 5))
    assert_rows_equal(shared, x, y, 5)


def test_constant_rows_are_nan_and_known_answers():
    x = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    y = np.array([[1.0, 2.0, 3.0, 4.0]])
    got = pair_statistics(x, y, 2)
    assert got[0, 2] == 1.0 and got[0, 4] == 1.0 and got[1, 2] == -1.0 and got[1, 4] == -1.0
    assert got[0, 7] == 1.0 and got[1, 7] == 0.0  # top-2 {3, 2} vs {3, 2}; {0, 1} vs {3, 2}
    assert np.isnan(got[2, 2:7]).all()  # a constant vector ranks nothing
    assert got[0, 3] == pytest.approx(2 / math.factorial(4))  # the one permutation as extreme, both tails


def test_exact_kendall_p_equals_scipy_at_every_count():
    for m in (3, 4, 7, 12, 20, 33):
        for discordant in range(m * (m - 1) // 2 + 1):
            x = np.arange(m, dtype=float)
            y = np.arange(m, dtype=float)
            # a permutation with exactly `discordant` inversions: greedy from the left
            remaining, order, items = discordant, [], list(range(m))
            for position in range(m):
                move = min(remaining, m - 1 - position)
                order.append(items.pop(move))
                remaining -= move
            y = np.array(order, dtype=float)
            want = stats.kendalltau(x, y, method="exact").pvalue
            got = kendall_exact_p(m, min(discordant, m * (m - 1) // 2 - discordant))
            assert got == pytest.approx(want, rel=1e-12, abs=1e-300), (m, discordant)


def test_long_vectors_are_cut_into_chunks(monkeypatch):
    import attn_probe.compare.rank_stats as rank_stats

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(9, 40)), rng.normal(size=(1, 40))
    whole = pair_statistics(x, y, 5)
    monkeypatch.setattr(rank_stats, "PAIR_CELLS", 800)  # 780 pairs per row: one row per chunk
    np.testing.assert_array_equal(pair_statistics(x, y, 5), whole)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"expected x \[p, m\]"):
        pair_statistics(np.zeros((2, 3)), np.zeros((2, 4)), 1)
