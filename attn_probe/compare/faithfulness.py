"""Faithfulness by erasure: does removing the tokens an explanation ranks highest move the model's output?

An explanation ranks the erasable tokens of each example (highest score first; ``absolute=True`` ranks by
``|score|``, for methods whose sign is direction rather than importance). Erasing them in that order and
re-running the model measures whether the ranking found what the model used. Three protocols:

- **ERASER comprehensiveness and sufficiency** (DeYoung et al. 2020, "ERASER: A Benchmark to Evaluate
  Rationalized NLP Models"), per top-k% bin with ``k = max(1, ceil(fraction * m))`` (``m`` = the example's
  erasable tokens): ``comprehensiveness = f(x) - f(x without the top k)`` (higher = the top tokens were
  needed), ``sufficiency = f(x) - f(only the top k kept)`` (lower = they suffice), and their means over the
  bins (ERASER's AOPC-style aggregate). :func:`comprehensiveness_sufficiency`.
- **Deletion and insertion curves** (AOPC: Samek et al. 2017, "Evaluating the Visualization of What a Deep
  Neural Network Has Learned"; insertion: Petsiuk et al. 2018, "RISE"): the target after deleting the top
  ``k`` tokens, and after inserting the top ``k`` into the all-erased input, for ``k = 0 .. m`` (or
  ``steps + 1`` evenly spaced ``k``), against the same curves for random orders. :func:`deletion_insertion`.
- **Decision flips** (Serrano & Smith 2019, "Is Attention Interpretable?"): how many top-ranked tokens must
  be deleted before the predicted class (or a language model's top next token) changes, against random
  orders. :func:`decision_flips`.

:func:`faithfulness_report` runs all three for several explanations of one batch (the dict :func:`explain`
returns) and shares every forward pass between them.

Protocol shared by all of them:

- **f is the context's resolved target** (``context.target_value(logits)``: the same class / token /
  position for every perturbed copy, whatever the perturbed model predicts). Beside it, ``probability`` is
  the softmax probability of the class (or next token) the model predicted on the unperturbed input:
  ERASER's own definition, and comparable across models. ``f(x)`` is recomputed here, through the same
  code path as the perturbed copies, so a no-op erasure gives exactly 0.
- **Erasure stays in token-id space** (never decode and re-tokenize): ``mode="replace"`` writes
  ``context.replacement_id()`` ([MASK] where the tokenizer has one, else pad) over the token;
  ``mode="drop"`` deletes it (later tokens shift left, the attention mask gets shorter, the batch is
  re-padded on its own padding side). A language model's target is read at the same token as before, or at
  the last kept token before it when it was deleted itself (as :func:`leave_one_out_drop` does).
- **Erasable tokens**: real (not padding) and, unless ``include_special=True``, not special ([CLS], [SEP],
  BOS... as the :class:`TokenizedBatch` marks them; a plain dict of tensors marks none). A decoder-only
  language model also keeps its first real token (every prediction is conditioned on it) and the tokens
  after its predicting position (a causal model cannot see them: erasing them would be a no-op that dilutes
  the fractions). Special and kept tokens are never erased, not even by the random baselines.
- **Ties** in the scores are broken by position (earlier first), so a ranking is deterministic.
- **Random orders** are drawn per example from a generator seeded by ``seed`` and the example's own token
  ids, so an example gets the same random orders whatever batch it is in.
- **Batched**: every perturbed copy of every example of one call joins one list of rows, run ``batch_size``
  rows per forward pass (default: what ``memory_budget_bytes`` allows, see
  :func:`attn_probe.methods.gradient.rows_within_budget`), copies of similar length together and each pass cut
  to its longest copy (:mod:`attn_probe.methods.passes`); identical copies (the full input, the all-erased
  input, the random orders shared between methods) run once.

Every function returns tidy pandas DataFrames with ``example_id`` (the row in the batch), ``method`` and
``mode`` columns.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
import torch

from attn_probe.capture import target_value
from attn_probe.methods.base import ExplainContext, Explanation
from attn_probe.methods.gradient import memory_budget, pad_id, rows_within_budget
from attn_probe.methods.passes import can_trim, length_passes, padding_policy, trimmed_inputs

Mode = Literal["replace", "drop"]
MODES = ("replace", "drop")
DEFAULT_BINS = (0.01, 0.05, 0.1, 0.2, 0.5)  # ERASER's top-k% bins
PROTOCOLS = ("eraser", "curves", "flips")
_FLIP_BLOCK = 4  # deletion steps tried per pass in decision_flips, before checking which orders have flipped


class EraserScores(NamedTuple):
    """:func:`comprehensiveness_sufficiency`'s two tables: one row per (example, bin), and per example."""

    per_bin: pd.DataFrame
    per_example: pd.DataFrame


