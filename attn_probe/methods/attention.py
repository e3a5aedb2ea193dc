"""Attention-derived explanations: raw weights, rollout, norm-based, value zeroing, and two gradient hybrids.

Every method reads the main stack of the capture (the encoder of a classifier, the decoder of a language
model) and the *target row*: the query whose attention leads to the target ([CLS] / the first token of a
classifier, the predicting position of a language model; :meth:`ExplainContext.target_rows`). Scores are
``[batch, n]``, padding 0, and the whole batch is processed at once (a padded batch gives what its examples
give alone).

=========================  ======  ==========================================================================
id                         family  score of token j for target row i
=========================  ======  ==========================================================================
``raw_attention``          attn.   ``a^{l,h}_ij`` at one layer (default the last), heads averaged / max / one
``attention_rollout``      attn.   ``(Â_L ... Â_1)_ij``, ``Â_l = (1 - r) mean_h A^{l,h} + r I`` (rows renormed)
``attention_norm``         attn.   ``|| Σ_h a^{l,h}_ij f^{l,h}(x_j) ||``, ``f^{l,h}(x_j) = W_O^{l,h} v^{l,h}_j``
``value_zeroing``          pert.   rollout of the row-normalised ``1 - cos(x̃^{l, ¬j}_i, x^l_i)``
``attention_grad_rollout`` hybrid  ``(Π_l (I + Ā_l) - I)_ij``, ``Ā_l = mean_h (∇A^{l,h} ⊙ A^{l,h})^+``
``attention_x_gradient``   hybrid  ``Σ_l Σ_h a^{l,h}_ij ∂T/∂a^{l,h}_ij``
=========================  ======  ==========================================================================

Gradients with respect to attention weights are taken at the tensors the model actually used: an
identity "edit" (:func:`attn_probe.capture.intervene`) hands each layer's weights over before they are used.
The stacked ``[batch, layers, ...]`` weights of a ``grad=True`` capture cannot serve: ``torch.stack`` builds
a *new* tensor downstream of the per-layer weights, and the logits do not depend on it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from attn_probe.capture import StackCapture, intervene
from attn_probe.methods.base import ExplainContext, Explanation, MethodInfo, register
from attn_probe.methods.graph import residual_attention

__all__ = [
    "attention_grad_rollout",
    "attention_norm",
    "attention_rollout",
    "attention_x_gradient",
    "raw_attention",
    "rollout",
    "target_row",
    "value_zeroing",
    "value_zeroing_distances",
]


# ----------------------------------------------------------------------------------------------------
# pure helpers
# ----------------------------------------------------------------------------------------------------
def rollout(matrices: torch.Tensor) -> torch.Tensor:
    """``matrices [..., layers, n, n]`` (layer 0 first) -> ``[..., layers, n, n]`` cumulative products.

    Entry ``l`` is ``M_l @ M_{l-1} @ ... @ M_0``: row i says how much of query i's representation after
    layer l flows from each input token (Abnar & Zuidema 2020). Rows that sum to 1 keep summing to 1.
    """
    if matrices.dim() < 3 or matrices.shape[-1] != matrices.shape[-2]:
        raise ValueError(f"rollout needs [..., layers, n, n] matrices, got shape {tuple(matrices.shape)}")
    joint = matrices[..., 0, :, :]  # [..., n, n]
    steps = [joint]
    for layer in range(1, matrices.shape[-3]):
        joint = matrices[..., layer, :, :] @ joint  # [..., n, n]
        steps.append(joint)
    return torch.stack(steps, dim=-3)  # [..., layers, n, n]


def target_row(matrix: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``matrix [batch, ..., n, n]``, ``rows [batch]`` -> ``[batch, ..., n]``: row ``rows[b]`` of example b."""
    index = rows.to(matrix.device).view(-1, *([1] * (matrix.dim() - 1)))  # [batch, 1, ..., 1]
    index = index.expand(*matrix.shape[:-2], 1, matrix.shape[-1])  # [batch, ..., 1, n]
    return matrix.gather(-2, index).squeeze(-2)  # [batch, ..., n]


