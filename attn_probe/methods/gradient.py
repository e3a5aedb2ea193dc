"""Gradient attributions at the output of the token embedding layer, computed by captum.

Every method here attributes to the *output* of ``ctx.embedding_layer()`` (the token embedding lookup,
before position and segment terms are added), through captum's ``Layer*`` classes or, for integrated gradients
and GradientSHAP, captum's input methods on that output, injected into the model by a forward hook: that works the
same way for Hugging Face models and for our own models, which take no ``inputs_embeds``. The function captum
differentiates takes ``input_ids`` (plus ``attention_mask`` as an additional forward argument) and returns
the resolved target scalar of each example (:mod:`attn_probe.capture.targets`). A token's score reduces its
``[hidden]`` attribution to one number: the sum over the hidden dimension for integrated gradients,
input x gradient and GradientSHAP (so that completeness carries over to tokens), the L2 norm for saliency.

Which target row belongs to which expanded input row. captum expands a batch for integrated-gradient
steps, ablations and noise samples by repeating *the whole batch* (``torch.cat([x] * k)``: rows
``[a, b, a, b, ...]``, see ``captum._utils.common._expand_additional_forward_args`` and ``_expand_target``,
whose default is ``ExpansionTypes.repeat``), while ``ExplainContext.target_value`` repeats each example in
place (``repeat_interleave``: ``[a, a, b, b]``). With two examples of different predicted classes the
latter would silently explain the wrong class at half of the rows. So the forward functions here never
guess: the row index of every example (``arange(batch)``) travels through captum as one more additional
forward argument, captum expands it exactly as it expands ``input_ids`` and ``attention_mask``, and the
forward function reads the target rows with ``ctx.target.take(rows)``.

Memory. Integrated gradients runs ``n_steps`` forward + backward passes per example; captum batches them
``internal_batch_size`` rows at a time. :func:`estimate_bytes_per_row` estimates what one row (one example
at one step) keeps alive for its backward pass, and :func:`rows_within_budget` divides a budget by it (see
there for the formula). The budget is the option ``memory_budget_bytes``; by default half of the free
memory of a CUDA device (``torch.cuda.mem_get_info``) and 2 GiB elsewhere.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from captum.attr import GradientShap, IntegratedGradients, LayerGradientXActivation
from torch import nn

from attn_probe.capture import ResolvedTarget, target_value
from attn_probe.methods.base import ExplainContext, Explanation, MethodInfo, register
from attn_probe.methods.passes import can_trim, length_passes, padding_policy, real_lengths, trimmed_inputs

CPU_MEMORY_BUDGET = 2 * 1024**3  # bytes, when no budget is given and the model is not on a CUDA device
CUDA_BUDGET_FRACTION = 0.5  # of the free CUDA memory, when no budget is given
# What one row keeps alive for its backward pass, per layer: about 17 hidden-sized values per token
# (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models": 34 bytes per
# token and hidden unit at 16 bit, for a 4x MLP with dropout masks) and 2.5 n x n maps per head (scores,
# softmax, dropout mask). A fused attention kernel keeps less: the estimate errs on the safe side.
VALUES_PER_TOKEN_AND_HIDDEN = 17.0
MAPS_PER_HEAD = 2.5
# Below this |convergence delta| integrated gradients is converged whatever its relative delta: float rounding of
# a target that barely changes between baseline and input (f(input) - f(baseline) close to 0).
ABSOLUTE_DELTA_FLOOR = 1e-6


class ConvergenceWarning(RuntimeWarning):
    """Integrated gradients did not converge: its scores miss f(input) - f(baseline) by more than the tolerance.

    A ``RuntimeWarning``, so filters on that category keep working; :class:`attn_probe.Probe` gathers those of
    its batches into one warning (the per-example numbers are in its ``flags`` table)."""


# ----------------------------------------------------------------------------------------------------
# shared by the gradient and the perturbation methods
# ----------------------------------------------------------------------------------------------------
def first_real_columns(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[batch]``: the padded column of each example's first real token (0 for an all-padding row)."""
    return attention_mask.bool().long().argmax(dim=1)