class Curves(NamedTuple):
    """:func:`deletion_insertion`'s two tables: the curves (one row per step), and their areas."""

    curves: pd.DataFrame
    summary: pd.DataFrame


class FaithfulnessReport(NamedTuple):
    """:func:`faithfulness_report`: every table, rows of all methods stacked."""

    eraser_bins: pd.DataFrame
    eraser: pd.DataFrame
    curves: pd.DataFrame
    curve_summary: pd.DataFrame
    flips: pd.DataFrame


# ----------------------------------------------------------------------------------------------------
# public functions
# ----------------------------------------------------------------------------------------------------
def comprehensiveness_sufficiency(
    context: ExplainContext,
    explanation: Explanation,
    *,
    bins: Sequence[float] = DEFAULT_BINS,
    mode: Mode = "replace",
    include_special: bool = False,
    absolute: bool = False,
    batch_size: int | None = None,
    memory_budget_bytes: int | None = None,
) -> EraserScores:
    """ERASER comprehensiveness and sufficiency of ``explanation`` on ``context``'s batch (see the module).

    Args:
        context: the model, batch and resolved target the explanation was computed for.
        explanation: ``scores [batch, n]`` aligned with ``context.input_ids`` for the same target.
        bins: fractions in (0, 1] of each example's erasable tokens; ``k = max(1, ceil(fraction * m))``.
        mode: ``"replace"`` (by ``context.replacement_id()``) or ``"drop"`` (delete the tokens).
        include_special: also rank and erase special tokens ([CLS], [SEP], ...).
        absolute: rank by ``|score|`` instead of the signed score.
        batch_size: perturbed rows per forward pass (default: what the memory budget allows).
        memory_budget_bytes: the budget (default: 2 GiB on CPU, half the free memory of a GPU).

    Returns:
        ``per_bin``: ``example_id, method, mode, fraction, k, n_erasable, target_full, target_without_top,
        target_top_only, comprehensiveness, sufficiency, probability_full, probability_without_top,
        probability_top_only, comprehensiveness_probability, sufficiency_probability``; ``per_example``:
        ``example_id, method, mode, n_erasable, n_bins`` and the four scores averaged over the bins (NaN for
        an example with nothing to erase). ``probability`` is that of the originally predicted class / next
        token; its columns are NaN for a single-logit head.
    """
    fractions = _check_bins(bins)
    evaluator = _Erasure(context, mode, include_special, batch_size, memory_budget_bytes)
    return _eraser(evaluator, explanation, fractions, absolute)


def deletion_insertion(
    context: ExplainContext,
    explanation: Explanation,
    *,
    steps: int | None = None,
    mode: Mode = "replace",
    include_special: bool = False,
    absolute: bool = False,
    n_random: int = 10,
    seed: int = 0,
    batch_size: int | None = None,
    memory_budget_bytes: int | None = None,
) -> Curves:
    """Deletion and insertion curves of ``explanation`` and of ``n_random`` random orders (see the module).

    Deletion erases the top ``k`` ranked tokens; insertion starts from the input with every erasable token
    erased and restores the top ``k``. ``k`` runs over ``0 .. m`` (``steps=None``) or over ``steps + 1``
    evenly spaced values from 0 to ``m`` (rounded, duplicates removed).

    Returns:
        ``curves``: ``example_id, method, mode, order ("explanation" | "random"), curve ("deletion" |
        "insertion"), step, fraction (k / m: deleted resp. inserted), n_erased, value, value_std,
        probability, probability_std`` (random rows: mean and standard deviation over the orders; the
        explanation's std is NaN). ``summary``: ``example_id, method, mode, curve, n_erasable, n_steps, aopc,
        auc, aopc_probability, random_aopc_mean, random_aopc_std, random_auc_mean, random_auc_std,
        random_aopc_probability_mean, aopc_minus_random``, where

        - deletion ``aopc = mean over steps of f(x) - f(x without the top k)`` (Samek et al.'s AOPC: higher
          = the ranking found the tokens whose loss hurts most), insertion ``aopc = mean over steps of
          f(top k inserted) - f(all erased)`` (higher = the ranking found the tokens that restore f fastest);
        - ``auc``: area under ``value`` over ``fraction`` in [0, 1] (trapezoid), i.e. normalised by ``m``:
          lower is better for deletion, higher for insertion;
        - the random columns: mean and standard deviation (ddof 1) of the same over the random orders.
    """
    steps = _check_optional_positive("steps", steps)
    n_random = _check_count("n_random", n_random)
    evaluator = _Erasure(context, mode, include_special, batch_size, memory_budget_bytes)
    return _curves(evaluator, explanation, steps, absolute, n_random, seed)


