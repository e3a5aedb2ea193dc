"""The report says so when a number rests on a flagged result: IG that did not converge, a capture that drifted."""

from __future__ import annotations

import html

import pytest

from attn_probe.findings.flags import DRIFT_CHECK, IG_CHECK
from attn_probe.report import build_report, write_report
from attn_probe.report.document import Bullets, Facts, Paragraph, Table
from attn_probe.store import Run, load_run
from tests.report.conftest import TEXTS

METHODS = ["raw_attention", "integrated_gradients", "leave_one_out"]
CHECKS = ["agreement", "erasure"]


def make_run(probe, out, **options):
    probe.run(TEXTS[:4], out, methods=METHODS, checks=CHECKS, batch_size=2, sample=0, progress=False, **options)
    return load_run(out)


@pytest.fixture(scope="module")
def unconverged_run(probe, tmp_path_factory):
    with pytest.warns(RuntimeWarning, match="did not converge"):
        return make_run(probe, tmp_path_factory.mktemp("unconverged") / "run",
                        options={"integrated_gradients": {"n_steps": 2}})  # fmt: skip


@pytest.fixture(scope="module")
def converged_run(probe, tmp_path_factory):
    return make_run(probe, tmp_path_factory.mktemp("converged") / "run")


def rewritten(run, out, change):
    """A copy of ``run`` whose tables went through ``change`` (a dict of frames, edited in place)."""
    tables = {name: run.table(name) for name in run.tables()}
    change(tables)
    with Run.open(out, run.identity, run.settings) as copy:
        copy.write(sorted(run.done()), tables)
        copy.finish()
    return load_run(out)


def texts(document, key):
    """Every string of one section of a report document."""
    section = next(s for s in document.sections if s.key == key)
    out = []
    for block in section.blocks:
        if isinstance(block, Paragraph):
            out.append(block.text)
        elif isinstance(block, Bullets):
            out += block.items
        elif isinstance(block, Facts):
            out += [value for _, value in block.items]
        elif isinstance(block, Table):
            out += [" | ".join(row) for row in block.rows]
    return out


def rendered(run, tmp_path):
    paths = write_report(run, tmp_path)
    return paths["md"].read_text().replace("\\", ""), html.unescape(paths["html"].read_text())


def test_unconverged_ig_is_named_in_the_caveats_and_the_headlines(unconverged_run, tmp_path):
    flags = unconverged_run.table("flags")
    bad = sorted(set(flags.loc[(flags["check"] == IG_CHECK) & flags["flagged"], "example_id"]))
    assert bad, "two steps of integrated gradients should not converge on the tiny model"
    document = build_report(unconverged_run, resamples=50)
    caveats = texts(document, "caveats")
    sentence = next(t for t in caveats if t.startswith("integrated_gradients did not converge on"))
    assert f"did not converge on {len(bad)} of 4 examples" in sentence
    assert f"examples {', '.join(map(str, bad))}." in sentence and "raise its n_steps" in sentence
    assert any(t.startswith("Headline numbers that rest on a flagged result:") for t in caveats)
    resting = [t for t in caveats if "attention_disagrees | raw_attention" in t]
    assert resting and "integrated_gradients" in resting[0]
    headlines = texts(document, "findings")
    caution = next(t for t in headlines if t.startswith("Caution:"))
    assert f"integrated_gradients did not converge on {len(bad)} of the 4 examples" in caution
    leaning = [t for t in headlines if "[flagged:" in t]
    assert leaning and all("integrated_gradients results that did not converge" in t for t in leaning)
    assert any("ranks tokens unlike the gradient / erasure attributions" in t for t in leaning)
    assert not any("a head puts most of its attention" in t for t in leaning)  # sinks do not rest on IG
    run_facts = texts(document, "run")
    assert any(f"integrated_gradients did not converge on {len(bad)} of 4 examples" in t for t in run_facts)
    for page in rendered(unconverged_run, tmp_path):  # Markdown and HTML both
        assert sentence in page and caution in page and leaning[0] in page


def test_a_converged_run_says_so_and_flags_nothing(converged_run, tmp_path):
    document = build_report(converged_run, resamples=50)
    caveats = texts(document, "caveats")
    assert any(t.startswith("integrated_gradients converged on all 4 examples") for t in caveats)
    assert any(t.startswith("The attention capture matches the model's own attention backend") for t in caveats)
    assert "No headline number rests on a flagged result." in caveats
    assert not any("[flagged:" in t or t.startswith("Caution:") for t in texts(document, "findings"))
    markdown, page = rendered(converged_run, tmp_path)
    assert "No headline number rests on a flagged result." in markdown and "integrated_gradients converged" in page


def test_a_drifted_capture_weighs_on_every_attention_finding_of_its_examples(converged_run, tmp_path):
    def drift(tables):
        flags = tables["flags"]
        rows = (flags["check"] == DRIFT_CHECK) & flags["example_id"].isin([0, 1])
        flags.loc[rows, ["value", "flagged"]] = [0.02, True]

    run = rewritten(converged_run, tmp_path / "run", drift)
    document = build_report(run, resamples=50)
    caveats = texts(document, "caveats")
    line = next(t for t in caveats if t.startswith("The attention capture drifted"))
    assert "on 2 of 4 examples" in line and "up to 0.02" in line and "examples 0, 1." in line
    assert any("capture drift" in t for t in caveats if " | " in t)
    headlines = texts(document, "findings")
    assert any("the attention capture drifted from the model's backend on 2" in t for t in headlines)
    assert any("a capture that drifted from the model's backend" in t for t in headlines if "[flagged:" in t)
    markdown, page = rendered(run, tmp_path / "report")
    assert line in markdown and line in page


def test_a_run_without_flags_says_they_were_not_recorded(converged_run, tmp_path):
    run = rewritten(converged_run, tmp_path / "run", lambda tables: tables.pop("flags"))
    caveats = texts(build_report(run, resamples=50), "caveats")
    assert any(t.startswith("Not recorded: the run has no flags table") for t in caveats)
