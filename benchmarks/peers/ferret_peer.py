"""Entry ``ferret``: our probe against ferret-xai's explain + evaluate, per example, on the same classifier and texts.

ferret (Attanasio et al. 2023, ``ferret-xai`` on PyPI) is what a user would pick to explain a Hugging Face
classifier and score the explanations' faithfulness. It pins transformers < 5 and numpy < 2, so it runs in its
own virtual environment (:mod:`benchmarks.peers.venv`, built on first use, ~1.5 minutes) as a worker subprocess
(``ferret_worker.py``) that loads ``minilm-sentiment``'s directory by path with transformers 4.57 (the directory
saved by transformers 5 loads as it is: same logits within 2e-6). Or a prepared interpreter named by
``$ATTN_PROBE_PEER_PYTHON_FERRET`` (:mod:`benchmarks.peers.venv`), the only way to run the entry on a GPU: there
ferret 0.4.2, installed with ``--no-deps`` beside transformers 5 and numpy 2, gives the same scores and evaluations
as in its own venv (``ferret_worker.py`` says which of its import-only dependencies may be missing).

What is compared (only what has a counterpart on both sides), ferret 0.4.2 -> ours:

- ``GradientExplainer(multiply_by_inputs=False)`` -> ``saliency``;
- ``GradientExplainer(multiply_by_inputs=True)`` -> ``input_x_gradient``;
- ``IntegratedGradientExplainer(multiply_by_inputs=True)`` -> ``integrated_gradients`` (both: 50 steps,
  Gauss-Legendre);
- AOPC comprehensiveness / sufficiency -> the ``erasure`` check (ERASER comprehensiveness / sufficiency);
- tau-LOO (Kendall tau with leave-one-out) -> ``leave_one_out_drop`` and the ``agreement`` check.

ferret's SHAP (partition) and LIME explainers and its plausibility metrics (they need human rationales) have no
counterpart and are left out. Our probe needs one attention method to judge, so ``raw_attention`` is added on our
side (and judged: the findings come with it).

Cases (``ratio`` = ours / ferret, seconds per example; ``speedup`` = 1 / ratio; target: speedup >= 5, i.e.
ratio <= 0.2):

- ``full`` (the target's case: the same methods and metrics): ferret's per-text loop ``score`` (the predicted
  class) + ``explain`` + ``evaluate_explanations`` against ``Probe.explain(texts, methods=[raw_attention, saliency,
  input_x_gradient, integrated_gradients, leave_one_out_drop], checks=["agreement", "erasure"])``: the
  explanations, ERASER comprehensiveness / sufficiency, rank agreement with leave-one-out, and the findings;
- ``full_with_flips``: ferret as in ``full``; ours adds the ``flips`` check (decision flips of every ranking
  against 10 random orders, each deleting tokens until the decision flips): more work than ferret does, no target;
- ``explain``: ferret without ``evaluate_explanations``; ours ``Probe.explain(methods=[raw_attention, saliency,
  input_x_gradient, integrated_gradients], checks=[])``;
- ``same_work``: ferret as in ``full``; ours exactly ferret's work through the library, no probe: the three
  explanations and ``leave_one_out_drop`` on one :class:`~attn_probe.methods.ExplainContext`, ERASER of the
  three (``faithfulness_report(protocols=("eraser",))``) and the agreement table.

Timing: one warm-up of each side (ferret's when its worker loads), then per case the two sides alternate (ours,
ferret, ferret, ours, ...), 3 samples (1 with ``--quick``); ours is timed here, ferret inside its worker (no
pipe overhead, the GPU synchronised on both sides), both with our torch thread count. Texts: Rotten Tomatoes test
snippets, 8 on a CPU, 16 on a GPU (our default batch: a GPU is fed whole batches), 2 with ``--quick``; explained as
one batch on our side, one at a time by ferret.

Agreement, where the definitions match (``outputs_agree`` is their verdict; the runner exits 1 if it fails):

- the model: both sides' logits on every text (< 1e-4), token ids and predicted classes identical;
- ``input_x_gradient``: the same definition (embedding x gradient, summed over the hidden dimension); ferret
  L1-normalises over the real tokens ([CLS] and [SEP] included), so ours is normalised the same way: max abs
  diff relative to the example's largest |score| (< 1e-3);
- ``saliency``: ferret sums ``|gradient|`` over the hidden dimension (L1), we take the L2 norm: the gradients
  themselves are compared (the L1 of our gradient, normalised, vs ferret's), and the Spearman correlation of
  the two published scores is reported;
- ``integrated_gradients``: ferret's baseline is ``[CLS] [PAD] ... [SEP]``, ours ``[CLS] [MASK] ... [SEP]``: ferret
  is rerun (untimed) with our baseline for the exact check, and its default's Pearson correlation with ours is
  reported;
- comprehensiveness / sufficiency: ferret's defaults (bins 10 %, ..., 100 % of the content tokens rounded down,
  only positively scored tokens, tokens *deleted* and the ids decoded to text and tokenized again, AOPC of the
  target's probability) and ours (bins 1, 5, 10, 20, 50 % rounded up, tokens replaced by [MASK] in id space,
  the target logit and the probability) differ. The check feeds the *same* scores (our input x gradient) to
  both with the same ``k`` per bin, ferret with ``based_on="k"`` and ours in ``mode="drop"``, and compares the
  probability differences (< 1e-4) where ferret's decode / re-tokenize gives back the same ids (where it does
  not, e.g. a deleted word piece glued to its neighbour, the definitions differ and the pair is skipped).
  Both sides' default numbers are reported side by side, not compared.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.peers.lm_common import PeerWorker, quantile
from benchmarks.peers.venv import PeerSpec, ensure_peer

FERRET = PeerSpec(
    "ferret",
    ("ferret-xai==0.4.2", "transformers<5", "numpy<2", "pyarrow==23.0.1"),
    check="import ferret, transformers, numpy; print(transformers.__version__, numpy.__version__)",
)
WORKER = Path(__file__).resolve().parent / "ferret_worker.py"
INSTALL_ENV = "ATTN_PROBE_PEER_INSTALL"  # "0": never build a peer environment here (the entry gives no rows)
SPEEDUP_TARGET = 5.0
ATTRIBUTION_TOLERANCE = 1e-3  # max abs diff / max |score| of the example (float32, padded vs unpadded batches)
METRIC_TOLERANCE = 1e-4  # probability differences
EXPLAIN_METHODS = ["raw_attention", "saliency", "input_x_gradient", "integrated_gradients"]
FULL_METHODS = [*EXPLAIN_METHODS, "leave_one_out_drop"]
FERRET_NAMES = {
    "saliency": "Gradient",
    "input_x_gradient": "Gradient (x Input)",
    "integrated_gradients": "Integrated Gradient (x Input)",
}
CASES = {  # case -> (what ferret runs, our side)
    "full": ("full", "Probe.explain(methods=FULL_METHODS, checks=['agreement', 'erasure'])"),
    "full_with_flips": ("full", "Probe.explain(methods=FULL_METHODS, checks=['agreement', 'erasure', 'flips'])"),
    "explain": ("explain", "Probe.explain(methods=EXPLAIN_METHODS, checks=[])"),
    "same_work": ("full", "ExplainContext + 4 methods + faithfulness_report(eraser) + agreement_table (no probe)"),
}
MAX_TEXTS = 16  # Probe.explain's default batch_size: every case explains the texts as one batch


class FerretWorker(PeerWorker):
    """ferret's worker subprocess (``ferret_worker.py`` in ferret's own venv): JSON lines in and out."""

    def __init__(self, python: Path | str) -> None:
        super().__init__(python, WORKER, "ferret")


def sentences(quick: bool, device: str = "cpu") -> list[str]:
    """Rotten Tomatoes test snippets (the classifier's held-out split): 8 on a CPU, 16 (one default batch) on a
    GPU, 2 with ``quick``."""
    from benchmarks.captum_loop import rotten_tomatoes_sentences

    return rotten_tomatoes_sentences(2 if quick else 8 if torch.device(device).type == "cpu" else MAX_TEXTS)


def _ours(probe: Any, case: str, texts: list[str]) -> Any:
    """Our side of ``case`` once; returns what it computed."""
    if case == "full":
        return probe.explain(texts, methods=FULL_METHODS, checks=["agreement", "erasure"])
    if case == "full_with_flips":
        return probe.explain(texts, methods=FULL_METHODS, checks=["agreement", "erasure", "flips"])
    if case == "explain":
        return probe.explain(texts, methods=EXPLAIN_METHODS, checks=[])
    # same_work: exactly ferret's work with the library's functions: the three explanations, leave-one-out (drop),
    # ERASER comprehensiveness / sufficiency of each, and each one's rank agreement with leave-one-out.
    from attn_probe.compare.agreement import agreement_table
    from attn_probe.compare.faithfulness import faithfulness_report
    from attn_probe.methods import ExplainContext, get_method

    context = ExplainContext(probe.model, probe.tokenize(texts), tokenizer=probe.tokenizer)
    explanations = {m: get_method(m)[1](context) for m in [*FERRET_NAMES, "leave_one_out_drop"]}
    report = faithfulness_report(context, {m: explanations[m] for m in FERRET_NAMES}, protocols=("eraser",))
    return report, agreement_table(explanations, absolute=False)


def _time_case(probe: Any, worker: FerretWorker, texts: list[str], case: str, repeats: int, device: str) -> dict:
    """Interleaved per-run seconds of ours and ferret's (AB, BA, ...); both sides are warm already."""
    from benchmarks.timing import synchronizer

    sync = synchronizer(device)
    kept: dict[str, Any] = {}

    def ours() -> float:
        sync()
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kept["result"] = _ours(probe, case, texts)
        sync()
        return time.perf_counter() - start

    def ferret() -> float:
        return float(worker.request("time", what=CASES[case][0])["seconds"])

    ours_times, ferret_times = [], []
    for index in range(repeats):
        if index % 2 == 0:
            ours_times.append(ours())
            ferret_times.append(ferret())
        else:
            ferret_times.append(ferret())
            ours_times.append(ours())
    return {"ours": ours_times, "ferret": ferret_times, "result": kept["result"]}


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def _l1(values: np.ndarray) -> np.ndarray:
    """ferret's ``lp_normalize`` (order 1, over every real token, [CLS] and [SEP] included)."""
    return values / max(float(np.abs(values).sum()), 1e-30)


def _relative_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-30))