def ablatable(ctx: ExplainContext) -> torch.Tensor:
    """``[batch, n]`` bool: the tokens that perturbations replace and baselines mask: real, not special,
    and, for a decoder-only language model, not the first real token (the one every prediction is conditioned
    on; an encoder-decoder model's encoder input has no such token).

    This is the complement of what ``ctx.baseline_ids()`` keeps, except that the language-model rule
    applies to the first *real* column (``baseline_ids`` keeps column 0, which is padding when a batch is
    padded on the left)."""
    keep = ctx.special.clone()
    if ctx.is_language_model and not ctx.family.is_encoder_decoder:  # a seq2seq prompt starts in the decoder
        rows = torch.arange(keep.shape[0], device=keep.device)
        keep[rows, first_real_columns(ctx.attention_mask).to(keep.device)] = True
    return ~keep


def baseline_ids(ctx: ExplainContext) -> torch.Tensor:
    """``[batch, n]``: every :func:`ablatable` token replaced by ``ctx.replacement_id()``, the rest kept.

    Equals ``ctx.baseline_ids()`` for right-padded (and unpadded) batches."""
    mask = ablatable(ctx)
    return torch.where(mask, torch.full_like(ctx.input_ids, ctx.replacement_id()), ctx.input_ids)


def pad_id(ctx: ExplainContext) -> int:
    """The id written into padded columns of batches built here (RoBERTa derives positions from it)."""
    value = getattr(ctx.tokenizer, "pad_token_id", None)
    if value is None:
        value = getattr(getattr(ctx.model, "config", None), "pad_token_id", None)
    return int(value) if isinstance(value, int) else 0


def extra_inputs(ctx: ExplainContext) -> dict[str, torch.Tensor]:
    """Model inputs besides ``input_ids`` and ``attention_mask`` (e.g. ``token_type_ids`` given in a dict)."""
    return {key: value for key, value in ctx.inputs.items() if key not in ("input_ids", "attention_mask")}


