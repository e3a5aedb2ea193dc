"""Property tests (hypothesis) for the agreement statistics of ``attn_probe.compare.agreement``.

For random score vectors (ties included), padding and special-token masks:

- every statistic is symmetric in its two explanations (Kendall tau-b, Spearman, their p-values, the top-k
  tau and Jaccard);
- correlations are NaN or within [-1, 1], p-values NaN or within [0, 1], the Jaccard index within [0, 1];
- identical rankings agree perfectly, and every statistic is unchanged by strictly increasing transforms of
  either explanation (they are rank-based); a strictly decreasing one flips the correlations' sign;
- a constant explanation gives NaN correlations (and p-values), silently, as documented;
- padding and (unless included) special tokens never matter; ``absolute=True`` ranks ``|score|``;
- each example's row is what it gets alone, and ``layer_agreement`` is ``rank_agreement`` per layer.

Hypothesis runs derandomized (the same examples on every run) and without its example database.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from attn_probe.compare.agreement import layer_agreement, rank_agreement
from attn_probe.methods.base import Explanation, MethodInfo

PROPERTIES = settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

CORRELATIONS = ["kendall_tau", "spearman_rho", "topk_tau"]
P_VALUES = ["kendall_p", "spearman_p"]
STATISTICS = ["n_tokens", "k", *CORRELATIONS, *P_VALUES, "topk_jaccard"]


def make(scores: np.ndarray, real: np.ndarray, special: np.ndarray, method: str, layer_scores=None) -> Explanation:
    """An explanation by hand; ``special`` covers padding too, as ``ExplainContext.special`` does."""
    info = MethodInfo(id=method, family="attention", needs_gradients=False, cost="-", sign="-", description="-")
    real_t = torch.as_tensor(real, dtype=torch.bool)
    return Explanation(
        method=method,
        info=info,
        scores=torch.as_tensor(scores, dtype=torch.float32),
        target=None,  # type: ignore[arg-type]  # agreement never reads the target
        special=torch.as_tensor(special, dtype=torch.bool) | ~real_t,
        real=real_t,
        layer_scores=None if layer_scores is None else torch.as_tensor(layer_scores, dtype=torch.float32),
    )


@st.composite
def score_pairs(draw, *, integer: bool | None = None, layers: int = 0) -> dict:
    """Two explanations' scores ``[batch, n]`` on one batch: small integers (many ties) or float32 values,
    signed; any padding and special-token pattern."""
    batch, n = draw(st.integers(1, 3)), draw(st.integers(1, 8))
    integer = draw(st.booleans()) if integer is None else integer
    values = (
        st.integers(-5, 5).map(float)
        if integer
        else st.floats(-1e3, 1e3, width=32, allow_nan=False, allow_subnormal=False)
    )

    def matrix(shape) -> np.ndarray:
        count = int(np.prod(shape))
        return np.array(draw(st.lists(values, min_size=count, max_size=count)), dtype=np.float64).reshape(shape)

    def bits() -> np.ndarray:
        flags = draw(st.lists(st.booleans(), min_size=batch * n, max_size=batch * n))
        return np.array(flags, dtype=bool).reshape(batch, n)

    return {
        "a": matrix((batch, n)),
        "b": matrix((batch, n)),
        "layers": matrix((batch, layers, n)) if layers else None,
        "real": bits() if draw(st.booleans()) else np.ones((batch, n), dtype=bool),
        "special": bits() if draw(st.booleans()) else np.zeros((batch, n), dtype=bool),
        "k": draw(st.integers(1, 10)),
        "absolute": draw(st.booleans()),
        "include_special": draw(st.booleans()),
    }


def agreement(case: dict, a: np.ndarray, b: np.ndarray, names=("a", "b"), **override) -> pd.DataFrame:
    options = {key: case[key] for key in ("k", "absolute", "include_special")} | override
    x = make(a, case["real"], case["special"], names[0])
    y = make(b, case["real"], case["special"], names[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # undefined values are silent NaNs, never scipy warnings
        return rank_agreement(x, y, **options)


def compared(case: dict, example: int) -> np.ndarray:
    """``[n]`` bool: the tokens an example's statistics are computed on."""
    if case["include_special"]:
        return case["real"][example]
    return case["real"][example] & ~case["special"][example]


