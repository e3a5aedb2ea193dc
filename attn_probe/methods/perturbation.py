"""Perturbation attributions in token-id space: occlusion, deletion and Kernel SHAP.

Perturbations never decode to text and re-tokenize (that would change the tokens being scored): they
replace ids by ``ctx.replacement_id()`` ([MASK] where the tokenizer has one, else pad) or delete them. Only
real, non-special tokens are perturbed (and not a language model's first token, the one every prediction
is conditioned on); special tokens and padding get score 0. Every score is read on the resolved target
(:mod:`attn_probe.capture.targets`): ``f(x) - f(x perturbed)``, positive when the token supported the
target. captum does the occlusion (``FeatureAblation``) and the Shapley estimate (``KernelShap``); the
deletion variant is ours, since captum has no drop-token ablation. Forward passes are batched within a
memory budget (:func:`attn_probe.methods.gradient.rows_within_budget`, forward-only estimate).
"""

from __future__ import annotations

from typing import Any

import torch
from captum._utils.models.linear_model import LinearModel
from captum.attr import FeatureAblation, KernelShap
from torch.utils.data import DataLoader

from attn_probe.methods.base import ExplainContext, Explanation, MethodInfo, register
from attn_probe.methods.gradient import (
    _check_positive,
    ablatable,
    evaluate,
    example_views,
    forward_arguments,
    gather_inputs,
    memory_budget,
    rows_within_budget,
    seeded,
    shifted_target,
    target_forward,
)

LEAVE_ONE_OUT = MethodInfo(
    id="leave_one_out",
    family="perturbation",
    needs_gradients=False,
    cost="1 + m forwards of the batch (m = the most replaceable tokens of an example), several per pass",
    sign="signed: f(x) - f(x with the token replaced by [MASK]/pad); positive = the token supported the target",
    description="Occlusion of one token at a time: its id replaced by the tokenizer's mask (else pad) id, "
    "the change of the target recorded. Special tokens and padding are not replaced (score 0).",
    reference="Li, Monroe & Jurafsky 2016, Understanding Neural Networks through Representation Erasure",
)