def gather_inputs(
    ctx: ExplainContext, rows: torch.Tensor, columns: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Model inputs for a batch built from this one: example ``rows[r]`` at row ``r``.

    ``columns`` ``[r, w]`` (optional): the source column of every cell, -1 for padding (mask 0, the pad
    id in ``input_ids``, 0 elsewhere): to trim padding, delete tokens or re-pad."""
    out = {}
    for key, value in ctx.inputs.items():
        picked = value[rows]
        # Only inputs aligned with input_ids move with its columns: a seq2seq model's decoder inputs are their
        # own sequence, even when they happen to be as long.
        aligned = not key.startswith("decoder_") and value.dim() >= 2 and value.shape[1] == ctx.input_ids.shape[1]
        if columns is not None and aligned:
            fill = pad_id(ctx) if key == "input_ids" else 0
            index = columns.clamp_min(0).reshape(*columns.shape, *([1] * (value.dim() - 2)))
            picked = picked.gather(1, index.expand(*columns.shape, *value.shape[2:]))
            padding = (columns < 0).reshape(index.shape)
            picked = picked.masked_fill(padding, fill)
        out[key] = picked
    return out


def shifted_target(resolved: ResolvedTarget, positions: torch.Tensor | None) -> ResolvedTarget:
    """``resolved`` read at other (padded) columns: for batches whose columns differ from the original."""
    if positions is None or resolved.positions is None:
        return resolved
    return replace(resolved, positions=positions.to(resolved.ids.device), max_position=int(positions.max()))


@dataclass
class ExampleView:
    """One example trimmed to its real tokens: ``[1, length]`` inputs and the target read there."""

    index: int
    columns: torch.Tensor  # [length] its padded columns in the batch
    inputs: dict[str, torch.Tensor]  # input_ids, attention_mask, ... each [1, length, ...]
    ablatable: torch.Tensor  # [length] bool
    target: ResolvedTarget  # one row, positions relative to the trimmed example

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]


def example_views(ctx: ExplainContext) -> Iterator[ExampleView]:
    """Each example of the batch without its padding (real tokens are contiguous in a padded batch)."""
    mask = ctx.attention_mask.bool()
    movable = ablatable(ctx)
    for i in range(mask.shape[0]):
        columns = torch.nonzero(mask[i]).flatten()
        rows = torch.tensor([i], device=mask.device)
        target = ctx.target.take([i])
        if target.positions is not None:
            target = shifted_target(target, target.positions - columns[0].to(target.positions.device))
        yield ExampleView(i, columns, gather_inputs(ctx, rows, columns[None]), movable[i, columns], target)


def target_forward(ctx: ExplainContext, resolved: ResolvedTarget, names: list[str]) -> Callable[..., torch.Tensor]:
    """``forward(input_ids, attention_mask, rows, *extras) -> [rows]`` target values, for captum.

    ``rows`` says which row of ``resolved`` each input row belongs to; it is passed to captum as an
    additional forward argument so that captum expands it in the same order as the inputs."""

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor, *extras: torch.Tensor):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **dict(zip(names, extras, strict=True))}
        return target_value(resolved.take(rows), ctx.logits(**inputs))

    return forward


def forward_arguments(inputs: dict[str, torch.Tensor], rows: torch.Tensor) -> tuple[list[str], tuple]:
    """``(names of the extra inputs, (attention_mask, rows, *extras))``: captum's additional arguments."""
    names = [key for key in inputs if key not in ("input_ids", "attention_mask")]
    return names, (inputs["attention_mask"], rows, *(inputs[key] for key in names))


def evaluate(
    ctx: ExplainContext,
    resolved: ResolvedTarget,
    inputs: dict[str, torch.Tensor],
    rows: torch.Tensor,
    rows_per_pass: int,
) -> torch.Tensor:
    """``[rows]`` target values without gradients, ``rows_per_pass`` rows at a time."""
    values = []
    with torch.no_grad():
        for start in range(0, rows.shape[0], rows_per_pass):
            part = slice(start, start + rows_per_pass)
            chunk = {key: value[part] for key, value in inputs.items()}
            values.append(target_value(resolved.take(rows[part]), ctx.logits(**chunk)).float())
    return torch.cat(values)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed numpy's and torch's global generators (captum draws from both) and restore them afterwards."""
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            np.random.seed(seed)
            torch.default_generator.manual_seed(seed)
            if devices:
                torch.cuda.manual_seed(seed)
            yield
    finally:
        np.random.set_state(state)


# ----------------------------------------------------------------------------------------------------
# memory
# ----------------------------------------------------------------------------------------------------
def _config_value(config: Any, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_dims(ctx: ExplainContext) -> tuple[int, int, int]:
    """``(layers, hidden, heads)`` from the model's config (ours or Hugging Face's); 12 layers and
    ``hidden / 64`` heads where the config does not say."""
    config = getattr(ctx.model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    weight = getattr(ctx.embedding_layer(), "weight", None)
    hidden = _config_value(config, ("hidden_size", "embed_dim", "n_embd", "d_model", "dim"))
    if hidden is None:
        hidden = int(weight.shape[-1]) if weight is not None else 768
    layers = _config_value(config, ("num_hidden_layers", "num_layers", "n_layer", "n_layers")) or 12
    heads = _config_value(config, ("num_attention_heads", "num_heads", "n_head", "n_heads")) or max(1, hidden // 64)
    return layers, hidden, heads


def estimate_bytes_per_row(ctx: ExplainContext, n_tokens: int, *, backward: bool = True) -> int:
    """Estimated peak bytes one input row of ``n_tokens`` tokens needs in a pass.

    With ``backward`` (gradient methods) every layer's activations stay alive until the backward pass::

        bytes = element_size * (layers * (17 * n * hidden + 2.5 * heads * n**2) + 3 * n * num_logits)

    (17 hidden-sized values per token and layer and 2.5 attention maps per head, after Korthikanti et al.
    2022; the logits, their log-softmax and its gradient). Without, only about two layers are alive at a
    time, and the logits twice.
    """
    layers, hidden, heads = model_dims(ctx)
    parameter = next(ctx.model.parameters(), None)
    element = parameter.element_size() if parameter is not None and parameter.is_floating_point() else 4
    per_layer = VALUES_PER_TOKEN_AND_HIDDEN * n_tokens * hidden + MAPS_PER_HEAD * heads * n_tokens**2
    logits = n_tokens * ctx.target.num_logits if ctx.target.is_sequence else ctx.target.num_logits
    values = layers * per_layer + 3 * logits if backward else 2 * per_layer + 2 * logits
    return max(1, math.ceil(element * values))


def default_memory_budget(device: torch.device) -> int:
    """Half of the free memory of a CUDA device; :data:`CPU_MEMORY_BUDGET` elsewhere."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(CUDA_BUDGET_FRACTION * free)
    return CPU_MEMORY_BUDGET


