"""Numerical honesty through the Probe: IG convergence and capture drift reach the results, the run and its manifest."""

from __future__ import annotations

import warnings

import pytest
import torch

from attn_probe.findings import FLAG_COLUMNS
from attn_probe.findings.flags import DRIFT_CHECK, IG_CHECK, IG_DELTA
from attn_probe.methods.gradient import ConvergenceWarning
from attn_probe.probe import Probe
from attn_probe.store import load_run

TEXTS = ["a gorgeous, witty movie", "dull", "the plot is thin but the acting is superb", "i laughed, i cried"]
METHODS = ["raw_attention", "integrated_gradients", "leave_one_out"]
UNCONVERGED = {"integrated_gradients": {"n_steps": 2}}


@pytest.fixture(scope="module")
def probe(tiny_bert, tokenizer):
    return Probe(tiny_bert, tokenizer, name="tiny-bert")


def explain(probe, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = probe.explain(TEXTS, methods=METHODS, checks=["agreement"], batch_size=2, **options)
    return result, [w for w in caught if issubclass(w.category, RuntimeWarning)]


@pytest.fixture(scope="module")
def unconverged(probe):
    return explain(probe, options=UNCONVERGED)


def test_unconverged_ig_is_flagged_per_example_with_one_warning_for_all_batches(unconverged):
    result, caught = unconverged
    flags = result.flags
    assert list(flags.columns) == FLAG_COLUMNS
    relative = flags[flags["check"] == IG_CHECK]
    assert sorted(relative["example_id"]) == [0, 1, 2, 3]  # every example of both batches, ids continued
    assert (relative["threshold"] == 0.05).all() and (relative["method"] == "integrated_gradients").all()
    assert relative["flagged"].any()
    assert len(flags[flags["check"] == IG_DELTA]) == 4
    bad = sorted(result.flagged.loc[result.flagged["check"] == IG_CHECK, "example_id"])
    # the deltas in the table are the method's own
    deltas = [float(d) for a in result.assessments for d in a.explanations["integrated_gradients"].details[
        "relative_convergence_delta"]]  # fmt: skip
    assert relative.sort_values("example_id")["value"].tolist() == pytest.approx(deltas)
    assert len(caught) == 1 and caught[0].category is ConvergenceWarning  # not one per batch
    message = str(caught[0].message)
    assert f"did not converge for {len(bad)} of 4 examples" in message and "n_steps" in message
    assert caught[0].filename == __file__  # it points at the caller


def test_capture_drift_is_measured_per_example(unconverged):
    result, _ = unconverged
    drift = result.flags[result.flags["check"] == DRIFT_CHECK].sort_values("example_id")
    assert drift["example_id"].tolist() == [0, 1, 2, 3] and (drift["scope"] == "example").all()
    measured = torch.cat([a.captured.drift_per_example for a in result.assessments])
    assert drift["value"].to_numpy() == pytest.approx(measured.numpy())
    assert result.drift == pytest.approx(max(a.captured.drift for a in result.assessments))
    assert result.drift < 1e-3 and not drift["flagged"].any()


def test_converged_ig_is_not_flagged_and_warns_nothing(probe):
    result, caught = explain(probe)
    relative = result.flags[result.flags["check"] == IG_CHECK]
    assert len(relative) == 4 and not relative["flagged"].any() and relative["value"].max() < 0.05
    assert result.flagged.empty and not caught


def test_the_threshold_moves_both_the_flags_and_the_warning(probe):
    from attn_probe.findings import Thresholds

    loose = Thresholds(ig_relative_convergence_delta=10.0)
    result, caught = explain(probe, options=UNCONVERGED, thresholds=loose)
    assert not result.flagged.any().any() and not caught
    with pytest.raises(ConvergenceWarning), warnings.catch_warnings():  # filters still apply: an error stays one
        warnings.simplefilter("error", RuntimeWarning)
        probe.explain(TEXTS, methods=METHODS, checks=["agreement"], options=UNCONVERGED)


def test_a_run_stores_the_flags_and_the_manifest_the_largest_drift(probe, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = probe.run(TEXTS[:3], tmp_path / "run", methods=METHODS, checks=["agreement"], options=UNCONVERGED,
                        batch_size=1, sample=0, progress=False)  # fmt: skip
        # a second session finds nothing left to do and still reports the whole run
        probe.run(TEXTS[:3], tmp_path / "run", methods=METHODS, checks=["agreement"], options=UNCONVERGED,
                  batch_size=1, sample=0, progress=False)  # fmt: skip
    run = load_run(tmp_path / "run")
    flags = run.table("flags")
    convergence = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert len(convergence) == int(flags.loc[flags["check"] == IG_CHECK, "flagged"].any())  # three batches, one
    assert list(flags.columns) == FLAG_COLUMNS
    assert sorted(flags.loc[flags["check"] == IG_CHECK, "example_id"]) == [0, 1, 2]
    assert sorted(flags.loc[flags["check"] == DRIFT_CHECK, "example_id"]) == [0, 1, 2]
    extra = run.manifest["extra"]
    assert extra["capture_drift"]["max"] == pytest.approx(flags.loc[flags["check"] == DRIFT_CHECK, "value"].max())
    assert extra["capture_drift"]["measured_examples"] == 3 and extra["capture_drift"]["threshold"] == 1e-3
    ig = extra["ig_convergence"]["integrated_gradients"]
    flagged = int(flags.loc[(flags["check"] == IG_CHECK) & flags["flagged"], "example_id"].nunique())
    assert ig["examples"] == 3 and ig["flagged_examples"] == flagged and ig["threshold"] == 0.05
    assert run.identity["thresholds"]["ig_relative_convergence_delta"] == 0.05


def test_a_batch_without_a_shared_capture_still_measures_drift(probe, tiny_bert, tokenizer):
    from dataclasses import replace

    from attn_probe.findings import Thresholds, assess
    from attn_probe.probe import _with_drift

    batch = probe.tokenize(TEXTS[:2])
    assessment = assess(tiny_bert, batch, tokenizer=tokenizer, attention_methods=["raw_attention"],
                        reference_methods=["saliency"], checks=["agreement"])  # fmt: skip
    assert sorted(assessment.flags["example_id"]) == [0, 1]  # the shared capture's drift
    bare = replace(assessment, captured=None, flags=assessment.flags.iloc[:0])  # as if nothing had captured
    captured = _with_drift(tiny_bert, batch, bare, Thresholds())
    assert captured.weights.shape[0] == 2
    drift = bare.flags[bare.flags["check"] == DRIFT_CHECK]
    assert sorted(drift["example_id"]) == [0, 1]
    assert drift.sort_values("example_id")["value"].to_numpy() == pytest.approx(captured.drift_per_example.numpy())
    assert drift["value"].max() == pytest.approx(captured.drift)