def _layer_index(layer: int, num_layers: int) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"layer must be an int (negative counts from the end), got {layer!r}")
    if not -num_layers <= layer < num_layers:
        raise IndexError(
            f"layer {layer} does not exist: the model has layers 0..{num_layers - 1} (or -1..-{num_layers})"
        )
    return layer % num_layers


def _real_pairs(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[batch, 1, n, n]`` float: 1 where both query and key are real tokens."""
    real = attention_mask.bool()  # [b, n]
    return (real[:, :, None] & real[:, None, :]).float()[:, None]  # [b, 1, n, n]


def _main_stack(ctx: ExplainContext) -> StackCapture:
    cap = ctx.capture()
    return cap.stacks[cap.main_stack]


# ----------------------------------------------------------------------------------------------------
# raw attention
# ----------------------------------------------------------------------------------------------------
RAW_ATTENTION = MethodInfo(
    id="raw_attention",
    family="attention",
    needs_gradients=False,
    cost="1 forward (shared)",
    sign="non-negative share of the target row's attention (a head's row sums to 1)",
    description=(
        "The attention weights of the target row at one layer (default the last): heads averaged, their max, "
        "or one head. layer_scores: every layer's head mean; head_scores: every layer and head."
    ),
    reference="Bahdanau et al. 2015; as an explanation, questioned by Jain & Wallace 2019 and Wiegreffe & Pinter 2019",
)


@register(RAW_ATTENTION)
def raw_attention(ctx: ExplainContext, *, layer: int = -1, head: int | str = "mean") -> Explanation:
    """``score_j = a^{l,h}_ij`` for the target row i at ``layer`` (negative counts from the end).

    ``head``: ``"mean"`` (``mean_h a^{l,h}_ij``), ``"max"`` (``max_h a^{l,h}_ij``) or a head index.
    """
    stack = _main_stack(ctx)
    num_layers, num_heads = stack.num_layers, stack.num_heads
    chosen = _layer_index(layer, num_layers)
    rows = ctx.target_rows()  # [b]
    head_scores = target_row(stack.weights.float(), rows)  # [b, L, H, n]
    layer_scores = head_scores.mean(dim=2)  # [b, L, n]
    if head == "mean":
        scores = layer_scores[:, chosen]  # [b, n]
    elif head == "max":
        scores = head_scores[:, chosen].amax(dim=1)  # [b, n]
    elif isinstance(head, int) and not isinstance(head, bool):
        if not -num_heads <= head < num_heads:
            raise IndexError(f"head {head} does not exist: layer {chosen} has heads 0..{num_heads - 1}")
        scores = head_scores[:, chosen, head]  # [b, n]
    else:
        raise ValueError(f"head must be 'mean', 'max' or a head index, got {head!r}")
    return ctx.finish(
        RAW_ATTENTION,
        scores,
        layer_scores=layer_scores,
        head_scores=head_scores,
        options={"layer": chosen, "head": head},
    )


# ----------------------------------------------------------------------------------------------------
# attention rollout
# ----------------------------------------------------------------------------------------------------
ATTENTION_ROLLOUT = MethodInfo(
    id="attention_rollout",
    family="attention",
    needs_gradients=False,
    cost="1 forward (shared)",
    sign="non-negative share: the target row sums to 1 over the real tokens",
    description=(
        "Attention rolled out through the layers with the residual connection: the product of the per-layer "
        "matrices 0.5 mean_h A + 0.5 I (rows renormalised). layer_scores[:, l]: the rollout up to layer l."
    ),
    reference="Abnar & Zuidema 2020, Quantifying Attention Flow in Transformers (ACL)",
)


@register(ATTENTION_ROLLOUT)
def attention_rollout(ctx: ExplainContext, *, residual: float = 0.5, heads: str = "mean") -> Explanation:
    """``Â_l = (1 - r) · mean_h A^{l,h} + r · I`` (rows renormalised; ``heads="max"`` takes the max),
    ``rollout = Â_{L-1} @ ... @ Â_0``; ``score_j = rollout_ij`` for the target row i.

    ``layer_scores[:, l]`` is the target row of ``Â_l @ ... @ Â_0``. Padding rows and columns are 0; every
    real row of the rollout sums to 1.
    """
    stack = _main_stack(ctx)
    matrices = residual_attention(stack.weights, ctx.attention_mask, residual=residual, heads=heads)  # [b, L, n, n]
    joint = rollout(matrices)  # [b, L, n, n]
    layer_scores = target_row(joint, ctx.target_rows())  # [b, L, n]
    return ctx.finish(
        ATTENTION_ROLLOUT,
        layer_scores[:, -1],
        layer_scores=layer_scores,
        options={"residual": residual, "heads": heads},
    )


# ----------------------------------------------------------------------------------------------------
# attention norm
# ----------------------------------------------------------------------------------------------------
ATTENTION_NORM = MethodInfo(
    id="attention_norm",
    family="attention",
    needs_gradients=False,
    cost="1 forward (shared)",
    sign="non-negative: the length of what token j adds to the target row's attention output",
    description=(
        "||Σ_h a_ij^h f^h(x_j)||, f^h(x_j) = v_j^h W_O^h: the norm of each token's weighted, transformed value "
        "at one layer (default the last). head_scores: ||a_ij^h f^h(x_j)|| per head; layer_scores: every layer."
    ),
    reference="Kobayashi, Kuribayashi, Yokoi & Inui 2020, Attention is Not Only a Weight (EMNLP)",
)


@register(ATTENTION_NORM)
def attention_norm(ctx: ExplainContext, *, layer: int = -1) -> Explanation:
    """``score_j = || Σ_h a^{l,h}_ij · W_O^{l,h} v^{l,h}_j ||_2`` for the target row i at ``layer``.

    ``W_O^{l,h} = W_O^l[:, h·d:(h+1)·d]`` is head h's slice of the output projection (``nn.Linear`` layout
    ``[embed, heads·d]``), ``v^{l,h}_j`` the value vector with its bias; the output bias ``b_O`` belongs to
    no token and is left out, as in the paper. ``head_scores[:, l, h, j] = a^{l,h}_ij ||W_O^{l,h} v^{l,h}_j||``.
    """
    stack = _main_stack(ctx)
    missing = [name for name in ("values", "output_weight") if getattr(stack, name) is None]
    if missing:
        cap = ctx.capture()
        raise ValueError(
            f"attention_norm needs the value vectors and the output projection W_O of every {stack.stack} layer, "
            f"but the capture of this {cap.family!r} model ({cap.mechanism} mechanism) did not provide "
            f"{' and '.join(missing)}: no value source was recorded for its attention, or attn_probe.models."
            "families.output_projection found no W_O beside its attention modules"
        )
    num_layers, num_heads = stack.num_layers, stack.num_heads
    chosen = _layer_index(layer, num_layers)
    rows = ctx.target_rows()  # [b]
    alpha = target_row(stack.weights.float(), rows)  # [b, L, H, n]
    values = stack.values.float()  # [b, L, H, n, d]
    head_dim = values.shape[-1]
    output_weight = stack.output_weight.float().to(values.device)  # [L, E, H * d]
    per_head, summed = [], []
    for index in range(num_layers):  # one layer at a time: [b, H, n, E] is the largest tensor
        w_o = output_weight[index].view(-1, num_heads, head_dim)  # [E, H, d]
        transformed = torch.einsum("bhkd,ehd->bhke", values[:, index], w_o)  # [b, H, n, E] = f^h(x_j)
        per_head.append(alpha[:, index] * transformed.norm(dim=-1))  # [b, H, n]
        summed.append(torch.einsum("bhk,bhke->bke", alpha[:, index], transformed).norm(dim=-1))  # [b, n]
    head_scores = torch.stack(per_head, dim=1)  # [b, L, H, n]
    layer_scores = torch.stack(summed, dim=1)  # [b, L, n]
    return ctx.finish(
        ATTENTION_NORM,
        layer_scores[:, chosen],
        layer_scores=layer_scores,
        head_scores=head_scores,
        options={"layer": chosen},
    )


# ----------------------------------------------------------------------------------------------------
# value zeroing
# ----------------------------------------------------------------------------------------------------
VALUE_ZEROING = MethodInfo(
    id="value_zeroing",
    family="attention",  # attention-derived (issue #4 and the paper): it ablates what attention mixes in
    needs_gradients=False,
    cost="per example: layers forward passes of a batch of (n + 1) copies of its n real tokens",
    sign="non-negative share: how much the target row's representations change when a token's values are zeroed",
    description=(
        "For each layer l and token j, v_j is zeroed in every head of layer l and the cosine distance of each "
        "token's layer-l output to the original is measured; rows are normalised and rolled out over the layers. "
        "layer_scores[:, l]: the rollout up to layer l; details['matrices']: the per-layer normalised matrices."
    ),
    reference="Mohebbi, Zuidema, Chrupała & Alishahi 2023, Quantifying Context Mixing in Transformers (EACL)",
)


def _hidden_states(outputs: Any, encoder_side: bool) -> tuple[torch.Tensor, ...]:
    name = "encoder_hidden_states" if encoder_side else "hidden_states"
    states = getattr(outputs, name, None)
    if states is None:
        raise ValueError(f"the model returned no {name} with output_hidden_states=True: value_zeroing reads them")
    return states


def _example_inputs(ctx: ExplainContext, example: int, columns: torch.Tensor) -> dict[str, torch.Tensor]:
    """One example's inputs, trimmed to its real ``columns`` (token-aligned tensors only)."""
    batch, n = ctx.input_ids.shape
    trimmed = {}
    for key, value in ctx.inputs.items():
        row = value[example : example + 1]
        if not key.startswith("decoder_") and value.dim() >= 2 and tuple(value.shape[:2]) == (batch, n):
            row = row[:, columns]
        trimmed[key] = row
    return trimmed


