"""Counterfactual attention: does the output move when the attention is changed? (Jain & Wallace 2019)

If an attention map explains a prediction, then a different attention should give a different prediction.
Jain & Wallace ("Attention is not Explanation", NAACL 2019) test this two ways, both here:

- :func:`attention_counterfactuals`: replace one layer's attention (all heads, or each head alone) by a
  counterfactual and measure how far the output moves, and how different the attention was:

  ``permute``  each query row's weights shuffled among the keys it may attend to (its real keys: padding and,
               in decoders, the future keep exactly zero). One permutation per ``seed``; an example's
               permutation depends only on the seed and its length, so it is the same alone or in any batch.
  ``uniform``  each query row spread evenly over the keys it may attend to.
  ``frozen``   the *position-only* pattern: the weights the same layer produces on a content-free input of the
               same length, where every real non-special token is replaced by the "no token" id ([MASK] if the
               tokenizer has one, else the pad id, else 0; for language models the first real token is kept,
               see :meth:`ExplainContext.baseline_ids`). Special tokens and padding stay, so what is left is the
               pattern that positions and special tokens alone produce. Frozen is applied to the original
               forward pass: only the edited layer sees it, every other layer computes as usual.

- :func:`adversarial_attention`: search, by gradient, for the attention of one layer (or head) that is as
  different as possible from the original (Jensen-Shannon divergence, at most ln 2) while the output stays
  within ``epsilon`` (total variation distance, or JSD) of the original. A large divergence found within a
  small epsilon means the attention map was one of many that give the same output.

What "the output" is: the softmax of the classifier's logits, or for a language model the next-token
distribution at the predicting position (the last real token, or the target's ``position``), as resolved by
:class:`~attn_probe.methods.base.ExplainContext`. Original and counterfactual outputs both come from the same
capturing forward pass (eager attention for Hugging Face models), so an edit that changes nothing gives exactly 0.

Attention divergences are measured per query row over that row's keys and averaged over the edited heads and
the example's real query rows (``attention_jsd``); ``attention_jsd_target_row`` is the same for the one row
that feeds the output directly (the first token of a classifier, the predicting position of a language
model; NaN for encoder-decoder models, where that row lies in the decoder). Rows whose only key is
themselves (the first row of a causal model) cannot change and count with divergence 0.

Both functions work for our own models and for Hugging Face models, through the edits of
:func:`attn_probe.capture.intervene`; layers are those of the main stack (the decoder of a decoder-only
model, else the encoder). The model is put in eval mode for the analysis (dropout would make every
counterfactual random) and left exactly as found: hooks removed, training flags restored, no ``.grad``
written to its parameters.

Reference: Sarthak Jain and Byron C. Wallace, "Attention is not Explanation", NAACL 2019,
https://arxiv.org/abs/1902.10186 (section 4: permutation; section 4.2: adversarial attention).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
from torch import nn

from attn_probe.attention.interventions import per_example_random, permute_weights, set_weights, uniform_weights
from attn_probe.capture import ResolvedTarget, Target, TokenizedBatch, capture, intervene
from attn_probe.capture.recorder import WeightsEdit
from attn_probe.methods.base import ExplainContext

INTERVENTIONS = ("permute", "uniform", "frozen")
MAX_JSD = math.log(2.0)  # Jensen-Shannon divergence in nats is at most ln 2 (disjoint supports)

HeadsOption = Literal["all", "each"] | Sequence[int]

COUNTERFACTUAL_COLUMNS = (
    "example_id",
    "layer",
    "head",
    "intervention",
    "seed",
    "output_tvd",
    "output_jsd",
    "max_logit_change",
    "target_change",
    "prediction",
    "new_prediction",
    "prediction_flips",
    "attention_jsd",
    "attention_jsd_target_row",
)
ADVERSARIAL_COLUMNS = (
    "example_id",
    "layer",
    "head",
    "rows",
    "measure",
    "epsilon",
    "feasible",
    "attention_jsd",
    "attention_jsd_target_row",
    "max_jsd",
    "output_tvd",
    "output_jsd",
    "target_change",
    "prediction_flips",
    "best_step",
    "steps",
)


# ----------------------------------------------------------------------------------------------------
# permutation, uniform, frozen
# ----------------------------------------------------------------------------------------------------
def attention_counterfactuals(
    model: nn.Module,
    inputs: TokenizedBatch | Mapping[str, torch.Tensor],
    *,
    interventions: Sequence[str] = INTERVENTIONS,
    layers: Sequence[int] | None = None,
    heads: HeadsOption = "all",
    seeds: Sequence[int] = (0, 1, 2),
    target: Target | ResolvedTarget | None = None,
    tokenizer: Any = None,
) -> pd.DataFrame:
    """How much the output moves when one layer's attention is permuted, made uniform or frozen.

    Args:
        model: our own model or a Hugging Face model with a head (classifier or language model).
        inputs: a :class:`TokenizedBatch` (knows special tokens, which ``frozen`` keeps) or a tokenizer's output.
        interventions: any of ``"permute"``, ``"uniform"``, ``"frozen"`` (see the module docstring).
        layers: layers of the main stack to edit, one at a time (None: every layer).
        heads: ``"all"`` edits every head of the layer together (``head`` is NA); ``"each"`` edits one head at
            a time; a list of head indices edits each listed head alone.
        seeds: one permutation per seed (``permute`` only).
        target: the scalar whose change is reported (default: the predicted class's logit, or the top next
            token's log-probability), resolved once on the original output.
        tokenizer: gives the "no token" id of ``frozen`` ([MASK], else pad); without one, id 0.

    Protocol: one forward pass of the whole batch per (layer, head selection, intervention, seed), plus the
    capture of the original batch (two passes: the capture and its drift check) and, for ``frozen``, one
    capture of the content-free batch.

    Returns one row per example x layer x head selection x intervention (x seed), columns
    ``example_id, layer, head`` (Int64, NA = all heads), ``intervention``, ``seed`` (Int64, NA unless permute),
    ``output_tvd`` (total variation distance of the output distribution, in [0, 1]), ``output_jsd`` (its
    Jensen-Shannon divergence, nats, in [0, ln 2]), ``max_logit_change`` (max abs change of the output logits
    at the predicting position), ``target_change`` (new - original target scalar), ``prediction``,
    ``new_prediction`` (argmax class or next token), ``prediction_flips``, ``attention_jsd`` (JSD between
    the original and the new attention rows of the edited heads, mean over real query rows) and
    ``attention_jsd_target_row`` (the same for the row that feeds the output).

    >>> table = attention_counterfactuals(model, inputs, heads="each")
    >>> table.groupby(["layer", "head", "intervention"])["output_tvd"].median()
    """
    chosen = _check_interventions(interventions)
    seed_list = _check_seeds(seeds) if "permute" in chosen else []
    with _evaluation(model):
        context = ExplainContext(model, inputs, target=target, tokenizer=tokenizer)
        original = context.capture()
        stack = original.stacks[original.main_stack]
        layer_list = _check_layers(layers, stack.num_layers)
        selections = _head_selections(heads, stack.num_heads)
        before = _output_of(context, original.logits)
        real = context.attention_mask.bool()  # [batch, n]: real query rows of the main stack
        target_rows = _target_rows(context)  # [batch] or None
        frozen = _frozen_weights(model, context) if "frozen" in chosen else None  # [batch, layers, heads, q, k]

        plan = [(name, seed) for name in chosen for seed in (seed_list if name == "permute" else [None])]
        columns: dict[str, list] = {name: [] for name in COUNTERFACTUAL_COLUMNS}
        for layer in layer_list:
            for head_label, head_index in selections:
                for name, seed in plan:
                    edit = _edit_for(name, seed, head_index, None if frozen is None else frozen[:, layer])
                    seen: dict[str, torch.Tensor] = {}
                    with torch.no_grad(), intervene(model, {layer: _watched(edit, seen)}):
                        after = _output_of(context, context.logits())
                    old, new = seen["old"][:, head_index], seen["new"][:, head_index]  # [batch, h, q, k]
                    row_jsd = _jsd(new.double(), old.double()).mean(dim=1)  # [batch, q]
                    _append(
                        columns,
                        before,
                        after,
                        layer=layer,
                        head=head_label,
                        intervention=name,
                        seed=seed,
                        attention_jsd=_masked_row_mean(row_jsd, real),
                        attention_jsd_target_row=_at_rows(row_jsd, target_rows),
                    )
    return _frame(columns, COUNTERFACTUAL_COLUMNS)


@dataclass
class CounterfactualOutputs:
    """One intervention's effect in full (:func:`counterfactual_outputs`)."""

    table: pd.DataFrame  # example_id, output, rank, prob_before, prob_after, logit_before, logit_after
    old: torch.Tensor  # [batch, heads edited, q, k] the layer's original weights of the edited heads
    new: torch.Tensor  # [batch, heads edited, q, k] what replaced them


def counterfactual_outputs(
    model: nn.Module,
    inputs: TokenizedBatch | Mapping[str, torch.Tensor],
    *,
    layer: int,
    intervention: str,
    head: int | None = None,
    seed: int = 0,
    top: int = 5,
    target: Target | ResolvedTarget | None = None,
    tokenizer: Any = None,
) -> CounterfactualOutputs:
    """The output distribution before and after one edit of :func:`attention_counterfactuals`, and the weights.

    Same edit, same protocol (one ``intervention`` of ``permute / uniform / frozen`` on ``layer``, one ``head``
    or all heads when None, permutation ``seed``), but instead of distances it returns, per example, the
    ``top`` outputs by original probability plus the new prediction when it is not among them (``output``:
    class index, or next-token id for a language model, at the predicting position), each with its
    probability and logit before and after, and the edited heads' weights before and after (what a viewer
    draws side by side). Summing ``|prob_after - prob_before|`` over *all* outputs gives twice the
    ``output_tvd`` of :func:`attention_counterfactuals`.
    """
    (name,) = _check_interventions([intervention])
    if name == "permute":
        _check_seeds([seed])
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a positive integer, got {top!r}")
    with _evaluation(model):
        context, _, layer, (_, head_index), before = _one_layer(model, inputs, target, tokenizer, layer, head)
        frozen = _frozen_weights(model, context)[:, layer] if name == "frozen" else None
        seen: dict[str, torch.Tensor] = {}
        with torch.no_grad(), intervene(model, {layer: _watched(_edit_for(name, seed, head_index, frozen), seen)}):
            after = _output_of(context, context.logits())
    rows = []
    count = min(top, before.probs.shape[-1])
    for example in range(before.probs.shape[0]):
        ranked = before.probs[example].argsort(descending=True)[:count].tolist()
        new_prediction = int(after.prediction[example])
        chosen = ranked + ([new_prediction] if new_prediction not in ranked else [])
        for rank, output in enumerate(chosen):
            rows.append(
                {
                    "example_id": example,
                    "output": int(output),
                    "rank": rank,
                    "prob_before": float(before.probs[example, output]),
                    "prob_after": float(after.probs[example, output]),
                    "logit_before": float(before.logits[example, output]),
                    "logit_after": float(after.logits[example, output]),
                }
            )
    return CounterfactualOutputs(pd.DataFrame(rows), seen["old"][:, head_index].cpu(), seen["new"][:, head_index].cpu())


def _one_layer(
    model: nn.Module, inputs: Any, target: Any, tokenizer: Any, layer: int, head: int | None
) -> tuple[ExplainContext, Any, int, tuple[int | None, list[int]], _Output]:
    """What an edit of one layer (one head, or all when None) starts from: the context, the main stack's original
    capture, the checked layer, the head selection ``(label, indices)`` and the original output."""
    context = ExplainContext(model, inputs, target=target, tokenizer=tokenizer)
    original = context.capture()
    stack = original.stacks[original.main_stack]
    (layer,) = _check_layers([layer], stack.num_layers)
    return context, stack, layer, _single_selection(head, stack.num_heads), _output_of(context, original.logits)


def _edit_for(name: str, seed: int | None, heads: list[int], frozen: torch.Tensor | None) -> WeightsEdit:
    """The weights edit of one intervention (``frozen``: the layer's content-free weights ``[batch, H, q, k]``)."""
    if name == "permute":
        return permute_weights(int(seed if seed is not None else 0), head=heads)
    if name == "uniform":
        return uniform_weights(head=heads)
    if frozen is None:
        raise ValueError("the frozen intervention needs the layer's content-free weights")
    return set_weights(frozen, head=heads)


# ----------------------------------------------------------------------------------------------------
# adversarial attention
# ----------------------------------------------------------------------------------------------------
def adversarial_attention(
    model: nn.Module,
    inputs: TokenizedBatch | Mapping[str, torch.Tensor],
    *,
    layer: int,
    head: int | None = None,
    epsilon: float = 0.01,
    measure: Literal["tvd", "jsd"] = "tvd",
    rows: Literal["all", "target"] = "all",
    steps: int = 150,
    lr: float = 0.3,
    penalty: float = 10.0,
    init_noise: float = 1.0,
    seed: int = 0,
    target: Target | ResolvedTarget | None = None,
    tokenizer: Any = None,
) -> pd.DataFrame:
    """The most different attention of ``layer`` (``head``) that keeps the output within ``epsilon``.

    Jain & Wallace's adversarial search, one adversary per example. Each edited row of the layer's attention
    becomes ``(1 - alpha) * original + alpha * softmax(theta)``, with free logits ``theta [batch, heads, q, k]``
    (the softmax over the row's own keys: its support in the original weights, i.e. real keys, and no future
    keys in a decoder) and a free mixing weight ``alpha = sigmoid(a)`` per row, applied through a
    differentiable edit of :func:`attn_probe.capture.intervene`. Adam minimises, summed over examples,

        -attention_jsd(new, original) + penalty * max(0, d(output, original output) / epsilon - 1)

    with ``d`` the total variation distance (``measure="tvd"``) or the Jensen-Shannon divergence of the output
    distribution (the violation is relative to epsilon, so one ``penalty`` suits every epsilon). Every iterate
    is evaluated; the one with the largest attention JSD whose output stays within ``epsilon`` is kept (the
    penalty only steers, it does not decide what counts). The learning rate decays (cosine, to 1%).

    Why this parametrisation rather than logits started at the original's (plus noise): JSD is convex in the
    new attention, so every vertex of the simplex is a local maximum, the original's own vertex included. Next
    to a nearly one-hot original, ascent stays there (divergence ~1e-10); started from a random ``theta``
    (Gaussian, std ``init_noise``, drawn from ``seed`` per example, so the same alone or in any batch) at
    ``alpha = 1/2``, it heads for vertices away from the original's mass. But ascent saturates the softmax,
    whose gradient then vanishes, so a row that matters could not come back; ``alpha`` always can: the penalty
    lowers it towards the original. Gradients can be tiny (rows near one-hot), so Adam runs with ``eps=1e-12``
    (steps follow the gradient's direction, not its size), in float64.

    Args:
        layer: layer of the main stack.
        head: the head to edit (None: every head of the layer together).
        epsilon: how far the output may move (in ``measure`` units).
        rows: ``"all"`` edits every real query row (the divergence is their mean); ``"target"`` only the row
            feeding the output (the [CLS] / first-token row of a classifier, the predicting position of a
            language model), Jain & Wallace's single attention distribution.
        steps: forward (+ backward) passes of the whole batch.
        lr: Adam's initial learning rate (on logits).
        penalty: weight of the relative constraint violation against the divergence (in nats).
        init_noise: std of the random start of ``theta``.
        seed: seed of the random start.
        target, tokenizer: as in :func:`attention_counterfactuals` (the target only feeds ``target_change``).

    Returns one row per example: ``example_id, layer, head`` (Int64, NA = all heads), ``rows, measure,
    epsilon``, ``feasible`` (an iterate within epsilon was found), and at the best feasible iterate (NaN when
    none): ``attention_jsd`` (mean over edited heads and rows), ``attention_jsd_target_row``, ``max_jsd``
    (ln 2, for reference), ``output_tvd``, ``output_jsd``, ``target_change``, ``prediction_flips``,
    ``best_step`` (its step, -1 when none); ``steps`` (passes run).
    """
    if not isinstance(epsilon, int | float) or not epsilon > 0:
        raise ValueError(f"epsilon must be a positive number (how far the output may move), got {epsilon!r}")
    if measure not in ("tvd", "jsd"):
        raise ValueError(f"measure must be 'tvd' or 'jsd' (the output distance epsilon bounds), got {measure!r}")
    if rows not in ("all", "target"):
        raise ValueError(f"rows must be 'all' (every real query row) or 'target' (the output's row), got {rows!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if not penalty >= 0:
        raise ValueError(f"penalty must be >= 0, got {penalty!r}")
    if not init_noise >= 0:
        raise ValueError(f"init_noise must be >= 0, got {init_noise!r}")

    with _evaluation(model):
        context, stack, layer, (head_label, head_index), before = _one_layer(
            model, inputs, target, tokenizer, layer, head
        )
        real = context.attention_mask.bool()  # [batch, n]
        target_rows = _target_rows(context)
        if rows == "target" and target_rows is None:
            raise ValueError(
                "rows='target' needs the query row that feeds the output; in an encoder-decoder model it lies in "
                "the decoder, not in the main (encoder) stack: use rows='all'"
            )
        edited_rows = real if rows == "all" else _one_hot_rows(target_rows, real)  # [batch, q]

        # float64: the original rows are often nearly one-hot (weights ~1e-10 beside ~1 - 1e-9), and in float32
        # the divergence between such rows and their small perturbations, and its gradient, round to nothing.
        old = stack.weights[:, layer][:, head_index].double()  # [batch, h, q, k], detached
        support = old > 0  # the keys each row may attend to (exactly 0 = masked, as in the interventions)
        editable = edited_rows[:, None, :, None] & support.any(dim=-1, keepdim=True)  # [batch, h, q, 1]
        # new = (1 - alpha) * original + alpha * softmax(theta), per row; see the docstring.
        theta = (per_example_random(seed, real, old.shape[1], torch.randn).double() * init_noise).to(old.device)
        theta.requires_grad_(True)
        mix_logit = torch.zeros(*old.shape[:-1], 1, dtype=old.dtype, device=old.device, requires_grad=True)
        optimiser = torch.optim.Adam([theta, mix_logit], lr=lr, eps=1e-12)
        # Cosine decay to 1% of lr: large early steps leave the original's basin, small late ones settle on the
        # boundary of the feasible set instead of jumping across it.
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda t: 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t / max(steps - 1, 1)))
        )

        batch = old.shape[0]
        best = _Best.empty(batch, old.device)
        for step in range(steps):
            alpha = torch.sigmoid(mix_logit)  # [batch, h, q, 1]
            new = torch.where(editable, (1.0 - alpha) * old + alpha * _softmax_on(theta, support), old)
            with torch.enable_grad(), intervene(model, {layer: _replace_heads(new, head_index)}):
                after = _output_of(context, context.logits())
            row_jsd = _jsd(new, old).mean(dim=1)  # [batch, q]
            attention_jsd = _masked_row_mean(row_jsd, edited_rows)  # [batch]
            distance = after.tvd(before) if measure == "tvd" else after.jsd(before)  # [batch]
            best.update(
                step,
                feasible=distance.detach() <= epsilon,
                attention_jsd=attention_jsd.detach(),
                target_row_jsd=_at_rows(row_jsd.detach(), target_rows),
                output_tvd=after.tvd(before).detach(),
                output_jsd=after.jsd(before).detach(),
                target_change=(after.target - before.target).detach(),
                flips=after.prediction != before.prediction,
            )
            if step == steps - 1:
                break
            loss = (-attention_jsd + penalty * (distance / epsilon - 1.0).clamp_min(0.0)).sum()
            # autograd.grad, not backward(): the model's parameters must not collect a .grad.
            theta.grad, mix_logit.grad = torch.autograd.grad(loss, [theta, mix_logit])
            optimiser.step()
            schedule.step()

    columns = {
        "example_id": list(range(batch)),
        "layer": [layer] * batch,
        "head": [head_label] * batch,
        "rows": [rows] * batch,
        "measure": [measure] * batch,
        "epsilon": [float(epsilon)] * batch,
        **best.columns(),
        "max_jsd": [MAX_JSD] * batch,
        "steps": [steps] * batch,
    }
    return _frame(columns, ADVERSARIAL_COLUMNS)


