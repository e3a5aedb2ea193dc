"""The language-model peer entries (``inseq``, ``transformer_lens``): what runs in our venv, without any peer.

The peers themselves live in their own virtual environments, built on first use (minutes of downloads), so the
default run never builds or starts one: it tests the pipe, the interleaved timing, the agreement numbers and our
side of each comparison, with fake peer replies where a peer would answer. ``ATTN_PROBE_PEER_TESTS=1`` adds the
real runs (``--quick`` sizes; the first one builds the peer environments).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchmarks.peers import inseq_peer, lm_common, transformerlens_peer
from benchmarks.peers.inseq_worker import attn_probe_baseline_ids
from benchmarks.peers.venv import MARKER, PEERS_ENV, PeerSpec, PeerUnavailable

REAL_PEERS = pytest.mark.skipif(
    os.environ.get("ATTN_PROBE_PEER_TESTS") != "1",
    reason="builds and runs the peer environments (minutes, downloads): set ATTN_PROBE_PEER_TESTS=1",
)


# ----------------------------------------------------------------------------------------------------
# lm_common
# ----------------------------------------------------------------------------------------------------
def test_rank_agreement():
    assert lm_common.rank_agreement([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx((1.0, 1.0))
    assert lm_common.rank_agreement([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx((-1.0, -1.0))
    assert all(math.isnan(v) for v in lm_common.rank_agreement([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="lengths"):
        lm_common.rank_agreement([1, 2], [1, 2, 3])


def test_agreement_fields_summarise_per_prompt_and_skip_constant_vectors():
    ours = [np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0]), np.array([5.0, 5.0, 5.0])]
    peer = [[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [1.0, 2.0, 3.0]]
    fields = lm_common.agreement_fields("x", ours, peer)
    assert fields["x_spearman_mean"] == pytest.approx(0.0) and fields["x_spearman_min"] == pytest.approx(-1.0)
    assert fields["x_kendall_mean"] == pytest.approx(0.0)
    assert lm_common.relative_max_abs_diff([1.0, 2.1], [1.0, 2.0]) == pytest.approx(0.05)


def test_timing_fields_are_per_example_with_the_runners_ratio():
    fields = lm_common.timing_fields([2.0, 4.0, 6.0], [4.0, 8.0, 12.0], per=2)
    assert fields["ours_median_s"] == 2.0 and fields["reference_median_s"] == 4.0
    assert fields["ratio"] == pytest.approx(0.5) and fields["speedup"] == pytest.approx(2.0)  # ours / peer, inverse
    assert fields["paired_ratio_q25"] == fields["paired_ratio_q75"] == pytest.approx(0.5)
    assert fields["samples"] == 3 and fields["ours_times_s"] == [1.0, 2.0, 3.0]
    json.dumps(fields)


def test_interleaved_alternates_and_takes_the_peers_own_seconds():
    calls = []
    ours_times, peer_times = lm_common.interleaved(
        lambda: calls.append("ours"), lambda: calls.append("peer") or 7.0, repeats=3
    )
    assert calls == ["ours", "peer", "ours", "peer", "peer", "ours", "ours", "peer"]  # warm-up, AB, BA, AB
    assert peer_times == [7.0, 7.0, 7.0] and len(ours_times) == 3 and all(t >= 0 for t in ours_times)
    calls.clear()
    lm_common.interleaved(lambda: calls.append("ours"), lambda: calls.append("peer") or 1.0, 2, warmup=False)
    assert calls == ["ours", "peer", "peer", "ours"]


def test_worker_pipe_reports_a_failed_request_and_quits(tmp_path):
    """The workers' JSON-lines loop, run by our own interpreter: an unknown command is answered, not fatal."""
    for script in (inseq_peer.WORKER, transformerlens_peer.WORKER):
        with lm_common.PeerWorker(sys.executable, script, "test") as worker:
            with pytest.raises(RuntimeError, match="failed on 'nonsense'"):
                worker.request("nonsense")
            with pytest.raises(RuntimeError, match="failed on 'time'"):  # nothing loaded: a KeyError, reported
                worker.request("time", method="saliency", what="patterns")
        assert worker.process.returncode == 0


