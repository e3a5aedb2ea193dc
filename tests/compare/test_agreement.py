"""Rank agreement between explanations: hand-computed answers, padding, special tokens, errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from attn_probe.compare.agreement import AGREEMENT_COLUMNS, agreement_table, layer_agreement, rank_agreement, top_k
from attn_probe.methods import explain
from attn_probe.methods.base import Explanation, MethodInfo
from tests.methods.models import MODELS


def make(
    scores,
    *,
    method: str = "m",
    real=None,
    special=None,
    layer_scores=None,
    head_scores=None,
) -> Explanation:
    """An explanation by hand: ``scores [batch, n]``; ``special`` here marks special tokens *and* padding,
    as ``ExplainContext.special`` does."""
    scores = torch.as_tensor(scores, dtype=torch.float32)
    scores = scores.unsqueeze(0) if scores.dim() == 1 else scores
    real = torch.ones_like(scores, dtype=torch.bool) if real is None else torch.as_tensor(real, dtype=torch.bool)
    special = ~real if special is None else torch.as_tensor(special, dtype=torch.bool) | ~real
    info = MethodInfo(id=method, family="attention", needs_gradients=False, cost="-", sign="-", description="-")
    return Explanation(
        method=method,
        info=info,
        scores=scores,
        target=None,  # type: ignore[arg-type]  # agreement never reads the target
        special=special,
        real=real,
        layer_scores=None if layer_scores is None else torch.as_tensor(layer_scores, dtype=torch.float32),
        head_scores=None if head_scores is None else torch.as_tensor(head_scores, dtype=torch.float32),
    )


def one_row(a: Explanation, b: Explanation, **options) -> pd.Series:
    frame = rank_agreement(a, b, **options)
    assert len(frame) == 1
    return frame.iloc[0]


def test_identical_rankings_agree_perfectly():
    row = one_row(make([0.1, 0.5, 0.3, 0.9, 0.2]), make([1.0, 5.0, 3.0, 9.0, 2.0]), k=2)
    assert row.kendall_tau == pytest.approx(1.0)
    assert row.spearman_rho == pytest.approx(1.0)
    assert row.topk_tau == pytest.approx(1.0)
    assert row.topk_jaccard == 1.0
    assert row.n_tokens == 5 and row.k == 2


def test_reversed_rankings_disagree_perfectly():
    row = one_row(make([1, 2, 3, 4, 5]), make([5, 4, 3, 2, 1]), k=5)
    assert row.kendall_tau == pytest.approx(-1.0)
    assert row.spearman_rho == pytest.approx(-1.0)
    assert row.topk_tau == pytest.approx(-1.0)  # k = n: the union is every token
    assert row.topk_jaccard == 1.0


def test_hand_worked_four_tokens():
    # a = [4, 3, 2, 1], b = [3, 4, 1, 2]. Of the 6 pairs, (0,1) and (2,3) are discordant: tau = (4 - 2) / 6.
    # Ranks a = [4, 3, 2, 1], b = [3, 4, 1, 2]: d = ±1 four times, rho = 1 - 6·4 / (4·15) = 0.6.
    a, b = make([4, 3, 2, 1]), make([3, 4, 1, 2])
    row = one_row(a, b, k=2)
    assert row.kendall_tau == pytest.approx(1 / 3)
    assert row.spearman_rho == pytest.approx(0.6)
    assert row.topk_jaccard == 1.0  # both top-2 sets are {0, 1}
    assert row.topk_tau == pytest.approx(-1.0)  # on {0, 1}: a says 0 > 1, b says 1 > 0
    row = one_row(a, b, k=1)
    assert row.topk_jaccard == 0.0  # {0} vs {1}
    assert row.topk_tau == pytest.approx(-1.0)  # on the union {0, 1}

    # b = [3, 1, 4, 2]: concordant (0,1) (0,3) (2,3), discordant (0,2) (1,2) (1,3): tau = 0.
    # Ranks b = [3, 1, 4, 2]: d = [1, 2, -2, -1], sum d² = 10, rho = 1 - 60 / 60 = 0.
    # top-2: a {0, 1}, b {2, 0}: Jaccard 1/3; on {0, 1, 2} a = [4, 3, 2], b = [3, 1, 4]: C = 1, D = 2.
    row = one_row(a, make([3, 1, 4, 2]), k=2)
    assert row.kendall_tau == pytest.approx(0.0)
    assert row.spearman_rho == pytest.approx(0.0)
    assert row.topk_jaccard == pytest.approx(1 / 3)
    assert row.topk_tau == pytest.approx(-1 / 3)


def test_statistics_and_p_values_are_scipys():
    generator = np.random.default_rng(0)
    x, y = generator.normal(size=9), generator.normal(size=9)
    y[3] = y[5]  # a tie, so tau-b's correction is exercised
    row = one_row(make(x), make(y), k=9)
    kendall, spearman = stats.kendalltau(x, y), stats.spearmanr(x, y)
    assert row.kendall_tau == pytest.approx(kendall.statistic, abs=1e-6)
    assert row.kendall_p == pytest.approx(kendall.pvalue, abs=1e-6)
    assert row.spearman_rho == pytest.approx(spearman.statistic, abs=1e-6)
    assert row.spearman_p == pytest.approx(spearman.pvalue, abs=1e-6)
    assert row.topk_tau == pytest.approx(row.kendall_tau)  # k >= n: the union is every token


def test_top_k_is_stable_on_ties():
    assert top_k(np.array([1.0, 1.0, 1.0, 0.0]), 2).tolist() == [0, 1]
    assert top_k(np.array([0.0, 2.0, 2.0, 3.0]), 3).tolist() == [3, 1, 2]
    # Through the table: a's top-2 is {0, 1} (ties), b's is {2, 3}: no overlap.
    row = one_row(make([1, 1, 1, 0]), make([0, 1, 2, 3]), k=2)
    assert row.topk_jaccard == 0.0


def test_effective_k_is_capped_by_the_number_of_tokens():
    row = one_row(make([1, 2, 3]), make([3, 2, 1]), k=10)
    assert row.k == 3 and row.topk_jaccard == 1.0


def test_undefined_statistics_are_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's ConstantInputWarning must not leak
        constant = one_row(make([1, 1, 1, 1]), make([1, 2, 3, 4]), k=2)
        single = one_row(make([[5.0, 0.0]], real=[[True, False]]), make([[2.0, 0.0]], real=[[True, False]]))
        only_special = one_row(
            make([[1, 2]], special=[[True, True]]), make([[2, 1]], special=[[True, True]]), include_special=False
        )
        two = one_row(make([1, 2]), make([2, 1]))
    assert math.isnan(constant.kendall_tau) and math.isnan(constant.kendall_p)
    assert math.isnan(constant.spearman_rho) and math.isnan(constant.spearman_p)
    assert constant.topk_jaccard == 0.0  # a: {0, 1} (stable on ties), b: {3, 2}
    assert math.isnan(constant.topk_tau)  # a is constant on the union too
    assert single.n_tokens == 1 and math.isnan(single.kendall_tau) and math.isnan(single.topk_tau)
    assert single.topk_jaccard == 1.0
    assert only_special.n_tokens == 0 and only_special.k == 0 and math.isnan(only_special.topk_jaccard)
    assert two.kendall_tau == pytest.approx(-1.0) and math.isnan(two.spearman_p)  # t-test with 0 dof


def test_padding_never_enters():
    # Padded columns hold values a careless implementation would rank (a method promises 0 there, but the
    # comparison must not rely on it); each example must get what it gets alone.
    real = torch.tensor([[True, True, True, True, True], [True, True, True, False, False]])
    a = make([[5, 1, 4, 2, 3], [1, 3, 2, 99, -99]], real=real)
    b = make([[4, 2, 5, 1, 3], [3, 1, 2, -99, 99]], real=real)
    together = rank_agreement(a, b, k=2)
    for example in range(2):
        keep = real[example]
        alone = rank_agreement(make(a.scores[example, keep]), make(b.scores[example, keep]), k=2)
        pd.testing.assert_series_equal(
            together.iloc[example].drop("example_id"), alone.iloc[0].drop("example_id"), check_names=False
        )
    assert together.n_tokens.tolist() == [5, 3]


def test_include_special_toggles_the_tokens_compared():
    special = [[True, False, False, False, True]]  # [CLS] ... [SEP]
    a = make([[9, 1, 2, 3, 8]], special=special)
    b = make([[0, 1, 2, 3, 9]], special=special)
    without = one_row(a, b, k=2)
    with_special = one_row(a, b, k=2, include_special=True)
    assert without.n_tokens == 3 and with_special.n_tokens == 5
    assert without.kendall_tau == pytest.approx(1.0)  # the content tokens agree
    assert with_special.kendall_tau < 1.0  # the special tokens do not
    assert bool(with_special.include_special) and not bool(without.include_special)


def test_absolute_ranks_by_magnitude_and_is_recorded():
    signed, magnitude = make([-3.0, 1.0, 2.0], method="saliency"), make([3.0, 1.0, 2.0], method="rollout")
    assert one_row(signed, magnitude, absolute=True).kendall_tau == pytest.approx(1.0)
    plain = one_row(signed, magnitude)
    assert plain.kendall_tau == pytest.approx(-1 / 3)
    assert not plain.absolute and plain.method_a == "saliency" and plain.method_b == "rollout"
    assert list(rank_agreement(signed, magnitude).columns) == AGREEMENT_COLUMNS


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_bad_k_is_refused(k):
    with pytest.raises(ValueError, match="k must be a positive integer"):
        rank_agreement(make([1, 2]), make([2, 1]), k=k)


def test_explanations_from_different_batches_are_refused():
    with pytest.raises(ValueError, match="different batches"):
        rank_agreement(make([1, 2, 3]), make([1, 2]))
    with pytest.raises(ValueError, match="different batches"):
        rank_agreement(make([[1, 2, 3]], real=[[True, True, False]]), make([[1, 2, 3]]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        rank_agreement(make([1, float("nan")]), make([1, 2]))


def test_agreement_table_pairs_every_method_once():
    x, y, z = make([[1, 2, 3], [3, 2, 1]]), make([[1, 2, 3], [1, 2, 3]]), make([[3, 2, 1], [3, 2, 1]])
    table = agreement_table({"x": x, "y": y, "z": z}, k=1)
    assert list(table.columns) == AGREEMENT_COLUMNS
    assert list(zip(table.method_a, table.method_b, strict=True)) == [
        ("x", "y"), ("x", "y"), ("x", "z"), ("x", "z"), ("y", "z"), ("y", "z"),
    ]  # fmt: skip
    assert table.example_id.tolist() == [0, 1] * 3
    assert table.kendall_tau.tolist() == pytest.approx([1, -1, -1, 1, -1, -1])
    chosen = agreement_table({"x": x, "y": y, "z": z}, pairs=[("z", "x")])
    assert chosen.method_a.unique().tolist() == ["z"] and len(chosen) == 2
    with pytest.raises(ValueError, match="not among the explanations"):
        agreement_table({"x": x, "y": y}, pairs=[("x", "w")])
    with pytest.raises(ValueError, match="at least two"):
        agreement_table({"x": x})


def test_layer_agreement_per_layer_and_head():
    reference = make([[1, 2, 3, 4]], method="saliency")
    layer_scores = [[[1, 2, 3, 4], [4, 3, 2, 1]]]  # [b=1, L=2, n=4]
    head_scores = [[[[1, 2, 3, 4], [4, 3, 2, 1]], [[1, 2, 4, 3], [2, 1, 3, 4]]]]  # [b=1, L=2, H=2, n=4]
    layered = make([[1, 2, 3, 4]], method="raw_attention", layer_scores=layer_scores, head_scores=head_scores)

    by_layer = layer_agreement(layered, reference, k=2)
    assert by_layer.layer.tolist() == [0, 1]
    assert by_layer["head"].isna().all() and str(by_layer["head"].dtype) == "Int64"
    assert by_layer.kendall_tau.tolist() == pytest.approx([1.0, -1.0])
    assert set(by_layer.level) == {"layer"} and set(by_layer.method_a) == {"raw_attention"}

    by_head = layer_agreement(layered, reference, level="head", k=2)
    assert list(zip(by_head.layer, by_head["head"], strict=True)) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert by_head.kendall_tau.tolist() == pytest.approx([1.0, -1.0, 4 / 6, 4 / 6])
    assert by_head.topk_jaccard.tolist() == pytest.approx([1.0, 0.0, 1.0, 1.0])

    with pytest.raises(ValueError, match="no per-head view"):
        layer_agreement(make([[1, 2]], layer_scores=[[[1, 2]]]), make([[1, 2]]), level="head")
    with pytest.raises(ValueError, match="level must be"):
        layer_agreement(layered, reference, level="token")  # type: ignore[arg-type]


def test_layer_agreement_ignores_padding():
    real = [[True, True, True, False]]
    reference = make([[1, 2, 3, 0]], real=real)
    layered = make([[1, 2, 3, 0]], real=real, layer_scores=[[[1, 2, 3, float("nan")]]])  # NaN at padding
    row = layer_agreement(layered, reference).iloc[0]
    assert row.n_tokens == 3 and row.kendall_tau == pytest.approx(1.0)


@pytest.mark.parametrize("model_name", ["our-encoder", "hf-bert"])
def test_real_explanations_give_finite_agreement(model_name):
    model, inputs = MODELS[model_name]()
    explanations = explain(model, inputs, ["attention_rollout", "saliency", "raw_attention"])
    table = agreement_table(explanations, k=2)
    assert len(table) == 3 * 2
    assert table.n_tokens.tolist() == [7, 4] * 3  # batch lengths (7, 4): padding left out
    for column in ("kendall_tau", "spearman_rho", "topk_tau", "topk_jaccard", "kendall_p"):
        assert np.isfinite(table[column]).all(), column
    assert table.kendall_tau.between(-1, 1).all()
    layers = layer_agreement(explanations["raw_attention"], explanations["saliency"], level="head")
    assert len(layers) == 2 * 2 * 4 and np.isfinite(layers.kendall_tau).all()


def test_layer_agreement_table_stacks_one_call_per_reference():
    from attn_probe.compare.agreement import layer_agreement_table

    model, inputs = MODELS["hf-bert"]()
    explanations = explain(model, inputs, ["raw_attention", "saliency", "leave_one_out"])
    references = [explanations["saliency"], explanations["leave_one_out"]]
    for level in ("layer", "head"):
        stacked = layer_agreement_table(explanations["raw_attention"], references, level=level, absolute=True)
        one_by_one = pd.concat(
            [layer_agreement(explanations["raw_attention"], r, level=level, absolute=True) for r in references],
            ignore_index=True,
        )
        pd.testing.assert_frame_equal(stacked, one_by_one)
    with pytest.raises(ValueError, match="no reference explanations"):
        layer_agreement_table(explanations["raw_attention"], [])
