"""Entry ``inseq``: our gradient and attention explanations against inseq's, on SmolLM2 and the agreement prompts.

inseq (Sarti et al. 2023, ``inseq`` on PyPI) is what a user would pick to attribute a decoder-only or seq2seq
language model's generation. It installs beside transformers 5, but its wheel requires eleven ``nvidia-*-cu11``
packages on Linux (gigabytes, for a CUDA build we do not use) and pins ``typeguard<=2.13.3`` (TransformerLens needs
>= 4.2), so it runs in its own virtual environment (:mod:`benchmarks.peers.venv`, built on first use, ~2 minutes):
torch 2.13.0 (the CPU wheel), transformers and captum at our versions and inseq's other requirements first, then
inseq itself with ``--no-deps``. The worker (``inseq_worker.py``) loads ``smollm2-135m``'s local directory by path.

The task: the subject-verb agreement prompts (:func:`attn_probe.data.agreement.agreement_prompts`, 8, or 2 with
``--quick``) and the scalar ``logit(" are") - logit(" is")`` at the last prompt token
(:func:`~attn_probe.data.agreement.agreement_target`). inseq explains a *generated* token: the continuation is forced
to ``" are"`` (``generated_texts = prompt + " are"``) and the attributed function is a registered step function
computing the same contrast from the same logits. (inseq's own ``contrast_logits_diff`` computes it too, but refuses
integrated gradients and batches: its contrast batch must match the attributed batch, which IG's steps expand.)

=====================================  ===============================================================================
inseq                                  ours (``attn_probe.methods.explain(model, probe.tokenize(prompts), [m])``)
=====================================  ===============================================================================
``method="saliency"``                  ``saliency``
``method="attention"``                 ``raw_attention`` (last layer, heads averaged)
``method="integrated_gradients"``      ``integrated_gradients`` (50 steps, Gauss-Legendre on both sides; 8 with quick)
=====================================  ===============================================================================

Ours is timed through ``attn_probe.methods.explain`` (tokenize + the method; ``Probe.explain`` refuses a method list
without an attention method to judge, and would add tables and a drift capture). inseq attributes the prompts one at
a time ("batched constrained decoding is not supported for decoder-only models"), ours as one padded batch.

Timing: one ``model.attribute`` over all prompts against one ``explain`` over all prompts, alternating (ours, inseq,
inseq, ours, ...) after the agreement check has run each method on both sides (the warm-up); inseq is timed inside
its worker, with the same number of torch threads; ``ratio`` = ours / inseq per example, ``speedup`` = inseq / ours.
No target: this entry reports.

Agreement (before trusting the times), per prompt over its tokens. Exact checks, after matching conventions:

- the inputs: the same token ids, and the contrast's value on each prompt (ours: the resolved target);
- ``saliency``: inseq takes captum's ``|gradient|`` per embedding dimension and aggregates by the L2 norm (then
  normalises to sum 1 when shown); ours is the L2 norm of the gradient: the raw L2 norms are compared;
- ``attention``: inseq returns every layer's and head's row of the predicting position and shows their *mean over all
  layers and heads*; ours defaults to the last layer's head mean. Compared: every layer and head (max abs diff), the
  last layer's head mean (ours' default), and the all-layer mean (inseq's default; ours: ``layer_scores.mean``);
- ``integrated_gradients``: inseq's baseline replaces every token (the first too) by ``unk`` (``<|endoftext|>``), ours
  keeps the first token and replaces the rest by the pad id (``<|im_end|>``); inseq shows the L2 norm of each token's
  attribution (unsigned, normalised), ours the sum over the embedding (signed; completeness). The worker reruns inseq
  with our baseline and the sums are compared.

Each row's ``output_max_abs_diff`` (the runner's ``max |diff|`` column) is that method's exact check in absolute
terms: L2 norms, every head's weights, IG sums; ``outputs_agree`` applies the tolerances below (relative for
gradients). Informative (different definitions, not checked): Spearman / Kendall of what each tool shows by default
(``default_*``), and for integrated gradients each difference alone (``l2_same_baseline_*``: our baseline, inseq's
aggregation; ``inseq_baseline_sum_*``: inseq's baseline, our aggregation).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.peers.inseq_worker import attn_probe_baseline_ids
from benchmarks.peers.lm_common import (
    PEERS_ONLY_ON_CPU,
    PeerWorker,
    agreement_fields,
    interleaved,
    ready_peer,
    relative_max_abs_diff,
    timing_fields,
)
from benchmarks.peers.venv import PeerSpec

INSEQ = PeerSpec(
    "inseq",
    ("--no-deps", "inseq==0.7.1"),  # its wheel requires nvidia-*-cu11 packages on Linux: never wanted here
    first=(
        "torch==2.13.0", "transformers==5.24.0", "captum==0.9.0", "rich>=10.13", "jaxtyping>=0.2.25",
        "typeguard<=2.13.3", "matplotlib>=3.5.3", "tqdm>=4.64", "treescope>=0.1.0", "protobuf>=4.25.8",
        "sentencepiece",
    ),
    check="import inseq, transformers, captum, torch; "
    "print(torch.__version__, transformers.__version__, captum.__version__)",
)  # fmt: skip
WORKER = Path(__file__).resolve().parent / "inseq_worker.py"
MODEL = "smollm2-135m"
METHODS = {"saliency": "saliency", "raw_attention": "attention", "integrated_gradients": "integrated_gradients"}
GRADIENT_TOLERANCE = 1e-3  # max abs diff / max |score| of a prompt (float32; batched with padding vs one at a time)
ATTENTION_TOLERANCE = 1e-4  # max abs diff of attention weights (eager softmax vs our capture)
TARGET_TOLERANCE = 1e-3  # the contrast's value: inseq's eager attention vs our model's SDPA


def prompts(quick: bool) -> list[str]:
    from attn_probe.data.agreement import agreement_prompts

    return agreement_prompts(n=2 if quick else 8, seed=0)["text"].tolist()


def _explain(probe: Any, texts: list[str], method: str, n_steps: int) -> tuple[Any, Any]:
    """Ours: ``(explanation, batch)``, the work that is timed."""
    from attn_probe.data.agreement import agreement_target
    from attn_probe.methods import explain

    batch = probe.tokenize(texts)
    options = {"integrated_gradients": {"n_steps": n_steps}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # IG's convergence warning: its deltas are reported in the row
        explanations = explain(
            probe.model, batch, [method], target=agreement_target(probe.tokenizer), tokenizer=probe.tokenizer,
            options=options,
        )  # fmt: skip
    return explanations[method], batch


def _per_prompt(tensor: torch.Tensor, batch: Any) -> list[np.ndarray]:
    """``tensor [batch, ..., n]`` -> per prompt ``[..., length]`` over its real tokens."""
    return [tensor[i][..., batch.positions[i]].detach().float().cpu().numpy() for i in range(tensor.shape[0])]


def ours_explanations(probe: Any, texts: list[str], n_steps: int) -> dict[str, tuple[Any, Any]]:
    """Ours for every method: ``{method: (explanation, batch)}``."""
    return {method: _explain(probe, texts, method, n_steps) for method in METHODS}


def _max_abs_diff(ours: list[np.ndarray], theirs: list[Any]) -> float:
    """The largest absolute difference over every prompt (what the runner's ``max |diff|`` column shows)."""
    return max(float(np.abs(o - np.asarray(t)).max()) for o, t in zip(ours, theirs, strict=True))


def agreement(
    probe: Any, ours: dict[str, tuple[Any, Any]], loaded: dict[str, Any], peer: dict[str, Any], replacement: int
) -> dict:
    """Every check of the module docstring as flat numbers, per method; ``outputs_agree`` per method.

    ``ours``: :func:`ours_explanations`; ``loaded`` / ``peer``: the worker's ``load`` / ``results`` replies."""
    batch = ours["saliency"][1]
    ids = [batch.input_ids[i, batch.positions[i]].tolist() for i in range(len(batch))]
    values = ours["saliency"][0].target.values.float().cpu().numpy()
    common = {
        "same_token_ids": ids == loaded["ids"] == peer["ids"],
        "target_max_abs_diff": float(np.abs(values - np.asarray(loaded["values"])).max()),
        "target_values": [float(v) for v in values],
    }
    inputs_agree = common["same_token_ids"] and common["target_max_abs_diff"] < TARGET_TOLERANCE
    out: dict[str, dict[str, Any]] = {}

    saliency = _per_prompt(ours["saliency"][0].scores, batch)
    fields: dict[str, Any] = {
        "output_max_abs_diff": _max_abs_diff(saliency, peer["saliency_l2"]),
        "saliency_l2_rel_max_abs_diff": max(
            relative_max_abs_diff(o, p) for o, p in zip(saliency, peer["saliency_l2"], strict=True)
        ),
        **agreement_fields("matched", saliency, peer["saliency_l2"]),
        **agreement_fields("default", saliency, peer["saliency_default"]),
    }
    fields["outputs_agree"] = bool(inputs_agree and fields["saliency_l2_rel_max_abs_diff"] < GRADIENT_TOLERANCE)
    out["saliency"] = fields

    explanation = ours["raw_attention"][0]
    heads = _per_prompt(explanation.head_scores, batch)  # [layers, heads, n] per prompt
    theirs = [np.asarray(a).transpose(1, 2, 0) for a in peer["attention"]]  # [n, layers, heads] -> [layers, heads, n]
    last = _per_prompt(explanation.scores, batch)
    all_layers = _per_prompt(explanation.layer_scores.mean(dim=1), batch)
    fields = {
        "output_max_abs_diff": _max_abs_diff(heads, theirs),
        "attention_every_head_max_abs_diff": max(
            float(np.abs(o - t).max()) for o, t in zip(heads, theirs, strict=True)
        ),
        "attention_last_layer_mean_max_abs_diff": max(
            float(np.abs(o - t[-1].mean(axis=0)).max()) for o, t in zip(last, theirs, strict=True)
        ),
        "attention_all_layers_mean_max_abs_diff": max(
            float(np.abs(o - np.asarray(d)).max()) for o, d in zip(all_layers, peer["attention_default"], strict=True)
        ),
        **agreement_fields("matched", last, [t[-1].mean(axis=0) for t in theirs]),
        **agreement_fields("default", last, peer["attention_default"]),
    }
    fields["outputs_agree"] = bool(
        inputs_agree
        and fields["attention_every_head_max_abs_diff"] < ATTENTION_TOLERANCE
        and fields["attention_all_layers_mean_max_abs_diff"] < ATTENTION_TOLERANCE
    )
    out["raw_attention"] = fields

    explanation = ours["integrated_gradients"][0]
    ig = _per_prompt(explanation.scores, batch)
    relative = explanation.details["relative_convergence_delta"]
    # The worker rebuilds our baseline with attn_probe_baseline_ids: it must be the one ours used.
    special = set(probe.tokenizer.all_special_ids)
    rebuilt = attn_probe_baseline_ids(batch.input_ids, batch.attention_mask, replacement, special)
    fields = {
        "ig_baseline_rule_matches_ours": bool(torch.equal(rebuilt, explanation.details["baseline_ids"])),
        "output_max_abs_diff": _max_abs_diff(ig, peer["ig_matched_sum"]),
        "ig_matched_baseline_rel_max_abs_diff": max(
            relative_max_abs_diff(o, p) for o, p in zip(ig, peer["ig_matched_sum"], strict=True)
        ),
        "ours_ig_relative_convergence_delta_max": float(relative.max()),
        **agreement_fields("matched", ig, peer["ig_matched_sum"]),
        **agreement_fields("l2_same_baseline", ig, peer["ig_matched_l2"]),
        **agreement_fields("inseq_baseline_sum", ig, peer["ig_inseq_baseline_sum"]),
        **agreement_fields("default", ig, peer["ig_default"]),
    }
    fields["outputs_agree"] = bool(
        inputs_agree
        and fields["ig_baseline_rule_matches_ours"]
        and fields["ig_matched_baseline_rel_max_abs_diff"] < GRADIENT_TOLERANCE
    )
    out["integrated_gradients"] = fields
    return {method: {**common, **fields} for method, fields in out.items()}


def run(quick: bool, device: str, *, install: bool = True) -> list[dict[str, Any]]:
    from attn_probe import Probe
    from attn_probe.models.offline import offline_model_path
    from benchmarks.timing import synchronizer

    if torch.device(device).type != "cpu":
        print(f"  inseq: skipped ({PEERS_ONLY_ON_CPU})", file=sys.stderr)
        return []
    python, marker = ready_peer(INSEQ, install=install)
    versions = marker.get("versions", {})
    probe = Probe.load(MODEL, device=device)
    texts = prompts(quick)
    n_steps = 8 if quick else 50
    repeats = 2 if quick else 5
    threads = torch.get_num_threads()
    replacement = _replacement_id(probe)
    rows = []
    with PeerWorker(python, WORKER, "inseq") as worker:
        loaded = worker.request(
            "load", model_dir=str(offline_model_path(MODEL)), prompts=texts, contrast=[" are", " is"],
            n_steps=n_steps, replacement_id=replacement, threads=threads,
        )  # fmt: skip
        peer = worker.request("results")
        checks = agreement(probe, ours_explanations(probe, texts, n_steps), loaded, peer, replacement)
        for ours_method, inseq_method in METHODS.items():
            ours_times, inseq_times = interleaved(
                lambda method=ours_method: _explain(probe, texts, method, n_steps),
                lambda method=inseq_method: worker.request("time", method=method)["seconds"],
                repeats,
                sync=synchronizer(device),
                warmup=False,  # the agreement check just ran every method on both sides
            )
            rows.append(
                {
                    "case": f"{ours_method}/{MODEL}/{len(texts)}-prompts",
                    **timing_fields(ours_times, inseq_times, len(texts)),
                    "target": None,
                    "meets_target": True,
                    "method": ours_method,
                    "inseq_method": inseq_method,
                    "n_steps": n_steps if ours_method == "integrated_gradients" else None,
                    "explained": "logit(' are') - logit(' is') at the last prompt token",
                    "torch_threads": threads,
                    "inseq_worker_threads": loaded["threads"],
                    "inseq_attn_implementation": loaded["attn_implementation"],
                    "ours_attn_implementation": str(getattr(probe.model.config, "_attn_implementation", "?")),
                    "peer_versions": loaded["versions"],
                    "peer_venv_versions": versions,
                    "baseline_replacement_id": replacement,
                    **checks[ours_method],
                }
            )
    for row in rows:
        agree = "agree" if row["outputs_agree"] else "DIFFER"
        print(
            f"  inseq {row['case']}: inseq / ours = {row['speedup']:.2f}x; matched Spearman "
            f"{row['matched_spearman_mean']:.3f}, default Spearman {row['default_spearman_mean']:.3f}; outputs {agree}",
            file=sys.stderr,
        )
    return rows


def _replacement_id(probe: Any) -> int:
    """The id our integrated gradients' baseline writes (``ExplainContext.replacement_id``: [MASK], else pad)."""
    for name in ("mask_token_id", "pad_token_id", "eos_token_id"):
        value = getattr(probe.tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0
