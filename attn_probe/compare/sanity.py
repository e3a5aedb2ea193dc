"""Sanity check by model-parameter randomisation (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

An explanation that stays the same when the model's learned weights are replaced by random ones cannot be
telling us what the model learned: it explains the architecture (or the input) instead. The check re-runs
each method on a copy of the model whose parameters are re-initialised step by step and measures how far
the explanation moves from the original one.

Protocol (:func:`randomisation_check`):

1. The original explanations are computed on the user's model; the target is resolved there once (the
   predicted class / top next token per example) and that :class:`ResolvedTarget` is reused on every
   randomised copy, so each copy explains *the same* class or token, not whatever it now predicts.
2. A deep copy of the model is randomised; the user's model is never modified. ``cascade=True``
   (Adebayo's cascading randomisation) goes from the top down: first the output head (everything that runs
   after the last layer: classifier, pooler, final norm, LM head), then the top layer, then the next one, ...
   until every layer is random (and the embeddings too with ``include_embeddings=True``). ``cascade=False``
   randomises each of those groups alone, on a fresh copy each time (Adebayo's independent randomisation).
3. At each step every method is recomputed and compared with its original explanation, per example, on the
   real tokens (special tokens excluded unless ``include_special=True``): Spearman rank correlation and the
   Jaccard index of the top-``k`` token sets, of the signed scores and of their absolute values (Adebayo
   report both, since some methods' sign flips under randomisation while the magnitudes stay). Beside
   them, the output change: the fixed target on the randomised copy against the original, and the
   probability of the originally predicted class / next token.

How the layers are found. Attention modules are found by class (our :class:`MultiHeadAttention`, a
family's native attention class, or a class whose name contains "Attention") and, as in
:mod:`attn_probe.capture.sites`, by name: a layer is the module named by the path up to the first integer
(``bert.encoder.layer.3``, ``model.layers.3``, ``encoder.layers.3``, ``decoder.block.3``), and the path
with the integer replaced gives its stack (encoder, decoder). The remaining parameterised modules are
placed by the order in which one forward pass first calls them (:func:`randomisation_plan`): those called
before the first layer are the embeddings, those called after the last layer the head, and anything called
between two layers (T5's encoder final norm) belongs to the layer before it. Modules outside the layers that
share parameters move together, placed where the first of them runs (T5's shared, encoder and decoder token
embeddings are one table: all of them are embeddings), except an LM head that runs after the last layer
(it is untied, see below); a module that never runs is used, if at all, through its parameters (DeBERTa's
relative position table, read by every layer) and goes with the embeddings.

How parameters are re-initialised, per module with parameters of its own, under ``torch`` seeded from
``seed`` and the step (the same layer gets the same random weights in both modes; the global random state
is restored afterwards):

- Hugging Face models: the model's own ``_init_weights(module)`` (with its ``initializer_range``), after
  clearing the ``_is_hf_initialized`` flags that would make it a no-op on loaded weights;
- our models, and modules ``_init_weights`` leaves as they were (one it does not know): the module's
  ``reset_parameters()`` (PyTorch's default initialisation, which is how our models are initialised);
- a parameter neither of them changed: a norm's weight is set to 1 and its bias to 0 (class name containing
  "norm", e.g. our RMSNorm); any other non-constant parameter is drawn from a seeded normal distribution
  with mean 0 and the parameter's own standard deviation. A constant parameter that its init left equal
  is counted as re-initialised to that constant.

A parameter tied to a module outside the step (GPT-2's LM head and token embeddings) is untied in the copy
first, so randomising the head leaves the embeddings as they were. The ``init`` column says which rules a
step used.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from torch import nn

from attn_probe.attention.multi_head import MultiHeadAttention
from attn_probe.capture import ResolvedTarget, Target, TokenizedBatch, target_value
from attn_probe.capture.sites import stack_label
from attn_probe.methods.base import ExplainContext, Explanation, get_method
from attn_probe.models.families import detect_family

MethodFn = Callable[..., Explanation]


@dataclass(frozen=True)
class Layer:
    """A transformer layer: the module that holds one layer's attention (and its MLP, norms...)."""

    name: str  # module name, e.g. "bert.encoder.layer.3"
    stack: str  # "encoder" or "decoder"
    index: int  # the layer's index in its stack