def value_zeroing_distances(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], stack: str, layer: int, *, encoder_side: bool = False
) -> torch.Tensor:
    """``[n, n]`` cosine distances ``D_ij = 1 - cos(x̃^{¬j}_i, x_i)`` of one unpadded example at ``layer``.

    ``inputs``: one example (``[1, n]`` tensors, no padding). ``x_i`` is token i's output of ``layer``
    (``hidden_states[layer + 1]``), ``x̃^{¬j}_i`` the same with ``v_j`` zeroed in every head of that layer,
    done as zeroing column j of its attention weights (no renormalisation): ``Σ_k a_ik v_k`` loses exactly
    ``a_ij v_j``. The n perturbations and the original run as one batch of ``n + 1`` copies (copy c < n zeroes
    column c, copy n is untouched), all through the same capturing pass; the distance is computed as
    ``||x̃/|x̃| - x/|x|||² / 2`` (equal to ``1 - cos``), so unaffected pairs (a causal future) give exactly 0.
    """
    n = inputs["input_ids"].shape[1]
    copies = {key: value.repeat(n + 1, *([1] * (value.dim() - 1))) for key, value in inputs.items()}  # [n + 1, ...]
    device = inputs["input_ids"].device
    keep = (1.0 - torch.eye(n + 1, n, device=device))[:, None, None, :]  # [n + 1, 1, 1, n]: copy c drops key c

    def zero_one_value(weights: torch.Tensor, _point: None) -> torch.Tensor:  # [n + 1, H, n, n]
        return weights * keep.to(weights.dtype)

    with torch.no_grad(), intervene(model, {(stack, layer): zero_one_value}):
        outputs = model(**copies, output_hidden_states=True)
    states = _hidden_states(outputs, encoder_side)
    hidden = states[layer + 1].float()  # [n + 1, n, E]
    # 1 - cos(a, b) = ||a/|a| - b/|b|||² / 2: no cancellation for small changes, exactly 0 for unchanged rows
    unit = F.normalize(hidden, dim=-1)  # [n + 1, n, E]
    distance = 0.5 * (unit[:n] - unit[n:]).pow(2).sum(dim=-1)  # [n (zeroed j), n (query i)]
    return distance.T  # [n (i), n (j)]