def agreement(probe: Any, worker: FerretWorker, texts: list[str], loaded: dict[str, Any], full: Any) -> dict[str, Any]:
    """Every check of the module docstring, as flat numbers; ``outputs_agree`` is the verdict of the exact ones.

    ``full``: our last timed ``full`` result; ferret's side is its last timed ``full`` run."""
    from attn_probe.compare.faithfulness import comprehensiveness_sufficiency
    from attn_probe.methods import ExplainContext
    from attn_probe.methods.gradient import _layer_gradients

    batch = probe.tokenize(texts)
    device = next(probe.model.parameters()).device
    with torch.no_grad():
        logits = probe.model(**{k: v.to(device) for k, v in batch.model_inputs().items()}).logits.float().cpu().numpy()
    ours_ids = [batch.input_ids[i, batch.positions[i]].tolist() for i in range(len(texts))]
    theirs_logits = np.asarray(loaded["logits"], dtype=float)
    out: dict[str, Any] = {
        "same_token_ids": ours_ids == loaded["ids"],
        "logits_max_abs_diff": float(np.abs(theirs_logits - logits).max()),
    }
    explanations = full.explanations
    ferret = worker.request("results")["examples"]

    def ours_scores(method: str, i: int) -> np.ndarray:
        return explanations[method].scores[i, batch.positions[i]].cpu().numpy().astype(float)

    def theirs(method: str, i: int) -> np.ndarray:
        return np.asarray(ferret[i]["scores"][FERRET_NAMES[method]], dtype=float)

    n = len(texts)
    targets = [int(t) for t in explanations["integrated_gradients"].target.ids.cpu().tolist()]
    out["same_targets"] = targets == [e["target"] for e in ferret]
    out["input_x_gradient_rel_max_abs_diff"] = max(
        _relative_diff(_l1(ours_scores("input_x_gradient", i)), theirs("input_x_gradient", i)) for i in range(n)
    )
    context = ExplainContext(probe.model, batch, tokenizer=probe.tokenizer)
    gradients, _ = _layer_gradients(context, multiply_by_inputs=False, memory_budget_bytes=None)
    l1 = gradients.abs().sum(dim=-1).cpu().numpy().astype(float)
    out["saliency_gradient_l1_rel_max_abs_diff"] = max(
        _relative_diff(_l1(l1[i, batch.positions[i]]), theirs("saliency", i)) for i in range(n)
    )
    out["saliency_l2_vs_ferret_l1_min_spearman"] = min(
        _spearman(ours_scores("saliency", i), theirs("saliency", i)) for i in range(n)
    )
    out["ig_mask_baseline_rel_max_abs_diff"] = max(
        _relative_diff(ours_scores("integrated_gradients", i), np.asarray(ferret[i]["ig_mask_baseline"]))
        for i in range(n)
    )
    out["ig_vs_ferret_pad_baseline_min_pearson"] = min(
        _pearson(ours_scores("integrated_gradients", i), theirs("integrated_gradients", i)) for i in range(n)
    )

    # ERASER with the same scores and the same k on both sides (ours in drop mode).
    eraser = comprehensiveness_sufficiency(context, explanations["input_x_gradient"], mode="drop").per_bin
    items = [
        {
            "index": i,
            "scores": ours_scores("input_x_gradient", i).tolist(),
            "target": targets[i],
            "ks": sorted({int(k) for k in eraser.loc[eraser["example_id"] == i, "k"]}),
        }
        for i in range(n)
    ]
    diffs, skipped = [], 0
    for item in worker.request("eraser_k", items=items)["items"]:
        rows = eraser[eraser["example_id"] == item["index"]]
        for row in item["rows"]:
            if not row["round_trip"]:
                skipped += 1
                continue
            ours_row = rows[rows["k"] == row["k"]].iloc[0]
            diffs.append(abs(row["comprehensiveness"] - float(ours_row["comprehensiveness_probability"])))
            diffs.append(abs(row["sufficiency"] - float(ours_row["sufficiency_probability"])))
    out["eraser_same_k_max_abs_diff"] = max(diffs) if diffs else float("nan")
    out["eraser_same_k_compared"] = len(diffs) // 2
    out["eraser_same_k_skipped_not_round_trip"] = skipped

    # Each side's defaults (different definitions: reported, not checked).
    ours_eraser = full.evidence["eraser"]
    for method, name in FERRET_NAMES.items():
        scores = [e["evaluations"][name] for e in ferret]
        out[f"ferret_aopc_compr_mean/{method}"] = statistics.fmean(s["aopc_compr"] for s in scores)
        out[f"ferret_aopc_suff_mean/{method}"] = statistics.fmean(s["aopc_suff"] for s in scores)
        taus = [s["taucorr_loo"] for s in scores if not math.isnan(s["taucorr_loo"])]
        out[f"ferret_taucorr_loo_mean/{method}"] = statistics.fmean(taus) if taus else float("nan")
        part = ours_eraser[ours_eraser["method"] == method]
        out[f"ours_comprehensiveness_probability_mean/{method}"] = float(part["comprehensiveness_probability"].mean())
        out[f"ours_sufficiency_probability_mean/{method}"] = float(part["sufficiency_probability"].mean())
    out["outputs_agree"] = bool(
        out["same_token_ids"]
        and out["same_targets"]
        and out["logits_max_abs_diff"] < 1e-4
        and out["input_x_gradient_rel_max_abs_diff"] < ATTRIBUTION_TOLERANCE
        and out["saliency_gradient_l1_rel_max_abs_diff"] < ATTRIBUTION_TOLERANCE
        and out["ig_mask_baseline_rel_max_abs_diff"] < ATTRIBUTION_TOLERANCE
        and (not diffs or out["eraser_same_k_max_abs_diff"] < METRIC_TOLERANCE)
    )
    return out


