"""One contract for every explanation method: token importance for one target, aligned to the input.

A method is a function ``fn(context: ExplainContext, **options) -> Explanation`` registered under a
snake_case id with its :class:`MethodInfo` (family, whether it needs gradients, cost, what the sign
means). :func:`explain` runs several on one batch and shares the work they have in common: the forward
pass with attention capture is done once and read by every attention-derived method.

    explanations = explain(model, tokenize(tokenizer, texts), ["attention_rollout", "integrated_gradients"],
                           tokenizer=tokenizer)
    explanations["attention_rollout"].scores          # [batch, n], 0 at padding
    list_methods()                                    # what exists, with metadata

Scores are float32 ``[batch, n]`` aligned with ``input_ids`` (padded columns included, always 0);
special tokens keep their score, and ``Explanation.special`` marks them so comparisons can include or
exclude them explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn

from attn_probe.capture import AttentionCapture, ResolvedTarget, Target, TokenizedBatch, capture, resolve, target_value
from attn_probe.models.families import Family, detect_family

METHOD_FAMILIES = ("attention", "gradient", "perturbation", "hybrid")


@dataclass(frozen=True)
class MethodInfo:
    id: str  # snake_case, e.g. "attention_rollout"
    family: str  # one of METHOD_FAMILIES
    needs_gradients: bool
    cost: str  # per batch, in passes: "1 forward (shared)", "steps x (forward + backward)", ...
    sign: str  # what a score means, e.g. "signed: positive pushes the target up" or "non-negative share"
    description: str
    reference: str = ""  # the paper

    def __post_init__(self) -> None:
        if self.family not in METHOD_FAMILIES:
            raise ValueError(f"method family must be one of {METHOD_FAMILIES}, got {self.family!r}")
        if not self.id.isidentifier() or self.id != self.id.lower():
            raise ValueError(f"method ids are snake_case identifiers, got {self.id!r}")


@dataclass
class Explanation:
    method: str
    info: MethodInfo
    scores: torch.Tensor  # [batch, n] float32, 0 at padding
    target: ResolvedTarget
    special: torch.Tensor  # [batch, n] bool: special tokens and padding
    real: torch.Tensor  # [batch, n] bool: not padding
    layer_scores: torch.Tensor | None = None  # [batch, layers, n] when the method has a per-layer view
    head_scores: torch.Tensor | None = None  # [batch, layers, heads, n] when it has a per-head view
    details: dict[str, Any] = field(default_factory=dict)  # e.g. IG's convergence delta [batch]
    options: dict[str, Any] = field(default_factory=dict)  # the options it ran with

    def to_frame(self, batch: TokenizedBatch | None = None) -> pd.DataFrame:
        """Tidy rows: ``example_id, method, token_index, position, token, special, score`` (real tokens only).

        ``token_index`` counts real tokens (as in :class:`TokenizedBatch`), ``position`` is the padded
        column; tokens are filled in when ``batch`` is given.
        """
        real = self.real.bool().cpu()  # [batch, n]; one copy off the device, not one per token
        examples, columns = torch.nonzero(real, as_tuple=True)  # row-major: each example's columns ascending
        counts = real.sum(dim=1)
        first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)  # each row's example's first row
        token_index = torch.arange(len(columns)) - first
        if batch is None:
            tokens = [None] * len(columns)
        else:
            tokens = [batch.tokens[e][t] for e, t in zip(examples.tolist(), token_index.tolist(), strict=True)]
        return pd.DataFrame(
            {
                "example_id": examples.numpy().astype("int64"),
                "method": self.method,
                "token_index": token_index.numpy().astype("int64"),
                "position": columns.numpy().astype("int64"),
                "token": tokens,
                "special": self.special.bool().cpu()[examples, columns].numpy(),
                "score": self.scores.detach().cpu()[examples, columns].double().numpy(),
            }
        )


class ExplainContext:
    """Everything a method needs about one (model, batch, target), with shared work done once.

    ``inputs``: a :class:`TokenizedBatch` (preferred: it knows special tokens) or a tokenizer's output.
    ``tokenizer``: used for mask / pad ids of perturbation baselines (our own models use id 0 = [PAD]).
    ``target``: a :class:`Target`, an already :class:`ResolvedTarget`, or None for the default: the
    predicted class's logit for classifiers, the log-probability of the top next token for language models.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: TokenizedBatch | Mapping[str, torch.Tensor],
        *,
        target: Target | ResolvedTarget | None = None,
        tokenizer: Any = None,
    ) -> None:
        self.model = model
        self.family: Family = detect_family(model)
        self.batch = inputs if isinstance(inputs, TokenizedBatch) else None
        device = next(model.parameters()).device
        model_inputs = inputs.model_inputs() if isinstance(inputs, TokenizedBatch) else dict(inputs)
        self.inputs = {key: value.to(device) for key, value in model_inputs.items() if torch.is_tensor(value)}
        if "attention_mask" not in self.inputs:
            self.inputs["attention_mask"] = torch.ones_like(self.inputs["input_ids"])
        self.tokenizer = tokenizer
        self._capture: AttentionCapture | None = None
        self.target = self._resolve(target)

    # ---------------------------------------------------------------------------------------------
    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]  # [batch, n]

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.inputs["attention_mask"]  # [batch, n], 1 = real token

    @property
    def special(self) -> torch.Tensor:
        """``[batch, n]`` bool: special tokens and padding."""
        padding = self.attention_mask == 0
        if self.batch is not None:
            return self.batch.special_tokens_mask.to(padding.device).bool() | padding
        return padding

    @property
    def is_language_model(self) -> bool:
        return self.target.is_sequence

    def capture(self) -> AttentionCapture:
        """The attention capture of this batch, without gradients; computed once and shared."""
        if self._capture is None:
            self._capture = capture(self.model, self.inputs)
        return self._capture

    @property
    def cached_capture(self) -> AttentionCapture | None:
        """The shared capture if a method or check already made it (None: nothing has captured yet)."""
        return self._capture

    def capture_with_grad(self) -> AttentionCapture:
        """A fresh capture whose weights keep their graph (for gradient x attention methods)."""
        return capture(self.model, self.inputs, grad=True, measure_drift=False)

    def target_rows(self) -> torch.Tensor:
        """``[batch]``: the query row whose attention leads to the target: the predicting position of a
        language model, the first token ([CLS], <s>) of a classifier."""
        if self.family.is_encoder_decoder:
            raise ValueError(
                "attention-derived methods need the query row that produces the target; in an encoder-decoder "
                "model that row is in the decoder, reached through cross-attention, which these methods do not "
                "walk yet. Use gradient or perturbation methods (they attribute to the encoder's input tokens)"
            )
        if self.is_language_model:
            return self.target.positions.to(self.input_ids.device)
        return torch.zeros(self.input_ids.shape[0], dtype=torch.long, device=self.input_ids.device)

    def logits(self, **inputs: torch.Tensor) -> torch.Tensor:
        """The model's logits on ``inputs`` (default: this batch), with gradients if enabled."""
        outputs = self.model(**(inputs or self.inputs))
        return outputs.logits if hasattr(outputs, "logits") else outputs[0]

    def target_value(self, logits: torch.Tensor) -> torch.Tensor:
        """``[batch]`` the target scalar read from ``logits``; for ``k * batch`` rows the batch is taken as
        tiled ``k`` times (``[a, b, a, b]``, captum's expansion). Other layouts: ``target.take(rows)``."""
        resolved = self.target
        if logits.shape[0] != len(resolved):
            if logits.shape[0] % len(resolved):
                raise ValueError(f"{logits.shape[0]} rows of logits are not a multiple of the batch {len(resolved)}")
            resolved = resolved.tile(logits.shape[0] // len(resolved))
        return target_value(resolved, logits)

    def embedding_layer(self) -> nn.Module:
        """The token embedding module (attributions are computed at its output)."""
        from attn_probe.attention.models import DecoderLM, EncoderClassifier

        if isinstance(self.model, EncoderClassifier):
            return self.model.encoder.embed.tokens
        if isinstance(self.model, DecoderLM):
            return self.model.decoder.embed.tokens
        return self.model.get_input_embeddings()

    def replacement_id(self) -> int:
        """The id that stands for "no token" in perturbations: [MASK] where the tokenizer has one (what an
        encoder saw in pre-training), else the pad id, else 0."""
        for name in ("mask_token_id", "pad_token_id", "eos_token_id"):
            value = getattr(self.tokenizer, name, None)
            if value is not None:
                return int(value)
        return 0

    def baseline_ids(self) -> torch.Tensor:
        """``[batch, n]``: every real non-special token replaced by :meth:`replacement_id`; special tokens
        and padding kept. For a decoder-only language model the first real token (BOS) is kept too."""
        keep = self.special.clone()
        # The first real token (BOS, or the prompt's start), whatever the padding; a seq2seq model's encoder
        # input is not a prompt being continued, so it keeps none.
        if self.is_language_model and not self.family.is_encoder_decoder:
            first_real = self.attention_mask.long().argmax(dim=1)  # [batch]
            keep[torch.arange(keep.shape[0], device=keep.device), first_real] = True
        return torch.where(keep, self.input_ids, torch.full_like(self.input_ids, self.replacement_id()))

    def finish(
        self,
        info: MethodInfo,
        scores: torch.Tensor,
        *,
        layer_scores: torch.Tensor | None = None,
        head_scores: torch.Tensor | None = None,
        details: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
    ) -> Explanation:
        """Package a method's ``scores [batch, n]`` (zeroing padding) as an :class:`Explanation`."""
        padding = (self.attention_mask == 0).to(scores.device)
        scores = scores.detach().float().masked_fill(padding, 0.0)
        return Explanation(
            method=info.id,
            info=info,
            scores=scores,
            target=self.target,
            special=self.special.to(scores.device),
            real=~padding,
            layer_scores=None if layer_scores is None else layer_scores.detach().float(),
            head_scores=None if head_scores is None else head_scores.detach().float(),
            details=details or {},
            options=options or {},
        )

    # ---------------------------------------------------------------------------------------------
    def _resolve(self, target: Target | ResolvedTarget | None) -> ResolvedTarget:
        if isinstance(target, ResolvedTarget):
            return target
        logits = self.capture().logits
        if target is None:
            if logits.dim() == 3 and not self.family.is_decoder_only and not self.family.is_encoder_decoder:
                raise ValueError(
                    "this model returns hidden states, not logits: it has no head to explain. Load it for a task "
                    "(load_model(name, task='sequence-classification' / 'masked-lm' / 'causal-lm')) or pass a target"
                )
            target = Target.class_logit() if logits.dim() == 2 else Target.next_token()
        return resolve(target, logits, self._output_mask())

    def _output_mask(self) -> torch.Tensor:
        """The mask of the sequence the logits are over: the decoder's for an encoder-decoder model."""
        if not self.family.is_encoder_decoder:
            return self.attention_mask
        decoder_ids = self.inputs.get("decoder_input_ids")
        if decoder_ids is None:
            raise ValueError("an encoder-decoder model needs decoder_input_ids in its inputs to have a target")
        return self.inputs.get("decoder_attention_mask", torch.ones_like(decoder_ids))


MethodFn = Callable[..., Explanation]
_REGISTRY: dict[str, tuple[MethodInfo, MethodFn]] = {}


def register(info: MethodInfo) -> Callable[[MethodFn], MethodFn]:
    """Decorator: register ``fn(context, **options) -> Explanation`` under ``info.id``."""

    def decorate(fn: MethodFn) -> MethodFn:
        if info.id in _REGISTRY and _REGISTRY[info.id][1] is not fn:
            raise ValueError(f"a method named {info.id!r} is already registered")
        _REGISTRY[info.id] = (info, fn)
        fn.info = info  # type: ignore[attr-defined]
        return fn

    return decorate


def get_method(method_id: str) -> tuple[MethodInfo, MethodFn]:
    if method_id not in _REGISTRY:
        raise KeyError(f"no method named {method_id!r}; the methods are: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[method_id]


def list_methods() -> pd.DataFrame:
    """Every registered method with its metadata, one row each."""
    rows = [
        {
            "id": info.id,
            "family": info.family,
            "needs_gradients": info.needs_gradients,
            "cost": info.cost,
            "sign": info.sign,
            "description": info.description,
            "reference": info.reference,
        }
        for info, _ in _REGISTRY.values()
    ]
    return pd.DataFrame(rows).sort_values(["family", "id"], ignore_index=True)


def explain(
    model: nn.Module,
    inputs: TokenizedBatch | Mapping[str, torch.Tensor],
    methods: Sequence[str] | None = None,
    *,
    target: Target | ResolvedTarget | None = None,
    tokenizer: Any = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Explanation]:
    """Run ``methods`` (default: all registered) on one batch for one target; shared work done once.

    ``options``: per method id, keyword options (``{"raw_attention": {"layer": 3}}``).
    """
    chosen = list(methods) if methods is not None else sorted(_REGISTRY)
    for method_id in chosen:
        get_method(method_id)  # fail before any work on a typo
    context = ExplainContext(model, inputs, target=target, tokenizer=tokenizer)
    results = {}
    for method_id in chosen:
        _, fn = get_method(method_id)
        results[method_id] = fn(context, **dict((options or {}).get(method_id, {})))
    return results
