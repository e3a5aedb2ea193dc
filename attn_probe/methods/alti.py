"""ALTI: how much each input token contributes to each token's representation, layer by layer, rolled out.

Ferrando, Gállego & Costa-jussà 2022, *Measuring the Mixing of Contextual Information in the Transformer*
(EMNLP). For every layer l, the state of token i after the attention block is written as a sum of one vector
per input token, ``y_i = Σ_j T_i(x_j)``:

- **attention:** ``Σ_h a^h_ij · W_O^h v^h_j`` goes to token j (``v^h_j`` the value vector with its bias, one
  per query head, grouped key/value heads repeated; ``W_O^h`` head h's slice of the output projection);
- **residual:** ``x_i`` (the residual stream entering the block) and the output bias ``b_O`` go to token i;
- **post-norm** models (BERT: ``y = LN(x + attn(x))``): the norm is made linear the way the paper does it,
  each term centred on its own mean (LayerNorm; RMSNorm does not centre) and divided by the std (or rms) of
  the *whole* sum, times gamma; beta goes to token i. The terms then sum to the norm's output exactly.
- **pre-norm** models (Llama: ``y = x + attn(norm(x))``): the values already come from ``norm(x_j)``, so the
  decomposition is of the residual stream after the attention, ``y_i = x_i + b_O + Σ_j Σ_h a^h_ij W_O^h v^h_j``,
  and the distances are measured there (there is no norm between the attention and that sum; the next
  layer's input norm belongs to the next sub-block).

Contributions are ``c_ij = max(0, ||y_i||_1 - ||y_i - T_i(x_j)||_1)``, normalised over j. The per-layer
matrices are rolled out as a product (layer 0 first) with no identity added, since the residual is already
in ``T_i(x_i)``. The score of token j is the target row of the product (:meth:`ExplainContext.target_rows`).

What the capture does not hold, each layer's input ``x`` (and, as a check, the state ``y`` the model
computed), is read by one more forward pass through the capture's own attention path, with hooks on the
layer's modules. Known layouts: our own models (both layouts, LayerNorm or RMSNorm), Hugging Face BERT,
RoBERTa and ELECTRA (``attention.output`` holds ``dense`` and ``LayerNorm``), Llama, Mistral and Qwen2
(``input_layernorm`` / ``post_attention_layernorm``) and GPT-2 (``ln_1`` / ``ln_2``). Every run checks that
the terms add up to the state the model computed, and refuses when they do not.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attn_probe.capture import StackCapture, intervene
from attn_probe.methods.attention import rollout, target_row
from attn_probe.methods.base import ExplainContext, Explanation, MethodInfo, register

__all__ = [
    "ALTI",
    "LayerStates",
    "NormSpec",
    "alti",
    "alti_contributions",
    "alti_terms",
    "decomposition",
    "layer_states",
    "transformed_values",
]

#: Hugging Face model types whose layers have BERT's names: ``attention.self`` / ``attention.output.dense``
#: / ``attention.output.LayerNorm`` (post-norm).
BERT_LAYOUT = ("bert", "roberta", "electra")
#: Llama's names: ``self_attn``, ``input_layernorm`` before it, ``post_attention_layernorm`` after the residual.
LLAMA_LAYOUT = ("llama", "mistral", "qwen2")
#: GPT-2's names: ``attn``, ``ln_1`` before it, ``ln_2`` after the residual.
GPT2_LAYOUT = ("gpt2",)
#: Largest ``[queries, keys, embed]`` block of terms built at once (float32 elements, 64 MiB).
CHUNK_ELEMENTS = 1 << 24


ALTI = MethodInfo(
    id="alti",
    family="attention",
    needs_gradients=False,
    cost="1 forward (shared) + 1 forward recording each layer's input, + per layer a [n, n, embed] decomposition",
    sign="non-negative share: the target row sums to 1 over the real tokens",
    description=(
        "Aggregation of Layer-wise Token-to-token Interactions: each token's state after the attention block "
        "(after its norm in post-norm models, the residual stream in pre-norm ones) split into one vector per "
        "input token; c_ij = max(0, ||y_i||_1 - ||y_i - T_i(x_j)||_1), rows normalised, rolled out over the "
        "layers without an added identity. layer_scores[:, l]: the rollout up to layer l; details['matrices']: "
        "the per-layer contribution matrices."
    ),
    reference=(
        "Ferrando, Gállego & Costa-jussà 2022, Measuring the Mixing of Contextual Information in the Transformer "
        "(EMNLP)"
    ),
)


# ----------------------------------------------------------------------------------------------------
# the decomposition of one layer (pure functions)
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NormSpec:
    """The norm after the attention's residual in a post-norm layer, as numbers."""

    kind: str  # "layernorm" or "rmsnorm"
    weight: torch.Tensor | None  # [E] gamma, None without an affine
    bias: torch.Tensor | None  # [E] beta (LayerNorm only)
    eps: float

    @classmethod
    def of(cls, module: nn.Module) -> NormSpec:
        if isinstance(module, nn.LayerNorm):
            if len(module.normalized_shape) != 1:
                raise ValueError(f"alti decomposes norms over the last dimension only, got {module.normalized_shape}")
            return cls("layernorm", _detached(module.weight), _detached(module.bias), float(module.eps))
        name = type(module).__name__
        eps = getattr(module, "eps", getattr(module, "variance_epsilon", None))
        if "RMSNorm" in name and eps is not None:
            return cls("rmsnorm", _detached(getattr(module, "weight", None)), None, float(eps))
        raise ValueError(f"alti cannot make the norm {name} linear: it knows nn.LayerNorm and RMSNorm (weight, eps)")

    def decompose(self, terms: torch.Tensor, own: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``terms [m, n, E]`` of the norm's input (summing over n to it) -> the same for its output.

        The statistics are those of the whole sum; each term is centred on its own mean (LayerNorm) and
        scaled by gamma; beta is added to each query's own term (``own``: row and column indices).
        """
        total = terms.sum(dim=1)  # [m, E]
        if self.kind == "layernorm":
            scale = (total.var(dim=-1, unbiased=False) + self.eps).rsqrt()  # [m]
            terms = terms - terms.mean(dim=-1, keepdim=True)
        else:
            scale = (total.pow(2).mean(dim=-1) + self.eps).rsqrt()  # [m]
        terms = terms * scale[:, None, None]
        if self.weight is not None:
            terms = terms * self.weight.to(terms)
        if self.bias is not None:
            terms = terms.index_put(own, terms[own] + self.bias.to(terms))
        return terms


def _detached(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().float()


def transformed_values(values: torch.Tensor, output_weight: torch.Tensor) -> torch.Tensor:
    """``values [H, n, d]``, ``output_weight [E, H * d]`` (``nn.Linear`` layout) -> ``[H, n, E] = W_O^h v^h_j``."""
    heads, _, head_dim = values.shape
    w_o = output_weight.float().view(output_weight.shape[0], heads, head_dim)  # [E, H, d]
    return torch.einsum("hkd,ehd->hke", values.float(), w_o)


def alti_terms(
    resid: torch.Tensor,
    weights: torch.Tensor,
    transformed: torch.Tensor,
    output_bias: torch.Tensor | None = None,
    norm: NormSpec | None = None,
    queries: slice | None = None,
) -> torch.Tensor:
    """One example and layer: ``T_i(x_j)`` as ``[m (queries i), n (keys j), E]``; summing over j gives ``y_i``.

    ``resid [n, E]``: the residual stream entering the block; ``weights [H, n, n]``: the attention used;
    ``transformed [H, n, E]``: ``W_O^h v^h_j`` (:func:`transformed_values`); ``output_bias [E]``; ``norm``:
    the post-norm after the residual, None for a pre-norm layer; ``queries``: a slice of rows (default all).
    """
    rows = slice(None) if queries is None else queries
    columns = torch.arange(resid.shape[0], device=resid.device)[rows]  # [m]: each query's own column
    terms = torch.einsum("hqk,hke->qke", weights[:, rows].float(), transformed)  # [m, n, E]
    own_state = resid[rows].float()  # [m, E]
    if output_bias is not None:
        own_state = own_state + output_bias.float()
    own = (torch.arange(len(columns), device=resid.device), columns)
    terms = terms.index_put(own, terms[own] + own_state)
    return terms if norm is None else norm.decompose(terms, own)


def alti_contributions(terms: torch.Tensor, output: torch.Tensor | None = None) -> torch.Tensor:
    """``terms [..., m, n, E]`` -> ``[..., m, n]``: ``max(0, ||y_i||_1 - ||y_i - T_i(x_j)||_1)``, rows normalised.

    ``output`` (``y [..., m, E]``) defaults to the sum of the terms.
    """
    output = terms.sum(dim=-2) if output is None else output
    distance = (output.unsqueeze(-2) - terms).abs().sum(dim=-1)  # [..., m, n]
    raw = (output.abs().sum(dim=-1, keepdim=True) - distance).clamp_min(0.0)
    return raw / raw.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(raw.dtype).tiny)


# ----------------------------------------------------------------------------------------------------
# what the capture does not hold: each layer's input, its norm, and the state the model computed
# ----------------------------------------------------------------------------------------------------
@dataclass
class LayerStates:
    """Per layer of the main stack, from one forward pass through the capture's attention path."""

    inputs: list[torch.Tensor]  # [b, n, E] float32: the residual stream entering the attention block
    outputs: list[torch.Tensor]  # [b, n, E] float32: after the attention's residual (and norm, post-norm)
    norms: list[NormSpec | None]  # the norm after the residual (post-norm), None (pre-norm)
    layout: str  # "ours", "bert", "llama" or "gpt2"

    @property
    def prenorm(self) -> bool:
        return self.norms[0] is None


_STATES: weakref.WeakKeyDictionary[ExplainContext, LayerStates] = weakref.WeakKeyDictionary()


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _layout(ctx: ExplainContext) -> str:
    family = ctx.family
    if family.name == "ours":
        return "ours"
    for layout, types in (("bert", BERT_LAYOUT), ("llama", LLAMA_LAYOUT), ("gpt2", GPT2_LAYOUT)):
        if family.name in types and not family.is_encoder_decoder:
            return layout
    raise ValueError(
        f"alti does not know the layer layout of {family.name!r} models ({type(ctx.model).__name__}): it needs "
        "each layer's residual input and the norm around its attention, and knows our own models, "
        f"{', '.join(BERT_LAYOUT)} (post-norm), {', '.join(LLAMA_LAYOUT + GPT2_LAYOUT)} (pre-norm). "
        "Use value_zeroing (any model) or attention_norm instead"
    )


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else next(iter(kwargs.values()))


def _hooks(
    model: nn.Module, layout: str, site: str, keep: Callable[[str, torch.Tensor], None]
) -> tuple[list[Callable[[], None]], nn.Module | None]:
    """Install the hooks that read one layer's ``x`` and ``y``: (their removers, the post-norm module or None)."""
    if layout == "ours":
        from attn_probe.attention.blocks import TransformerBlock

        block = model.get_submodule(_parent(site))
        if not isinstance(block, TransformerBlock):
            raise ValueError(f"alti expected a TransformerBlock around {site}, found {type(block).__name__}")
        position = block.attention.position
        if position is not None and position.needs_weights:
            raise ValueError(
                f"alti cannot decompose {site}: its position variant {position.name!r} adds a value term "
                "(Shaw relative values) that is not in the captured values. Use value_zeroing instead"
            )

        def read(name: str) -> Callable[[torch.Tensor, Any], None]:
            def hook(tensor: torch.Tensor, _point: Any) -> None:
                keep(name, tensor)

            return hook

        removers = [block.hook_resid_pre.add_hook(read("x")), block.hook_resid_mid.add_hook(read("y"))]
        return removers, None if block.prenorm else block.attention_norm
    if layout == "bert":
        self_output = model.get_submodule(_parent(site)).get_submodule("output")  # BertSelfOutput(h, input_tensor)

        def on_self_output(_module, args, kwargs, output) -> None:
            keep("x", args[1] if len(args) > 1 else kwargs["input_tensor"])
            keep("y", output)

        handle = self_output.register_forward_hook(on_self_output, with_kwargs=True)
        return [handle.remove], self_output.get_submodule("LayerNorm")
    before, after = ("input_layernorm", "post_attention_layernorm") if layout == "llama" else ("ln_1", "ln_2")
    layer = model.get_submodule(_parent(site))
    handles = [
        layer.get_submodule(module).register_forward_pre_hook(
            lambda _m, args, kwargs, name=name: keep(name, _first_input(args, kwargs)), with_kwargs=True
        )
        for module, name in ((before, "x"), (after, "y"))
    ]
    return [handle.remove for handle in handles], None


def layer_states(ctx: ExplainContext) -> LayerStates:
    """Each main-stack layer's input and output around its attention, recorded once per context."""
    if ctx in _STATES:
        return _STATES[ctx]
    layout = _layout(ctx)
    stack = _main_stack(ctx)
    recorded: dict[tuple[int, str], torch.Tensor] = {}
    norms: list[NormSpec | None] = []

    def keeper(layer: int) -> Callable[[str, torch.Tensor], None]:
        def keep(name: str, tensor: torch.Tensor) -> None:
            if (layer, name) in recorded:
                raise RuntimeError(f"alti saw layer {layer}'s {name} twice in one forward pass")
            recorded[(layer, name)] = tensor.detach().float()

        return keep

    with ExitStack() as exits:
        for layer, site in enumerate(stack.site_names):
            removers, norm = _hooks(ctx.model, layout, site, keeper(layer))
            for remove in removers:
                exits.callback(remove)
            norms.append(None if norm is None else NormSpec.of(norm))
        # Through the capture's own attention path (eager for Hugging Face models, the explicit one for
        # ours), so that x is what the captured values were computed from.
        with torch.no_grad(), intervene(ctx.model, {}):
            ctx.model(**ctx.inputs)
    missing = [
        f"{layer}:{name}" for layer in range(stack.num_layers) for name in ("x", "y") if (layer, name) not in recorded
    ]
    if missing:
        raise RuntimeError(f"alti's hooks did not see {missing} during the forward pass ({layout} layout)")
    if len({norm is None for norm in norms}) > 1:
        raise ValueError("alti expects every layer to be pre-norm or every layer post-norm")
    states = LayerStates(
        inputs=[recorded[(layer, "x")] for layer in range(stack.num_layers)],
        outputs=[recorded[(layer, "y")] for layer in range(stack.num_layers)],
        norms=norms,
        layout=layout,
    )
    _STATES[ctx] = states
    return states


def _main_stack(ctx: ExplainContext) -> StackCapture:
    cap = ctx.capture()
    stack = cap.stacks[cap.main_stack]
    missing = [name for name in ("values", "output_weight") if getattr(stack, name) is None]
    if missing:
        raise ValueError(
            f"alti needs the value vectors and the output projection W_O of every {stack.stack} layer, but the "
            f"capture of this {cap.family!r} model did not provide {' and '.join(missing)}"
        )
    return stack


def decomposition(ctx: ExplainContext, layer: int, example: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(terms [m, m, E], columns [m])``: ``T_i(x_j)`` of one example's real tokens at ``layer``.

    ``columns`` are the padded positions of the real tokens; ``terms.sum(1)`` is the state after the
    attention block (after its norm in a post-norm model).
    """
    stack, states = _main_stack(ctx), layer_states(ctx)
    columns = torch.nonzero(ctx.attention_mask[example].bool()).flatten()
    return _example_terms(stack, states, layer, example, columns), columns


def _example_terms(
    stack: StackCapture,
    states: LayerStates,
    layer: int,
    example: int,
    columns: torch.Tensor,
    queries: slice | None = None,
    transformed: torch.Tensor | None = None,
) -> torch.Tensor:
    weights = stack.weights[example, layer][:, columns][:, :, columns]  # [H, m, m]
    if transformed is None:
        values = stack.values[example, layer][:, columns]  # [H, m, d]
        transformed = transformed_values(values, stack.output_weight[layer].to(values.device))
    bias = None if stack.output_bias is None else stack.output_bias[layer]
    resid = states.inputs[layer][example, columns]  # [m, E]
    return alti_terms(resid, weights, transformed, bias, states.norms[layer], queries)


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-3 if torch.finfo(dtype).bits >= 32 else 5e-2


# ----------------------------------------------------------------------------------------------------
# the method
# ----------------------------------------------------------------------------------------------------
@register(ALTI)
def alti(ctx: ExplainContext) -> Explanation:
    """ALTI: ``C^l_ij ∝ max(0, ||y^l_i||_1 - ||y^l_i - T^l_i(x_j)||_1)``, ``R = C^{L-1} @ ... @ C^0``,
    ``score_j = R_ij`` for the target row i.

    Each example is decomposed on its real tokens only (padding rows and columns of every matrix are 0), in
    blocks of queries so that no more than :data:`CHUNK_ELEMENTS` terms exist at once.
    ``details['reconstruction_error'] [layers]``: the largest ``|Σ_j T_i(x_j) - y_i|`` over the batch,
    relative to ``max |y|``, against the state the model computed; above 1e-3 (float32; 5e-2 in half
    precision) the decomposition does not describe the model (dropout in training mode, an unknown layer
    variant) and the method refuses.
    """
    rows = ctx.target_rows()  # [b]; refuses encoder-decoder models first
    stack = _main_stack(ctx)
    states = layer_states(ctx)
    mask = ctx.attention_mask.bool()  # [b, n]
    batch, n = mask.shape
    device = stack.weights.device
    matrices = torch.zeros(batch, stack.num_layers, n, n, device=device)  # [b, L, n, n]
    errors = torch.zeros(stack.num_layers)
    for example in range(batch):
        columns = torch.nonzero(mask[example]).flatten().to(device)  # [m]
        m = len(columns)
        embed = states.inputs[0].shape[-1]
        step = max(1, CHUNK_ELEMENTS // max(1, m * embed))
        for layer in range(stack.num_layers):
            values = stack.values[example, layer][:, columns]  # [H, m, d]
            transformed = transformed_values(values, stack.output_weight[layer].to(device))  # [H, m, E]
            actual = states.outputs[layer][example, columns].to(device)  # [m, E]
            scale = float(actual.abs().max().clamp_min(1e-12))
            for start in range(0, m, step):
                queries = slice(start, min(start + step, m))
                terms = _example_terms(stack, states, layer, example, columns, queries, transformed)  # [q, m, E]
                output = terms.sum(dim=1)  # [q, E]
                errors[layer] = max(float(errors[layer]), float((output - actual[queries]).abs().max()) / scale)
                block = alti_contributions(terms, output)  # [q, m]
                matrices[example, layer, columns[queries, None], columns[None, :]] = block
    tolerance = _tolerance(stack.values.dtype)
    if bool((errors > tolerance).any()):
        worst = int(errors.argmax())
        raise ValueError(
            f"alti's decomposition of layer {worst} does not add up to the state the model computed (relative "
            f"error {float(errors[worst]):.2e} > {tolerance:.0e}; {states.layout} layout): is the model in training "
            "mode (dropout), or does the layer compute something else? Use value_zeroing instead"
        )
    joint = rollout(matrices)  # [b, L, n, n]
    layer_scores = target_row(joint, rows)  # [b, L, n]
    return ctx.finish(
        ALTI,
        layer_scores[:, -1],
        layer_scores=layer_scores,
        details={"matrices": matrices, "reconstruction_error": errors, "prenorm": states.prenorm},
    )