@register(LEAVE_ONE_OUT)
def leave_one_out(
    ctx: ExplainContext, *, perturbations_per_eval: int | None = None, memory_budget_bytes: int | None = None
) -> Explanation:
    """captum's ``FeatureAblation`` on ``input_ids``: one feature per replaceable token, baselines the
    replacement id. The tokens that are not replaced share one more feature whose baseline is the token
    itself (a no-op ablation: captum ablates every feature of the mask). ``perturbations_per_eval``
    (default: what the memory budget allows) ablations run in one forward pass."""
    ids = ctx.input_ids
    batch, n = ids.shape
    movable = ablatable(ctx)
    features = int(movable.sum(dim=1).max()) if batch else 0
    rows = torch.arange(batch, device=ids.device)
    budget = memory_budget(ctx, memory_budget_bytes)
    if perturbations_per_eval is None:
        per_eval = max(1, rows_within_budget(ctx, n, budget, backward=False) // batch)
        per_eval = min(per_eval, features + 1)
    else:
        per_eval = _check_positive("perturbations_per_eval", perturbations_per_eval)
    if features == 0:
        scores = torch.zeros(batch, n, device=ids.device)
    else:
        rank = movable.long().cumsum(dim=1) - 1
        feature_mask = torch.where(movable, rank, torch.full_like(rank, features))
        baselines = torch.where(movable, torch.full_like(ids, ctx.replacement_id()), ids)
        names, arguments = forward_arguments(ctx.inputs, rows)
        ablation = FeatureAblation(target_forward(ctx, ctx.target, names))
        with torch.no_grad():
            scores = ablation.attribute(
                ids,
                baselines=baselines,
                additional_forward_args=arguments,
                feature_mask=feature_mask,
                perturbations_per_eval=per_eval,
            )
        scores = scores.float().masked_fill(~movable, 0.0)
    return ctx.finish(
        LEAVE_ONE_OUT,
        scores,
        details={"perturbations_per_eval": per_eval, "replacement_id": ctx.replacement_id()},
        options={"perturbations_per_eval": perturbations_per_eval, "memory_budget_bytes": memory_budget_bytes},
    )


LEAVE_ONE_OUT_DROP = MethodInfo(
    id="leave_one_out_drop",
    family="perturbation",
    needs_gradients=False,
    cost="1 + m forwards per example (m = its replaceable tokens), batched across examples",
    sign="signed: f(x) - f(x without the token); positive = the token supported the target",
    description="Deletion of one token at a time: the sequence shortened by that token (later tokens shift "
    "left, the attention mask is one shorter), the change of the target recorded. A language model's target "
    "is read at the same token as before (one column to the left when the deleted token came before it; at "
    "the previous token when the deleted token was the predicting one). Special tokens, padding and an "
    "example's only token (nothing would be left to run) are not deleted (score 0).",
    reference="Li, Monroe & Jurafsky 2016, Understanding Neural Networks through Representation Erasure",
)


def _padding_side(attention_mask: torch.Tensor) -> str:
    return "left" if bool((attention_mask[:, 0] == 0).any()) and bool((attention_mask[:, -1] == 1).all()) else "right"


@register(LEAVE_ONE_OUT_DROP)
def leave_one_out_drop(
    ctx: ExplainContext, *, batch_size: int | None = None, memory_budget_bytes: int | None = None
) -> Explanation:
    """All deletion variants of all examples form one batch (rows = variants), padded on the batch's
    padding side to the longest variant and run ``batch_size`` rows per pass (default: what the memory
    budget allows). ``details["variants"]``: how many variants each example had."""
    ids, mask = ctx.input_ids, ctx.attention_mask
    batch, n = ids.shape
    device = ids.device
    movable = ablatable(ctx)
    budget = memory_budget(ctx, memory_budget_bytes)
    side = _padding_side(mask)
    real = mask.bool()

    sources, columns, dropped, positions = [], [], [], []  # one entry per variant
    variants = torch.zeros(batch, dtype=torch.long)
    for i in range(batch):
        cols = torch.nonzero(real[i]).flatten()
        if len(cols) < 2:
            # Deleting an example's only token leaves no input: a batch of such variants has width 0 (the model
            # fails), and beside longer ones it is an all-padding row whose output means nothing (and that an
            # example alone never sees). The token is not deleted, like a special token (score 0).
            continue
        for j in torch.nonzero(movable[i, cols]).flatten().tolist():
            variants[i] += 1
            sources.append(i)
            columns.append(torch.cat([cols[:j], cols[j + 1 :]]))
            dropped.append((i, int(cols[j])))
            if ctx.target.positions is not None and not ctx.family.is_encoder_decoder:  # seq2seq: decoder columns
                rank = int(ctx.target.positions[i]) - int(cols[0])  # the predicting token among real ones
                positions.append(max(0, rank - (j <= rank)))
    scores = torch.zeros(batch, n, device=device)
    if sources:
        width = max(len(c) for c in columns)
        index = torch.full((len(columns), width), -1, dtype=torch.long, device=device)
        for r, cols in enumerate(columns):
            offset = width - len(cols) if side == "left" else 0
            index[r, offset : offset + len(cols)] = cols
            if positions:
                positions[r] += offset
        rows = torch.tensor(sources, device=device)
        inputs = gather_inputs(ctx, rows, index)
        resolved = ctx.target.take(rows)
        if positions:
            resolved = shifted_target(resolved, torch.tensor(positions, device=device))
        per_pass = rows_within_budget(ctx, width, budget, backward=False) if batch_size is None else batch_size
        per_pass = _check_positive("batch_size", per_pass)
        variant_rows = torch.arange(len(sources), device=device)
        at_variants = evaluate(ctx, resolved, inputs, variant_rows, per_pass)
        everyone = torch.arange(batch, device=device)
        at_input = evaluate(ctx, ctx.target, ctx.inputs, everyone, rows_within_budget(ctx, n, budget, backward=False))
        example, column = torch.tensor(dropped, device=device).unbind(dim=1)
        scores[example, column] = at_input[example] - at_variants
    else:
        per_pass = batch_size
    return ctx.finish(
        LEAVE_ONE_OUT_DROP,
        scores,
        details={"batch_size": per_pass, "variants": variants, "padding_side": side},
        options={"batch_size": batch_size, "memory_budget_bytes": memory_budget_bytes},
    )


KERNEL_SHAP = MethodInfo(
    id="kernel_shap",
    family="perturbation",
    needs_gradients=False,
    cost="per example: n_samples forwards (several per pass) + a weighted linear regression",
    sign="signed Shapley-value estimate: positive = the token supported the target; per example the scores "
    "sum to about f(x) - f(all replaceable tokens replaced)",
    description="Kernel SHAP over the real non-special tokens: random coalitions of tokens kept, the others "
    "replaced by [MASK]/pad, and a Shapley-kernel-weighted linear regression of the target on which tokens "
    "were kept.",
    reference="Lundberg & Lee 2017, A Unified Approach to Interpreting Model Predictions",
)


def weighted_least_squares(model: LinearModel, dataloader: DataLoader, construct_kwargs: dict[str, Any], **_: Any):
    """captum ``LinearModel`` train function: weighted least squares with an intercept, solved in closed form
    (float64, minimum-norm solution): what captum's default ``SkLearnLinearRegression`` computes, without
    scikit-learn, which attn_probe does not depend on."""
    xs, ys, ws = [], [], []
    for data in dataloader:
        x, y = data[0], data[1]
        xs.append(x.detach().cpu().double().reshape(x.shape[0], -1))
        ys.append(y.detach().cpu().double().reshape(-1))
        ws.append(data[2].detach().cpu().double().reshape(-1) if len(data) > 2 else torch.ones(x.shape[0]))
    x, y, w = torch.cat(xs), torch.cat(ys), torch.cat(ws)
    design = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1) * w.sqrt()[:, None]
    solution = torch.linalg.lstsq(design, (y * w.sqrt())[:, None], driver="gelsd").solution[:, 0]
    device = getattr(model, "device", "cpu")
    model._construct_model_params(
        norm_type=None,
        weight_values=solution[:-1].float()[None].to(device),
        bias_value=solution[-1:].float().to(device),
        **construct_kwargs,
    )
    return {}


