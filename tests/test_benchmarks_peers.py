"""The ``ferret``, ``captum_loop`` and ``memory`` benchmark entries: what runs in our venv, without any peer.

ferret lives in its own virtual environment, built on first use (about 1.5 minutes of downloads), so the default
run never builds or starts it: it tests the worker pipe (with our own interpreter, which has no ferret), the
venv bookkeeping, and our side of every agreement check against a fake ferret that computes ferret's definitions
independently on a tiny model. ``ATTN_PROBE_PEER_TESTS=1`` adds the real ferret run (``--quick`` size). No test
asserts a speed: on a shared machine a timed assertion fails at random.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings

import numpy as np
import pytest
import torch
from captum.attr import Saliency

from benchmarks import captum_loop, memory
from benchmarks.__main__ import format_table
from benchmarks.peers import ferret_peer
from benchmarks.peers.venv import MARKER, PEERS_ENV, PeerSpec, PeerUnavailable, ensure_peer, is_built, read_marker

REAL_PEERS = pytest.mark.skipif(
    os.environ.get("ATTN_PROBE_PEER_TESTS") != "1",
    reason="builds and runs ferret's environment (minutes, downloads): set ATTN_PROBE_PEER_TESTS=1",
)
TEXTS = ["a gorgeous, witty, seductive movie.", "the plot is dull and the cast is tired."]
ROW_KEYS = ("case", "ours_median_s", "reference_median_s", "ratio", "target", "meets_target", "outputs_agree")


@pytest.fixture(scope="module")
def probe(tiny_bert, tokenizer):
    from attn_probe import Probe

    return Probe(tiny_bert, tokenizer, name="tiny")


# ----------------------------------------------------------------------------------------------------
# venv bookkeeping
# ----------------------------------------------------------------------------------------------------
def test_a_peer_counts_as_built_only_with_its_own_marker(tmp_path, monkeypatch):
    monkeypatch.setenv(PEERS_ENV, str(tmp_path))
    spec = PeerSpec("fake", ("fake==1.0", "numpy<2"))
    assert not is_built(spec)
    with pytest.raises(PeerUnavailable, match="not built"):
        ensure_peer(spec, install=False)
    (tmp_path / "fake" / "bin").mkdir(parents=True)
    (tmp_path / "fake" / "bin" / "python").write_text("")
    assert not is_built(spec)  # no marker: an interrupted build
    (tmp_path / "fake" / MARKER).write_text(json.dumps({"spec": spec.key(), "versions": {"fake": "1.0"}}))
    assert is_built(spec) and read_marker(spec)["versions"] == {"fake": "1.0"}
    assert ensure_peer(spec, install=False) == tmp_path / "fake" / "bin" / "python"
    assert not is_built(PeerSpec("fake", ("fake==2.0",)))  # another spec: rebuilt, never reused


def test_a_prepared_interpreter_is_used_as_it_is(tmp_path, monkeypatch):
    """``$ATTN_PROBE_PEER_PYTHON_<NAME>``: no venv is built, the marker holds what that interpreter reports."""
    import sys

    from benchmarks.peers.venv import python_env_var

    monkeypatch.setenv(PEERS_ENV, str(tmp_path))
    spec = PeerSpec("fake-tool", ("numpy", "surely-not-installed==1.0"))
    assert python_env_var(spec) == "ATTN_PROBE_PEER_PYTHON_FAKE_TOOL"
    wrapper = tmp_path / "fake-python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("ATTN_PROBE_PEER_PYTHON_FAKE_TOOL", str(wrapper))
    assert ensure_peer(spec, install=False) == wrapper and is_built(spec)
    marker = read_marker(spec)
    assert marker["prepared"] == str(wrapper) and marker["versions"]["surely-not-installed"] is None
    assert marker["versions"]["numpy"] == __import__("numpy").__version__
    assert [p.name for p in tmp_path.iterdir()] == ["fake-python"]  # nothing built beside it
    monkeypatch.setenv("ATTN_PROBE_PEER_PYTHON_FAKE_TOOL", str(tmp_path / "missing"))
    with pytest.raises(PeerUnavailable, match="not an executable file"):
        ensure_peer(spec)


def test_ferret_spec_pins_torch_first_and_keeps_ferrets_pins():
    assert ferret_peer.FERRET.first == ("torch==2.13.0",)
    assert {"transformers<5", "numpy<2", "pyarrow==23.0.1"} <= set(ferret_peer.FERRET.requirements)
    json.dumps(ferret_peer.FERRET.key())


def test_ferret_entry_gives_no_rows_rather_than_building_when_told(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(PEERS_ENV, str(tmp_path))
    monkeypatch.setenv(ferret_peer.INSTALL_ENV, "0")
    assert ferret_peer.run(quick=True, device="cpu") == []
    assert ferret_peer.run(quick=True, device="cuda") == []
    assert "not built" in capsys.readouterr().err and not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------------
# ferret: the worker pipe, and our side of the agreement checks against a fake ferret
# ----------------------------------------------------------------------------------------------------
def test_ferret_worker_answers_failures_and_quits():
    """Our interpreter has no ferret: ``load`` fails with the ImportError, reported; unknown commands too."""
    worker = ferret_peer.FerretWorker(sys.executable)
    try:
        with pytest.raises(RuntimeError, match="failed on 'nonsense'"):
            worker.request("nonsense")
        with pytest.raises(RuntimeError, match="No module named 'ferret'"):
            worker.request("load", model_dir="nowhere", texts=["x"], threads=1, device="cpu")
        with pytest.raises(RuntimeError, match="failed on 'results'"):  # nothing timed yet
            worker.request("results")
    finally:
        worker.close()
    assert worker.process.returncode == 0


class FakeFerret:
    """Answers ``results`` and ``eraser_k`` with ferret's definitions, computed here without attn_probe."""

    def __init__(self, model, tokenizer, texts, *, ixg_noise: float = 0.0):
        self.model, self.tokenizer, self.texts = model, tokenizer, texts
        self.ixg_noise = ixg_noise

    def probability(self, ids: list[int], target: int) -> float:
        with torch.no_grad():
            return float(self.model(input_ids=torch.tensor([ids])).logits.softmax(-1)[0, target])

    def loaded(self) -> dict:
        ids = [self.tokenizer(t)["input_ids"] for t in self.texts]
        with torch.no_grad():
            logits = [self.model(input_ids=torch.tensor([i])).logits[0].tolist() for i in ids]
        return {"ids": ids, "logits": logits}

    def request(self, cmd: str, **fields):
        if cmd == "results":
            return {"examples": [self.example(t) for t in self.texts]}
        assert cmd == "eraser_k"
        return {"items": [self.eraser(item) for item in fields["items"]]}

    def example(self, text: str) -> dict:
        ids = torch.tensor([self.tokenizer(text)["input_ids"]])
        target = int(self.model(input_ids=ids).logits.argmax())
        embeds = self.model.get_input_embeddings()(ids).detach()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # captum: "did not already require gradients" (it sets them)
            gradient = Saliency(lambda e: self.model(inputs_embeds=e).logits).attribute(embeds, target=target)
        l1 = gradient.sum(-1)[0].numpy().astype(float)  # |gradient| summed: ferret's "Gradient"
        ixg = captum_loop.user_loop(self.model, self.tokenizer, [text], "input_x_gradient")[0].numpy().astype(float)
        ixg = ixg + self.ixg_noise * np.abs(ixg).max()
        ig = captum_loop.user_loop(self.model, self.tokenizer, [text], "integrated_gradients")[0].numpy()
        evaluation = {"aopc_compr": 0.1, "aopc_suff": 0.2, "taucorr_loo": 0.3}
        names = ferret_peer.FERRET_NAMES
        return {
            "target": target,
            "tokens": self.tokenizer.convert_ids_to_tokens(ids[0]),
            "scores": {
                names["saliency"]: (l1 / np.abs(l1).sum()).tolist(),
                names["input_x_gradient"]: (ixg / np.abs(ixg).sum()).tolist(),
                names["integrated_gradients"]: ig.astype(float).tolist(),
            },
            "evaluations": {name: evaluation for name in names.values()},
            "ig_mask_baseline": ig.astype(float).tolist(),
        }

    def eraser(self, item: dict) -> dict:
        ids = self.tokenizer(self.texts[item["index"]])["input_ids"]
        content, scores, target = ids[1:-1], np.asarray(item["scores"])[1:-1], item["target"]
        full = self.probability(ids, target)
        rows = []
        for k in item["ks"]:
            top = set(scores.argsort()[-k:].tolist())
            without = [token for i, token in enumerate(content) if i not in top]
            only = [token for i, token in enumerate(content) if i in top]
            cls, sep = ids[0], ids[-1]
            rows.append(
                {
                    "k": k,
                    "comprehensiveness": full - self.probability([cls, *without, sep], target),
                    "sufficiency": full - self.probability([cls, *only, sep], target),
                    "round_trip": True,
                }
            )
        return {"index": item["index"], "rows": rows}


