"""The embedded default job: train a small encoder where the truth is known, then probe its attention.

Protocol. A 2-layer encoder with T5-style relative position bias learns ``KeywordSentiment`` (the
label is decided by marker tokens only). On held-out examples we ask, per layer and head:

1. where does the [CLS] query put its attention: on the markers that decide the label, on the special
   tokens ([CLS]/[SEP]), or spread out? The baseline is what uniform attention over the real tokens
   would give, which explains away "attention on markers" caused by the number of markers alone;
2. how much of each head's logit variance comes from the position term rather than the content;
3. does the decision need that attention? Accuracy when a layer's weights are made uniform or
   permuted among the same keys (Jain & Wallace style counterfactuals), over 3 permutation seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch

from attn_probe.attention.hooks import hooks, record
from attn_probe.attention.interventions import permute_weights, uniform_weights
from attn_probe.attention.models import EncoderClassifier, TransformerConfig
from attn_probe.attention.toy_tasks import CLS, SEP, KeywordSentiment, ToyBatch
from attn_probe.attention.training import build_model, train


@dataclass
class DemoResult:
    accuracy: float
    attention: pd.DataFrame  # layer, head, on_markers, uniform_baseline, on_special
    position_share: pd.DataFrame  # layer, head, position_share
    counterfactual: pd.DataFrame  # layer, intervention, accuracy


def attention_mass(model: EncoderClassifier, batch: ToyBatch) -> pd.DataFrame:
    """Mean share of the [CLS] row's attention on markers and on special tokens, per layer and head."""
    with torch.no_grad():
        attentions = model(batch.input_ids, batch.attention_mask, output_attentions=True).attentions
    real = batch.attention_mask.bool()  # [b, n]
    special = (batch.input_ids == CLS) | (batch.input_ids == SEP)
    uniform_on_markers = (batch.relevant.sum(-1) / real.sum(-1)).mean().item()
    rows = []
    for layer, weights in enumerate(attentions):
        cls_row = weights[:, :, 0, :]  # [b, heads, n]: what [CLS] attends to
        on_markers = (cls_row * batch.relevant[:, None]).sum(-1).mean(0)  # [heads]
        on_special = (cls_row * special[:, None]).sum(-1).mean(0)
        for head in range(cls_row.shape[1]):
            rows.append(
                {
                    "layer": layer,
                    "head": head,
                    "on_markers": on_markers[head].item(),
                    "uniform_baseline": uniform_on_markers,
                    "on_special": on_special[head].item(),
                }
            )
    return pd.DataFrame(rows)


def position_share(model: EncoderClassifier, batch: ToyBatch) -> pd.DataFrame:
    """Per head, ``var(position) / (var(content) + var(position))`` of the logits over real keys."""
    layers = model.encoder.layers
    names = [f"encoder.layers.{i}.hook_resid_pre" for i in range(len(layers))]
    with torch.no_grad(), record(model, names) as inputs:
        model(batch.input_ids, batch.attention_mask)
    real_keys = batch.attention_mask.bool()[:, None, None, :]  # [b, 1, 1, k]
    rows = []
    with torch.no_grad():
        for layer, (name, block) in enumerate(zip(names, layers, strict=True)):
            parts = block.attention.split_logits(block.attention_input(inputs[name]))
            content_var = _variance_over(parts.content, real_keys)  # [heads]
            position_var = _variance_over(parts.position, real_keys)
            share = position_var / (content_var + position_var).clamp_min(1e-12)
            rows += [{"layer": layer, "head": h, "position_share": share[h].item()} for h in range(len(share))]
    return pd.DataFrame(rows)


def _variance_over(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Variance over the kept keys of each row ``[b, h, q, k]``, averaged over rows -> ``[heads]``."""
    keep = keep.expand_as(values)
    count = keep.sum(-1).clamp_min(1)
    mean = (values * keep).sum(-1) / count
    variance = (((values - mean.unsqueeze(-1)) ** 2) * keep).sum(-1) / count  # [b, h, q]
    query_rows = keep.any(-1)
    return (variance * query_rows).sum((0, 2)) / query_rows.sum((0, 2)).clamp_min(1)


def counterfactual_accuracy(model: EncoderClassifier, batch: ToyBatch, seeds: int = 3) -> pd.DataFrame:
    """Accuracy with each layer's attention replaced (uniform, or permuted under ``seeds`` seeds)."""

    def accuracy_with(hook_fns: dict[str, Callable]) -> float:
        with torch.no_grad(), hooks(model, hook_fns):
            predicted = model(batch.input_ids, batch.attention_mask).logits.argmax(-1)
        return (predicted == batch.labels).float().mean().item()

    rows = [{"layer": "none", "intervention": "original", "accuracy": accuracy_with({})}]
    for layer in range(len(model.encoder.layers)):
        point = f"encoder.layers.{layer}.attention.hook_weights"
        rows.append({"layer": layer, "intervention": "uniform", "accuracy": accuracy_with({point: uniform_weights()})})
        permuted = [accuracy_with({point: permute_weights(seed)}) for seed in range(seeds)]
        rows.append(
            {
                "layer": layer,
                "intervention": f"permuted (mean of {seeds} seeds, min-max {min(permuted):.3f}-{max(permuted):.3f})",
                "accuracy": sum(permuted) / seeds,
            }
        )
    return pd.DataFrame(rows)


def run_demo(*, steps: int = 300, seed: int = 0, position: str = "t5", examples: int = 512) -> DemoResult:
    task = KeywordSentiment()
    config = TransformerConfig(
        vocab_size=task.vocab_size, embed_dim=64, num_heads=4, num_layers=2, ffn_dim=128, position=position
    )
    model = build_model(config, task, seed=seed)
    report = train(model, task, steps=steps, seed=seed, progress=True)
    held_out = task.sample(examples, torch.Generator().manual_seed(seed + 1_000_003))
    return DemoResult(
        accuracy=report.accuracy,
        attention=attention_mass(model, held_out),
        position_share=position_share(model, held_out),
        counterfactual=counterfactual_accuracy(model, held_out),
    )


def format_demo(result: DemoResult, *, steps: int, seed: int, position: str, examples: int) -> str:
    attention = result.attention.merge(result.position_share, on=["layer", "head"])
    lines = [
        f"Toy encoder (2 layers x 4 heads, position={position}, seed={seed}) trained {steps} steps on "
        f"KeywordSentiment: held-out accuracy {result.accuracy:.3f} (the task allows 1.000).",
        "",
        f"Where the [CLS] query attends ({examples} held-out examples). on_markers: attention on the tokens "
        "that decide the label; uniform_baseline: the same if attention were spread evenly over real tokens; "
        "on_special: on [CLS]/[SEP]; position_share: var(position)/(var(content)+var(position)) of the logits.",
        attention.to_string(index=False, float_format=lambda v: f"{v:.3f}"),
        "",
        "Does the decision need that attention? Accuracy with one layer's weights replaced:",
        result.counterfactual.to_string(index=False, float_format=lambda v: f"{v:.3f}"),
    ]
    return "\n".join(lines)