@dataclass(frozen=True)
class RandomisationStep:
    """One step of a randomisation: the modules it re-initialises (in cascade mode, on top of all earlier
    steps' modules)."""

    step: int  # 1-based, in order: head, top layer, ..., bottom layer, [embeddings]
    label: str  # "head", "layer 3" (or "decoder layer 3" when there are several stacks), "embeddings"
    stack: str | None  # the layer's stack; None for the head and the embeddings
    layer: int | None  # the layer's index; None for the head and the embeddings
    modules: tuple[str, ...]  # names of the modules with parameters of their own


# ----------------------------------------------------------------------------------------------------
# finding the layers
# ----------------------------------------------------------------------------------------------------
def find_layers(model: nn.Module) -> list[Layer]:
    """The model's transformer layers, found through its attention modules (see the module docstring).

    Ordered stack by stack as the model registers them (an encoder before its decoder), layers ascending.
    Raises ValueError when the model has no attention module inside an indexed layer.
    """
    family = detect_family(model)
    native_class = family.native.attention_class if family.native is not None else None
    layers: dict[str, tuple[str, int]] = {}  # layer name -> (layer pattern, index)
    for name, module in model.named_modules():
        if not name or not _is_attention(module, native_class):
            continue
        parts = name.split(".")
        position = next((j for j, part in enumerate(parts) if part.isdigit()), None)
        if position is None:  # an attention module outside any indexed layer (e.g. an attention pooler)
            continue
        layer_name = ".".join(parts[: position + 1])
        pattern = ".".join([*parts[:position], "#"])
        layers.setdefault(layer_name, (pattern, int(parts[position])))
    if not layers:
        raise ValueError(
            f"found no attention module inside an indexed layer of {type(model).__name__}: the randomisation "
            "check needs the model's layer list (modules named like 'encoder.layer.0' holding an attention module)"
        )
    stacks: dict[str, str] = {}  # pattern -> stack label
    for pattern, _ in layers.values():
        if pattern not in stacks:
            label = stack_label(
                pattern, is_encoder_decoder=family.is_encoder_decoder, is_decoder_only=family.is_decoder_only
            )
            # a second list that looks like the same stack (a vision tower beside a text decoder): its path names it
            stacks[pattern] = pattern if label in stacks.values() else label
    stack_order = list(stacks)
    found = [Layer(name, stacks[pattern], index) for name, (pattern, index) in layers.items()]
    return sorted(found, key=lambda layer: (stack_order.index(_pattern_of(layer.name)), layer.index))


