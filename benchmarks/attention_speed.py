"""Entry ``attention_speed``: what our ``MultiHeadAttention`` costs over plain PyTorch doing the same work.

Our module adds hook points, mask normalisation, position support and a guard for queries with no key
to attend to. None of that should cost much when it is not used, otherwise people will reach for
``nn.MultiheadAttention`` in real runs and our probes will no longer see the model that ran. So each
case runs our module and a *plain reference* with the very same projection weights (the reference
shares our ``nn.Linear`` modules), in eval mode under ``torch.inference_mode()``, in float32:

- ``no_weights``: ours with ``need_weights=False`` against projections + reshape +
  ``F.scaled_dot_product_attention`` + output projection. Target: ours / reference <= 1.05.
- ``with_weights``: ours with ``need_weights=True`` against projections + ``softmax(q k^T * scale) @ v``
  + output projection, returning the weights. Target: ours / reference <= 1.3.

each with no mask, a key-padding mask (some examples padded by a quarter) and causal masking. Before
timing, the outputs (and weights) of both are compared: the comparison only means something if both
sides compute the same thing, so every row carries the max abs difference.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attn_probe.attention import MultiHeadAttention
from benchmarks.timing import Comparison, compare

#: (batch, seq, embed, heads): a short-sequence batch, a middle one, a long single sequence.
FULL_SIZES: list[tuple[int, int, int, int]] = [(8, 128, 256, 8), (4, 512, 512, 8), (1, 2048, 512, 8)]
QUICK_SIZES: list[tuple[int, int, int, int]] = [(2, 32, 64, 4), (2, 128, 128, 4)]

TARGETS: dict[str, float] = {"no_weights": 1.05, "with_weights": 1.3}
MASKS: tuple[str, ...] = ("none", "padding", "causal")
AGREEMENT_TOLERANCE = 1e-5


class _PlainProjections(nn.Module):
    """Holds *our* module's projections, so the reference computes with the identical weights."""

    def __init__(self, ours: MultiHeadAttention) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = ours.q_proj, ours.k_proj, ours.v_proj, ours.out_proj
        self.num_heads, self.head_dim, self.scale = ours.num_heads, ours.head_dim, ours.scale

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, length, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        return heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))

    def merge(self, head_output: torch.Tensor) -> torch.Tensor:
        batch, _, length, _ = head_output.shape
        return self.out_proj(head_output.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim))


class SDPAReference(_PlainProjections):
    """What anyone would write without hooks: projections, SDPA, output projection."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        q, k, v = self.split(x)
        attn_mask = mask[:, None, None, :] if mask is not None else None  # [b, 1, 1, k], True = may attend
        return self.merge(
            F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal, scale=self.scale)
        )


class ExplicitReference(_PlainProjections):
    """The textbook explicit path that also hands back the weights."""

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v = self.split(x)
        logits = (q @ k.transpose(-1, -2)) * self.scale  # [b, h, q, k]
        if mask is not None:
            logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        if causal:
            n = logits.shape[-1]
            future = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
            logits = logits.masked_fill(future, float("-inf"))
        weights = logits.softmax(dim=-1)
        return self.merge(weights @ v), weights


def padding_mask(batch: int, seq: int, device: str) -> torch.Tensor:
    """``[batch, seq]`` True = real token; every other example (the first included) loses its last quarter."""
    mask = torch.ones(batch, seq, dtype=torch.bool, device=device)
    mask[0::2, seq - seq // 4 :] = False
    return mask


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def run_case(
    variant: str,
    mask_kind: str,
    size: tuple[int, int, int, int],
    device: str,
    *,
    quick: bool,
    repeats: int | None = None,
) -> dict[str, Any]:
    """Check agreement, then time one (variant, mask, size) case; one flat row for the results table."""
    batch, seq, embed, heads = size
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    ours = MultiHeadAttention(embed, heads).to(device).eval()
    x = torch.randn(batch, seq, embed, generator=generator).to(device)
    mask = padding_mask(batch, seq, device) if mask_kind == "padding" else None
    causal = mask_kind == "causal"
    need_weights = variant == "with_weights"
    reference: nn.Module = ExplicitReference(ours) if need_weights else SDPAReference(ours)

    def call_ours() -> Any:
        return ours(x, mask=mask, causal=causal, need_weights=need_weights)

    def call_reference() -> Any:
        return reference(x, mask=mask, causal=causal)

    with torch.inference_mode():
        our_output, our_weights = call_ours()
        if need_weights:
            ref_output, ref_weights = call_reference()
            weights_diff = _max_diff(our_weights, ref_weights)
        else:
            ref_output = call_reference()
            weights_diff = None
        output_diff = _max_diff(our_output, ref_output)
        del our_output, our_weights, ref_output
        if need_weights:
            del ref_weights
        timing: Comparison = compare(
            call_ours,
            call_reference,
            device=device,
            warmup=1 if quick else 3,
            repeats=repeats or (7 if quick else 31),
            min_sample_s=0.002 if quick else 0.01,
            budget_s=0.3 if quick else 6.0,
        )
    low, high = timing.paired_ratio_quartiles()
    target = TARGETS[variant]
    return {
        "case": f"{variant}/{mask_kind}/b{batch}-n{seq}-e{embed}-h{heads}",
        "variant": variant,
        "mask": mask_kind,
        "batch": batch,
        "seq": seq,
        "embed": embed,
        "heads": heads,
        "ours_median_s": timing.ours_median,
        "reference_median_s": timing.reference_median,
        "ratio": timing.ratio,
        "paired_ratio_q25": low,
        "paired_ratio_q75": high,
        "ours_iqr_ratio": Comparison.iqr_ratio(timing.ours),
        "reference_iqr_ratio": Comparison.iqr_ratio(timing.reference),
        "samples": len(timing.ours),
        "calls_per_sample": timing.calls_per_sample,
        "ours_times_s": timing.ours,
        "reference_times_s": timing.reference,
        "output_max_abs_diff": output_diff,
        "weights_max_abs_diff": weights_diff,
        "outputs_agree": output_diff < AGREEMENT_TOLERANCE
        and (weights_diff is None or weights_diff < AGREEMENT_TOLERANCE),
        "target": target,
        "meets_target": timing.ratio <= target,
    }


def run(
    quick: bool,
    device: str,
    *,
    sizes: list[tuple[int, int, int, int]] | None = None,
    repeats: int | None = None,
) -> list[dict[str, Any]]:
    """All cases: every size x {no_weights, with_weights} x {none, padding, causal} mask.

    ``sizes`` and ``repeats`` exist for the smoke test (tiny and fast); the runner leaves them out.
    """
    chosen = sizes if sizes is not None else (QUICK_SIZES if quick else FULL_SIZES)
    return [
        run_case(variant, mask_kind, size, device, quick=quick, repeats=repeats)
        for size in chosen
        for variant in TARGETS
        for mask_kind in MASKS
    ]