# ----------------------------------------------------------------------------------------------------
# outputs and divergences
# ----------------------------------------------------------------------------------------------------
@dataclass
class _Output:
    """The output that a counterfactual is compared on, for one batch."""

    logits: torch.Tensor  # [batch, classes or vocab] float32, at the predicting position for LMs
    probs: torch.Tensor  # [batch, classes or vocab]
    prediction: torch.Tensor  # [batch] argmax
    target: torch.Tensor  # [batch] the target scalar

    def tvd(self, other: _Output) -> torch.Tensor:
        return 0.5 * (self.probs - other.probs).abs().sum(dim=-1)  # [batch]

    def jsd(self, other: _Output) -> torch.Tensor:
        return _jsd(self.probs, other.probs)  # [batch]


def _output_of(context: ExplainContext, logits: torch.Tensor) -> _Output:
    positions = context.target.positions
    rows = logits  # [batch, classes]
    if positions is not None:  # [batch, n, vocab] -> [batch, vocab] at each example's predicting position
        rows = logits[torch.arange(logits.shape[0], device=logits.device), positions.to(logits.device)]
    rows = rows.float()
    return _Output(rows, rows.softmax(dim=-1), rows.argmax(dim=-1), context.target_value(logits).float())


def _jsd(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) over the last dimension, with 0 log 0 = 0.

    Zero entries (masked keys) are taken out with ``where`` on both sides, not by ``xlogy``: the gradient of
    ``p log p`` at ``p = 0`` is infinite, and times the zero Jacobian of a masked softmax entry it would be NaN.
    """
    m = 0.5 * (p + q)

    def kl_to_m(a: torch.Tensor) -> torch.Tensor:
        positive = a > 0  # then m > 0 too
        ratio = torch.where(positive, a, 1.0).log() - torch.where(positive, m, 1.0).log()
        return torch.where(positive, a * ratio, 0.0).sum(dim=-1)

    return (0.5 * (kl_to_m(p) + kl_to_m(q))).clamp_min(0.0)  # rounding can dip just below 0


def _masked_row_mean(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``[batch]`` mean of ``values [batch, q]`` over the rows marked in ``rows [batch, q]``."""
    rows = rows.to(values.device)
    count = rows.sum(dim=1).clamp_min(1)
    return (values * rows).sum(dim=1) / count