@pytest.fixture(scope="module")
def full_result(probe):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # integrated gradients may not converge on a random model
        return probe.explain(TEXTS, methods=ferret_peer.FULL_METHODS, checks=["agreement", "erasure"])


def test_ferret_agreement_checks_pass_against_ferrets_definitions(probe, full_result):
    fake = FakeFerret(probe.model, probe.tokenizer, TEXTS)
    checks = ferret_peer.agreement(probe, fake, TEXTS, fake.loaded(), full_result)
    assert checks["same_token_ids"] and checks["same_targets"]
    assert checks["logits_max_abs_diff"] < 1e-5
    assert checks["input_x_gradient_rel_max_abs_diff"] < 1e-4
    assert checks["saliency_gradient_l1_rel_max_abs_diff"] < 1e-4
    assert checks["ig_mask_baseline_rel_max_abs_diff"] < 1e-4
    assert checks["eraser_same_k_compared"] >= len(TEXTS) and checks["eraser_same_k_max_abs_diff"] < 1e-5
    assert checks["outputs_agree"]
    assert checks["ferret_aopc_compr_mean/saliency"] == pytest.approx(0.1)
    json.dumps(checks)


def test_ferret_agreement_catches_different_scores(probe, full_result):
    fake = FakeFerret(probe.model, probe.tokenizer, TEXTS, ixg_noise=0.01)
    checks = ferret_peer.agreement(probe, fake, TEXTS, fake.loaded(), full_result)
    assert checks["input_x_gradient_rel_max_abs_diff"] > ferret_peer.ATTRIBUTION_TOLERANCE
    assert not checks["outputs_agree"]


