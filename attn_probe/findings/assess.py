"""One call from a batch to findings: run the explanations, the comparisons, and the verdicts on them.

    assessment = assess(model, tokenize(tokenizer, texts), tokenizer=tokenizer)
    assessment.findings                      # tidy verdicts, what holds and what does not, with evidence
    assessment.summary(by=["layer"])         # how often each finding holds, with Wilson intervals
    assessment.evidence["counterfactuals"]   # every number the verdicts were drawn from

Protocol (all on one batch, for one resolved target, shared by every step):

1. explanations of ``attention_methods`` and ``reference_methods`` (gradient / erasure attributions) through
   :func:`attn_probe.methods.explain` (one shared capture);
2. ``agreement``: Kendall / Spearman / top-k of every pair, ranked by ``|score|`` (signed gradients against
   non-negative attention), special tokens excluded; and of every head of the attention methods that have a
   per-head view (``raw_attention``, ``attention_norm``) with each reference;
3. ``erasure``: ERASER comprehensiveness / sufficiency, ranked by the signed score (the tokens that support the
   prediction), special tokens never erased; ``flips``: decision flips of the same rankings against 10 random
   orders (shared by every method; the dearer of the two: every order deletes until the decision flips);
4. ``sinks`` and ``position``: read from the shared capture;
5. ``counterfactuals``: every layer of ``layers`` (default all) permuted (3 seeds), made uniform and frozen to
   its position-only pattern, all heads together (``heads="each"`` for per-head verdicts);
6. ``adversarial``: the adversarial search on ``adversarial_layers`` (default: the last layer), on the row
   that feeds the output (Jain & Wallace's single attention distribution), all heads together;
7. ``randomisation``: the cascading parameter-randomisation test of every method.

Whatever the checks, ``Assessment.flags`` (:mod:`attn_probe.findings.flags`) says which numbers not to lean on:
each integrated-gradients result's convergence delta, and the shared capture's drift from the model's backend.

``checks`` chooses the steps; verdicts whose table was not computed are simply absent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from torch import nn

from attn_probe.capture import AttentionCapture, ResolvedTarget, Target, TokenizedBatch
from attn_probe.compare.agreement import agreement_table, layer_agreement_table
from attn_probe.compare.counterfactual import adversarial_attention, attention_counterfactuals
from attn_probe.compare.faithfulness import faithfulness_report
from attn_probe.compare.position import position_explained
from attn_probe.compare.sanity import randomisation_check
from attn_probe.compare.sinks import attention_sinks
from attn_probe.findings import verdicts
from attn_probe.findings.flags import empty_flags, numerical_flags
from attn_probe.findings.summary import summarise
from attn_probe.findings.thresholds import DEFAULT_THRESHOLDS, Thresholds
from attn_probe.methods.base import ExplainContext, Explanation, get_method

CHECKS = ("agreement", "erasure", "flips", "sinks", "position", "counterfactuals", "adversarial", "randomisation")
DEFAULT_ATTENTION_METHODS = ("raw_attention", "attention_rollout")
DEFAULT_REFERENCE_METHODS = ("integrated_gradients", "leave_one_out")


@dataclass
class Assessment:
    """What :func:`assess` found: verdicts, the tables behind them, and how it was run."""

    findings: pd.DataFrame  # verdicts.FINDING_COLUMNS
    evidence: dict[str, pd.DataFrame]  # one comparison table per check
    explanations: dict[str, Explanation]
    thresholds: Thresholds
    settings: dict[str, Any] = field(default_factory=dict)
    captured: AttentionCapture | None = None  # the shared capture, when a method or check made one
    flags: pd.DataFrame = field(default_factory=empty_flags)  # flags.FLAG_COLUMNS: IG convergence, capture drift

    def summary(self, *, by: Sequence[str] = (), slices: pd.DataFrame | None = None) -> pd.DataFrame:
        """:func:`attn_probe.findings.summary.summarise` of these findings."""
        return summarise(self.findings, by=by, slices=slices)

    def holding(self, finding: str | None = None) -> pd.DataFrame:
        """The rows whose verdict holds (of one finding, or all)."""
        rows = self.findings[self.findings["holds"].fillna(False).astype(bool)]
        return rows if finding is None else rows[rows["finding"] == finding]


def assess(
    model: nn.Module,
    inputs: TokenizedBatch | Mapping[str, Any],
    *,
    tokenizer: Any = None,
    target: Target | ResolvedTarget | None = None,
    attention_methods: Sequence[str] = DEFAULT_ATTENTION_METHODS,
    reference_methods: Sequence[str] = DEFAULT_REFERENCE_METHODS,
    checks: Sequence[str] = CHECKS,
    layers: Sequence[int] | None = None,
    heads: str | Sequence[int] = "all",
    adversarial_layers: Sequence[int] = (-1,),
    adversarial_options: Mapping[str, Any] | None = None,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    seed: int = 0,
) -> Assessment:
    """Explain one batch with attention and reference methods, compare them, and judge (see the module).

    ``attention_methods`` / ``reference_methods``: method ids (``attn_probe.list_methods()``); the references
    are the attributions attention is judged against (gradient and erasure methods). ``method_options``: per
    method id keyword options. ``layers`` / ``heads``: what the counterfactuals edit. ``adversarial_options``:
    keyword options of :func:`~attn_probe.compare.counterfactual.adversarial_attention` (default ``rows="target"``:
    Jain & Wallace's setting, the one attention distribution that feeds the output; with ``"all"`` an adversary
    can also rewrite rows the output never reads). ``seed`` seeds the
    permutations, random erasure orders, adversarial starts and randomised parameters.
    """
    chosen = _check_choices(checks, attention_methods, reference_methods)
    context = ExplainContext(model, inputs, target=target, tokenizer=tokenizer)
    options = {method: dict(values) for method, values in (method_options or {}).items()}
    methods = list(dict.fromkeys([*attention_methods, *reference_methods]))
    if "integrated_gradients" in methods:  # it warns at the line its results are flagged at, unless told otherwise
        tolerance = {"delta_tolerance": thresholds.ig_relative_convergence_delta}
        options["integrated_gradients"] = {**tolerance, **options.get("integrated_gradients", {})}
    explanations = {m: get_method(m)[1](context, **dict(options.get(m, {}))) for m in methods}
    evidence: dict[str, pd.DataFrame] = {}
    found: list[pd.DataFrame] = []
    attention, references = list(attention_methods), list(reference_methods)

    if "agreement" in chosen:
        evidence["agreement"] = agreement_table(explanations, absolute=True)
        found.append(verdicts.attention_disagrees(evidence["agreement"], attention, references, thresholds))
        per_head = [
            layer_agreement_table(explanations[a], [explanations[r] for r in references], level="head", absolute=True)
            for a in attention
            if explanations[a].head_scores is not None
        ]
        if per_head:
            evidence["head_agreement"] = pd.concat(per_head, ignore_index=True)
            found.append(
                verdicts.head_disagrees(evidence["head_agreement"], evidence["agreement"], references, thresholds)
            )
    protocols = tuple(protocol for protocol, check in (("eraser", "erasure"), ("flips", "flips")) if check in chosen)
    if protocols:
        # One erasure cache for every method and both checks: the full inputs and the random orders run once.
        report = faithfulness_report(context, explanations, protocols=protocols, seed=seed)
        if "erasure" in chosen:
            evidence["eraser"] = report.eraser
            found.append(verdicts.erasure_prefers_attributions(report.eraser, attention, references, thresholds))
        if "flips" in chosen:
            evidence["flips"] = report.flips
            found.append(verdicts.attention_no_better_than_random(report.flips, attention))
    if "sinks" in chosen:
        special = context.batch.special_tokens_mask.bool() if context.batch is not None else None
        evidence["sinks"] = attention_sinks(context.capture(), special)
        found.append(verdicts.attention_sink(evidence["sinks"], thresholds))
    if "position" in chosen:
        evidence["position"] = position_explained(context.capture())
        found.append(verdicts.position_explains_head(evidence["position"], thresholds))
    if "counterfactuals" in chosen:
        evidence["counterfactuals"] = attention_counterfactuals(
            model, inputs, layers=layers, heads=heads, seeds=(seed, seed + 1, seed + 2), target=context.target,
            tokenizer=tokenizer,
        )  # fmt: skip
        found.append(verdicts.output_ignores_attention(evidence["counterfactuals"], thresholds))
    if "adversarial" in chosen:
        num_layers = context.capture().weights.shape[1]
        search = {"rows": "target", **dict(adversarial_options or {})}
        searches = [
            adversarial_attention(
                model, inputs, layer=layer % num_layers, seed=seed, target=context.target, tokenizer=tokenizer,
                **search,
            )
            for layer in adversarial_layers
        ]  # fmt: skip
        evidence["adversarial"] = pd.concat(searches, ignore_index=True)
        found.append(verdicts.adversarial_attention_exists(evidence["adversarial"], thresholds))
    if "randomisation" in chosen:
        evidence["randomisation"] = randomisation_check(
            model, inputs, methods, tokenizer=tokenizer, target=context.target, seed=seed, options=options
        )
        found.append(verdicts.survives_randomisation(evidence["randomisation"], thresholds))

    findings = pd.concat(found, ignore_index=True) if found else verdicts._frame([])
    settings = {
        "attention_methods": attention,
        "reference_methods": references,
        "checks": chosen,
        "layers": None if layers is None else list(layers),
        "heads": heads,
        "adversarial_layers": list(adversarial_layers),
        "adversarial_options": {"rows": "target", **dict(adversarial_options or {})},
        "seed": seed,
        "target": context.target.descriptions(tokenizer),
    }
    flags = numerical_flags(explanations, context.cached_capture, thresholds)
    return Assessment(findings, evidence, explanations, thresholds, settings, context.cached_capture, flags)


def _check_choices(checks: Sequence[str], attention: Sequence[str], references: Sequence[str]) -> list[str]:
    unknown = [check for check in checks if check not in CHECKS]
    if unknown:
        raise ValueError(f"unknown checks {unknown}; choose from {list(CHECKS)}")
    for method in [*attention, *references]:
        get_method(method)  # a KeyError naming the methods that exist
    if not attention:
        raise ValueError("assess needs at least one attention method to judge (e.g. 'raw_attention')")
    if not references and {"agreement", "erasure"} & set(checks):
        raise ValueError("the agreement and erasure checks need reference methods (e.g. 'integrated_gradients')")
    return list(dict.fromkeys(checks))