def memory_budget(ctx: ExplainContext, memory_budget_bytes: int | None) -> int:
    if memory_budget_bytes is None:
        return default_memory_budget(ctx.input_ids.device)
    if memory_budget_bytes <= 0:
        raise ValueError(f"memory_budget_bytes must be positive, got {memory_budget_bytes}")
    return int(memory_budget_bytes)


def rows_within_budget(ctx: ExplainContext, n_tokens: int, budget: int, *, backward: bool = True) -> int:
    """How many rows of ``n_tokens`` tokens fit ``budget`` bytes at once (at least 1)."""
    return max(1, budget // estimate_bytes_per_row(ctx, n_tokens, backward=backward))


def _check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------------
# saliency and input x gradient
# ----------------------------------------------------------------------------------------------------
def _layer_gradients(ctx: ExplainContext, *, multiply_by_inputs: bool, memory_budget_bytes: int | None):
    """``[batch, n, hidden]`` captum's layer gradient (x activation) at the embedding output, and the most rows
    of any pass; similar lengths share a pass, cut to their longest (:mod:`attn_probe.methods.passes`)."""
    batch, n = ctx.input_ids.shape
    device = ctx.input_ids.device
    names, _ = forward_arguments(ctx.inputs, torch.arange(batch, device=device))
    method = LayerGradientXActivation(
        target_forward(ctx, ctx.target, names), ctx.embedding_layer(), multiply_by_inputs=multiply_by_inputs
    )
    budget = memory_budget(ctx, memory_budget_bytes)
    lengths = real_lengths(ctx).cpu() if can_trim(ctx) else torch.full((batch,), n)
    pieces = []
    for chosen in length_passes(
        lengths.numpy(), lambda width: rows_within_budget(ctx, width, budget), padding_policy(device)
    ):
        part = torch.as_tensor(chosen, device=device)
        width = int(lengths[chosen].max())
        inputs = trimmed_inputs(ctx, part, width)
        _, arguments = forward_arguments(inputs, part)
        gradients = method.attribute(inputs["input_ids"], additional_forward_args=arguments).detach().float()
        pieces.append((part, width, gradients))  # gradients [len(part), width, hidden]
    hidden = pieces[0][2].shape[-1] if pieces else 0
    out = torch.zeros(batch, n, hidden, device=device)  # [batch, n, hidden]; padding cells stay 0
    for part, width, gradients in pieces:
        out[part, :width] = gradients.to(device)
    return out, max((len(part) for part, _, _ in pieces), default=0)


SALIENCY = MethodInfo(
    id="saliency",
    family="gradient",
    needs_gradients=True,
    cost="1 forward + 1 backward",
    sign="non-negative magnitude: the L2 norm over the hidden dimension of the target's gradient at the token's "
    "embedding (no direction)",
    description="Gradient of the target with respect to each token's embedding (the output of the token "
    "embedding layer), reduced to one number per token by its L2 norm.",
    reference="Simonyan, Vedaldi & Zisserman 2014, Deep Inside Convolutional Networks (adapted to tokens as in "
    "Li et al. 2016, Visualizing and Understanding Neural Models in NLP)",
)


@register(SALIENCY)
def saliency(ctx: ExplainContext, *, memory_budget_bytes: int | None = None) -> Explanation:
    gradients, size = _layer_gradients(ctx, multiply_by_inputs=False, memory_budget_bytes=memory_budget_bytes)
    return ctx.finish(
        SALIENCY,
        gradients.norm(dim=-1),
        details={"rows_per_pass": size},
        options={"memory_budget_bytes": memory_budget_bytes},
    )


INPUT_X_GRADIENT = MethodInfo(
    id="input_x_gradient",
    family="gradient",
    needs_gradients=True,
    cost="1 forward + 1 backward",
    sign="signed: positive pushes the target up (first-order Taylor term of removing the embedding)",
    description="Token embedding times the target's gradient with respect to it, summed over the hidden dimension.",
    reference="Shrikumar et al. 2016, Not Just a Black Box; Kindermans et al. 2016, Investigating the influence "
    "of noise and distractors on the interpretation of neural networks",
)


@register(INPUT_X_GRADIENT)
def input_x_gradient(ctx: ExplainContext, *, memory_budget_bytes: int | None = None) -> Explanation:
    attributions, size = _layer_gradients(ctx, multiply_by_inputs=True, memory_budget_bytes=memory_budget_bytes)
    return ctx.finish(
        INPUT_X_GRADIENT,
        attributions.sum(dim=-1),
        details={"rows_per_pass": size},
        options={"memory_budget_bytes": memory_budget_bytes},
    )


# ----------------------------------------------------------------------------------------------------
# integrated gradients
# ----------------------------------------------------------------------------------------------------
INTEGRATED_GRADIENTS = MethodInfo(
    id="integrated_gradients",
    family="gradient",
    needs_gradients=True,
    cost="n_steps x (forward + backward) + 1 forward (embeddings and target at the input and the baseline)",
    sign="signed: positive pushes the target up; per example the scores sum to f(input) - f(baseline) "
    "(completeness; the remainder is details['convergence_delta'])",
    description="Gradients integrated along the straight line from the baseline's token embeddings ([MASK] or "
    "pad for every real non-special token) to the input's, times the embedding difference, summed over the "
    "hidden dimension.",
    reference="Sundararajan, Taly & Yan 2017, Axiomatic Attribution for Deep Networks",
)


@dataclass
class PathEnds:
    """Both ends of a pass's integration path: the token embeddings ``[rows, width, hidden]`` and the target ``[rows]``
    at the input and at the baseline."""

    input_embeddings: torch.Tensor
    baseline_embeddings: torch.Tensor
    input_target: torch.Tensor
    baseline_target: torch.Tensor


def path_ends(
    ctx: ExplainContext, layer: nn.Module, inputs: dict[str, torch.Tensor], baseline: torch.Tensor, rows: torch.Tensor
) -> PathEnds:
    """One forward pass without gradients of ``inputs`` and their ``baseline`` ids stacked (``2 * rows``), reading
    the output of ``layer`` (the embeddings; its first call in the pass, the encoder's in a seq2seq model) and the
    target: what captum's layer integrated gradients finds in two passes, and the convergence check in two more."""
    stacked = {key: torch.cat([value, value]) for key, value in inputs.items()}
    stacked["input_ids"] = torch.cat([inputs["input_ids"], baseline])
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, args, output: seen.append(output) if not seen else None)
    try:
        with torch.no_grad():
            logits = ctx.logits(**stacked)
    finally:
        handle.remove()
    target = target_value(ctx.target.take(torch.cat([rows, rows])), logits).float()
    count = len(rows)
    return PathEnds(seen[0][:count], seen[0][count:], target[:count], target[count:])