@register(VALUE_ZEROING)
def value_zeroing(ctx: ExplainContext) -> Explanation:
    """Value zeroing: ``C^l_ij = 1 - cos(x̃^{l,¬j}_i, x^l_i)``, rows normalised ``C^l_ij / Σ_k C^l_ik``,
    then rolled out without an added identity (the measured output already contains the residual path, as in
    the authors' code): ``R = C^{L-1} @ ... @ C^0``, ``score_j = R_ij`` for the target row i.

    Each example runs on its real tokens alone (so padding cannot matter), as ``layers`` forward passes of
    ``n + 1`` copies (:func:`value_zeroing_distances`). ``x^l`` is ``hidden_states[l + 1]``; for Hugging Face
    pre-norm models that is after the final norm at the last layer (ours keep the pre-norm value).
    """
    cap = ctx.capture()
    stack = cap.stacks[cap.main_stack]
    num_layers = stack.num_layers
    mask = ctx.attention_mask.bool()  # [b, n]
    batch, n = mask.shape
    rows = ctx.target_rows()  # [b]
    encoder_side = ctx.family.is_encoder_decoder
    matrices = torch.zeros(batch, num_layers, n, n, device=mask.device)  # [b, L, n, n]
    for example in range(batch):
        columns = torch.nonzero(mask[example]).flatten()  # [m]
        inputs = _example_inputs(ctx, example, columns)
        distances = torch.stack(
            [
                value_zeroing_distances(ctx.model, inputs, stack.stack, layer, encoder_side=encoder_side)
                for layer in range(num_layers)
            ]
        ).to(mask.device)  # [L, m, m]
        normalised = distances / distances.sum(dim=-1, keepdim=True).clamp_min(1e-12)  # [L, m, m]
        matrices[example][:, columns[:, None], columns[None, :]] = normalised
    joint = rollout(matrices)  # [b, L, n, n]
    layer_scores = target_row(joint, rows)  # [b, L, n]
    return ctx.finish(
        VALUE_ZEROING,
        layer_scores[:, -1],
        layer_scores=layer_scores,
        details={"matrices": matrices},
    )