@REAL_PEERS
def test_ferret_entry_runs_and_agrees():
    rows = ferret_peer.run(quick=True, device="cpu")
    assert [row["case"].split("/")[0] for row in rows] == list(ferret_peer.CASES)
    for row in rows:
        assert all(key in row for key in ROW_KEYS) and row["outputs_agree"], row
        assert row["ratio"] > 0 and row["speedup"] == pytest.approx(1 / row["ratio"])
        assert row["peer_versions"]["transformers"].startswith("4.")
    format_table(rows)
    json.dumps(rows)


# ----------------------------------------------------------------------------------------------------
# captum_loop
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", captum_loop.METHODS)
def test_the_users_captum_loop_gives_our_scores(probe, method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = probe.explain(TEXTS, methods=["raw_attention", method], checks=[])
    theirs = captum_loop.user_loop(probe.model, probe.tokenizer, TEXTS, method)
    assert captum_loop._relative_diffs(probe, result, TEXTS, method, theirs) < 1e-4


def test_bare_batched_ig_gives_our_scores(probe):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = probe.explain(TEXTS, methods=["raw_attention", "integrated_gradients"], checks=[])
    bare = captum_loop.bare_batched_ig(probe.model, probe.tokenizer, TEXTS)
    rows = [bare[i, : len(probe.tokenize([t]).positions[0])] for i, t in enumerate(TEXTS)]
    assert captum_loop._relative_diffs(probe, result, TEXTS, "integrated_gradients", rows) < 1e-4


def test_captum_loop_quick_rows():
    rows = captum_loop.run(quick=True, device="cpu", repeats=1, warmup=0)
    cases = [row["case"].removesuffix("/tiny-3") for row in rows]
    assert cases == [*(f"loop/{m}" for m in captum_loop.METHODS), "loop/all", "ig_share/probe_ig_only",
                     "ig_share/default_probe"]  # fmt: skip
    for row in rows:
        assert all(key in row for key in ROW_KEYS) and row["outputs_agree"], row
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0 and row["samples"] == 1
    share = rows[-2]
    assert share["target"] == captum_loop.IG_SHARE_TARGET and share["meets_target"] == (share["ratio"] <= 1.3)
    assert share["ig_share"] == pytest.approx(1 / share["ratio"])
    assert len(format_table(rows).splitlines()) == len(rows) + 2
    json.dumps(rows)


# ----------------------------------------------------------------------------------------------------
# memory
# ----------------------------------------------------------------------------------------------------
def test_synthetic_texts_are_distinct_and_short():
    texts = memory.synthetic_texts(5000)
    assert len(set(texts)) == 5000 and max(len(t.split()) for t in texts) <= 10


def test_memory_quick_rows_come_from_fresh_processes():
    (row,) = memory.run(quick=True, device="cpu", sizes=(4, 12))
    assert row["case"] == "peak_rss/12-vs-4" and row["outputs_agree"]
    assert row["ratio"] == pytest.approx(row["ours_peak_rss_mb"] / row["reference_peak_rss_mb"])
    assert row["meets_target"] == (row["ratio"] <= memory.RSS_TARGET)
    for side in ("ours", "reference"):
        assert row[f"{side}_peak_rss_mb"] > 50 and row[f"{side}_growth_mb"] >= 0
    format_table([row])
    json.dumps(row)