def decision_flips(
    context: ExplainContext,
    explanation: Explanation,
    *,
    mode: Mode = "replace",
    include_special: bool = False,
    absolute: bool = False,
    n_random: int = 10,
    seed: int = 0,
    batch_size: int | None = None,
    memory_budget_bytes: int | None = None,
) -> pd.DataFrame:
    """How many top-ranked tokens must be deleted before the prediction changes (Serrano & Smith 2019).

    Tokens are deleted in ranked order, one more per step, until the argmax of the logits (the class, or
    the next token at the predicting position) differs from the argmax on the unperturbed input.

    Returns:
        one row per example: ``example_id, method, mode, n_erasable, predicted, flipped, flip_k (Int64, NA
        when deleting every erasable token never flips it), flip_fraction (flip_k / n_erasable),
        random_flip_k_mean, random_flip_k_median`` (over the random orders that flip; NaN when none does),
        ``random_flips_fraction`` (share of the random orders that flip at all).
    """
    n_random = _check_count("n_random", n_random)
    evaluator = _Erasure(context, mode, include_special, batch_size, memory_budget_bytes)
    return _flips(evaluator, explanation, absolute, n_random, seed)


def faithfulness_report(
    context: ExplainContext,
    explanations: Mapping[str, Explanation] | Sequence[Explanation],
    *,
    bins: Sequence[float] = DEFAULT_BINS,
    steps: int | None = None,
    mode: Mode = "replace",
    include_special: bool = False,
    absolute: bool = False,
    n_random: int = 10,
    seed: int = 0,
    batch_size: int | None = None,
    memory_budget_bytes: int | None = None,
    protocols: Sequence[str] = PROTOCOLS,
) -> FaithfulnessReport:
    """All three protocols for several explanations of one batch, rows stacked per method.

    ``explanations``: the dict :func:`attn_probe.methods.explain` returns (or a list of explanations). One
    erasure cache serves every method and protocol: the full and all-erased inputs, the deletion steps
    shared by the curves and the flips, and the random orders (the same for every method) run once.
    ``protocols``: any of ``"eraser"``, ``"curves"``, ``"flips"``; the tables of the others are empty.
    """
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocols {unknown}; choose from {list(PROTOCOLS)}")
    fractions = _check_bins(bins)
    steps = _check_optional_positive("steps", steps)
    n_random = _check_count("n_random", n_random)
    chosen = list(explanations.values()) if isinstance(explanations, Mapping) else list(explanations)
    if not chosen:
        raise ValueError("no explanations given: pass the dict explain(...) returns, or a list of Explanations")
    evaluator = _Erasure(context, mode, include_special, batch_size, memory_budget_bytes)
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in FaithfulnessReport._fields}
    for explanation in chosen:
        if "eraser" in protocols:
            eraser = _eraser(evaluator, explanation, fractions, absolute)
            parts["eraser_bins"].append(eraser.per_bin)
            parts["eraser"].append(eraser.per_example)
        if "curves" in protocols:
            curves = _curves(evaluator, explanation, steps, absolute, n_random, seed)
            parts["curves"].append(curves.curves)
            parts["curve_summary"].append(curves.summary)
        if "flips" in protocols:
            parts["flips"].append(_flips(evaluator, explanation, absolute, n_random, seed))
    return FaithfulnessReport(
        **{name: pd.concat(frames, ignore_index=True) if frames else pd.DataFrame() for name, frames in parts.items()}
    )


# ----------------------------------------------------------------------------------------------------
# the protocols, on a shared evaluator
# ----------------------------------------------------------------------------------------------------
def _eraser(evaluator: _Erasure, explanation: Explanation, fractions: list[float], absolute: bool) -> EraserScores:
    ranks = evaluator.ranks(explanation, absolute)  # [batch, n]
    counts = evaluator.counts.tolist()
    ks = [[_top_k(f, m) for f in fractions] if m else [] for m in counts]
    removed, kept = evaluator.sweeps([(ranks, False), (ranks, True)], ks)
    full = evaluator.full
    rows, summary, r = [], [], 0
    for i, m in enumerate(counts):
        base = {"example_id": i, "method": explanation.method, "mode": evaluator.mode}
        if not m:  # nothing to erase: the quantities do not exist
            rows.extend({**base, "fraction": f, "k": 0, "n_erasable": 0, **_NAN_BIN} for f in fractions)
            summary.append({**base, "n_erasable": 0, "n_bins": len(fractions), **dict.fromkeys(_SCORES, math.nan)})
            continue
        mine = []
        for f, k in zip(fractions, ks[i], strict=True):
            target_full, probability_full = float(full.value[i]), float(full.probability[i])
            row = {
                **base,
                "fraction": f,
                "k": k,
                "n_erasable": m,
                "target_full": target_full,
                "target_without_top": float(removed.value[r]),
                "target_top_only": float(kept.value[r]),
                "comprehensiveness": target_full - float(removed.value[r]),
                "sufficiency": target_full - float(kept.value[r]),
                "probability_full": probability_full,
                "probability_without_top": float(removed.probability[r]),
                "probability_top_only": float(kept.probability[r]),
                "comprehensiveness_probability": probability_full - float(removed.probability[r]),
                "sufficiency_probability": probability_full - float(kept.probability[r]),
            }
            mine.append(row)
            r += 1
        rows.extend(mine)
        means = {name: float(np.mean([row[name] for row in mine])) for name in _SCORES}
        summary.append({**base, "n_erasable": m, "n_bins": len(fractions), **means})
    return EraserScores(pd.DataFrame(rows), pd.DataFrame(summary))


