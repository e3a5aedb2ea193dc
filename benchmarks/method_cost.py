"""Entry ``method_cost``: what each explanation method costs per example, in forward passes of the model.

Absolute times on a shared machine mean little; a method's cost as a multiple of one plain forward pass
of the same batch, timed side by side in one run, is what a user plans with ("integrated gradients is
~60 forwards, leave-one-out ~n"). Each method runs with a fresh :class:`ExplainContext`, so the shared
attention capture is counted in every attention method (what one method alone costs; ``explain`` with
several methods pays it once).

Model: ``minilm-sentiment`` (MiniLM, 6 layers x 12 heads) on 4 Rotten-Tomatoes-like sentences; ``--quick``
uses a tiny random BERT so the entry can run anywhere in seconds.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

SENTENCES = [
    "a gorgeous, witty, seductive movie.",
    "the plot is nothing but boilerplate clichés from start to finish, and it drags.",
    "an engrossing portrait of a family coming apart.",
    "dull.",
]


def _model_and_batch(quick: bool, device: str):
    from attn_probe.capture import tokenize

    if quick:
        from benchmarks.tiny import NAME, tiny_random_bert

        model, tokenizer = tiny_random_bert(device)
        name = NAME
    else:
        from attn_probe.models import load_model

        loaded = load_model("minilm-sentiment", device=device)
        model, tokenizer, name = loaded.model, loaded.tokenizer, "minilm-sentiment"
    return model, tokenizer, tokenize(tokenizer, SENTENCES), name


def _median_seconds(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(quick: bool, device: str) -> list[dict[str, Any]]:
    from attn_probe.methods import ExplainContext, get_method, list_methods

    model, tokenizer, batch, name = _model_and_batch(quick, device)
    inputs = {key: value.to(device) for key, value in batch.model_inputs().items()}

    def forward() -> None:
        with torch.no_grad():
            model(**inputs)

    forward()  # warm-up
    repeats = 3 if quick else 5
    rows = []
    for method_id in list_methods()["id"]:
        info, fn = get_method(method_id)
        options = {"n_steps": 8} if quick and method_id == "integrated_gradients" else {}

        def explain_once(fn=fn, options=options) -> None:
            fn(ExplainContext(model, batch, tokenizer=tokenizer), **options)

        explain_once()  # warm-up (and fail early)
        method_s = _median_seconds(explain_once, 1 if quick else 2, device)
        forward_s = _median_seconds(forward, repeats, device)  # measured next to each method: same load
        rows.append(
            {
                "case": f"{method_id} on {name}, {len(SENTENCES)} examples",
                "method": method_id,
                "family": info.family,
                "declared_cost": info.cost,
                "ours_median_s": method_s,
                "reference_median_s": forward_s,
                "ratio": method_s / forward_s,
                "per_example_s": method_s / len(SENTENCES),
                "target": None,
                "meets_target": True,
            }
        )
    return rows
