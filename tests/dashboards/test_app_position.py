"""The position page: the study's results as the CSVs hold them, and a head's content / position split on a
model trained on the spot, equal to the library's measurement of the same model."""

from __future__ import annotations

import pandas as pd
import pytest

from attn_probe.compare import position_logit_share
from dashboards.data import study_folder, synthetic_example, train_variant
from tests.dashboards.conftest import no_problems, page

pytestmark = pytest.mark.skipif(
    not (study_folder() / "recovery.csv").is_file(), reason="the position study's results are not in this checkout"
)


def test_the_study_is_shown_per_variant_as_its_tables_say(app):
    page(app, "position")
    no_problems(app)
    app.selectbox(key="pos-task").set_value("offset")
    app.selectbox(key="pos-metric").set_value("top1")
    app.multiselect(key="pos-methods").set_value(["raw_attention", "leave_one_out"]).run()
    no_problems(app)
    recovery = pd.read_csv(study_folder() / "recovery.csv")
    want = recovery[(recovery["task"] == "offset") & recovery["method"].isin(["raw_attention", "leave_one_out"])]
    shown = app.dataframe[0].value
    assert len(shown) == len(want) > 0  # two methods x the variants whose models learned the task
    merged = shown.merge(want, on=["variant", "method"], suffixes=("", "_csv"))
    assert merged["top1"].to_numpy() == pytest.approx(merged["top1_csv"].to_numpy())
    rope = merged.set_index(["variant", "method"])["top1"]
    assert rope[("rotary", "raw_attention")] < rope[("rotary", "leave_one_out")]  # the study's headline
    accuracy = app.dataframe[1].value
    assert sorted(accuracy["variant"]) == sorted(recovery["variant"].unique())


def test_a_missing_results_folder_is_a_message_in_the_page(app, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTN_PROBE_RUN_ROOT", str(tmp_path))  # a folder the page may read
    page(app, "position")
    app.text_input(key="pos-folder-position_variants").set_value(str(tmp_path)).run()
    assert not app.exception
    assert len(app.error) == 1 and "analyses.position\\_variants" in app.error[0].value


@pytest.mark.parametrize("typed", ["/etc", "../../.."])
def test_a_folder_outside_the_allowed_ones_is_refused(app, typed):
    page(app, "position")
    app.text_input(key="pos-folder-position_variants").set_value(typed).run()
    assert not app.exception
    assert (
        len(app.error) == 1 and "is outside the folders this dashboard opens study results from" in app.error[0].value
    )


def test_the_logit_split_of_a_trained_model_is_the_librarys(app):
    page(app, "position")
    app.selectbox(key="pos-variant").set_value("alibi")
    app.selectbox(key="pos-train-task").set_value("marked")
    app.number_input(key="pos-steps").set_value(40)
    app.toggle(key="pos-train").set_value(True).run()
    app.selectbox(key="pos-logit-layer").set_value(1)
    app.selectbox(key="pos-logit-head").set_value(3).run()
    no_problems(app)
    model, _ = train_variant("alibi", "marked", steps=40, seed=0)
    example = synthetic_example("marked", 0)
    shares = position_logit_share(model, {"input_ids": example.input_ids, "attention_mask": example.attention_mask})
    want = shares.query("layer == 1 and head == 3")["position_share"].iloc[0]
    shown = {metric.label: metric.value for metric in app.metric}
    assert shown["Position share of the logits"] == f"{want:.3f}"
    assert 0 < want <= 1  # ALiBi's slope term explains part of every head's logits


def test_the_efficient_attention_study_is_shown_per_attention_kind(app):
    folder = study_folder(name="efficient_attention")
    if not (folder / "recovery.csv").is_file():
        pytest.skip("the efficient-attention study's results are not in this checkout")
    page(app, "position")
    app.selectbox(key="pos-study").set_value("efficient_attention").run()
    no_problems(app)
    recovery = pd.read_csv(folder / "recovery.csv")
    task = app.selectbox(key="pos-task").value
    shown = app.dataframe[0].value
    want = recovery[(recovery["task"] == task) & recovery["method"].isin(app.multiselect(key="pos-methods").value)]
    assert len(shown) == len(want) > 0 and set(shown["variant"]) <= {"full", "sliding", "linear"}