@register(KERNEL_SHAP)
def kernel_shap(
    ctx: ExplainContext,
    *,
    n_samples: int = 200,
    seed: int = 0,
    perturbations_per_eval: int | None = None,
    memory_budget_bytes: int | None = None,
) -> Explanation:
    """captum's ``KernelShap``, one example at a time (it fits one regression per example anyway) without
    its padding and with the same ``seed``, so that an example's scores do not depend on its batch. The
    features are the replaceable tokens only: captum sees just their ids, and the forward function writes
    them back into the example (special tokens are no feature at all, not even a null one)."""
    n_samples = _check_positive("n_samples", n_samples)
    batch, n = ctx.input_ids.shape
    device = ctx.input_ids.device
    budget = memory_budget(ctx, memory_budget_bytes)
    scores = torch.zeros(batch, n, device=device)
    chosen = []
    for view in example_views(ctx):
        movable = torch.nonzero(view.ablatable).flatten()
        if movable.numel() == 0:
            continue
        length = view.input_ids.shape[1]
        per_eval = perturbations_per_eval
        if per_eval is None:
            per_eval = min(n_samples, rows_within_budget(ctx, length, budget, backward=False))
        per_eval = _check_positive("perturbations_per_eval", per_eval)
        chosen.append(per_eval)
        zero_row = torch.zeros(1, dtype=torch.long, device=device)
        if movable.numel() == 1:  # one player: its Shapley value is the whole difference (captum needs >= 2)
            ids = view.input_ids
            both = {key: value.expand(2, *value.shape[1:]) for key, value in view.inputs.items()}
            both["input_ids"] = torch.cat([ids, ids.index_fill(1, movable, ctx.replacement_id())])
            values = evaluate(ctx, view.target, both, zero_row.expand(2), 2)
            scores[view.index, view.columns[movable]] = values[0] - values[1]
            continue
        names, arguments = forward_arguments(view.inputs, zero_row)
        inner = target_forward(ctx, view.target, names)

        def forward(tokens, template, attention_mask, *rest, movable=movable, inner=inner):
            full = template.clone()
            full[:, movable] = tokens
            return inner(full, attention_mask, *rest)

        method = KernelShap(forward)
        method.interpretable_model = LinearModel(train_fn=weighted_least_squares)
        with seeded(seed, device), torch.no_grad():
            attributions = method.attribute(
                view.input_ids[:, movable],
                baselines=ctx.replacement_id(),
                additional_forward_args=(view.input_ids, *arguments),
                n_samples=n_samples,
                perturbations_per_eval=per_eval,
            )
        scores[view.index, view.columns[movable]] = attributions[0].float()
    return ctx.finish(
        KERNEL_SHAP,
        scores,
        details={"perturbations_per_eval": chosen},
        options={
            "n_samples": n_samples,
            "seed": seed,
            "perturbations_per_eval": perturbations_per_eval,
            "memory_budget_bytes": memory_budget_bytes,
        },
    )