_SCORES = ("comprehensiveness", "sufficiency", "comprehensiveness_probability", "sufficiency_probability")
_NAN_BIN = dict.fromkeys(
    (
        "target_full",
        "target_without_top",
        "target_top_only",
        "comprehensiveness",
        "sufficiency",
        "probability_full",
        "probability_without_top",
        "probability_top_only",
        "comprehensiveness_probability",
        "sufficiency_probability",
    ),
    math.nan,
)


def _curves(
    evaluator: _Erasure, explanation: Explanation, steps: int | None, absolute: bool, n_random: int, seed: int
) -> Curves:
    orders = [evaluator.ranks(explanation, absolute), *evaluator.random_ranks(n_random, seed)]
    counts = evaluator.counts.tolist()
    ks = [_steps(m, steps) if m else [] for m in counts]
    # values[curve][o]: per example a [steps] array of the target (and of the probability) for order o
    values: dict[str, list[list[tuple[np.ndarray, np.ndarray]]]] = {"deletion": [], "insertion": []}
    sweeps = [(ranks, keep_top) for keep_top in (False, True) for ranks in orders]
    outcomes = evaluator.sweeps(sweeps, ks)  # every copy of every order and curve: one list of rows
    for (_, keep_top), out in zip(sweeps, outcomes, strict=True):
        value, probability = out.value.numpy(), out.probability.numpy()
        per_example, start = [], 0
        for k in ks:
            per_example.append((value[start : start + len(k)], probability[start : start + len(k)]))
            start += len(k)
        values["insertion" if keep_top else "deletion"].append(per_example)

    rows, summary = [], []
    for i, m in enumerate(counts):
        base = {"example_id": i, "method": explanation.method, "mode": evaluator.mode}
        for curve in ("deletion", "insertion"):
            if not m:
                summary.append({**base, "curve": curve, "n_erasable": 0, "n_steps": 0, **_NAN_SUMMARY})
                continue
            k = np.asarray(ks[i])
            fraction = k / m
            n_erased = m - k if curve == "insertion" else k
            own_value, own_probability = values[curve][0][i]
            random = values[curve][1:]
            random_values = np.stack([order[i][0] for order in random]) if random else None  # [orders, steps]
            random_probabilities = np.stack([order[i][1] for order in random]) if random else None
            series = [("explanation", own_value, None, own_probability, None)]
            if random_values is not None and random_probabilities is not None:
                series.append(
                    (
                        "random",
                        random_values.mean(axis=0),
                        _std(random_values),
                        random_probabilities.mean(axis=0),
                        _std(random_probabilities),
                    )
                )
            for order, value, value_std, probability, probability_std in series:
                for step in range(len(k)):
                    rows.append(
                        {
                            **base,
                            "order": order,
                            "curve": curve,
                            "step": step,
                            "fraction": float(fraction[step]),
                            "n_erased": int(n_erased[step]),
                            "value": float(value[step]),
                            "value_std": math.nan if value_std is None else float(value_std[step]),
                            "probability": float(probability[step]),
                            "probability_std": math.nan if probability_std is None else float(probability_std[step]),
                        }
                    )
            aopc, auc = _aopc(curve, own_value), _auc(own_value, fraction)
            random_aopc = [_aopc(curve, v) for v in random_values] if random_values is not None else []
            random_auc = [_auc(v, fraction) for v in random_values] if random_values is not None else []
            random_aopc_probability = (
                [_aopc(curve, v) for v in random_probabilities] if random_probabilities is not None else []
            )
            random_mean = float(np.mean(random_aopc)) if random_aopc else math.nan
            summary.append(
                {
                    **base,
                    "curve": curve,
                    "n_erasable": m,
                    "n_steps": len(k),
                    "aopc": aopc,
                    "auc": auc,
                    "aopc_probability": _aopc(curve, own_probability),
                    "random_aopc_mean": random_mean,
                    "random_aopc_std": _std_of(random_aopc),
                    "random_auc_mean": float(np.mean(random_auc)) if random_auc else math.nan,
                    "random_auc_std": _std_of(random_auc),
                    "random_aopc_probability_mean": (
                        float(np.mean(random_aopc_probability)) if random_aopc_probability else math.nan
                    ),
                    "aopc_minus_random": aopc - random_mean,
                }
            )
    return Curves(pd.DataFrame(rows), pd.DataFrame(summary))


