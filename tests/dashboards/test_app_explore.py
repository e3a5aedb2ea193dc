"""The Explore page: a typed text explained by a model given as a path, with the library's own numbers."""

from __future__ import annotations

import html

import pandas as pd
import pytest

from attn_probe import Probe
from attn_probe.report import example_statements
from tests.dashboards.conftest import CHECKS, METHODS, no_problems

TEXT = "a gorgeous, witty movie"


def explain(app, model: str, text: str, methods=METHODS, checks=CHECKS):
    app.run()
    app.text_input(key="explore-model").set_value(model)
    app.text_area(key="explore-text").set_value(text)
    app.multiselect(key="explore-methods").set_value(list(methods))
    app.multiselect(key="explore-checks").set_value(list(checks))
    return app.button[0].click().run()


def test_the_page_offers_its_choices_and_waits_for_explain(app):
    app.run()
    no_problems(app)
    assert app.title[0].value == "Explore an example"
    assert app.text_input(key="explore-model").value == "minilm-sentiment"
    assert "attention_rollout" in app.multiselect(key="explore-methods").options
    assert "counterfactuals" in app.multiselect(key="explore-checks").options
    assert any("press Explain" in info.value for info in app.info)


def test_a_typed_text_shows_the_librarys_scores_findings_and_agreement(app, model_dir):
    explain(app, str(model_dir), TEXT)
    no_problems(app)
    expected = Probe.load(str(model_dir)).explain([TEXT], methods=METHODS, checks=CHECKS)
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics["Tokens"] == str(int(expected.examples["n_tokens"].iloc[0]))
    assert metrics["Prediction"] == str(expected.examples["prediction"].iloc[0])
    judged = expected.findings["holds"].dropna().astype(bool)
    assert metrics["Findings holding"] == f"{int(judged.sum())} of {len(judged)}"

    scores = app.dataframe[-1].value  # the Scores tab: methods x tokens
    want = expected.scores.pivot_table(index="method", columns="token_index", values="score").reindex(METHODS)
    assert list(scores.index) == METHODS
    assert scores.to_numpy() == pytest.approx(want.to_numpy(), abs=1e-6)

    card = "".join(element.value for element in app.get("html"))  # the token view, with the findings in words
    marks = {True: "[holds]", False: "[does not hold]", None: "[not assessable]"}
    for holds, statement in example_statements(expected.findings, 0):
        assert f"{marks[holds]}</span> {html.escape(statement)}</li>" in card

    agreement = next(frame.value for frame in app.dataframe if "kendall_tau" in frame.value.columns)
    pairs = expected.agreement.set_index(["method_a", "method_b"])["kendall_tau"]
    shown = agreement.set_index(["method_a", "method_b"])["kendall_tau"]
    pd.testing.assert_series_equal(shown.sort_index(), pairs.sort_index(), check_exact=False, atol=1e-9)


def test_a_bad_model_name_is_a_message_in_the_page(app, tmp_path):
    missing = tmp_path / "no-such-model"
    explain(app, str(missing), TEXT)
    assert not app.exception
    assert len(app.error) == 1 and "Could not explain the text with model" in app.error[0].value
    assert "no-such-model" in app.error[0].value


def test_empty_text_is_a_message_in_the_page(app, model_dir):
    explain(app, str(model_dir), "   \n ")
    assert not app.exception
    assert [e.value for e in app.error] == ["The text is empty: type a sentence to explain."]


def test_markup_in_a_text_is_shown_as_text(app, model_dir):
    payload = "<img src=x onerror=alert(1)> $x$ [link](javascript:alert(1)) **bold**"
    explain(app, str(model_dir), f"good {payload}", checks=["agreement"])
    no_problems(app)
    html = "".join(element.value for element in app.get("html"))
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html  # the token view, escaped
    for block in app.markdown:  # every data string in Markdown is escaped: no tag, link, math or emphasis
        assert "<img" not in block.value and "](javascript" not in block.value


def test_warnings_while_explaining_are_shown_in_the_page(app, model_dir):
    explain(app, str(model_dir), "[CLS] [SEP]", checks=["agreement"])
    no_problems(app)
    assert any("no token besides special ones" in warning.value for warning in app.warning)
