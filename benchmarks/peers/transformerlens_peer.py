"""Entry ``transformer_lens``: capturing every layer's attention with ours against TransformerLens, on SmolLM2.

TransformerLens (``transformer-lens`` on PyPI, 4.x) is what a mechanistic-interpretability user would pick to read a
model's attention patterns: its ``TransformerBridge`` wraps a Hugging Face model and exposes ``hook_pattern`` in every
layer. It needs transformers >= 5.9 (ours is 5.x), but pins ``typeguard>=4.2`` where inseq pins ``<=2.13.3`` and
pulls ``wandb``, ``datasets`` and ``transformers-stream-generator``, none of which our project wants, so it runs in its
own virtual environment (:mod:`benchmarks.peers.venv`, built on first use, ~1.5 minutes). The worker
(``transformerlens_worker.py``) boots the bridge from ``smollm2-135m``'s local directory
(``TransformerBridge.boot_transformers(path)``, offline: a path needs no hub) and is handed our token ids, so both
sides run the same batch of agreement prompts (8, or 2 with ``--quick``; right padding, with the attention mask).

Cases (``ratio`` = ours / TransformerLens per example; ``speedup`` = TransformerLens / ours; no target):

- ``patterns``, the same work: ours ``capture(model, batch, keep_values=False, measure_drift=False)`` (one forward
  pass, every layer's ``[batch, layers, heads, q, k]`` weights) against ``run_with_cache(ids, attention_mask=...,
  names_filter=<every hook_pattern>)`` under ``torch.no_grad()``, its patterns stacked to the same tensor;
- ``defaults``, what each does when called the plainest way: ours ``capture(model, batch)`` (also keeps every
  layer's values and runs the model a second time with its own attention backend to measure the capture's drift)
  against ``run_with_cache(ids, attention_mask=...)`` (every one of its ~1,700 hook points cached, autograd on).

Agreement (before trusting the times), on the real tokens (query and key not padding): the max abs difference of
the captured weights (every layer and head) and of the logits. Definitions match: both read the softmax of the
eager attention scores, per query head (SmolLM2's 9 query heads share 3 key/value heads).

Differences of convention, reported, not checked: ``bridge.to_tokens(text)`` (and so ``run_with_cache(text)``)
prepends the BOS token by default (``<|im_start|>`` for SmolLM2, which our tokenizer does not add); the bridge
forces eager attention, while our model runs SDPA and our capture swaps in its own attention function only during
the capturing pass.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.peers.lm_common import PEERS_ONLY_ON_CPU, PeerWorker, interleaved, ready_peer, timing_fields
from benchmarks.peers.venv import PeerSpec

TRANSFORMER_LENS = PeerSpec(
    "transformer_lens",
    ("transformer-lens==4.3.0", "transformers==5.24.0"),
    check="import torch, transformers; from transformer_lens.model_bridge import TransformerBridge; "
    "print(torch.__version__, transformers.__version__)",
)  # fmt: skip
WORKER = Path(__file__).resolve().parent / "transformerlens_worker.py"
MODEL = "smollm2-135m"
WEIGHTS_TOLERANCE = 1e-5  # attention weights in [0, 1], float32
LOGITS_TOLERANCE = 1e-3  # float32 logits of a 30-layer model, two attention code paths


def prompts(quick: bool) -> list[str]:
    from attn_probe.data.agreement import agreement_prompts

    return agreement_prompts(n=2 if quick else 8, seed=0)["text"].tolist()


def ours_patterns(model: Any, batch: Any) -> Any:
    """The ``patterns`` case of ours: one capturing forward pass, weights only."""
    from attn_probe.capture import capture

    return capture(model, batch, keep_values=False, measure_drift=False)


def ours_defaults(model: Any, batch: Any) -> Any:
    """The ``defaults`` case of ours: ``capture`` with its defaults (values kept, drift measured)."""
    from attn_probe.capture import capture

    return capture(model, batch)


def real_pairs(attention_mask: torch.Tensor) -> np.ndarray:
    """``[batch, 1, 1, n, n]`` bool: query and key both real tokens (broadcasts over layers and heads)."""
    real = attention_mask.bool()
    return (real[:, :, None] & real[:, None, :])[:, None, None].cpu().numpy()


def agreement(captured: Any, batch: Any, out_dir: Path) -> dict[str, Any]:
    """Max abs differences of the weights and logits on real tokens (files written by the worker's ``results``)."""
    theirs = np.load(out_dir / "patterns.npy")
    logits = np.load(out_dir / "logits.npy")
    ours = captured.weights.detach().float().cpu().numpy()
    if ours.shape != theirs.shape:
        return {"weights_max_abs_diff": float("inf"), "shapes": [list(ours.shape), list(theirs.shape)]}
    mask = np.broadcast_to(real_pairs(batch.attention_mask), ours.shape)
    real = batch.attention_mask.bool().cpu().numpy()
    ours_logits = captured.logits.detach().float().cpu().numpy()
    return {
        "weights_max_abs_diff": float(np.abs(ours - theirs)[mask].max()),
        "logits_max_abs_diff": float(np.abs(ours_logits - logits)[real].max()),
        "weights_shape": list(ours.shape),
    }


def run(quick: bool, device: str, *, install: bool = True) -> list[dict[str, Any]]:
    from attn_probe import Probe
    from attn_probe.models.offline import offline_model_path
    from benchmarks.timing import synchronizer

    if torch.device(device).type != "cpu":
        print(f"  transformer_lens: skipped ({PEERS_ONLY_ON_CPU})", file=sys.stderr)
        return []
    python, marker = ready_peer(TRANSFORMER_LENS, install=install)
    probe = Probe.load(MODEL, device=device)
    texts = prompts(quick)
    batch = probe.tokenize(texts)
    repeats = 3 if quick else 11
    threads = torch.get_num_threads()
    sync = synchronizer(device)
    rows = []
    with PeerWorker(python, WORKER, "transformer_lens") as worker, tempfile.TemporaryDirectory() as folder:
        loaded = worker.request(
            "load", model_dir=str(offline_model_path(MODEL)), prompts=texts,
            input_ids=batch.input_ids.tolist(), attention_mask=batch.attention_mask.tolist(), threads=threads,
        )  # fmt: skip
        written = worker.request("results", out_dir=folder)
        captured = ours_patterns(probe.model, batch)
        checks = agreement(captured, batch, Path(folder))
        agree = bool(
            loaded["same_ids_from_to_tokens"]
            and checks["weights_max_abs_diff"] < WEIGHTS_TOLERANCE
            and checks["logits_max_abs_diff"] < LOGITS_TOLERANCE
        )
        cases = {
            "patterns": (lambda: ours_patterns(probe.model, batch), "capture(keep_values=False, measure_drift=False)"),
            "defaults": (lambda: ours_defaults(probe.model, batch), "capture() (values kept, drift measured)"),
        }
        for case, (ours, described) in cases.items():
            ours_times, tl_times = interleaved(
                ours, lambda case=case: worker.request("time", what=case)["seconds"], repeats, sync=sync
            )
            rows.append(
                {
                    "case": f"{case}/{MODEL}/{len(texts)}-prompts",
                    **timing_fields(ours_times, tl_times, len(texts)),
                    "target": None,
                    "meets_target": True,
                    "ours_call": described,
                    "transformer_lens_call": "run_with_cache(ids, attention_mask, names_filter=hook_pattern), no_grad"
                    if case == "patterns"
                    else "run_with_cache(ids, attention_mask): every hook point, autograd on",
                    "seq_len": int(batch.input_ids.shape[1]),
                    "torch_threads": threads,
                    "tl_worker_threads": loaded["threads"],
                    "tl_attn_implementation": loaded["attn_implementation"],
                    "tl_hook_points": loaded["hook_points"],
                    "tl_default_cache_entries": written["default_cache_entries"],
                    "tl_patterns_shape": written["patterns_shape"],
                    "ours_attn_implementation": str(getattr(probe.model.config, "_attn_implementation", "?")),
                    "same_ids_from_to_tokens": loaded["same_ids_from_to_tokens"],
                    "ours_ids_first_prompt": batch.input_ids[0, batch.positions[0]].tolist(),
                    "tl_default_to_tokens_first_prompt": loaded["default_to_tokens_first_prompt"],
                    "peer_versions": loaded["versions"],
                    "peer_venv_versions": marker.get("versions", {}),
                    **checks,
                    "outputs_agree": agree,
                }
            )
    for row in rows:
        print(
            f"  transformer_lens {row['case']}: TL / ours = {row['speedup']:.2f}x; weights max |diff| "
            f"{row['weights_max_abs_diff']:.2e}; outputs {'agree' if row['outputs_agree'] else 'DIFFER'}",
            file=sys.stderr,
        )
    return rows
