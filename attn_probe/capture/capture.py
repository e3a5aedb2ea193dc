"""One call: run a model and return what its attention did, for every layer and head.

>>> captured = capture(model, tokenizer(["a gorgeous, witty movie"], return_tensors="pt"))
>>> captured.weights.shape            # [batch, layers, heads, q, k] of the main stack
>>> captured.example(0).shape         # [layers, heads, n, n], padding trimmed
>>> captured.drift                    # max |logits| change between the model's backend and the capture

Edits of the weights (replace, scale, permute, uniform: :mod:`attn_probe.attention.interventions`) are
applied during the same forward pass, for chosen layers and heads, through the same mechanisms; the
model is left as it was found, exceptions included.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attn_probe.capture.backend import interface_capture
from attn_probe.capture.native import native_capture, ours_capture
from attn_probe.capture.recorder import EditKey, Recorder, SiteRecord, WeightsEdit
from attn_probe.capture.sites import Site
from attn_probe.capture.tokens import TokenizedBatch
from attn_probe.models.families import Family, detect_family, output_projection


@dataclass
class StackCapture:
    """One stack of attention layers (encoder self, decoder self, or cross-attention)."""

    stack: str
    site_names: list[str]
    weights: torch.Tensor  # [batch, layers, heads, q, k]
    values: torch.Tensor | None  # [batch, layers, heads, k, head_dim]
    head_outputs: torch.Tensor | None  # [batch, layers, heads, q, head_dim], before the output projection
    output_weight: torch.Tensor | None  # [layers, embed, heads * head_dim], nn.Linear layout
    output_bias: torch.Tensor | None  # [layers, embed]
    position_bias: torch.Tensor | None  # [batch or 1, layers, heads, q, k] where the model passes one apart
    layer_weights: list[torch.Tensor] | None = None  # with grad=True: each layer's [batch, heads, q, k] as used

    @property
    def num_layers(self) -> int:
        return self.weights.shape[1]

    @property
    def num_heads(self) -> int:
        return self.weights.shape[2]


@dataclass
class AttentionCapture:
    stacks: dict[str, StackCapture]
    main_stack: str
    logits: torch.Tensor | None  # the model's output logits (after any edits)
    outputs: Any  # the model's own output object
    input_ids: torch.Tensor  # [batch, n]
    attention_mask: torch.Tensor  # [batch, n], 1 = real token
    family: str
    mechanism: str  # "ours", "interface" or "native"
    backend: str  # the attention implementation the model was loaded with
    drift: float | None = None  # max |logits(model's own backend) - logits(capture)|; None if not measured
    drift_per_example: torch.Tensor | None = None  # [batch] the same maximum, per example
    batch: TokenizedBatch | None = None  # tokens, special-token mask and words, when the inputs came from tokenize()

    @property
    def weights(self) -> torch.Tensor:
        """``[batch, layers, heads, q, k]`` of the main stack."""
        return self.stacks[self.main_stack].weights

    def example(self, index: int, stack: str | None = None) -> torch.Tensor:
        """``[layers, heads, n, n]`` for one example, trimmed to its real tokens (self-attention stacks)."""
        weights = self.stacks[stack or self.main_stack].weights[index]
        real = self.attention_mask[index].bool()
        if stack == "cross":
            return weights[..., real]
        return weights[..., real, :][..., real]


def capture(
    model: nn.Module,
    inputs: Mapping[str, torch.Tensor] | Any,
    *,
    edits: Mapping[EditKey, WeightsEdit | list[WeightsEdit]] | None = None,
    keep_values: bool = True,
    measure_drift: bool = True,
    grad: bool = False,
) -> AttentionCapture:
    """Run ``model`` on ``inputs`` and record every attention layer.

    ``inputs``: what a tokenizer returns (``input_ids``, ``attention_mask``, and for seq2seq models
    ``decoder_input_ids``), or an object with ``input_ids`` / ``attention_mask`` attributes.
    ``edits``: weight edits by layer of the main stack (``{3: uniform_weights(head=2)}``) or by
    ``(stack, layer)``. ``grad=True`` keeps the graph (for gradient x attention): differentiate with respect
    to ``StackCapture.layer_weights`` (the tensors the model used; the stacked ``weights`` is a copy).
    ``measure_drift`` runs the model once more with its own backend to report how far the capturing
    forward pass is from it (skipped when edits are given: they change the output on purpose).
    """
    family = detect_family(model)
    model_inputs = _as_model_inputs(inputs)
    input_ids = model_inputs["input_ids"]
    attention_mask = model_inputs.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
        model_inputs["attention_mask"] = attention_mask
    recorder = _recorder(model, family, edits, keep_values=keep_values, detach=not grad)
    with torch.set_grad_enabled(grad), _mechanism(model, family, recorder):
        outputs = model(**model_inputs)
    recorder.check_edits_applied()
    logits = _logits_of(outputs)
    stacks = _assemble(model, recorder.records, keep_projections=keep_values)
    check_finite(model, stacks, logits, attention_mask, family.main_stack)
    drift, drift_per_example = None, None
    if measure_drift and not edits and logits is not None:
        with torch.no_grad():
            own = _logits_of(model(**model_inputs))
        if own is not None:
            difference = (own.float() - logits.detach().float()).abs()
            drift_per_example = difference.reshape(difference.shape[0], -1).amax(dim=1).cpu()  # [batch]
            drift = float(drift_per_example.max())
    return AttentionCapture(
        stacks=stacks,
        main_stack=family.main_stack,
        logits=logits,
        outputs=outputs,
        input_ids=input_ids,
        attention_mask=attention_mask,
        family=family.name,
        mechanism=family.mechanism,
        backend=_backend_of(model, family),
        drift=drift,
        drift_per_example=drift_per_example,
        batch=inputs if isinstance(inputs, TokenizedBatch) else None,
    )


class NonFiniteError(ValueError):
    """The model produced NaN or infinite values: every explanation built on them would be meaningless."""


def check_finite(
    model: nn.Module,
    stacks: Mapping[str, StackCapture],
    logits: torch.Tensor | None,
    attention_mask: torch.Tensor,
    main_stack: str,
) -> None:
    """Raise :class:`NonFiniteError` naming the first attention layer whose weights (over real tokens) or values
    are NaN / infinite, else the logits if they are, with the first non-finite parameter when there is one.

    Why here: a NaN that enters attention spreads to every later layer, every method and every table, where it
    shows up (if at all) as a silent NaN score or an unrelated error far downstream; the capture is the one
    place that sees every layer, so it says where it started.
    """
    real = attention_mask.bool()
    order = [main_stack, *(name for name in stacks if name != main_stack)]
    for name in order:
        stack = stacks[name]
        weights = stack.weights.detach()  # [batch, layers, heads, q, k]: every layer in one pass
        # the mask is the main stack's inputs': its rows and keys there, the keys of cross-attention (encoder
        # tokens); a decoder's own rows and keys of an encoder-decoder model are all checked
        every = torch.ones(weights.shape[0], weights.shape[-1], dtype=torch.bool, device=weights.device)
        rows = real if name == main_stack else torch.ones_like(weights[:, 0, 0, :, 0], dtype=torch.bool)
        keys = real if name in (main_stack, "cross") else every
        seen = weights.masked_fill(~(rows[:, None, None, :, None] & keys[:, None, None, None, :]), 0.0)
        bad = ~torch.isfinite(seen)  # [batch, layers, heads, q, k]
        bad_layers = bad.flatten(2).any(-1).any(0)  # [layers]
        if stack.values is not None:
            bad_layers = bad_layers | ~torch.isfinite(stack.values.detach()).flatten(2).all(-1).all(0)
        if bad_layers.any():
            layer = int(torch.nonzero(bad_layers)[0])
            where = torch.nonzero(bad[:, layer])
            detail = f" (example {int(where[0, 0])}, head {int(where[0, 1])})" if len(where) else " (its value vectors)"
            raise NonFiniteError(
                f"the model produced NaN or infinite values in layer {layer} of its {name} attention{detail}; "
                f"every layer before it was finite. {_nonfinite_hint(model)}"
            )
    if logits is not None and not torch.isfinite(logits.detach()).all():
        raise NonFiniteError(
            "the model's output logits hold NaN or infinite values although every attention layer is finite: they "
            f"arise after the last attention layer (the head or final layers). {_nonfinite_hint(model)}"
        )


def _nonfinite_hint(model: nn.Module) -> str:
    """What to check next: the first parameter holding NaN / inf, or the usual causes when none does."""
    for name, parameter in model.named_parameters():
        if not torch.isfinite(parameter.detach()).all():
            return f"Parameter {name!r} holds NaN or infinite values: the checkpoint is damaged (or saved mid-blow-up)."
    return (
        "No parameter holds NaN / inf, so the inputs overflow the model's precision: try float32 "
        "(load_model(..., dtype=torch.float32)) or check the inputs."
    )


@contextmanager
def intervene(model: nn.Module, edits: Mapping[EditKey, WeightsEdit | list[WeightsEdit]]) -> Iterator[None]:
    """Apply weight edits to every forward pass inside the block, without recording anything.

    >>> with intervene(model, {("encoder", 5): permute_weights(seed=0, head=[1, 4])}):
    ...     logits = model(**inputs).logits
    """
    family = detect_family(model)
    recorder = _recorder(model, family, edits, keep=False)
    with _mechanism(model, family, recorder):
        yield
    recorder.check_edits_applied()


def _recorder(
    model: nn.Module, family: Family, edits: Mapping[EditKey, WeightsEdit | list[WeightsEdit]] | None, **options: bool
) -> Recorder:
    return Recorder.for_model(
        model,
        main_stack=family.main_stack,
        is_encoder_decoder=family.is_encoder_decoder,
        is_decoder_only=family.is_decoder_only,
        edits=edits,
        **options,
    )


def _mechanism(model: nn.Module, family: Family, recorder: Recorder) -> AbstractContextManager[None]:
    if family.mechanism == "ours":
        return ours_capture(model, recorder)
    if family.mechanism == "native":
        return native_capture(model, recorder, family.native)
    return interface_capture(model, recorder)


def _as_model_inputs(inputs: Mapping[str, torch.Tensor] | Any) -> dict[str, torch.Tensor]:
    if isinstance(inputs, Mapping):
        model_inputs = dict(inputs)
    elif isinstance(inputs, TokenizedBatch):
        model_inputs = inputs.model_inputs()
    elif hasattr(inputs, "input_ids"):
        model_inputs = {"input_ids": inputs.input_ids, "attention_mask": getattr(inputs, "attention_mask", None)}
    else:
        raise TypeError(
            "inputs must be a mapping like a tokenizer's output (input_ids, attention_mask), "
            f"got {type(inputs).__name__}"
        )
    if "input_ids" not in model_inputs:
        raise ValueError(f"inputs have no 'input_ids' (got keys {sorted(model_inputs)})")
    model_inputs.pop("special_tokens_mask", None)
    model_inputs.pop("offset_mapping", None)
    return {key: value for key, value in model_inputs.items() if value is not None}


def _logits_of(outputs: Any) -> torch.Tensor | None:
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if logits is None:
        logits = getattr(outputs, "last_hidden_state", None)
    return logits


def _backend_of(model: nn.Module, family: Family) -> str:
    if family.mechanism == "ours":
        return "attn_probe (fused SDPA path; the capture uses the explicit path)"
    return str(getattr(model.config, "_attn_implementation", "eager"))


def _assemble(
    model: nn.Module, records: dict[Site, SiteRecord], keep_projections: bool = True
) -> dict[str, StackCapture]:
    """Stack per-site records into ``[batch, layers, ...]`` tensors, one entry per stack. ``keep_projections``: also
    stack each layer's output projection (``W_O``, ``b_O``), which only go with the values (a SmolLM2 capture
    spent a tenth of its time stacking them for nothing)."""
    stacks: dict[str, list[tuple[Site, SiteRecord]]] = {}
    for site, record in records.items():
        stacks.setdefault(site.stack, []).append((site, record))
    assembled = {}
    for stack, members in stacks.items():
        members.sort(key=lambda item: item[0].layer)
        layers = [site.layer for site, _ in members]
        if layers != list(range(len(layers))):
            raise RuntimeError(f"{stack} layers {layers} were not all captured once: was a layer skipped or run twice?")
        records_in_order = [record for _, record in members]
        projections = [output_projection(model, site.name) for site, _ in members] if keep_projections else [None]
        assembled[stack] = StackCapture(
            stack=stack,
            site_names=[site.name for site, _ in members],
            weights=torch.stack([r.weights for r in records_in_order], dim=1),
            values=_stack_optional([r.values for r in records_in_order]),
            head_outputs=_stack_optional([r.head_outputs for r in records_in_order]),
            output_weight=torch.stack([p[0] for p in projections]) if all(projections) else None,
            output_bias=(
                torch.stack([p[1] for p in projections])
                if all(projections) and all(p[1] is not None for p in projections)
                else None
            ),
            position_bias=_stack_optional([r.position_bias for r in records_in_order], broadcast=True),
            # The stacked tensor is a copy: gradients w.r.t. the weights need the tensors the model used.
            layer_weights=[r.weights for r in records_in_order] if records_in_order[0].weights.requires_grad else None,
        )
    return assembled


def _stack_optional(tensors: list[torch.Tensor | None], broadcast: bool = False) -> torch.Tensor | None:
    if any(t is None for t in tensors):
        return None
    if broadcast:
        shape = torch.broadcast_shapes(*(t.shape for t in tensors))
        tensors = [t.expand(shape) for t in tensors]
    return torch.stack(tensors, dim=1)