def test_ready_peer_reads_a_finished_build_and_refuses_to_build_when_told(tmp_path, monkeypatch):
    monkeypatch.setenv(PEERS_ENV, str(tmp_path))
    spec = PeerSpec("fake", ("--no-deps", "fake==1.0"), first=("torch==2.13.0", "x>=1"))
    with pytest.raises(PeerUnavailable, match="not built"):
        lm_common.ready_peer(spec, install=False)
    folder = tmp_path / "fake"
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "python").write_text("")
    marker = {"spec": spec.key(), "versions": {"fake": "1.0"}}
    (folder / MARKER).write_text(json.dumps(marker))
    python, read = lm_common.ready_peer(spec, install=False)
    assert python == folder / "bin" / "python" and read["versions"] == {"fake": "1.0"}


@pytest.mark.parametrize("module", [inseq_peer, transformerlens_peer])
def test_peer_entries_skip_other_devices_without_building(module, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(PEERS_ENV, str(tmp_path))
    assert module.run(quick=True, device="cuda") == []
    assert "CPU only" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------------
# inseq: our side, checked against fake inseq replies built from our own explanations
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2():
    from attn_probe import Probe

    return Probe.load("smollm2-135m")


@pytest.fixture(scope="module")
def ours_quick(smollm2):
    """Our three explanations of the quick prompts (integrated gradients with 2 steps: only agreement matters)."""
    return inseq_peer.ours_explanations(smollm2, inseq_peer.prompts(quick=True), n_steps=2)


def test_the_workers_baseline_is_the_one_our_integrated_gradients_uses(smollm2, ours_quick):
    explanation, batch = ours_quick["integrated_gradients"]
    special = set(smollm2.tokenizer.all_special_ids)
    replacement = inseq_peer._replacement_id(smollm2)
    rebuilt = attn_probe_baseline_ids(batch.input_ids, batch.attention_mask, replacement, special)
    assert torch.equal(rebuilt, explanation.details["baseline_ids"])
    left = attn_probe_baseline_ids(torch.tensor([[0, 0, 5, 6, 7]]), torch.tensor([[0, 0, 1, 1, 1]]), 2, {0})
    assert left.tolist() == [[0, 0, 5, 2, 2]]  # padding and the first real token kept, wherever they are


def _fake_inseq(ours, *, attention_error: float = 0.0):
    """What the inseq worker would reply if inseq computed exactly what we compute, in inseq's layouts."""
    batch = ours["saliency"][1]

    def rows(tensor):
        return [tensor[i][..., batch.positions[i]] for i in range(len(batch))]

    heads = [h.permute(2, 0, 1) + attention_error for h in rows(ours["raw_attention"][0].head_scores)]  # [n, L, H]
    ig = rows(ours["integrated_gradients"][0].scores)
    peer = {
        "ids": [batch.input_ids[i, batch.positions[i]].tolist() for i in range(len(batch))],
        "saliency_l2": [s.tolist() for s in rows(ours["saliency"][0].scores)],
        "saliency_default": [(s / s.sum()).tolist() for s in rows(ours["saliency"][0].scores)],
        "attention": [h.tolist() for h in heads],
        "attention_default": [h.mean(dim=(1, 2)).tolist() for h in heads],
        "ig_matched_sum": [s.tolist() for s in ig],
        "ig_matched_l2": [s.abs().tolist() for s in ig],
        "ig_inseq_baseline_sum": [s.tolist() for s in ig],
        "ig_default": [(s.abs() / s.abs().sum()).tolist() for s in ig],
    }
    values = ours["saliency"][0].target.values.tolist()
    return {"ids": peer["ids"], "values": values}, peer


def test_inseq_agreement_is_exact_when_inseq_computes_what_we_compute(smollm2, ours_quick):
    loaded, peer = _fake_inseq(ours_quick)
    checks = inseq_peer.agreement(smollm2, ours_quick, loaded, peer, inseq_peer._replacement_id(smollm2))
    assert set(checks) == set(inseq_peer.METHODS)
    for method, fields in checks.items():
        assert fields["outputs_agree"] and fields["output_max_abs_diff"] == 0.0, method
        assert fields["same_token_ids"] and fields["target_max_abs_diff"] == 0.0
        assert fields["matched_spearman_min"] == pytest.approx(1.0)
        assert fields["matched_kendall_min"] == pytest.approx(1.0)
    assert checks["saliency"]["saliency_l2_rel_max_abs_diff"] == 0.0
    assert checks["raw_attention"]["attention_every_head_max_abs_diff"] == 0.0
    assert checks["raw_attention"]["attention_all_layers_mean_max_abs_diff"] < 1e-6
    assert checks["integrated_gradients"]["ig_matched_baseline_rel_max_abs_diff"] == 0.0
    assert checks["integrated_gradients"]["ig_baseline_rule_matches_ours"]
    json.dumps(checks)


def test_inseq_agreement_flags_different_attention_and_tokens(smollm2, ours_quick):
    loaded, peer = _fake_inseq(ours_quick, attention_error=1e-3)
    checks = inseq_peer.agreement(smollm2, ours_quick, loaded, peer, inseq_peer._replacement_id(smollm2))
    assert checks["raw_attention"]["attention_every_head_max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert not checks["raw_attention"]["outputs_agree"] and checks["saliency"]["outputs_agree"]
    loaded["ids"] = [[*ids[:-1], ids[-1] + 1] for ids in loaded["ids"]]
    checks = inseq_peer.agreement(smollm2, ours_quick, loaded, peer, inseq_peer._replacement_id(smollm2))
    assert not checks["saliency"]["same_token_ids"]
    assert not any(fields["outputs_agree"] for fields in checks.values())


# ----------------------------------------------------------------------------------------------------
# TransformerLens: our side, and the comparison on real tokens only
# ----------------------------------------------------------------------------------------------------
def test_transformer_lens_agreement_ignores_padding(tmp_path):
    torch.manual_seed(0)
    weights = torch.rand(2, 3, 4, 5, 5)
    logits = torch.randn(2, 5, 11)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    theirs, their_logits = weights.clone(), logits.clone()
    theirs[1, ..., 3:, :] = 7.0  # padded queries
    theirs[1, ..., :, 3:] = 7.0  # padded keys
    their_logits[1, 3:] = 9.0
    np.save(tmp_path / "patterns.npy", theirs.numpy())
    np.save(tmp_path / "logits.npy", their_logits.numpy())
    captured = SimpleNamespace(weights=weights, logits=logits)
    batch = SimpleNamespace(attention_mask=mask)
    checks = transformerlens_peer.agreement(captured, batch, tmp_path)
    assert checks["weights_max_abs_diff"] == 0.0 and checks["logits_max_abs_diff"] == 0.0
    theirs[0, 2, 1, 4, 0] += 0.5
    np.save(tmp_path / "patterns.npy", theirs.numpy())
    assert transformerlens_peer.agreement(captured, batch, tmp_path)["weights_max_abs_diff"] == pytest.approx(0.5)
    np.save(tmp_path / "patterns.npy", theirs[:, :2].numpy())
    assert transformerlens_peer.agreement(captured, batch, tmp_path)["weights_max_abs_diff"] == math.inf


def test_our_capture_cases_return_every_layer_and_head(smollm2):
    batch = smollm2.tokenize(transformerlens_peer.prompts(quick=True))
    lean = transformerlens_peer.ours_patterns(smollm2.model, batch)
    full = transformerlens_peer.ours_defaults(smollm2.model, batch)
    n = batch.input_ids.shape[1]
    assert lean.weights.shape == (2, 30, 9, n, n)  # SmolLM2: 30 layers, 9 query heads (3 key/value heads)
    assert lean.drift is None and full.drift is not None
    assert lean.stacks[lean.main_stack].values is None and full.stacks[full.main_stack].values is not None
    assert torch.equal(lean.weights, full.weights)


# ----------------------------------------------------------------------------------------------------
# the real peers (opt-in)
# ----------------------------------------------------------------------------------------------------
@REAL_PEERS
@pytest.mark.parametrize("module", [inseq_peer, transformerlens_peer])
def test_real_peer_runs_and_agrees(module):
    rows = module.run(quick=True, device="cpu")
    assert rows and all(row["outputs_agree"] for row in rows), [(r["case"], r["outputs_agree"]) for r in rows]
    for row in rows:
        assert row["ratio"] > 0 and row["speedup"] == pytest.approx(1 / row["ratio"])
        assert len(row["ours_times_s"]) == len(row["reference_times_s"]) == row["samples"]
    json.dumps(rows)


def test_worker_scripts_import_nothing_from_attn_probe():
    for script in (inseq_peer.WORKER, transformerlens_peer.WORKER):
        assert "attn_probe" not in "".join(
            line for line in Path(script).read_text().splitlines() if line.lstrip().startswith(("import", "from"))
        )
