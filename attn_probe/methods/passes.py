"""Which rows share a forward pass: similar lengths together, each pass cut to its own longest row.

A padded batch costs its longest example's length for every row. Eight review snippets of 11 to 44 tokens padded
to 44 are 1.9x the real tokens; integrated gradients multiplies every row by its 50 steps and the erasure checks by
hundreds of perturbed copies, so on a CPU, where time grows with the tokens computed, the padding costs as much as
the work. :func:`length_passes` sorts the rows by length and cuts them into passes whose padding stays within an
allowance, each pass then running at its own width (:func:`trimmed_inputs`).

How much padding a pass may hold depends on the device (:func:`padding_policy`). Below some size a pass costs about
the same whatever its tokens: on a CPU it is bound by reading the weights (a 135M-parameter model reads 540 MB
per pass, whether it computes 20 tokens or 200), on a GPU by launching its kernels. So a small pass ignores padding
(up to :data:`CPU_FREE_CELLS` / :data:`CUDA_FREE_CELLS` token rows), and a larger one may carry 10 % of its real
tokens as padding on a CPU (where time then grows with the tokens computed) or as many padded as real tokens on a
GPU.

Trimming keeps every number the model computes (up to float summation order) only where the padding is on the
right: cutting trailing padding columns changes no position of a real token. A left-padded batch (decoder-only
language models) is sorted and cut the same way but keeps its full width (:func:`can_trim`), because models
without explicit position ids number the columns from the left edge.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from attn_probe.methods.base import ExplainContext

CPU_PADDING_ALLOWANCE = 0.1  # padded cells per real cell a CPU pass may carry
CPU_FREE_CELLS = 512  # token rows (rows x width x repeats) below which a CPU pass ignores padding
CUDA_PADDING_ALLOWANCE = 1.0
CUDA_FREE_CELLS = 2**16  # the same on a GPU


@dataclass(frozen=True)
class PaddingPolicy:
    """How much padding a pass may carry: ``allowance`` padded cells per real cell, any while the pass holds at
    most ``free_cells`` cells (rows x width x the repeats of each row, e.g. integrated gradients' steps)."""

    allowance: float
    free_cells: int = 0


def padding_policy(device: torch.device) -> PaddingPolicy:
    """The policy of ``device`` (see the module): on a GPU :data:`CUDA_PADDING_ALLOWANCE` beyond
    :data:`CUDA_FREE_CELLS`, elsewhere :data:`CPU_PADDING_ALLOWANCE` beyond :data:`CPU_FREE_CELLS`."""
    if device.type == "cuda":
        return PaddingPolicy(CUDA_PADDING_ALLOWANCE, CUDA_FREE_CELLS)
    return PaddingPolicy(CPU_PADDING_ALLOWANCE, CPU_FREE_CELLS)


def length_passes(
    lengths: Sequence[int] | np.ndarray,
    rows_for_width: Callable[[int], int],
    policy: PaddingPolicy,
    *,
    repeats: int = 1,
) -> list[np.ndarray]:
    """Row indices of each pass, shortest rows first.

    ``lengths[r]``: the tokens row ``r`` needs; ``repeats``: the copies of each row the pass really runs (integrated
    gradients' steps). A pass takes rows in ascending length (stable: equal lengths keep their order) while it
    holds at most ``rows_for_width(width)`` rows at its width (its longest row) and either its padded cells
    ``rows * width - sum(lengths)`` stay within ``policy.allowance`` times its real cells or all its cells
    (``rows * width * repeats``) within ``policy.free_cells``. Every row is in exactly one pass; a row alone always
    forms a pass."""
    allowance = policy.allowance
    if allowance < 0 or math.isnan(allowance):
        raise ValueError(f"allowance must be >= 0 (padded cells per real cell), got {allowance}")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    fits: dict[int, int] = {}  # width -> rows_for_width(width), asked once per width (a memory estimate each)
    passes: list[np.ndarray] = []
    start, real = 0, 0
    for position, row in enumerate(order):
        width = max(int(lengths[row]), 1)  # ascending: the newest row is the widest
        count = position - start + 1
        if width not in fits:
            fits[width] = max(1, rows_for_width(width))
        too_many = count > fits[width]
        too_padded = count * width > (1 + allowance) * max(real + int(lengths[row]), 1)
        too_padded = too_padded and count * width * repeats > policy.free_cells
        if count > 1 and (too_many or too_padded):
            passes.append(order[start:position])
            start, real = position, 0
        real += int(lengths[row])
    if start < len(order):
        passes.append(order[start:])
    return passes


def can_trim(ctx: ExplainContext) -> bool:
    """Whether trailing padding may be cut: the batch is padded on the right (or not at all)."""
    if ctx.batch is not None:
        return ctx.batch.padding_side != "left" or bool(ctx.attention_mask.bool().all())
    mask = ctx.attention_mask.bool()
    return not bool(((~mask[:, :1]) & mask.any(dim=1, keepdim=True)).any())


def real_lengths(ctx: ExplainContext) -> torch.Tensor:
    """``[batch]`` the real (unpadded) tokens of each example."""
    return ctx.attention_mask.bool().sum(dim=1)


def trimmed_inputs(ctx: ExplainContext, rows: torch.Tensor, width: int) -> dict[str, torch.Tensor]:
    """The context's inputs of ``rows``, the ones aligned with ``input_ids`` cut to their first ``width`` columns
    (a seq2seq model's decoder inputs are their own sequence and stay whole)."""
    n = ctx.input_ids.shape[1]
    out = {}
    for key, value in ctx.inputs.items():
        picked = value[rows]
        if not key.startswith("decoder_") and value.dim() >= 2 and value.shape[1] == n:
            picked = picked[:, :width]
        out[key] = picked
    return out