def union_of_top_k(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` on the tokens in either's top k (highest first, ties: the earlier token first)."""
    top = {int(i) for i in sorted(range(len(x)), key=lambda i: (-x[i], i))[:k]}
    top |= {int(i) for i in sorted(range(len(y)), key=lambda i: (-y[i], i))[:k]}
    union = sorted(top)
    return x[union], y[union]


def same(x: float, y: float, *, tol: float = 1e-9) -> bool:
    """Equal within ``tol``, NaN equal to NaN."""
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return abs(x - y) <= tol


def assert_same_statistics(left: pd.DataFrame, right: pd.DataFrame, columns=STATISTICS) -> None:
    assert len(left) == len(right)
    for (_, row_l), (_, row_r) in zip(left.iterrows(), right.iterrows(), strict=True):
        for column in columns:
            assert same(float(row_l[column]), float(row_r[column])), (column, row_l[column], row_r[column])


# ----------------------------------------------------------------------------------------------------
@settings(PROPERTIES, max_examples=150)
@given(case=score_pairs())
def test_statistics_are_symmetric_and_within_their_ranges(case):
    forward = agreement(case, case["a"], case["b"])
    backward = agreement(case, case["b"], case["a"], names=("b", "a"))
    assert_same_statistics(forward, backward)
    assert (forward.method_a == "a").all() and (backward.method_a == "b").all()

    for example, row in forward.iterrows():
        keep = compared(case, example)
        assert row.n_tokens == keep.sum() and row.k == min(case["k"], keep.sum())
        for column in CORRELATIONS:
            value = float(row[column])
            assert math.isnan(value) or -1.0 <= value <= 1.0, (column, value)
        for column in P_VALUES:
            value = float(row[column])
            assert math.isnan(value) or 0.0 <= value <= 1.0, (column, value)
        jaccard = float(row.topk_jaccard)
        assert math.isnan(jaccard) if row.n_tokens == 0 else 0.0 <= jaccard <= 1.0
        # NaN exactly when a correlation is undefined: fewer than 2 tokens or a constant explanation (on the
        # union of the two top-k sets for topk_tau; ties keep the earlier token, as documented)
        x, y = case["a"][example, keep].astype(np.float32), case["b"][example, keep].astype(np.float32)
        if case["absolute"]:
            x, y = np.abs(x), np.abs(y)
        for columns, (u, v) in (
            (("kendall_tau", "kendall_p", "spearman_rho"), (x, y)),
            (("topk_tau",), union_of_top_k(x, y, row.k)),
        ):
            undefined = len(u) < 2 or len(np.unique(u)) == 1 or len(np.unique(v)) == 1
            for column in columns:
                assert math.isnan(float(row[column])) == undefined, column


@settings(PROPERTIES, max_examples=100)
@given(case=score_pairs(integer=True), transform=st.sampled_from(["affine", "cube", "exp", "shift"]))
def test_rank_statistics_are_invariant_to_increasing_transforms(case, transform):
    # Small integers stay distinct in float32 under each transform, so the transform keeps every tie and order.
    increasing = {
        "affine": lambda v: 2.5 * v + 3.0,
        "cube": lambda v: v**3,
        "exp": lambda v: np.exp(v / 4.0),
        "shift": lambda v: v + 7.0,
    }[transform]
    a, b = case["a"], case["b"]
    if case["absolute"]:  # |score| is what is ranked: transform that, the sign cannot matter any more
        a, b = np.abs(a), np.abs(b)
    reference = agreement(case, a, b)
    assert_same_statistics(agreement(case, increasing(a), b), reference)
    assert_same_statistics(agreement(case, a, increasing(b)), reference)
    assert_same_statistics(agreement(case, increasing(a), increasing(b)), reference)

    # Identical rankings agree perfectly wherever a correlation is defined.
    itself = agreement(case, a, increasing(a))
    for example, row in itself.iterrows():
        x = a[example, compared(case, example)]
        if len(x) >= 2 and len(np.unique(x)) > 1:
            assert math.isclose(row.kendall_tau, 1.0) and math.isclose(row.spearman_rho, 1.0)
        if row.n_tokens:
            assert row.topk_jaccard == 1.0
            assert math.isnan(row.topk_tau) or math.isclose(row.topk_tau, 1.0)

    # A strictly decreasing transform of one side flips the sign of every correlation (p-values unchanged).
    if not case["absolute"]:
        flipped = agreement(case, a, -increasing(b))
        for (_, row_f), (_, row_r) in zip(flipped.iterrows(), reference.iterrows(), strict=True):
            for column in ("kendall_tau", "spearman_rho"):
                assert same(float(row_f[column]), -float(row_r[column])), column
            for column in P_VALUES:
                assert same(float(row_f[column]), float(row_r[column])), column


@settings(PROPERTIES, max_examples=80)
@given(case=score_pairs(), constant=st.integers(-3, 3))
def test_a_constant_explanation_gives_nan_correlations(case, constant):
    flat = np.full_like(case["a"], float(constant))
    for left, right in ((flat, case["b"]), (case["b"], flat)):
        frame = agreement(case, left, right)  # no warning either (checked in agreement())
        for column in ("kendall_tau", "kendall_p", "spearman_rho", "spearman_p", "topk_tau"):
            assert frame[column].isna().all(), column
        assert ((frame.topk_jaccard >= 0) & (frame.topk_jaccard <= 1) | (frame.n_tokens == 0)).all()


@settings(PROPERTIES, max_examples=60)
@given(case=score_pairs(), noise=st.integers(0, 2**16))
def test_uncompared_tokens_never_matter_and_absolute_ranks_magnitudes(case, noise):
    reference = agreement(case, case["a"], case["b"])
    # Anything at padding (and at special tokens when they are left out) changes nothing.
    rng = np.random.default_rng(noise)
    hidden = ~np.stack([compared(case, example) for example in range(case["a"].shape[0])])
    a, b = case["a"].copy(), case["b"].copy()
    a[hidden] = rng.normal(scale=100, size=hidden.sum())
    b[hidden] = rng.normal(scale=100, size=hidden.sum())
    assert_same_statistics(agreement(case, a, b), reference)
    # absolute=True is the comparison of |score|
    if case["absolute"]:
        magnitudes = agreement(case, np.abs(case["a"]), np.abs(case["b"]), absolute=False)
        assert_same_statistics(magnitudes, reference)
    # each example's row is what it gets alone
    for example in range(case["a"].shape[0]):
        one = {**case, "real": case["real"][example : example + 1], "special": case["special"][example : example + 1]}
        alone = agreement(one, case["a"][example : example + 1], case["b"][example : example + 1])
        assert_same_statistics(alone, reference.iloc[example : example + 1])


@settings(PROPERTIES, max_examples=40)
@given(case=score_pairs(layers=3))
def test_layer_agreement_is_rank_agreement_per_layer(case):
    options = {key: case[key] for key in ("k", "absolute", "include_special")}
    layered = make(case["a"], case["real"], case["special"], "layered", layer_scores=case["layers"])
    reference = make(case["b"], case["real"], case["special"], "reference")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = layer_agreement(layered, reference, **options)
    assert len(frame) == case["a"].shape[0] * 3
    for layer in range(3):
        alone = agreement(case, case["layers"][:, layer], case["b"])
        assert_same_statistics(frame[frame.layer == layer].reset_index(drop=True), alone)
