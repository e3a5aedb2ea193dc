"""The Probe API: one call from texts to tidy scores, agreement, findings and figures."""

from __future__ import annotations

import matplotlib
import pandas as pd
import pytest

from attn_probe.probe import DEFAULT_METHODS, Probe, split_methods

matplotlib.use("Agg")

TEXTS = ["a gorgeous, witty movie", "dull", "the plot is thin but the acting is superb"]
METHODS = ["raw_attention", "attention_rollout", "saliency", "leave_one_out"]


@pytest.fixture(scope="module")
def probe(tiny_bert, tokenizer):
    return Probe(tiny_bert, tokenizer, name="tiny-bert")


@pytest.fixture(scope="module")
def result(probe):
    return probe.explain(TEXTS, methods=METHODS, batch_size=2)  # two batches: example ids must continue


def test_scores_are_tidy_and_cover_every_token(result, tokenizer):
    scores = result.scores
    assert set(scores["method"]) == set(METHODS)
    assert list(result.examples["example_id"]) == [0, 1, 2]
    for example_id, text in enumerate(TEXTS):
        tokens = tokenizer.tokenize(text)
        rows = scores[(scores["example_id"] == example_id) & (scores["method"] == "saliency")]
        assert list(rows["token"]) == ["[CLS]", *tokens, "[SEP]"]  # real tokens only, padding never shows
    assert scores.groupby(["example_id", "method"])["token_index"].apply(lambda s: list(s) == list(range(len(s)))).all()
    assert scores["target"].str.contains("logit of class").all()


def test_batching_does_not_change_the_results(probe, result):
    alone = probe.explain(TEXTS, methods=METHODS, batch_size=3)
    pd.testing.assert_frame_equal(
        result.scores.reset_index(drop=True), alone.scores.reset_index(drop=True), check_exact=False, atol=1e-5
    )
    key = ["example_id", "finding", "subject", "layer", "head"]
    both = result.findings.merge(alone.findings, on=key, suffixes=("", "_alone"))
    assert len(both) == len(result.findings) == len(alone.findings)
    assert (both["holds"].astype("object").fillna("NA") == both["holds_alone"].astype("object").fillna("NA")).all()


def test_findings_agreement_and_summary(result):
    assert {"attention_disagrees", "erasure_prefers_attributions", "attention_sink", "output_ignores_attention"} <= set(
        result.findings["finding"]
    )
    judged = set(result.findings["subject"].dropna())
    assert judged == {"raw_attention", "attention_rollout"}  # gradient / perturbation methods are the references
    pairs = set(zip(result.agreement["method_a"], result.agreement["method_b"], strict=True))
    assert len(pairs) == 6 and result.agreement["example_id"].nunique() == 3
    summary = result.summary()
    assert (summary["n_assessable"] + summary["n_not_assessable"] > 0).all()
    assert result.methods.set_index("id").loc["saliency", "judged"] == False  # noqa: E712


@pytest.mark.parametrize("kind", ["tokens", "heads", "sinks", "findings"])
def test_every_plot_kind_draws_with_a_title(result, kind, tmp_path):
    figure = result.plot(kind, example_id=2)
    assert figure.axes and figure.axes[0].get_title(loc="left")
    figure.savefig(tmp_path / f"{kind}.svg")
    assert (tmp_path / f"{kind}.svg").stat().st_size > 1000


def test_default_methods_split_into_judged_and_references():
    judged, references = split_methods(DEFAULT_METHODS)
    assert judged == ["raw_attention", "attention_rollout", "attention_flow"]
    assert references == ["integrated_gradients", "leave_one_out"]


def test_bad_input_is_refused_with_a_message(probe, tokenizer):
    with pytest.raises(ValueError, match="no texts"):
        probe.explain([])
    with pytest.raises(ValueError, match=r"texts \[1\] are empty"):
        probe.explain(["fine", "   "])
    with pytest.raises(KeyError, match="no method named"):
        probe.explain(["fine"], methods=["raw_atention"])
    with pytest.raises(ValueError, match="derived from attention"):
        probe.explain(["fine"], methods=["saliency"])
    with pytest.raises(ValueError, match="plot kind"):
        probe.explain(["fine"], methods=METHODS, checks=["agreement"]).plot("pie")
    with pytest.raises(ValueError, match="torch model"):
        Probe("bert", tokenizer)  # type: ignore[arg-type]


def test_long_texts_are_truncated_with_a_warning(probe):
    # "word " * 40 is [CLS] + 40 tokens + [SEP] = 42 tokens: 26 past the maximum of 16
    with pytest.warns(
        UserWarning, match=r"1 of 2 texts were longer .* 16 tokens .*: 26 tokens \(up to 26 of one text\)"
    ):
        result = probe.explain(["word " * 40, "short"], methods=METHODS, checks=["agreement"], max_length=16)
    assert result.examples["truncated"].tolist() == [True, False]
    assert result.examples["n_tokens"].tolist()[0] == 16


@pytest.mark.slow
def test_probe_load_on_the_offline_sentiment_model():
    probe = Probe.load("minilm-sentiment")
    result = probe.explain(["a gorgeous, witty, seductive movie.", "the plot is dull and the acting wooden."])
    assert result.examples["prediction"].tolist() == [1, 0]  # positive, negative
    assert set(result.scores["method"]) == set(DEFAULT_METHODS)