def randomisation_plan(
    model: nn.Module,
    inputs: TokenizedBatch | Mapping[str, torch.Tensor],
    *,
    include_embeddings: bool = False,
) -> list[RandomisationStep]:
    """The steps of a randomisation of ``model``: head, layers from the top down, optionally embeddings.

    One forward pass on ``inputs`` (without gradients, forward pre-hooks removed afterwards) orders the
    modules outside the layers; see the module docstring. :func:`randomisation_check` applies the steps
    cumulatively (cascade) or one at a time.
    """
    _check_bool("include_embeddings", include_embeddings)
    layers = find_layers(model)
    owned = [(name, module) for name, module in model.named_modules() if _has_own_parameters(module)]
    first_call = _first_calls(model, owned, inputs)  # module name -> order of its first call

    def layer_of(name: str) -> Layer | None:
        return next((layer for layer in layers if name == layer.name or name.startswith(layer.name + ".")), None)

    members: dict[Layer, list[str]] = {layer: [] for layer in layers}
    outside: list[str] = []
    for name, _ in owned:
        layer = layer_of(name)
        if layer is None:
            outside.append(name)
        else:
            members[layer].append(name)
    # when each layer runs: the first calls of its modules
    starts = {layer: min((first_call[n] for n in members[layer] if n in first_call), default=None) for layer in layers}
    ends = {layer: max((first_call[n] for n in members[layer] if n in first_call), default=None) for layer in layers}
    ran = [layer for layer in layers if starts[layer] is not None]
    if not ran:
        raise ValueError(f"no layer of {type(model).__name__} ran in a forward pass on these inputs")
    first_start = min(starts[layer] for layer in ran)
    last_end = max(ends[layer] for layer in ran)  # type: ignore[type-var]

    # the head: what runs after the last layer (an LM head tied to the embeddings too: it is untied when
    # randomised). Other modules that share parameters (T5's shared / encoder / decoder token embeddings)
    # move together, placed where the first of them runs; a module that never runs is used, if at all,
    # through its parameters (DeBERTa's relative position table) and goes with the embeddings.
    head = [name for name in outside if first_call.get(name, -1) > last_end]
    rest = [name for name in outside if name not in head]
    unit = _tie_units(model, rest)
    place: dict[str, float] = {}
    for name in rest:
        calls = [first_call[other] for other in unit[name] if other in first_call]
        place[name] = min(calls) if calls else -math.inf
    embeddings = []
    for name in rest:
        if place[name] < first_start:
            embeddings.append(name)
        else:  # between (or inside) layers: with the last layer that started before it
            before = max((layer for layer in ran if starts[layer] <= place[name]), key=lambda layer: starts[layer])
            members[before].append(name)

    several_stacks = len({layer.stack for layer in layers}) > 1
    # top down in the order they run (a layer that never ran keeps its place in the static order)
    top_down = sorted(layers, key=lambda layer: (starts[layer] is not None, starts[layer] or 0, layer.index))
    top_down.reverse()
    steps = [RandomisationStep(1, "head", None, None, tuple(head))]
    for layer in top_down:
        label = f"{layer.stack} layer {layer.index}" if several_stacks else f"layer {layer.index}"
        steps.append(RandomisationStep(len(steps) + 1, label, layer.stack, layer.index, tuple(members[layer])))
    if include_embeddings:
        steps.append(RandomisationStep(len(steps) + 1, "embeddings", None, None, tuple(embeddings)))
    return steps


