"""The counterfactual page: an edit chosen in the page gives the library's numbers for the same edit."""

from __future__ import annotations

import pytest

from attn_probe import Probe
from attn_probe.compare import adversarial_attention, attention_counterfactuals, counterfactual_outputs
from tests.dashboards.conftest import no_problems, page

TEXT = "dull and slow, a lifeless film"


def choose(app, model: str, text: str = TEXT):
    page(app, "counterfactual")
    app.text_input(key="cf-model").set_value(model)
    app.text_area(key="cf-text").set_value(text)
    return app.button[0].click().run()


def metrics(app) -> dict[str, str]:
    return {metric.label: metric.value for metric in app.metric}


def test_uniform_attention_of_one_head_moves_the_output_as_the_library_says(app, model_dir):
    choose(app, str(model_dir))
    no_problems(app)
    assert app.selectbox(key="cf-layer").options == ["0", "1"]
    app.selectbox(key="cf-layer").set_value(1)
    app.selectbox(key="cf-head").set_value(2)
    app.radio(key="cf-edit").set_value("uniform").run()
    no_problems(app)
    probe = Probe.load(str(model_dir))
    batch = probe.tokenize([TEXT])
    expected = attention_counterfactuals(probe.model, batch, interventions=["uniform"], layers=[1], heads=[2])
    shown = metrics(app)
    assert shown["Output TVD (mean)"] == f"{expected['output_tvd'].mean():.4f}"
    assert shown["Target change (mean)"] == f"{expected['target_change'].mean():+.4f}"
    assert shown["Prediction flips"] == f"{int(expected['prediction_flips'].sum())} of 1"
    table = app.dataframe[-1].value
    assert table["output_tvd"].to_numpy() == pytest.approx(expected["output_tvd"].to_numpy(), abs=1e-7)
    outputs = counterfactual_outputs(probe.model, batch, layer=1, head=2, intervention="uniform").table
    assert outputs["prob_after"].sum() == pytest.approx(1.0, abs=1e-6)  # two classes: the chart shows them all


def test_permutations_are_one_row_per_seed(app, model_dir):
    choose(app, str(model_dir))
    app.radio(key="cf-edit").set_value("permute").run()
    app.number_input(key="cf-seeds").set_value(3).run()
    no_problems(app)
    probe = Probe.load(str(model_dir))
    expected = attention_counterfactuals(
        probe.model, probe.tokenize([TEXT]), interventions=["permute"], layers=[1], heads="all", seeds=(0, 1, 2)
    )
    table = app.dataframe[-1].value
    assert table["seed"].tolist() == [0, 1, 2]
    assert table["attention_jsd"].to_numpy() == pytest.approx(expected["attention_jsd"].to_numpy(), abs=1e-7)


def test_the_adversary_reports_what_it_found(app, model_dir):
    choose(app, str(model_dir))
    app.radio(key="cf-edit").set_value("adversarial").run()
    app.number_input(key="cf-steps").set_value(30).run()
    no_problems(app)
    probe = Probe.load(str(model_dir))
    expected = adversarial_attention(probe.model, probe.tokenize([TEXT]), layer=1, epsilon=0.01, steps=30).iloc[0]
    shown = metrics(app)
    assert shown["Found within epsilon"] == ("yes" if bool(expected["feasible"]) else "no")
    assert shown["Attention JSD found"] == f"{expected['attention_jsd']:.3f}"
    assert shown["Output TVD"] == f"{expected['output_tvd']:.4f}"


def test_a_bad_model_or_an_empty_text_is_a_message_in_the_page(app, model_dir, tmp_path):
    choose(app, str(tmp_path / "missing-model"))
    assert not app.exception
    assert len(app.error) == 1 and "missing-model" in app.error[0].value
    choose(app, str(model_dir), text="  ")
    assert not app.exception
    assert [e.value for e in app.error] == ["The text is empty: type a sentence to edit the attention of."]
