"""The run page: a run directory's findings, filters, example table and example view, checked against the
library's own summaries of the same run."""

from __future__ import annotations

import html

import pandas as pd
import pytest

from attn_probe.findings import headlines, summarise
from attn_probe.report import example_statements, figure_blocks, misleading_ranking
from attn_probe.report.document import Plot
from attn_probe.store import load_run
from dashboards.common import safe
from dashboards.data import RunFilters, example_table
from tests.dashboards.conftest import APP, no_problems


@pytest.fixture
def run_app(app, monkeypatch, run_dir):
    """The dashboard started with the run directory (as `attn-probe dashboard RUN_DIR` does): the run page opens."""
    monkeypatch.setattr("sys.argv", ["app.py", "--run-dir", str(run_dir)])
    return app


def shown_table(app) -> pd.DataFrame:
    return next(frame.value for frame in app.dataframe if "misleading" in frame.value.columns)


def test_started_with_a_run_the_page_shows_its_findings_and_most_misleading_example(run_app, run_dir):
    run_app.run()
    no_problems(run_app)
    assert run_app.title[0].value == "A run"
    run = load_run(run_dir)
    findings, examples = run.table("findings"), run.table("examples")
    text = "\n".join(block.value for block in run_app.markdown)
    for sentence in headlines(summarise(findings)):  # the findings' distribution, in the library's words
        assert safe(sentence) in text
    summary = next(frame.value for frame in run_app.dataframe if "ci_low" in frame.value.columns)
    pd.testing.assert_frame_equal(summary.reset_index(drop=True), summarise(findings), check_dtype=False)

    table = shown_table(run_app)
    expected = example_table(examples, findings)
    assert table["example_id"].tolist() == expected["example_id"].tolist()
    assert table["holding"].tolist() == expected["holding"].tolist()
    assert table["misleading"].to_numpy() == pytest.approx(expected["misleading"].to_numpy(), nan_ok=True)

    first = int(misleading_ranking(findings).index[0])
    assert run_app.subheader[0].value == f"Example {first}"
    card = "".join(element.value for element in run_app.get("html"))
    for _, statement in example_statements(findings, first):
        assert html.escape(statement) in card


def test_filters_give_the_librarys_filtered_table(run_app, run_dir):
    run_app.run()
    run_app.multiselect(key="run-filter-finding").set_value(["attention_sink"])
    run_app.multiselect(key="run-filter-layer").set_value([1])
    run_app.checkbox(key="run-filter-holding").check()
    run_app.run()
    no_problems(run_app)
    run = load_run(run_dir)
    low, high = run_app.slider(key="run-filter-length").value
    filters = RunFilters(findings=("attention_sink",), layers=(1,), length=(low, high), holding_only=True)
    expected = example_table(run.table("examples"), run.table("findings"), filters)
    table = shown_table(run_app)
    assert table["example_id"].tolist() == expected["example_id"].tolist()
    assert table["judged"].tolist() == expected["judged"].tolist()
    sinks = run.table("findings").query("finding == 'attention_sink' and layer == 1")
    assert table["judged"].sum() <= sinks["holds"].notna().sum()  # only layer-1 sink rows are counted


def test_the_address_opens_an_example_and_its_attention(run_app, run_dir):
    run_app.query_params["example"] = "2"
    run_app.run()
    no_problems(run_app)
    assert run_app.subheader[0].value == "Example 2"
    run = load_run(run_dir)
    scores = run.table("scores", example_ids=[2])
    shown = next(frame.value for frame in run_app.dataframe if frame.value.index.name == "method")
    want = scores.pivot_table(index="method", columns="token_index", values="score")
    assert shown.loc[want.index].to_numpy() == pytest.approx(want.to_numpy(), abs=1e-7)
    assert run_app.selectbox(key="run-layer").options  # the sampled attention matrix: layer and head pickers
    assert run_app.selectbox(key="run-head").options == ["0", "1", "2", "3"]


def test_an_example_the_run_lacks_is_a_warning(run_app):
    run_app.query_params["example"] = "99"
    run_app.run()
    assert not run_app.exception
    assert any("example 99" in warning.value for warning in run_app.warning)


def test_the_report_figures_are_the_reports(run_app, run_dir):
    run_app.run()
    run_app.toggle(key="run-figures").set_value(True).run()
    no_problems(run_app)
    plots = [block for block in figure_blocks(load_run(run_dir)) if isinstance(block, Plot)]
    images = run_app.get("image")
    assert len(images) == len(plots) > 0


@pytest.mark.parametrize("typed", ["no/such/run", "/etc", "../../..", str(APP.parent)])
def test_a_bad_run_directory_is_a_message_in_the_page(app, typed, monkeypatch):
    monkeypatch.setenv("ATTN_PROBE_RUN_ROOT", str(APP.parent.parent))  # the repository: dashboards/ is inside
    app.run()
    app.switch_page("views/run.py").run()
    app.text_input(key="run-dir-input").set_value(typed).run()
    assert not app.exception
    assert len(app.error) == 1 and app.error[0].value.startswith("Could not open the run")
    outside = typed in ("/etc", "../../..")
    assert ("is outside the folders this dashboard opens runs from" in app.error[0].value) == outside


PAYLOADS = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "[x](javascript:alert(1))", "$\\pi$ **b**"]


@pytest.fixture(scope="module")
def payload_run(tmp_path_factory, model_dir, tokenizer, tiny_bert):
    """A run whose model name and texts are markup: script tags, event handlers, Markdown links, math."""
    from attn_probe import Probe

    out = tmp_path_factory.mktemp("payload") / "run"
    probe = Probe(tiny_bert, tokenizer, name=PAYLOADS[0])
    probe.run([f"good {p} film" for p in PAYLOADS], out, methods=["raw_attention", "saliency"], progress=False)
    return out


def test_markup_in_a_runs_texts_and_model_name_is_shown_as_text(app, monkeypatch, payload_run):
    monkeypatch.setattr("sys.argv", ["app.py", "--run-dir", str(payload_run)])
    for example in range(len(PAYLOADS)):
        app.query_params["example"] = str(example)
        app.run()
        no_problems(app)
        texts = [block.value for block in [*app.markdown, *app.caption, *app.warning, *app.subheader]]
        assert any("&lt;script&gt;alert(1)&lt;/script&gt;" in text for text in texts)  # the model name, escaped
        for text in texts:
            assert "<script" not in text and "<img" not in text and "](javascript" not in text
        card = "".join(element.value for element in app.get("html"))
        assert html.escape(f"good {PAYLOADS[example]} film") in card
        assert "<script>" not in card and "<img src=x" not in card and "onerror=alert(1)>" not in card
        table = next(frame.value for frame in app.dataframe if "misleading" in frame.value.columns)
        assert set(table["text"]) == {f"good {p} film" for p in PAYLOADS}  # table cells: the text as it is