# ----------------------------------------------------------------------------------------------------
# gradient hybrids
# ----------------------------------------------------------------------------------------------------
def attention_gradients(ctx: ExplainContext) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer of the main stack: the weights ``A_l [b, H, n, n]`` the model used and ``∂T/∂A_l`` (same shape).

    ``T`` is the target of each example (:meth:`ExplainContext.target_value`; summing over the batch keeps
    the examples apart, since none depends on another). The gradient is the total derivative through every
    later layer, read at the tensor that goes on into the model: an identity edit keeps a reference to it
    (and makes it a leaf requiring grad when nothing upstream does, e.g. frozen parameters).
    """
    cap = ctx.capture()
    stack_name, num_layers = cap.main_stack, cap.stacks[cap.main_stack].num_layers
    kept: dict[int, torch.Tensor] = {}

    def keeper(layer: int):
        def keep(weights: torch.Tensor, _point: None) -> torch.Tensor:  # [b, H, n, n]
            if not weights.requires_grad:
                weights = weights.detach().requires_grad_(True)
            kept[layer] = weights
            return weights

        return keep

    with torch.enable_grad(), intervene(ctx.model, {(stack_name, layer): keeper(layer) for layer in range(num_layers)}):
        target = ctx.target_value(ctx.logits())  # [b]
    weights = [kept[layer] for layer in range(num_layers)]
    grads = torch.autograd.grad(target.sum(), weights, allow_unused=True)
    return (
        [w.detach().float() for w in weights],
        [torch.zeros_like(w).float() if g is None else g.detach().float() for w, g in zip(weights, grads, strict=True)],
    )


ATTENTION_GRAD_ROLLOUT = MethodInfo(
    id="attention_grad_rollout",
    family="hybrid",
    needs_gradients=True,
    cost="1 forward + 1 backward (attention weights kept with their graph)",
    sign="non-negative: relevance accumulated from positive gradient x attention (the target's units)",
    description=(
        "Chefer et al.'s rule for self-attention: R = I, then per layer R += mean_h((∇A ⊙ A)^+) R; the score is "
        "the target row of R - I (subtract_identity=False keeps the identity's 1 on the target token). "
        "layer_scores: after each layer; head_scores: (∇A ⊙ A)^+ of the target row per layer and head."
    ),
    reference=(
        "Chefer, Gur & Wolf 2021, Generic Attention-model Explainability for Interpreting Bi-Modal and "
        "Encoder-Decoder Transformers (ICCV)"
    ),
)


@register(ATTENTION_GRAD_ROLLOUT)
def attention_grad_rollout(ctx: ExplainContext, *, subtract_identity: bool = True) -> Explanation:
    """``Ā_l = mean_h (∂T/∂A^{l,h} ⊙ A^{l,h})^+``; ``R_0 = I``, ``R_{l+1} = R_l + Ā_l R_l`` (layer 0 first);
    ``score_j = (R - I)_ij`` for the target row i (``subtract_identity=True``, the default) or ``R_ij``.

    Identity: the paper initialises R with I (each token is relevant to itself) and reads a row of R. That 1
    is not in the target's units (gradient x attention is), so by default it is removed: the scores are then
    exactly the relevance added by the layers, and a 1-layer model gives ``Ā_0``'s row. Row sums follow
    ``r_{l+1} = r_l + Ā_l r_l`` from ``r_0 = 1`` (``r = R 1``); the target row of ``R - I`` sums to ``r_i - 1``.
    Padding rows and columns of Ā are 0.
    """
    weights, grads = attention_gradients(ctx)
    pairs = _real_pairs(ctx.attention_mask).to(weights[0].device)  # [b, 1, n, n]
    real = ctx.attention_mask.bool().float().to(weights[0].device)  # [b, n]
    identity = torch.diag_embed(real)  # [b, n, n], 0 on padding
    rows = ctx.target_rows()
    relevance = identity.clone()  # [b, n, n]
    per_layer, per_head = [], []
    for a, g in zip(weights, grads, strict=True):
        cam = (g * a).clamp_min(0.0) * pairs  # [b, H, n, n]
        per_head.append(target_row(cam, rows))  # [b, H, n]
        relevance = relevance + cam.mean(dim=1) @ relevance  # [b, n, n]
        shown = relevance - identity if subtract_identity else relevance
        per_layer.append(target_row(shown, rows))  # [b, n]
    layer_scores = torch.stack(per_layer, dim=1)  # [b, L, n]
    return ctx.finish(
        ATTENTION_GRAD_ROLLOUT,
        layer_scores[:, -1],
        layer_scores=layer_scores,
        head_scores=torch.stack(per_head, dim=1),  # [b, L, H, n]
        options={"subtract_identity": subtract_identity},
    )


ATTENTION_X_GRADIENT = MethodInfo(
    id="attention_x_gradient",
    family="hybrid",
    needs_gradients=True,
    cost="1 forward + 1 backward (attention weights kept with their graph)",
    sign="signed: positive = raising the target row's weight on the token raises the target (first order)",
    description=(
        "Attention times its gradient at the target row, summed over heads (layer_scores) and over layers "
        "(scores): the first-order change of the target if the target row's attention to a token were removed."
    ),
    reference="attention x gradient as in Chefer et al. 2021 (without clamping or rollout); cf. Hao et al. 2021",
)


@register(ATTENTION_X_GRADIENT)
def attention_x_gradient(ctx: ExplainContext) -> Explanation:
    """``score_j = Σ_l Σ_h a^{l,h}_ij · ∂T/∂a^{l,h}_ij`` for the target row i (signed).

    ``head_scores[:, l, h, j] = a^{l,h}_ij ∂T/∂a^{l,h}_ij``, ``layer_scores = Σ_h head_scores``. Each term is
    minus the first-order change of T when that weight is set to 0 (no renormalisation). Only the target row:
    other rows reach the target through later layers and are not read here (rollout-style methods walk them).
    """
    weights, grads = attention_gradients(ctx)
    rows = ctx.target_rows()
    head_scores = torch.stack([target_row(g * a, rows) for a, g in zip(weights, grads, strict=True)], dim=1)
    layer_scores = head_scores.sum(dim=2)  # [b, L, n]
    return ctx.finish(ATTENTION_X_GRADIENT, layer_scores.sum(dim=1), layer_scores=layer_scores, head_scores=head_scores)