# ----------------------------------------------------------------------------------------------------
# the check
# ----------------------------------------------------------------------------------------------------
def randomisation_check(
    model: nn.Module,
    inputs: TokenizedBatch | Mapping[str, torch.Tensor],
    methods: Sequence[str] | Mapping[str, MethodFn],
    *,
    tokenizer: Any = None,
    target: Target | ResolvedTarget | None = None,
    cascade: bool = True,
    seed: int = 0,
    top_k: int | float = 0.25,
    include_special: bool = False,
    include_embeddings: bool = False,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """Adebayo et al.'s model-parameter randomisation test for ``methods`` on one batch (see the module).

    Args:
        model: the model (never modified: every randomisation happens on a deep copy).
        inputs: a :class:`TokenizedBatch` (it marks special tokens) or a tokenizer's output.
        methods: registered method ids (``["attention_rollout", "saliency"]``), or a mapping from a name to
            a function ``fn(context, **options) -> Explanation`` for a method of your own.
        tokenizer: for the methods' mask / pad ids, as in :func:`attn_probe.methods.explain`.
        target: what to explain (default: the predicted class's logit / the top next token's log-prob);
            resolved once on the original model and kept for every randomised copy.
        cascade: True: cumulative from the top; False: one group at a time on a fresh copy.
        seed: seeds the re-initialisation (one seed per step derived from it).
        top_k: the top set compared by the Jaccard index: a count (int >= 1) or a fraction of an example's
            compared tokens (float in (0, 1]; ``ceil``, at least 1).
        include_special: compare special tokens' scores too.
        include_embeddings: add a last step that randomises the embeddings (gradient methods attribute at the
            token embeddings' output, so for them this step changes the very vectors they are taken at).
        options: per method name, keyword options (``{"integrated_gradients": {"n_steps": 16}}``).

    Returns:
        one row per (example, method, step): ``example_id, method, step, randomised_from, stack, layer,
        cascade, n_modules, init, n_tokens, k, spearman, spearman_abs, topk_jaccard, topk_jaccard_abs,
        target_original, target_randomised, target_change, probability_original, probability_randomised,
        prediction_changed``. ``randomised_from`` is the step's label: in cascade mode everything from the
        head down to it is random. Correlations are NaN for fewer than two tokens or constant scores;
        ``probability_*`` is NaN for a single-logit head.
    """
    functions = _method_functions(methods)
    options = _check_options(options, functions)
    _check_bool("cascade", cascade)
    _check_bool("include_special", include_special)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    _check_top_k(top_k)

    context = ExplainContext(model, inputs, target=target, tokenizer=tokenizer)
    resolved = context.target
    original = {name: fn(context, **options.get(name, {})) for name, fn in functions.items()}
    compared = context.attention_mask.bool()  # [batch, n]
    if not include_special:
        compared = compared & ~context.special
    reference = _readout(context, None)
    predicted = reference[2]

    working = copy.deepcopy(model)
    plan = randomisation_plan(working, context.inputs, include_embeddings=include_embeddings)
    rows = []
    for step in plan:
        if not cascade:
            working = copy.deepcopy(model)
        how = _reinitialise(working, step.modules, _step_seed(seed, step.step))
        randomised = ExplainContext(working, inputs, target=resolved, tokenizer=tokenizer)
        value, probability, top = _readout(randomised, predicted)
        base = {
            "step": step.step,
            "randomised_from": step.label,
            "stack": step.stack,
            "layer": step.layer,
            "cascade": cascade,
            "n_modules": len(step.modules),
            "init": ", ".join(sorted(set(how.values()))),
        }
        for name, fn in functions.items():
            explanation = fn(randomised, **options.get(name, {}))
            for i in range(len(resolved)):
                before = original[name].scores[i][compared[i]].detach().cpu().double().numpy()
                after = explanation.scores[i][compared[i].to(explanation.scores.device)].detach().cpu().double()
                after = after.numpy()
                k = _k(top_k, len(before))
                rows.append(
                    {
                        "example_id": i,
                        "method": name,
                        **base,
                        "n_tokens": len(before),
                        "k": k,
                        "spearman": _spearman(before, after),
                        "spearman_abs": _spearman(np.abs(before), np.abs(after)),
                        "topk_jaccard": _top_k_jaccard(before, after, k),
                        "topk_jaccard_abs": _top_k_jaccard(np.abs(before), np.abs(after), k),
                        "target_original": float(reference[0][i]),
                        "target_randomised": float(value[i]),
                        "target_change": float(value[i] - reference[0][i]),
                        "probability_original": float(reference[1][i]),
                        "probability_randomised": float(probability[i]),
                        "prediction_changed": bool(top[i] != predicted[i]),
                    }
                )
    frame = pd.DataFrame(rows)
    if len(frame):
        frame["layer"] = frame["layer"].astype("Int64")
    return frame


# ----------------------------------------------------------------------------------------------------
# re-initialisation
# ----------------------------------------------------------------------------------------------------
def _reinitialise(model: nn.Module, names: Sequence[str], seed: int) -> dict[str, str]:
    """Re-initialise the own parameters of the modules ``names`` of ``model`` in place; per module, how."""
    group = set(names)
    owners: dict[int, set[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for parameter in module.parameters(recurse=False):
            owners.setdefault(id(parameter), set()).add(name)
    init_weights = getattr(model, "_init_weights", None) if _is_hugging_face(model) else None
    device = next(model.parameters()).device
    how: dict[str, str] = {}
    with _forked_rng(device), torch.no_grad():
        torch.manual_seed(seed)
        generator = torch.Generator(device=device).manual_seed(seed)
        # a parameter tied to a module this step leaves alone: one clone for all of this step's modules
        clones: dict[int, nn.Parameter] = {}
        for name in names:
            module = model.get_submodule(name)
            for key, parameter in list(module.named_parameters(recurse=False)):
                if owners.get(id(parameter), set()) - group:
                    if id(parameter) not in clones:
                        clones[id(parameter)] = nn.Parameter(parameter.detach().clone(), parameter.requires_grad)
                    module._parameters[key] = clones[id(parameter)]
        for name in names:
            module = model.get_submodule(name)
            own = dict(module.named_parameters(recurse=False))
            before = {key: parameter.detach().clone() for key, parameter in own.items()}
            rules = set()
            if init_weights is not None:
                for parameter in own.values():
                    parameter._is_hf_initialized = False  # loaded weights carry it, and it makes init a no-op
                init_weights(module)
                rules.add("_init_weights")
            untouched = all(torch.equal(own[key], before[key]) or _constant(before[key]) for key in own)
            unknown = init_weights is None or (untouched and not all(_constant(v) for v in before.values()))
            if unknown and callable(getattr(module, "reset_parameters", None)):  # not a module _init_weights knows
                module.reset_parameters()
                rules = {"reset_parameters"}
            for key, parameter in own.items():
                old = before[key]
                if not torch.equal(parameter, old) or _constant(old):
                    continue
                if "norm" in type(module).__name__.lower() and key in ("weight", "bias"):
                    parameter.fill_(1.0 if key == "weight" else 0.0)
                    rules.add("norm: weight 1, bias 0")
                else:
                    parameter.normal_(0.0, float(old.float().std()), generator=generator)
                    rules.add("normal with the parameter's std")
            how[name] = ", ".join(sorted(rules)) or "constant kept"
    return how


def _constant(values: torch.Tensor) -> bool:
    flat = values.flatten()
    return flat.numel() < 2 or bool((flat == flat[0]).all())


def _is_hugging_face(model: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(model, PreTrainedModel)


@contextlib.contextmanager
def _forked_rng(device: torch.device) -> Iterator[None]:
    """Draw from torch's global generator (the inits do) without changing the user's random state."""
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    with torch.random.fork_rng(devices=devices):
        yield


def _step_seed(seed: int, step: int) -> int:
    """One well-mixed 63-bit seed per (seed, step)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0]) >> 1


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def _is_attention(module: nn.Module, native_class: str | None) -> bool:
    if isinstance(module, MultiHeadAttention):
        return True
    name = type(module).__name__
    if native_class is not None and name == native_class:
        return True
    return "attention" in name.lower() and not isinstance(module, nn.ModuleList)


def _pattern_of(layer_name: str) -> str:
    parts = layer_name.split(".")
    return ".".join([*parts[:-1], "#"])


def _has_own_parameters(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def _tie_units(model: nn.Module, names: list[str]) -> dict[str, set[str]]:
    """For each of ``names``: the names among them that share a parameter with it, transitively (itself too)."""
    unit = {name: {name} for name in names}
    by_parameter: dict[int, list[str]] = {}
    for name in names:
        for parameter in model.get_submodule(name).parameters(recurse=False):
            by_parameter.setdefault(id(parameter), []).append(name)
    for sharing in by_parameter.values():
        merged = set().union(*(unit[name] for name in sharing))
        for name in merged:
            unit[name] = merged
    return unit


def _first_calls(
    model: nn.Module, owned: list[tuple[str, nn.Module]], inputs: TokenizedBatch | Mapping[str, torch.Tensor]
) -> dict[str, int]:
    """Module name -> the order of its first call in one forward pass on ``inputs``."""
    device = next(model.parameters()).device
    model_inputs = inputs.model_inputs() if isinstance(inputs, TokenizedBatch) else dict(inputs)
    model_inputs = {key: value.to(device) for key, value in model_inputs.items() if torch.is_tensor(value)}
    order: dict[str, int] = {}
    handles = []
    try:
        for name, module in owned:

            def record(_module: nn.Module, _args: Any, name: str = name) -> None:
                order.setdefault(name, len(order))

            handles.append(module.register_forward_pre_hook(record))
        with torch.no_grad():
            model(**model_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return order


def _readout(
    context: ExplainContext, predicted: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(target [batch], probability of `predicted` (default: of the argmax) [batch], argmax [batch])``."""
    resolved = context.target
    with torch.no_grad():
        logits = context.logits()
    value = target_value(resolved, logits).double().cpu()
    if resolved.positions is None:
        scores = logits
    else:
        rows = torch.arange(logits.shape[0], device=logits.device)
        scores = logits[rows, resolved.positions.to(logits.device)]
    scores = scores.float()
    top = scores.argmax(dim=-1).cpu()
    chosen = top if predicted is None else predicted
    if scores.shape[-1] < 2:
        probability = torch.full((logits.shape[0],), math.nan, dtype=torch.float64)
    else:
        probability = scores.softmax(dim=-1).cpu().gather(-1, chosen[:, None])[:, 0].double()
    return value, probability, top


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho with average ranks for ties; NaN when undefined (fewer than 2 values, or constant)."""
    if len(a) < 2:
        return math.nan
    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    if np.array_equal(ra, rb):  # exactly 1, not 1 - 2e-16 from the float arithmetic of the correlation
        return 1.0
    return float(np.clip(np.corrcoef(ra, rb)[0, 1], -1.0, 1.0))


def _top_k_jaccard(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Jaccard index of the top-``k`` positions of ``a`` and ``b`` (ties: earlier position first)."""
    if k == 0:
        return math.nan
    top_a = set(np.argsort(-a, kind="stable")[:k].tolist())
    top_b = set(np.argsort(-b, kind="stable")[:k].tolist())
    return len(top_a & top_b) / len(top_a | top_b)


def _k(top_k: int | float, n: int) -> int:
    if n == 0:
        return 0
    if isinstance(top_k, int):
        return min(top_k, n)
    return min(n, max(1, math.ceil(top_k * n - 1e-9)))


def _check_top_k(top_k: object) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, float)):
        raise ValueError(f"top_k must be a count (int >= 1) or a fraction (float in (0, 1]), got {top_k!r}")
    if isinstance(top_k, int) and top_k < 1:
        raise ValueError(f"top_k as a count must be >= 1, got {top_k}")
    if isinstance(top_k, float) and not 0 < top_k <= 1:
        raise ValueError(f"top_k as a fraction must be in (0, 1], got {top_k} (pass an int for a count)")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _method_functions(methods: Sequence[str] | Mapping[str, MethodFn]) -> dict[str, MethodFn]:
    if isinstance(methods, str):
        raise ValueError(f"methods is a list of method ids, got the string {methods!r}: pass [{methods!r}]")
    if isinstance(methods, Mapping):
        functions = dict(methods)
        for name, fn in functions.items():
            if not callable(fn):
                raise ValueError(f"method {name!r} must map to a function fn(context, **options) -> Explanation")
    else:
        functions = {}
        for method_id in methods:
            try:
                functions[method_id] = get_method(method_id)[1]
            except KeyError as error:
                raise ValueError(str(error.args[0])) from None
    if not functions:
        raise ValueError("no methods given: pass method ids such as ['attention_rollout', 'saliency']")
    return functions


def _check_options(
    options: Mapping[str, Mapping[str, Any]] | None, functions: Mapping[str, MethodFn]
) -> dict[str, dict[str, Any]]:
    chosen = {name: dict(value) for name, value in (options or {}).items()}
    unknown = sorted(set(chosen) - set(functions))
    if unknown:
        raise ValueError(f"options given for methods that are not run: {unknown}; the methods are {list(functions)}")
    return chosen