def _at_rows(values: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """``[batch]`` ``values [batch, q]`` at one row per example; NaN when there is no such row."""
    if rows is None:
        return torch.full((values.shape[0],), float("nan"), dtype=values.dtype, device=values.device)
    return values[torch.arange(values.shape[0], device=values.device), rows.to(values.device)]


def _target_rows(context: ExplainContext) -> torch.Tensor | None:
    """The query row that feeds the output, or None where it is not in the main stack (encoder-decoder)."""
    if context.family.is_encoder_decoder:
        return None
    return context.target_rows()


def _one_hot_rows(target_rows: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    rows = torch.zeros_like(real)
    rows[torch.arange(real.shape[0], device=real.device), target_rows.to(real.device)] = True
    return rows & real


# ----------------------------------------------------------------------------------------------------
# edits
# ----------------------------------------------------------------------------------------------------
def _watched(edit: WeightsEdit, seen: dict[str, torch.Tensor]) -> WeightsEdit:
    """``edit`` that also keeps what it was given and what it returned (the layer's old and new weights)."""

    def hook(weights: torch.Tensor, point: Any) -> torch.Tensor:
        new = edit(weights, point)
        new = weights if new is None else new
        seen["old"], seen["new"] = weights.detach(), new.detach()
        return new

    return hook


def _replace_heads(new: torch.Tensor, heads: list[int]) -> WeightsEdit:
    """Differentiable edit: the chosen heads' weights become ``new [batch, len(heads), q, k]``."""

    def hook(weights: torch.Tensor, _point: Any) -> torch.Tensor:
        out = weights.clone()
        out[:, heads] = new.to(device=weights.device, dtype=weights.dtype)
        return out

    return hook


def _softmax_on(theta: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Softmax of ``theta`` over each row's support; rows without support give zeros (not NaN, in the forward
    pass or the backward one: such rows are softmaxed over finite zeros and then dropped)."""
    has_keys = support.any(dim=-1, keepdim=True)
    logits = torch.where(has_keys, theta.masked_fill(~support, float("-inf")), torch.zeros_like(theta))
    weights = torch.softmax(logits, dim=-1)
    return torch.where(has_keys, weights, torch.zeros_like(weights))


def _frozen_weights(model: nn.Module, context: ExplainContext) -> torch.Tensor:
    """``[batch, layers, heads, q, k]``: the main stack's weights on the content-free version of the batch."""
    content_free = dict(context.inputs)
    content_free["input_ids"] = context.baseline_ids()
    with torch.no_grad():
        return capture(model, content_free, keep_values=False, measure_drift=False).weights


# ----------------------------------------------------------------------------------------------------
# bookkeeping
# ----------------------------------------------------------------------------------------------------
@dataclass
class _Best:
    """Per example, the best feasible iterate of the adversarial search so far."""

    values: dict[str, torch.Tensor]
    step: torch.Tensor  # [batch] long, -1 = none yet

    @classmethod
    def empty(cls, batch: int, device: torch.device) -> _Best:
        names = ("attention_jsd", "attention_jsd_target_row", "output_tvd", "output_jsd", "target_change")
        values = {name: torch.full((batch,), float("nan"), dtype=torch.float64, device=device) for name in names}
        values["prediction_flips"] = torch.zeros(batch, dtype=torch.bool, device=device)
        return cls(values, torch.full((batch,), -1, dtype=torch.long, device=device))

    def update(
        self,
        step: int,
        *,
        feasible: torch.Tensor,
        attention_jsd: torch.Tensor,
        target_row_jsd: torch.Tensor,
        output_tvd: torch.Tensor,
        output_jsd: torch.Tensor,
        target_change: torch.Tensor,
        flips: torch.Tensor,
    ) -> None:
        current = self.values["attention_jsd"]
        better = feasible & ((self.step < 0) | (attention_jsd.double() > current))
        new = {
            "attention_jsd": attention_jsd,
            "attention_jsd_target_row": target_row_jsd,
            "output_tvd": output_tvd,
            "output_jsd": output_jsd,
            "target_change": target_change,
            "prediction_flips": flips,
        }
        for name, value in new.items():
            self.values[name] = torch.where(better, value.to(self.values[name].dtype), self.values[name])
        self.step = torch.where(better, torch.full_like(self.step, step), self.step)

    def columns(self) -> dict[str, list]:
        out: dict[str, list] = {name: value.cpu().tolist() for name, value in self.values.items()}
        out["feasible"] = (self.step >= 0).cpu().tolist()
        out["best_step"] = self.step.cpu().tolist()
        return out


def _append(
    columns: dict[str, list],
    before: _Output,
    after: _Output,
    *,
    layer: int,
    head: int | None,
    intervention: str,
    seed: int | None,
    attention_jsd: torch.Tensor,
    attention_jsd_target_row: torch.Tensor,
) -> None:
    batch = before.probs.shape[0]
    columns["example_id"] += list(range(batch))
    columns["layer"] += [layer] * batch
    columns["head"] += [head] * batch
    columns["intervention"] += [intervention] * batch
    columns["seed"] += [seed] * batch
    columns["output_tvd"] += after.tvd(before).cpu().tolist()
    columns["output_jsd"] += after.jsd(before).cpu().tolist()
    columns["max_logit_change"] += (after.logits - before.logits).abs().amax(dim=-1).cpu().tolist()
    columns["target_change"] += (after.target - before.target).cpu().tolist()
    columns["prediction"] += before.prediction.cpu().tolist()
    columns["new_prediction"] += after.prediction.cpu().tolist()
    columns["prediction_flips"] += (after.prediction != before.prediction).cpu().tolist()
    columns["attention_jsd"] += attention_jsd.cpu().tolist()
    columns["attention_jsd_target_row"] += attention_jsd_target_row.cpu().tolist()


def _frame(columns: dict[str, list], order: Sequence[str]) -> pd.DataFrame:
    frame = pd.DataFrame({name: columns[name] for name in order})
    frame["head"] = pd.array(frame["head"].tolist(), dtype="Int64")
    if "seed" in frame:
        frame["seed"] = pd.array(frame["seed"].tolist(), dtype="Int64")
    for name in ("example_id", "layer"):
        frame[name] = frame[name].astype("int64")
    return frame


@contextmanager
def _evaluation(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block (dropout would randomise every counterfactual); each module's flag restored."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


# ----------------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------------
def _check_interventions(interventions: Sequence[str]) -> list[str]:
    if isinstance(interventions, str):
        interventions = [interventions]
    chosen = list(dict.fromkeys(interventions))
    unknown = [name for name in chosen if name not in INTERVENTIONS]
    if unknown or not chosen:
        raise ValueError(f"unknown or no interventions {unknown or chosen}; choose among {', '.join(INTERVENTIONS)}")
    return chosen


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seed_list = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ValueError("seeds is empty: 'permute' needs at least one seed, e.g. seeds=(0, 1, 2)")
    if any(isinstance(s, bool) or not isinstance(s, int) for s in seed_list):
        raise ValueError(f"seeds must be integers, got {seed_list}")
    return seed_list


def _check_layers(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    if layers is None:
        return list(range(num_layers))
    layer_list = [layers] if isinstance(layers, int) else list(layers)
    if not layer_list:
        raise ValueError("layers is empty: pass None for every layer, or a list of layer indices")
    for layer in layer_list:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < num_layers:
            raise ValueError(
                f"layer {layer!r} does not exist: the main stack has layers 0..{num_layers - 1} "
                "(counterfactuals edit the main stack: the decoder of a decoder-only model, else the encoder)"
            )
    return layer_list


def _check_head(head: Any, num_heads: int) -> int:
    if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < num_heads:
        raise ValueError(f"head {head!r} does not exist: this layer has heads 0..{num_heads - 1}")
    return head


def _head_selections(heads: HeadsOption, num_heads: int) -> list[tuple[int | None, list[int]]]:
    """``(label, indices)`` per selection: label None for all heads together."""
    if isinstance(heads, str):
        if heads == "all":
            return [(None, list(range(num_heads)))]
        if heads == "each":
            return [(h, [h]) for h in range(num_heads)]
        raise ValueError(f"heads must be 'all', 'each' or a list of head indices, got {heads!r}")
    head_list = [heads] if isinstance(heads, int) else list(heads)
    if not head_list:
        raise ValueError("heads is empty: pass 'all', 'each' or a list of head indices")
    return [(_check_head(h, num_heads), [h]) for h in head_list]


def _single_selection(head: int | None, num_heads: int) -> tuple[int | None, list[int]]:
    """The heads the adversary edits together: one head, or every head (label None, shown as NA)."""
    if head is None:
        return None, list(range(num_heads))
    return _check_head(head, num_heads), [head]