def run(
    quick: bool, device: str, *, install: bool = True, texts: list[str] | None = None, repeats: int | None = None
) -> list[dict[str, Any]]:
    """The rows (see the module). ``install=False`` (or ``ATTN_PROBE_PEER_INSTALL=0``): no rows, and a message,
    instead of building ferret's environment when it is not built yet. CPU only with the environment built here
    (it holds the CPU torch wheel: on another device, no rows and a message); any device with a prepared
    interpreter (``$ATTN_PROBE_PEER_PYTHON_FERRET``, :mod:`benchmarks.peers.venv`) whose torch sees it."""
    from attn_probe import Probe
    from attn_probe.models.offline import offline_model_path
    from benchmarks.peers.venv import PeerUnavailable, prepared_python, python_env_var, read_marker

    if torch.device(device).type != "cpu" and prepared_python(FERRET) is None:
        print(
            f"  [ferret] skipped: CPU only (its environment has the CPU torch wheel), not {device}; "
            f"set ${python_env_var(FERRET)} to an interpreter with ferret and a {device} torch",
            file=sys.stderr,
        )
        return []
    install = install and os.environ.get(INSTALL_ENV) != "0"
    try:
        python = ensure_peer(FERRET, install=install)
    except PeerUnavailable as error:
        if install:
            raise
        print(f"  [ferret] skipped: {error} (unset {INSTALL_ENV} to build it)", file=sys.stderr)
        return []
    versions = (read_marker(FERRET) or {}).get("versions", {})
    probe = Probe.load("minilm-sentiment", device=device)
    texts = texts if texts is not None else sentences(quick, device)
    if not 0 < len(texts) <= MAX_TEXTS:
        raise ValueError(f"between 1 and {MAX_TEXTS} texts (one batch), got {len(texts)}")
    threads = torch.get_num_threads()
    repeats = repeats if repeats is not None else (1 if quick else 3)
    n = len(texts)
    worker = FerretWorker(python)
    try:
        model_dir = str(offline_model_path("minilm-sentiment"))
        loaded = worker.request("load", model_dir=model_dir, texts=texts, threads=threads, device=device)
        with warnings.catch_warnings():  # our warm-up (ferret's worker warmed up when it loaded)
            warnings.simplefilter("ignore")
            _ours(probe, "full", texts)
        timed = {}
        for case in CASES:
            timed[case] = _time_case(probe, worker, texts, case, repeats, device)
            seconds = statistics.median(timed[case]["ferret"]) / statistics.median(timed[case]["ours"])
            print(f"  [ferret] {case}: ferret / ours = {seconds:.2f}x", file=sys.stderr, flush=True)
        checks = agreement(probe, worker, texts, loaded, timed["full"]["result"])
    finally:
        worker.close()
    rows = []
    for case, times in timed.items():
        ours_s = [t / n for t in times["ours"]]
        ferret_s = [t / n for t in times["ferret"]]
        ratio = statistics.median(ours_s) / statistics.median(ferret_s)
        paired = [o / f for o, f in zip(ours_s, ferret_s, strict=True)]
        rows.append(
            {
                "case": f"{case}/minilm-sentiment/{n}-texts",
                "ours_median_s": statistics.median(ours_s),
                "reference_median_s": statistics.median(ferret_s),
                "ratio": ratio,
                "speedup": 1.0 / ratio,
                "paired_ratio_q25": quantile(paired, 0.25),
                "paired_ratio_q75": quantile(paired, 0.75),
                "target": 1.0 / SPEEDUP_TARGET if case == "full" else None,
                "meets_target": ratio <= 1.0 / SPEEDUP_TARGET if case == "full" else True,
                "per": "example",
                "n_examples": n,
                "samples": repeats,
                "ours_times_s": ours_s,
                "reference_times_s": ferret_s,
                "ours": CASES[case][1],
                "ferret": "score + explain" + (" + evaluate_explanations" if CASES[case][0] == "full" else ""),
                "ferret_explainers": loaded["explainers"],
                "ferret_evaluators": ["aopc_compr", "aopc_suff", "taucorr_loo"] if CASES[case][0] == "full" else [],
                "torch_threads": threads,
                "ferret_worker_threads": loaded["threads"],
                "peer_versions": loaded["versions"],
                "peer_placeholders": loaded.get("placeholders", []),  # ferret's import-only deps not installed
                "peer_venv_versions": versions,
                **checks,
            }
        )
    return rows
