"""Entry ``captum_loop``: our batched probe against captum as a user would write it, one example at a time.

Without attn_probe, a user explains a classifier with captum the way its BERT tutorial does: per example,
tokenize, build a reference input, wrap the model in a forward function, call ``attribute`` with the default
settings, sum over the hidden dimension. The reference side here is exactly that loop (one example at a time,
one method after the other), with two settings changed so that the scores must equal ours (neither changes
the cost): the layer is the word-embedding lookup (``model.get_input_embeddings()``, where attn_probe attributes;
the tutorial takes ``model.bert.embeddings``, after position embeddings and LayerNorm) and the reference tokens
are ``[CLS] [MASK] ... [SEP]`` (attn_probe's baseline; the tutorial uses [PAD]).

- ``integrated_gradients``: ``LayerIntegratedGradients(forward, embeddings).attribute(ids, baselines=ref,
  target=predicted class, return_convergence_delta=True)`` (defaults: 50 steps, Gauss-Legendre, all steps in
  one pass), summed over the hidden dimension;
- ``saliency``: ``Saliency(forward on inputs_embeds).attribute(embeddings, target=...)`` (absolute gradient),
  reduced by the L2 norm over the hidden dimension (attn_probe's reduction);
- ``input_x_gradient``: ``InputXGradient(...)``, summed over the hidden dimension.

Ours: ``Probe.explain(texts, methods=["raw_attention", method], checks=[])`` (a probe judges attention, so it
needs one attention method; raw attention only reads the capture that resolves the target anyway), one batch.
Rows ``loop/<method>`` and ``loop/all`` (the three loops against one probe call); ``ratio`` = ours / loop, no
target. Before timing, the scores are compared (max abs diff relative to the example's largest |score|).

The share of the probe's time spent in the passes it cannot avoid: ``bare_ig`` is captum's
``LayerIntegratedGradients`` on the whole padded batch (the predicted classes from one forward pass, then one
``attribute`` call with the same baseline and 50 steps, all rows in one pass, nothing else):

- ``ig_share/probe_ig_only``: ``Probe.explain(methods=["raw_attention", "integrated_gradients"], checks=[])``
  against ``bare_ig``; target: ratio <= 1.3;
- ``ig_share/default_probe``: the default ``Probe.explain(texts)`` (every default method and check) against
  ``bare_ig`` (no target; ``ig_share`` = 1 / ratio, the share of its time that bare IG would take).

Model: ``minilm-sentiment`` on 8 Rotten Tomatoes test snippets; ``--quick``: a tiny random BERT on 3 texts.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from captum.attr import InputXGradient, LayerIntegratedGradients, Saliency

from benchmarks.timing import compare

AGREEMENT_TOLERANCE = 1e-3  # max abs diff / max |score| of the example (float32; padded batch vs one example)
IG_SHARE_TARGET = 1.3
METHODS = ("saliency", "input_x_gradient", "integrated_gradients")
QUICK_TEXTS = ["a gorgeous, witty, seductive movie.", "dull.", "an engrossing portrait of a family coming apart."]


def rotten_tomatoes_sentences(count: int) -> list[str]:
    """The first ``count`` confidently rated Rotten Tomatoes test snippets (held out from minilm-sentiment)."""
    from attn_probe.data.rotten_tomatoes import load_rotten_tomatoes

    table = load_rotten_tomatoes(progress=False)
    test = table[(table["split"] == "test") & table["confident"]]
    return [str(text) for text in test["text"].head(count)]


def _probe_and_texts(quick: bool, device: str) -> tuple[Any, list[str], str]:
    from attn_probe import Probe

    if not quick:
        return Probe.load("minilm-sentiment", device=device), rotten_tomatoes_sentences(8), "minilm"
    from benchmarks.tiny import NAME, tiny_random_bert

    model, tokenizer = tiny_random_bert(device)
    return Probe(model, tokenizer, name=NAME), QUICK_TEXTS, "tiny"


# ----------------------------------------------------------------------------------------------------
# the user's loop (captum's BERT tutorial, one example at a time)
# ----------------------------------------------------------------------------------------------------
def _reference_ids(tokenizer: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """``[CLS] [MASK] ... [MASK] [SEP]``: the tutorial's ``construct_input_ref_pair`` with [MASK] for [PAD]."""
    ref = torch.full_like(input_ids, tokenizer.mask_token_id)
    ref[:, 0], ref[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    return ref


def user_loop(model: Any, tokenizer: Any, texts: list[str], method: str) -> list[torch.Tensor]:
    """One score vector per text (its real tokens, [CLS] and [SEP] included), one example at a time."""
    device = next(model.parameters()).device
    embeddings = model.get_input_embeddings()
    scores = []
    for text in texts:
        encoded = tokenizer(text, return_tensors="pt").to(device)
        input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
        with torch.no_grad():
            target = model(input_ids=input_ids, attention_mask=attention_mask).logits.argmax(dim=-1)
        if method == "integrated_gradients":

            def forward_ids(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                return model(input_ids=ids, attention_mask=mask).logits

            lig = LayerIntegratedGradients(forward_ids, embeddings)
            attributions, _delta = lig.attribute(
                inputs=input_ids, baselines=_reference_ids(tokenizer, input_ids), target=target,
                additional_forward_args=(attention_mask,), return_convergence_delta=True,
            )  # fmt: skip
            scores.append(attributions.sum(dim=-1).squeeze(0).detach())
            continue

        def forward_embeds(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return model(inputs_embeds=embeds, attention_mask=mask).logits

        inputs_embeds = embeddings(input_ids).detach()
        explainer = Saliency(forward_embeds) if method == "saliency" else InputXGradient(forward_embeds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # captum: "input tensors do not require gradients" (it sets them)
            attributions = explainer.attribute(inputs_embeds, target=target, additional_forward_args=(attention_mask,))
        reduced = attributions.norm(dim=-1) if method == "saliency" else attributions.sum(dim=-1)
        scores.append(reduced.squeeze(0).detach())
    return scores


def bare_batched_ig(model: Any, tokenizer: Any, texts: list[str], n_steps: int = 50) -> torch.Tensor:
    """``[batch, n]``: captum's LayerIntegratedGradients on the whole padded batch, and nothing else."""
    device = next(model.parameters()).device
    encoded = tokenizer(texts, return_tensors="pt", padding=True, return_special_tokens_mask=True).to(device)
    input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
    with torch.no_grad():
        target = model(input_ids=input_ids, attention_mask=attention_mask).logits.argmax(dim=-1)
    keep = encoded["special_tokens_mask"].bool() | (attention_mask == 0)
    baselines = torch.where(keep, input_ids, torch.full_like(input_ids, tokenizer.mask_token_id))

    def forward_ids(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, attention_mask=mask).logits

    lig = LayerIntegratedGradients(forward_ids, model.get_input_embeddings())
    attributions = lig.attribute(
        inputs=input_ids, baselines=baselines, target=target, additional_forward_args=(attention_mask,),
        n_steps=n_steps,
    )  # fmt: skip
    return attributions.sum(dim=-1).detach()


# ----------------------------------------------------------------------------------------------------
# ours
# ----------------------------------------------------------------------------------------------------
def probe_explain(probe: Any, texts: list[str], methods: list[str] | None, checks: Any = ()) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # integrated gradients' convergence warning, gathered into one by the probe
        if methods is None:
            return probe.explain(texts, batch_size=len(texts))
        return probe.explain(texts, methods=["raw_attention", *methods], checks=list(checks), batch_size=len(texts))


def _relative_diffs(probe: Any, result: Any, texts: list[str], method: str, theirs: list[torch.Tensor]) -> float:
    batch = probe.tokenize(texts)
    scores = result.explanations[method].scores.cpu()
    worst = 0.0
    for i, reference in enumerate(theirs):
        ours = scores[i, batch.positions[i]]
        reference = reference.cpu().float()
        worst = max(worst, float((ours - reference).abs().max() / reference.abs().max().clamp_min(1e-30)))
    return worst


def _row(case: str, comparison: Any, target: float | None, n: int, **extra: Any) -> dict[str, Any]:
    q25, q75 = comparison.paired_ratio_quartiles()
    return {
        "case": case,
        "ours_median_s": comparison.ours_median,
        "reference_median_s": comparison.reference_median,
        "ratio": comparison.ratio,
        "paired_ratio_q25": q25,
        "paired_ratio_q75": q75,
        "target": target,
        "meets_target": True if target is None else comparison.ratio <= target,
        "samples": len(comparison.ours),
        "calls_per_sample": comparison.calls_per_sample,
        "ours_times_s": comparison.ours,
        "reference_times_s": comparison.reference,
        "n_examples": n,
        "ours_per_example_s": comparison.ours_median / n,
        "reference_per_example_s": comparison.reference_median / n,
        **extra,
    }


def run(
    quick: bool, device: str, *, budget_s: float | None = None, repeats: int | None = None, warmup: int = 1
) -> list[dict[str, Any]]:
    """The rows (see the module). Each case gets about ``budget_s`` seconds (default 2, or 40 in a full run;
    :func:`benchmarks.timing.compare` takes at least 5 samples then); ``repeats`` instead: exactly that many."""
    probe, texts, name = _probe_and_texts(quick, device)
    model, tokenizer = probe.model, probe.tokenizer
    n = len(texts)
    timing: dict[str, Any] = {"device": device, "warmup": warmup, "min_sample_s": 0.0}
    if repeats is not None:
        timing.update(repeats=repeats, budget_s=None)
    else:
        timing.update(repeats=7, budget_s=budget_s if budget_s is not None else (2.0 if quick else 40.0))
    rows: list[dict[str, Any]] = []

    def timed(case: str, ours: Callable[[], Any], reference: Callable[[], Any], target: float | None, **extra: Any):
        comparison = compare(ours, reference, **timing)
        rows.append(_row(f"{case}/{name}-{n}", comparison, target, n, model=probe.name, **extra))
        return rows[-1]

    # Per method and all together: agreement first (else the ratio would compare different work), then time.
    for method in (*METHODS, "all"):
        chosen = list(METHODS) if method == "all" else [method]
        result = probe_explain(probe, texts, chosen)
        diffs = {m: _relative_diffs(probe, result, texts, m, user_loop(model, tokenizer, texts, m)) for m in chosen}
        worst = max(diffs.values())
        timed(
            f"loop/{method}",
            lambda chosen=chosen: probe_explain(probe, texts, chosen),
            lambda chosen=chosen: [user_loop(model, tokenizer, texts, m) for m in chosen],
            None,
            output_max_abs_diff=worst,
            outputs_agree=worst < AGREEMENT_TOLERANCE,
            relative_diff_by_method=diffs,
            ours_side="Probe.explain(methods=['raw_attention', *methods], checks=[]), one batch",
            reference_side="captum per example (tutorial loop)",
        )

    # The share of the probe's time in the passes it cannot avoid.
    result = probe_explain(probe, texts, ["integrated_gradients"])
    bare = bare_batched_ig(model, tokenizer, texts)
    bare_rows = [bare[i, : len(probe.tokenize([t]).positions[0])] for i, t in enumerate(texts)]  # right padding
    worst = _relative_diffs(probe, result, texts, "integrated_gradients", bare_rows)
    agree = {"output_max_abs_diff": worst, "outputs_agree": worst < AGREEMENT_TOLERANCE}
    row = timed(
        "ig_share/probe_ig_only",
        lambda: probe_explain(probe, texts, ["integrated_gradients"]),
        lambda: bare_batched_ig(model, tokenizer, texts),
        IG_SHARE_TARGET,
        ours_side="Probe.explain(methods=['raw_attention', 'integrated_gradients'], checks=[])",
        reference_side="bare batched LayerIntegratedGradients (50 steps, one pass)",
        **agree,
    )
    row["ig_share"] = 1.0 / row["ratio"]
    row = timed(
        "ig_share/default_probe",
        lambda: probe_explain(probe, texts, None),
        lambda: bare_batched_ig(model, tokenizer, texts),
        None,
        ours_side="Probe.explain(texts): default methods and checks",
        reference_side="bare batched LayerIntegratedGradients (50 steps, one pass)",
        **agree,
    )
    row["ig_share"] = 1.0 / row["ratio"]
    return rows