@register(INTEGRATED_GRADIENTS)
def integrated_gradients(
    ctx: ExplainContext,
    *,
    n_steps: int = 50,
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
    memory_budget_bytes: int | None = None,
    delta_tolerance: float = 0.05,
) -> Explanation:
    """Options: ``n_steps`` and ``method`` (captum's quadrature: ``gausslegendre``, ``riemann_trapezoid``,
    ...); ``internal_batch_size``: rows per forward + backward pass (default: as many as
    ``memory_budget_bytes`` allows, see :func:`estimate_bytes_per_row`); ``delta_tolerance``: warn (a
    :class:`ConvergenceWarning`, a ``RuntimeWarning``) when an example's ``|convergence delta|`` exceeds this share
    of ``|f(input) - f(baseline)|`` (and :data:`ABSOLUTE_DELTA_FLOOR`; :func:`not_converged`). Through
    :func:`attn_probe.findings.assess` its default is the threshold ``ig_relative_convergence_delta``, and every
    example's delta lands in the ``flags`` table (:mod:`attn_probe.findings.flags`).

    ``details``: ``convergence_delta`` ``[batch]`` (sum of the scores minus ``f(input) - f(baseline)``),
    ``relative_convergence_delta``, ``target_at_input``, ``target_at_baseline``, ``baseline_ids``,
    ``internal_batch_size`` and ``examples_per_call`` (the largest of any call), ``passes`` (per captum call:
    ``examples``, ``width``, ``internal_batch_size``; examples of similar length share a call, cut to the longest
    of them, see :mod:`attn_probe.methods.passes`), ``estimated_bytes_per_row`` (at the batch's width),
    ``memory_budget_bytes``.
    """
    n_steps = _check_positive("n_steps", n_steps)
    if delta_tolerance < 0:
        raise ValueError(f"delta_tolerance must be >= 0, got {delta_tolerance}")
    if internal_batch_size is not None:
        internal_batch_size = _check_positive("internal_batch_size", internal_batch_size)
    batch, n = ctx.input_ids.shape
    device = ctx.input_ids.device
    budget = memory_budget(ctx, memory_budget_bytes)
    baselines = baseline_ids(ctx)  # [batch, n]
    names, _ = forward_arguments(ctx.inputs, torch.arange(batch, device=device))
    layer = ctx.embedding_layer()
    ig = IntegratedGradients(_injecting_forward(ctx, ctx.target, names))

    def rows_that_fit(width: int) -> int:  # (example, step) rows of this width one forward + backward can hold
        return max(1, budget // estimate_bytes_per_row(ctx, width))

    def examples_for_width(width: int) -> int:  # examples per captum call: all their steps at once, if they fit
        return internal_batch_size if internal_batch_size is not None else max(1, rows_that_fit(width) // n_steps)

    # Similar lengths share a call, cut to their longest (attn_probe.methods.passes): no pass pays for the batch's
    # longest example. Per pass one forward gives both ends of the path (embeddings and target at the input and at
    # the baseline: the convergence delta), then captum integrates at the embedding output.
    trim = can_trim(ctx)
    lengths = real_lengths(ctx).cpu() if trim else torch.full((batch,), n)
    scores_t = torch.zeros(batch, n, device=device)
    at_input = torch.zeros(batch, device=device)
    at_baseline = torch.zeros(batch, device=device)
    passes = []
    for chosen in length_passes(lengths.numpy(), examples_for_width, padding_policy(device), repeats=n_steps):
        part = torch.as_tensor(chosen, device=device)
        width = int(lengths[chosen].max())
        inputs = trimmed_inputs(ctx, part, width)
        rows = internal_batch_size or max(len(part), min(len(part) * n_steps, rows_that_fit(width)))
        ends = path_ends(ctx, layer, inputs, baselines[part, :width], part)
        _, arguments = forward_arguments(inputs, part)
        attributions = ig.attribute(
            ends.input_embeddings,
            baselines=ends.baseline_embeddings,
            additional_forward_args=(inputs["input_ids"], *arguments),
            n_steps=n_steps,
            method=method,
            internal_batch_size=rows if rows < len(part) * n_steps else None,
        )  # [len(part), width, hidden]
        scores_t[part, :width] = attributions.detach().float().sum(dim=-1)
        at_input[part], at_baseline[part] = ends.input_target, ends.baseline_target
        passes.append({"examples": len(part), "width": width, "internal_batch_size": min(rows, len(part) * n_steps)})
    # completeness: the scores should sum to f(input) - f(baseline); what they miss is the convergence delta
    delta_t = scores_t.sum(dim=1) - (at_input - at_baseline)
    difference = (at_input - at_baseline).abs()
    relative = delta_t.abs() / difference.clamp_min(1e-12)
    bad = not_converged(delta_t, relative, delta_tolerance)
    if bool(bad.any()):
        worst = int(torch.argmax(torch.where(bad, relative, torch.zeros_like(relative))))
        expected = float(at_input[worst] - at_baseline[worst])
        warnings.warn(
            f"integrated gradients did not converge for example(s) {torch.nonzero(bad).flatten().tolist()}: the "
            f"scores of example {worst} miss f(input) - f(baseline) = {expected:.4g} "
            f"by {float(delta_t[worst]):.3g} ({float(relative[worst]):.1%}, tolerance {delta_tolerance:.1%}); "
            f"raise n_steps (now {n_steps})",
            ConvergenceWarning,
            stacklevel=2,
        )
    details = {
        "convergence_delta": delta_t.cpu(),
        "relative_convergence_delta": relative.cpu(),
        "target_at_input": at_input.cpu(),
        "target_at_baseline": at_baseline.cpu(),
        "baseline_ids": baselines.cpu(),
        "internal_batch_size": max((p["internal_batch_size"] for p in passes), default=0),
        "examples_per_call": max((p["examples"] for p in passes), default=0),
        "passes": passes,
        "estimated_bytes_per_row": estimate_bytes_per_row(ctx, n),
        "memory_budget_bytes": budget,
    }
    options = {
        "n_steps": n_steps,
        "method": method,
        "internal_batch_size": internal_batch_size,
        "memory_budget_bytes": memory_budget_bytes,
        "delta_tolerance": delta_tolerance,
    }
    return ctx.finish(INTEGRATED_GRADIENTS, scores_t, details=details, options=options)


def not_converged(delta: torch.Tensor, relative: torch.Tensor, tolerance: float) -> torch.Tensor:
    """``[batch]`` bool: the examples whose integrated gradients did not converge: a relative convergence delta
    above ``tolerance`` and an absolute one above :data:`ABSOLUTE_DELTA_FLOOR`."""
    return (relative > tolerance) & (delta.abs() > ABSOLUTE_DELTA_FLOOR)


# ----------------------------------------------------------------------------------------------------
# GradientSHAP
# ----------------------------------------------------------------------------------------------------
GRADIENT_SHAP = MethodInfo(
    id="gradient_shap",
    family="gradient",
    needs_gradients=True,
    cost="per example: n_samples x (forward + backward) + n_baselines + 1 forwards",
    sign="signed: positive pushes the target up; in expectation the scores sum to f(input) minus the mean "
    "target over the baselines (details['completeness_gap'] is the sampling error)",
    description="Expected gradients: the gradient at a random point between the input's token embeddings "
    "and a baseline's, times their difference, averaged over random points and baselines. The baselines "
    "replace the real non-special tokens by [MASK]/pad: all of them, and in the others each token is kept "
    "with probability keep_probability.",
    reference="Lundberg & Lee 2017, A Unified Approach to Interpreting Model Predictions; Erion et al. 2021, "
    "Improving performance of deep learning models with axiomatic attribution priors and expected gradients",
)


def _injecting_forward(ctx: ExplainContext, resolved: ResolvedTarget, names: list[str]) -> Callable[..., torch.Tensor]:
    """``forward(embeddings, input_ids, attention_mask, rows, *extras)``: the model run on ``input_ids`` with
    the token embedding layer's output replaced by ``embeddings`` (what captum's layer methods do inside). Only
    its first call in a pass is replaced: a seq2seq model's decoder calls the shared embedding again after the
    encoder, on its own tokens."""
    layer = ctx.embedding_layer()
    inner = target_forward(ctx, resolved, names)

    def forward(embeddings: torch.Tensor, input_ids: torch.Tensor, *arguments: torch.Tensor) -> torch.Tensor:
        calls: list[int] = []

        def replace_output(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
            calls.append(1)
            if len(calls) > 1:
                return None
            if output.shape != embeddings.shape:
                raise RuntimeError(f"embedding output {tuple(output.shape)} vs injected {tuple(embeddings.shape)}")
            return embeddings

        handle = layer.register_forward_hook(replace_output)
        try:
            return inner(input_ids, *arguments)
        finally:
            handle.remove()

    return forward


@register(GRADIENT_SHAP)
def gradient_shap(
    ctx: ExplainContext,
    *,
    n_samples: int = 32,
    n_baselines: int = 8,
    keep_probability: float = 0.25,
    seed: int = 0,
    memory_budget_bytes: int | None = None,
) -> Explanation:
    """Options: ``n_samples`` (random points per example), ``n_baselines`` (the size of the baseline
    distribution: the all-replaced baseline plus ``n_baselines - 1`` with each replaceable token kept with
    probability ``keep_probability``), ``seed`` (the same draws for an example alone or in any batch).

    captum's ``LayerGradientShap`` cannot be used on token ids: it interpolates between input and baseline
    in *input* space (``LayerInputBaselineXGradient`` scales the ids themselves), which gives fractional
    token ids. So captum's ``GradientShap`` runs on the embedding output, injected into the model with a
    forward hook, one example at a time: its baseline distribution is shared by all examples of a call,
    but ours depends on each example's tokens. Each example runs without its padding and with the same
    seed, so its scores do not depend on the batch it came in.

    (DeepLIFT / ``LayerDeepLift`` is not offered: its rescale rules replace the gradient only at
    nonlinearities that are ``nn.Module`` instances it knows, so the functional GELU/SiLU, softmax,
    LayerNorm and the products of activations (q·k, weights·values, SwiGLU's gate) inside a transformer
    fall back to plain gradients, and summation-to-delta fails without a warning.)
    """
    n_samples = _check_positive("n_samples", n_samples)
    n_baselines = _check_positive("n_baselines", n_baselines)
    if not 0.0 <= keep_probability < 1.0:
        raise ValueError(f"keep_probability must be within [0, 1), got {keep_probability}")
    batch, n = ctx.input_ids.shape
    device = ctx.input_ids.device
    budget = memory_budget(ctx, memory_budget_bytes)
    replacement = ctx.replacement_id()
    scores = torch.zeros(batch, n, device=device)
    at_input = torch.zeros(batch)
    mean_at_baselines = torch.zeros(batch)
    layer = ctx.embedding_layer()
    for view in example_views(ctx):
        ids = view.input_ids  # [1, length]
        movable = torch.nonzero(view.ablatable).flatten()
        length = ids.shape[1]
        zero_row = torch.zeros(1, dtype=torch.long, device=device)
        names, _ = forward_arguments(view.inputs, zero_row)
        forward_rows = rows_within_budget(ctx, length, budget, backward=False)
        at_input[view.index] = evaluate(ctx, view.target, view.inputs, zero_row, forward_rows)[0]
        if movable.numel() == 0:
            mean_at_baselines[view.index] = at_input[view.index]
            continue
        generator = torch.Generator().manual_seed(seed)
        kept = torch.rand(n_baselines - 1, movable.numel(), generator=generator) < keep_probability
        kept = torch.cat([torch.zeros(1, movable.numel(), dtype=torch.bool), kept]).to(device)  # [K, m]
        baselines = ids.repeat(n_baselines, 1)
        baselines[:, movable] = torch.where(kept, ids[:, movable], torch.full_like(kept, replacement, dtype=torch.long))
        base_inputs = {key: value.expand(n_baselines, *value.shape[1:]) for key, value in view.inputs.items()}
        base_inputs["input_ids"] = baselines
        values = evaluate(ctx, view.target, base_inputs, zero_row.expand(n_baselines), forward_rows)
        mean_at_baselines[view.index] = values.mean()
        with torch.no_grad():
            x_embedded, b_embedded = layer(ids), layer(baselines)
        method = GradientShap(_injecting_forward(ctx, view.target, names))
        _, arguments = forward_arguments(view.inputs, zero_row)
        per_pass = rows_within_budget(ctx, length, budget)
        total = torch.zeros(x_embedded.shape, dtype=torch.float32, device=device)
        with seeded(seed, device):
            for start in range(0, n_samples, per_pass):
                count = min(per_pass, n_samples - start)
                part = method.attribute(
                    x_embedded,
                    baselines=b_embedded,
                    n_samples=count,
                    stdevs=0.0,
                    additional_forward_args=(ids, *arguments),
                )
                total += part.detach().float() * count
        scores[view.index, view.columns] = (total / n_samples).sum(dim=-1)[0]
    gap = scores.sum(dim=1).cpu() - (at_input - mean_at_baselines)
    details = {
        "target_at_input": at_input,
        "mean_target_at_baselines": mean_at_baselines,
        "completeness_gap": gap,
    }
    options = {
        "n_samples": n_samples,
        "n_baselines": n_baselines,
        "keep_probability": keep_probability,
        "seed": seed,
        "memory_budget_bytes": memory_budget_bytes,
    }
    return ctx.finish(GRADIENT_SHAP, scores, details=details, options=options)