_NAN_SUMMARY = dict.fromkeys(
    (
        "aopc",
        "auc",
        "aopc_probability",
        "random_aopc_mean",
        "random_aopc_std",
        "random_auc_mean",
        "random_auc_std",
        "random_aopc_probability_mean",
        "aopc_minus_random",
    ),
    math.nan,
)


def _flips(evaluator: _Erasure, explanation: Explanation, absolute: bool, n_random: int, seed: int) -> pd.DataFrame:
    orders = [evaluator.ranks(explanation, absolute), *evaluator.random_ranks(n_random, seed)]
    counts = evaluator.counts.tolist()
    predicted = evaluator.predicted.cpu()
    # Per order, per example: the first k that flips, or None. Deletions are tried _FLIP_BLOCK steps at a
    # time and an (order, example) that has flipped asks for no more: every step is still tried in order until
    # the first flip (none is skipped), but a decision that flips after 3 deletions does not pay for 40.
    first_flip: list[list[int | None]] = [[None] * len(counts) for _ in orders]
    for low in range(1, max(counts, default=0) + 1, _FLIP_BLOCK):
        pending = []
        for o in range(len(orders)):
            ks = [
                list(range(low, min(low + _FLIP_BLOCK, m + 1))) if first_flip[o][i] is None else []
                for i, m in enumerate(counts)
            ]
            if any(ks):
                pending.append((o, ks))
        if not pending:
            break
        parts = [evaluator.requests(orders[o], ks, keep_top=False) for o, ks in pending]
        out = evaluator.outcomes(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        start = 0
        for (o, ks), (examples, _) in zip(pending, parts, strict=True):
            flipped = (out.top[start : start + len(examples)] != predicted[examples.cpu()]).numpy()
            position = 0
            for i, k in enumerate(ks):
                hits = np.flatnonzero(flipped[position : position + len(k)])
                if hits.size:
                    first_flip[o][i] = k[hits[0]]
                position += len(k)
            start += len(examples)
    rows = []
    for i, m in enumerate(counts):
        own = first_flip[0][i]
        random = [order[i] for order in first_flip[1:]]
        random_hits = [k for k in random if k is not None]
        rows.append(
            {
                "example_id": i,
                "method": explanation.method,
                "mode": evaluator.mode,
                "n_erasable": m,
                "predicted": int(predicted[i]),
                "flipped": own is not None,
                "flip_k": pd.NA if own is None else own,
                "flip_fraction": math.nan if own is None else own / m,
                "random_flip_k_mean": float(np.mean(random_hits)) if random_hits else math.nan,
                "random_flip_k_median": float(np.median(random_hits)) if random_hits else math.nan,
                "random_flips_fraction": len(random_hits) / len(random) if random else math.nan,
            }
        )
    frame = pd.DataFrame(rows)
    frame["flip_k"] = frame["flip_k"].astype("Int64")
    return frame


# ----------------------------------------------------------------------------------------------------
# the erasure machinery
# ----------------------------------------------------------------------------------------------------
@dataclass
class _Outcome:
    """What one forward pass says about perturbed rows (CPU tensors, ``[rows]``)."""

    value: torch.Tensor  # float: the resolved target
    probability: torch.Tensor  # float: softmax probability of the originally predicted class / token
    top: torch.Tensor  # long: argmax class / next token


class _Erasure:
    """Erased copies of a context's batch, run through its model in batches, each distinct copy once.

    A copy is ``(example, erase)``: the example's row of the batch and a ``[n]`` bool mask of the columns to
    erase (a subset of :attr:`erasable`). Results are cached by that key for the evaluator's lifetime.
    """

    def __init__(
        self,
        ctx: ExplainContext,
        mode: str,
        include_special: bool,
        batch_size: int | None,
        memory_budget_bytes: int | None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be 'replace' (by the mask/pad id) or 'drop' (delete tokens), got {mode!r}")
        if not isinstance(include_special, bool):
            raise ValueError(f"include_special must be True or False, got {include_special!r}")
        self.ctx = ctx
        self.mode = mode
        self.include_special = include_special
        ids = ctx.input_ids
        self.device = ids.device
        self.n = int(ids.shape[1])
        self.real = ctx.attention_mask.bool()  # [batch, n]
        self.erasable = _erasable(ctx, include_special)  # [batch, n]
        self.counts = self.erasable.sum(dim=1).cpu()  # [batch] m per example
        self.left_padded = _left_padded(ctx)
        self.replacement = ctx.replacement_id()
        self.pad = pad_id(ctx)
        if batch_size is None:
            budget = memory_budget(ctx, memory_budget_bytes)
            self.rows_for_width = lambda width: rows_within_budget(ctx, width, budget, backward=False)
        else:
            rows = _check_positive("batch_size", batch_size)
            self.rows_for_width = lambda width: rows
        self.trim = mode == "drop" or can_trim(ctx)  # drop mode re-pads every pass to its own width anyway
        self.policy = padding_policy(self.device)
        self._cache: dict[tuple[int, bytes], tuple[float, float, int]] = {}
        self.predicted: torch.Tensor | None = None  # [batch], set by the first pass below
        batch = ids.shape[0]
        everyone = torch.arange(batch, device=self.device)
        self.full = self.outcomes(everyone, torch.zeros(batch, self.n, dtype=torch.bool, device=self.device))
        self.predicted = self.full.top.to(self.device)

    # ------------------------------------------------------------------ orders
    def ranks(self, explanation: Explanation, absolute: bool) -> torch.Tensor:
        """``[batch, n]`` long: the position of each erasable column in the explanation's order (0 = erased
        first); ``n`` for columns that are never erased."""
        scores = _check_explanation(self.ctx, explanation, self.erasable)
        key = scores.abs() if absolute else scores
        key = key.masked_fill(~self.erasable, -math.inf)
        order = torch.sort(key, dim=1, descending=True, stable=True).indices  # ties: earlier column first
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, torch.arange(self.n, device=self.device).expand_as(order))
        return ranks.masked_fill(~self.erasable, self.n)

    def random_ranks(self, n_random: int, seed: int) -> list[torch.Tensor]:
        """``n_random`` random orders as ranks ``[batch, n]``, seeded per example by its token ids."""
        out = [torch.full((len(self.counts), self.n), self.n, dtype=torch.long) for _ in range(n_random)]
        ids = self.ctx.input_ids.cpu()
        real, erasable = self.real.cpu(), self.erasable.cpu()
        for i in range(len(self.counts)):
            columns = torch.nonzero(erasable[i]).flatten()
            content = ids[i, real[i]].numpy().astype("<i8").tobytes()
            generator = torch.Generator().manual_seed(zlib.crc32(content, seed % 2**32))
            for ranks in out:
                ranks[i, columns[torch.randperm(len(columns), generator=generator)]] = torch.arange(len(columns))
        return [ranks.to(self.device) for ranks in out]

    def requests(
        self, ranks: torch.Tensor, ks: Sequence[Sequence[int]], *, keep_top: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies erasing, per example ``i`` and each ``k`` in ``ks[i]``, the top ``k`` of ``ranks``
        (``keep_top=False``) or every erasable token but the top ``k`` (``keep_top=True``).

        Returns ``examples [r]`` and ``erase [r, n]``, examples in order, their ``k`` in the given order."""
        examples = torch.tensor([i for i, k in enumerate(ks) for _ in k], dtype=torch.long, device=self.device)
        k = torch.tensor([x for row in ks for x in row], dtype=torch.long, device=self.device)
        if not len(examples):
            return examples, torch.zeros(0, self.n, dtype=torch.bool, device=self.device)
        rank = ranks[examples]  # [r, n]
        if keep_top:
            return examples, self.erasable[examples] & (rank >= k[:, None])
        return examples, rank < k[:, None]

    def sweeps(self, sweeps: Sequence[tuple[torch.Tensor, bool]], ks: Sequence[Sequence[int]]) -> list[_Outcome]:
        """:meth:`requests` for each ``(ranks, keep_top)``, all run as one list of rows; outcomes per sweep."""
        parts = [self.requests(ranks, ks, keep_top=keep_top) for ranks, keep_top in sweeps]
        out = self.outcomes(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        sizes = [len(p[0]) for p in parts]
        return [
            _Outcome(value, probability, top)
            for value, probability, top in zip(
                out.value.split(sizes), out.probability.split(sizes), out.top.split(sizes), strict=True
            )
        ]

    # ------------------------------------------------------------------ running
    def outcomes(self, examples: torch.Tensor, erase: torch.Tensor) -> _Outcome:
        """Target, probability of the original prediction and argmax for each copy ``(examples[r], erase[r])``."""
        packed = np.packbits(erase.cpu().numpy(), axis=1)
        keys = [(int(e), row.tobytes()) for e, row in zip(examples.tolist(), packed, strict=True)]
        missing: dict[tuple[int, bytes], int] = {}
        for r, key in enumerate(keys):
            if key not in self._cache and key not in missing:
                missing[key] = r
        if missing:
            self._run(list(missing), torch.tensor(list(missing.values()), dtype=torch.long), examples, erase)
        value, probability, top = zip(*(self._cache[key] for key in keys), strict=True) if keys else ((), (), ())
        return _Outcome(
            torch.tensor(value, dtype=torch.float64),
            torch.tensor(probability, dtype=torch.float64),
            torch.tensor(top, dtype=torch.long),
        )

    def _run(
        self, keys: list[tuple[int, bytes]], rows: torch.Tensor, examples: torch.Tensor, erase: torch.Tensor
    ) -> None:
        rows = rows.to(self.device)
        if not self.trim:  # left padding: every pass keeps the batch's width
            lengths = torch.full((len(rows),), self.n)
        elif self.mode == "drop":
            lengths = (self.real[examples[rows]] & ~erase[rows]).sum(dim=1).cpu()
        else:
            lengths = self.real[examples[rows]].sum(dim=1).cpu()
        with torch.no_grad():
            for chosen in length_passes(lengths.numpy(), self.rows_for_width, self.policy):
                part = rows[torch.as_tensor(chosen, device=self.device)]
                inputs, resolved = self._inputs(examples[part], erase[part], int(lengths[chosen].max()))
                logits = self.ctx.logits(**inputs)
                value = target_value(resolved, logits).double().cpu()
                if resolved.positions is None:
                    scores = logits
                else:  # each copy's row at its predicting column
                    at = torch.arange(len(part), device=logits.device)
                    scores = logits[at, resolved.positions.to(logits.device)]
                scores = scores.float()  # [rows, classes or vocab]
                top = scores.argmax(dim=-1)
                predicted = top if self.predicted is None else self.predicted[examples[part]]
                if scores.shape[-1] < 2:  # a single-logit head has no class probability
                    probability = torch.full((len(part),), math.nan, dtype=torch.float64)
                else:
                    probability = scores.softmax(dim=-1).gather(-1, predicted[:, None])[:, 0].double().cpu()
                for j, r in enumerate(chosen.tolist()):
                    self._cache[keys[r]] = (float(value[j]), float(probability[j]), int(top[j]))

    def _inputs(self, examples: torch.Tensor, erase: torch.Tensor, width: int):
        """Model inputs and the target for copies ``(examples[r], erase[r])``; in replace mode the inputs are cut
        to ``width`` columns (the pass's longest example; drop mode finds its own width)."""
        ctx = self.ctx
        resolved = ctx.target.take(examples)
        if self.mode == "replace":
            inputs = trimmed_inputs(ctx, examples, width)
            inputs["input_ids"] = inputs["input_ids"].masked_fill(erase[:, :width], self.replacement)
            return inputs, resolved
        keep = self.real[examples] & ~erase  # [r, n]
        count = keep.sum(dim=1)  # [r]
        width = max(1, int(count.max()))  # a copy with every token deleted still needs one (padding) column
        # kept columns first, in their order: a stable sort of "is dropped"
        order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices  # [r, n]
        offset = width - count if self.left_padded else torch.zeros_like(count)  # [r] padding in front
        slot = torch.arange(width, device=self.device)[None, :] - offset[:, None]  # [r, width]
        valid = (slot >= 0) & (slot < count[:, None])
        columns = torch.where(valid, order.gather(1, slot.clamp(0, self.n - 1)), torch.full_like(slot, -1))
        inputs = {}
        for key, value in ctx.inputs.items():
            picked = value[examples]
            # decoder inputs of an encoder-decoder model are not the erased sequence, whatever their width
            if value.dim() >= 2 and value.shape[1] == self.n and not key.startswith("decoder_"):
                fill = self.pad if key == "input_ids" else 0
                index = columns.clamp_min(0).reshape(*columns.shape, *([1] * (value.dim() - 2)))
                picked = picked.gather(1, index.expand(*columns.shape, *value.shape[2:]))
                picked = picked.masked_fill((columns < 0).reshape(index.shape), fill)
            inputs[key] = picked
        if resolved.positions is not None and not ctx.family.is_encoder_decoder:
            # the predicting token, or the last kept token before it when it was deleted itself
            before = torch.arange(self.n, device=self.device)[None, :] <= resolved.positions.to(self.device)[:, None]
            positions = (keep & before).sum(dim=1) - 1 + offset
            resolved = replace(resolved, positions=positions, max_position=int(positions.max()))
        return inputs, resolved


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def _erasable(ctx: ExplainContext, include_special: bool) -> torch.Tensor:
    """``[batch, n]`` bool: the tokens rankings may erase (see the module docstring)."""
    real = ctx.attention_mask.bool()
    erasable = real.clone() if include_special else real & ~ctx.special.to(real.device)
    if ctx.family.is_decoder_only:
        rows = torch.arange(real.shape[0], device=real.device)
        erasable[rows, real.long().argmax(dim=1)] = False  # the first real token: everything is conditioned on it
        if ctx.target.positions is not None:  # a causal model cannot see past its predicting position
            columns = torch.arange(real.shape[1], device=real.device)
            erasable &= columns[None, :] <= ctx.target.positions.to(real.device)[:, None]
    return erasable


def _left_padded(ctx: ExplainContext) -> bool:
    if ctx.batch is not None:
        return ctx.batch.padding_side == "left"
    mask = ctx.attention_mask
    return bool((mask[:, 0] == 0).any()) and bool((mask[:, -1] == 1).all())


def _check_explanation(ctx: ExplainContext, explanation: Explanation, erasable: torch.Tensor) -> torch.Tensor:
    """The explanation's scores on the context's device, after checking that they belong to this batch."""
    if not isinstance(explanation, Explanation):
        raise ValueError(f"expected an Explanation (from explain(...) or a method), got {type(explanation).__name__}")
    scores = explanation.scores
    if tuple(scores.shape) != tuple(ctx.input_ids.shape):
        raise ValueError(
            f"the {explanation.method} explanation has scores of shape {tuple(scores.shape)}, but the context's "
            f"batch is {tuple(ctx.input_ids.shape)}: explain the same batch the context holds"
        )
    if not torch.equal(explanation.real.to(ctx.attention_mask.device), ctx.attention_mask.bool()):
        raise ValueError(
            f"the {explanation.method} explanation marks other tokens as real than the context's attention mask: "
            "explain the same batch (same padding) the context holds"
        )
    mine, theirs = ctx.target, explanation.target
    same = (
        mine.target == theirs.target
        and torch.equal(mine.ids.cpu(), theirs.ids.cpu())
        and (mine.positions is None) == (theirs.positions is None)
        and (mine.positions is None or torch.equal(mine.positions.cpu(), theirs.positions.cpu()))
        and (mine.other_ids is None or torch.equal(mine.other_ids.cpu(), theirs.other_ids.cpu()))
    )
    if not same:
        raise ValueError(
            f"the {explanation.method} explanation explains another target than the context (other class, token "
            "or position): build the context with target=explanation.target"
        )
    scores = scores.to(erasable.device).float()
    if not bool(torch.isfinite(scores[erasable]).all()):
        raise ValueError(f"the {explanation.method} explanation has NaN or infinite scores on erasable tokens")
    return scores


def _check_bins(bins: Sequence[float]) -> list[float]:
    try:
        fractions = [float(f) for f in bins]
    except (TypeError, ValueError):
        raise ValueError(f"bins must be a sequence of fractions in (0, 1], got {bins!r}") from None
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"bins must be a non-empty sequence of fractions in (0, 1] (0.1 = top 10%), got {bins!r}")
    return fractions


def _check_positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_optional_positive(name: str, value: object) -> int | None:
    return None if value is None else _check_positive(name, value)


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0 (0: no random baseline), got {value!r}")
    return value


def _top_k(fraction: float, m: int) -> int:
    """ERASER's ``k`` for a bin: ``ceil(fraction * m)``, at least 1 (tolerant of float noise: 0.7 * 10)."""
    return min(m, max(1, math.ceil(fraction * m - 1e-9)))


def _steps(m: int, steps: int | None) -> list[int]:
    """``k`` values of a curve: all of ``0 .. m``, or ``steps + 1`` evenly spaced ones."""
    if steps is None or steps >= m:
        return list(range(m + 1))
    return sorted({round(x) for x in np.linspace(0, m, steps + 1)})


def _aopc(curve: str, values: np.ndarray) -> float:
    """Deletion: mean drop from the full input; insertion: mean gain over the all-erased input."""
    return float(np.mean(values[0] - values) if curve == "deletion" else np.mean(values - values[0]))


def _auc(values: np.ndarray, fraction: np.ndarray) -> float:
    if len(values) < 2:
        return math.nan
    return float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(fraction)))


def _std(values: np.ndarray) -> np.ndarray:
    """Per-step standard deviation over the random orders (axis 0), NaN with a single order."""
    if values.shape[0] < 2:
        return np.full(values.shape[1], math.nan)
    return values.std(axis=0, ddof=1)


def _std_of(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
