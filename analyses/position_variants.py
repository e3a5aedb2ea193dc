"""Study: which position variant makes attention tell the truth about the tokens a model used?

Question. Our own small encoder is trained once per position variant (``none, learned, sinusoidal, shaw, t5,
alibi, rotary``) on synthetic tasks whose decisive tokens are known (``relevant``): MarkedToken (one marker,
found by content), OffsetToken (the token two places after a marker: found by *relative position*) and
TokenPair (the XOR of two keys). For every model that learned its task we ask how well each explanation method
ranks the decisive tokens first, against a random ranking and two position-only rankings, how local each
variant's attention is, how much of the logits its position term explains, and whether attention recovers the
decisive tokens worse than erasure / integrated gradients does (where position makes attention misleading).

Protocol (the numbers are in ``report.md``; every number is in a CSV beside it):

- model: encoder, ``--layers`` x ``--heads`` heads, width ``--width``, post-norm, [CLS] pooling; trained with
  :func:`attn_probe.attention.training.train` (AdamW, warm-up / linear decay, batches of 64) for ``--steps``
  steps, seed ``s`` for the initialisation and the batches. Deterministic under the seed (one thread).
- accuracy: the library's held-out accuracy (512 fresh examples from a generator training never uses), with a
  Wilson interval. A model *learned* its task when that accuracy is >= ``--learned`` (default 0.9); the others
  are reported and left out of every explanation comparison.
- explanations: on ``--examples`` held-out examples (generator ``20_000 + seed``), the target is the predicted
  class's logit; only correctly classified examples are scored. Each method's tokens are ranked by ``|score|``
  over the content tokens (real, not [CLS]/[SEP]: the decisive tokens are always content tokens).
- recovery per example: ``precision`` = R-precision (share of the top-|R| tokens that are decisive, ties broken
  at random in expectation), ``auc`` (probability that a decisive token outranks another, ties 1/2), ``top1``
  (the top token is decisive) and, for OffsetToken, ``top1_cue`` (the top token is the marker that only says
  where to look) and ``auc_lenient`` (decisive or cue count as right).
- baselines: ``random`` (i.i.d. uniform scores, one seeded draw; its expectation is known exactly: precision and
  top1 ``|R|/m``, auc 1/2, given per example as ``chance_precision``), ``position_first`` (rank by closeness to
  [CLS]: position alone, and a length effect), ``position_profile`` (the mean last-layer [CLS] attention at each
  column over 512 other held-out inputs of the same model: what its attention would show from position alone).
- intervals: hierarchical percentile bootstrap (``--resamples``): seeds drawn with replacement, then examples
  within each drawn seed; the point estimate weights seeds equally. With 3 seeds the seed level is coarse:
  read cells whose seeds disagree (``*_seed_min`` / ``*_seed_max`` columns) as seed-dependent.
- misleading: per example, ``recovery(attention method) - recovery(reference)`` for the references
  ``leave_one_out`` (erasure: [PAD] id in place of the token) and ``integrated_gradients``, bootstrapped alike.
- locality: the attention-weighted mean ``|key - query|`` over all real query rows
  (:func:`attn_probe.compare.attention_by_distance`), next to the same for uniform attention over the row's real
  tokens (the length-only baseline). Position's explanatory power: ``position_logit_share`` (R² of the logits by
  the position term; defined where position acts inside attention: shaw, t5, alibi, rotary (not additive),
  none = 0) and ``position_explained``'s ``r2_position_vs_uniform`` (how much of each head's departure from
  uniform the distance profile alone recovers; profile from 512 other inputs).

Run: ``python -m analyses.position_variants [--smoke] [--out DIR] [--seeds 0 1 2] [--steps 500]``.
:mod:`analyses.flow_layers` reuses the helpers here (token batches, bootstrap, tables, figures).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure
from scipy import stats

from attn_probe.attention.models import EncoderClassifier, TransformerConfig
from attn_probe.attention.toy_tasks import CLS, PAD, SEP
from attn_probe.attention.training import build_model, train
from attn_probe.capture import TokenizedBatch, capture
from attn_probe.compare.position import attention_by_distance, position_explained, position_logit_share
from attn_probe.data.synthetic import MarkedToken, OffsetToken, TokenPair
from attn_probe.methods import list_methods
from attn_probe.methods.base import ExplainContext, get_method

NAME = "position_variants"
VARIANTS = ("none", "learned", "sinusoidal", "shaw", "t5", "alibi", "rotary")
TASKS: dict[str, Callable[[], Any]] = {
    "marked": lambda: MarkedToken(),
    "offset": lambda: OffsetToken(offset=2),
    "pair": lambda: TokenPair(rule="xor"),
}
ATTENTION_METHODS = (
    "raw_attention",  # last layer, heads averaged
    "raw_attention_first",  # the first layer's [CLS] row (from raw_attention's layer_scores)
    "attention_rollout",
    "attention_flow",
    "attention_norm",
    "alti",
    "value_zeroing",
    "attention_grad_rollout",
    "attention_x_gradient",
)
REFERENCE_METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "leave_one_out")
BASELINES = ("random", "position_first", "position_profile")
ALL_METHODS = (*ATTENTION_METHODS, *REFERENCE_METHODS, *BASELINES)
GAP_METHODS = ("raw_attention", "attention_rollout", "attention_flow", "attention_norm", "alti")
GAP_REFERENCES = ("leave_one_out", "integrated_gradients")
METRICS = ("precision", "auc", "top1")
EVAL_SEED, PROFILE_SEED = 20_000, 30_000
IG_STEPS = 100  # Gauss-Legendre points: 50 left a third of the examples over 5% convergence error


# ----------------------------------------------------------------------------------------------------
# shared helpers (also used by analyses.flow_layers)
# ----------------------------------------------------------------------------------------------------
def token_batch(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, name: Callable[[int], str], special_ids: Sequence[int]
) -> TokenizedBatch:
    """A :class:`TokenizedBatch` for a toy batch: ``special_ids`` (and padding) marked special, so the
    methods never erase or ablate [CLS]/[SEP] and comparisons can leave them out. ``name(id)`` is the token
    string. Right padding."""
    real = attention_mask.bool()  # [b, n]
    special = real.clone().zero_()
    for token in special_ids:
        special |= input_ids == token
    special |= ~real
    fields: dict[str, list] = {k: [] for k in ("tokens", "word_ids", "words", "word_spans", "offsets", "positions")}
    texts = []
    for row in range(input_ids.shape[0]):
        columns = torch.nonzero(real[row]).flatten().tolist()
        tokens, word_ids, words, spans, offsets = [], [], [], [], []
        cursor = 0
        for column in columns:
            text = name(int(input_ids[row, column]))
            tokens.append(text)
            if bool(special[row, column]):
                word_ids.append(None)
                offsets.append((0, 0))
                continue
            start = cursor + (1 if words else 0)
            span = (start, start + len(text))
            word_ids.append(len(words))
            words.append(text)
            spans.append(span)
            offsets.append(span)
            cursor = span[1]
        texts.append(" ".join(words))
        for key, value in zip(fields, (tokens, word_ids, words, spans, offsets, columns), strict=True):
            fields[key].append(value)
    return TokenizedBatch(
        input_ids=input_ids,
        attention_mask=attention_mask.long(),
        special_tokens_mask=special,
        tokens=fields["tokens"],
        raw_tokens=[list(t) for t in fields["tokens"]],
        word_ids=fields["word_ids"],
        words=fields["words"],
        word_spans=fields["word_spans"],
        offsets=fields["offsets"],
        positions=fields["positions"],
        texts=texts,
        truncated=[False] * len(texts),
        padding_side="right",
    )


def hierarchical_bootstrap(
    groups: Sequence[np.ndarray], *, resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Mean of per-group means (groups = training seeds, weighted equally) and its percentile interval.

    Each resample draws the groups with replacement, then the values within each drawn group with replacement.
    NaN values are dropped first; groups left empty are dropped. One group: a plain bootstrap over its values.
    """
    kept = [np.asarray(g, dtype=float)[~np.isnan(np.asarray(g, dtype=float))] for g in groups]
    kept = [g for g in kept if len(g)]
    if not kept:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    point = float(np.mean([g.mean() for g in kept]))
    inner = np.stack([g[rng.integers(0, len(g), size=(resamples, len(g)))].mean(axis=1) for g in kept])  # [G, R]
    drawn = rng.integers(0, len(kept), size=(resamples, len(kept)))  # [R, G]
    combined = inner[drawn, np.arange(resamples)[:, None]].mean(axis=1)  # [R]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(combined, [alpha, 1 - alpha])
    return point, float(low), float(high)


def explain_each(
    model: torch.nn.Module, inputs: TokenizedBatch, methods: Sequence[str], options: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any], list[str]]:
    """Like :func:`attn_probe.methods.explain` (one shared context), but a method that refuses this model (e.g.
    ALTI on Shaw's relative values) is skipped and named, ``"method: reason"``, instead of failing the run."""
    context = ExplainContext(model, inputs)
    explanations, skipped = {}, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # IG convergence: the callers record it instead
        for method in methods:
            try:
                explanations[method] = get_method(method)[1](context, **options.get(method, {}))
            except ValueError as error:
                skipped.append(f"{method}: {str(error).split(':')[0]}")
    return explanations, skipped


def wilson(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if total <= 0:
        return math.nan, math.nan
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return min(centre - half, p), max(centre + half, p)  # contains p despite rounding at 0 and 1


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub markdown table (no tabulate dependency); floats rounded, NaN shown as '–'."""

    def cell(value: Any) -> str:
        if isinstance(value, (float, np.floating)):
            return "–" if math.isnan(value) else f"{value:.{digits}f}"
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def ci_text(point: float, low: float, high: float, digits: int = 2) -> str:
    if math.isnan(point):
        return "–"
    return f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def save_figure(figure: Figure, path: Path) -> str:
    figure.savefig(path, dpi=110)
    return path.name


def rank_recovery(scores: np.ndarray, relevant: np.ndarray) -> tuple[float, float, float]:
    """``(precision, auc, top1)`` of ranking ``relevant`` first by ``scores`` (both ``[m]``, candidates only).

    ``precision``: R-precision with ties at the cut shared in expectation; ``auc``: Mann–Whitney with ties 1/2;
    ``top1``: share of the tokens tied at the top that are relevant. NaN when no or every token is relevant.
    """
    m, r = len(scores), int(relevant.sum())
    if r == 0 or r == m:
        return math.nan, math.nan, math.nan
    ranks = stats.rankdata(scores)  # average ranks: ties shared
    auc = (ranks[relevant].sum() - r * (r + 1) / 2) / (r * (m - r))
    cut = np.sort(scores)[::-1][r - 1]
    above, tied = scores > cut, scores == cut
    hits = relevant[above].sum() + (r - above.sum()) * relevant[tied].sum() / tied.sum()
    top = scores == scores.max()
    return float(hits / r), float(auc), float(relevant[top].mean())


# ----------------------------------------------------------------------------------------------------
# the study
# ----------------------------------------------------------------------------------------------------
@dataclass
class Settings:
    variants: tuple[str, ...] = VARIANTS
    tasks: tuple[str, ...] = tuple(TASKS)
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 500
    examples: int = 160
    profile_examples: int = 512
    width: int = 32
    heads: int = 4
    layers: int = 2
    learned: float = 0.9
    resamples: int = 1000
    smoke: bool = False
    methods: tuple[str, ...] = field(default=ALL_METHODS)


def _token_name(token: int) -> str:
    return {PAD: "[PAD]", CLS: "[CLS]", SEP: "[SEP]"}.get(token, f"t{token}")


def _explain_model(
    model: EncoderClassifier, task: Any, settings: Settings, seed: int, keys: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-example recovery rows for every method and baseline, plus model-level extras."""
    batch = task.sample(settings.examples, torch.Generator().manual_seed(EVAL_SEED + seed))
    inputs = token_batch(batch.input_ids, batch.attention_mask, _token_name, (CLS, SEP))
    wanted = [m for m in settings.methods if m not in BASELINES and m != "raw_attention_first"]
    if "raw_attention_first" in settings.methods and "raw_attention" not in wanted:
        wanted.insert(0, "raw_attention")
    explanations, skipped = explain_each(model, inputs, wanted, {"integrated_gradients": {"n_steps": IG_STEPS}})
    with torch.no_grad():
        logits = model(batch.input_ids, batch.attention_mask).logits
    predicted = logits.argmax(-1)
    correct = (predicted == batch.labels).numpy()

    # the position-only profile of the [CLS] row, last layer, from other inputs of the same model
    profile_batch = task.sample(settings.profile_examples, torch.Generator().manual_seed(PROFILE_SEED + seed))
    with torch.no_grad():
        attentions = model(profile_batch.input_ids, profile_batch.attention_mask, output_attentions=True).attentions
    cls_row = attentions[-1][:, :, 0, :].mean(1)  # [b, n]
    content = (
        profile_batch.attention_mask.bool() & (profile_batch.input_ids != CLS) & (profile_batch.input_ids != SEP)
    ).float()
    profile = ((cls_row * content).sum(0) / content.sum(0).clamp_min(1)).numpy()  # [n]

    scores: dict[str, np.ndarray] = {}
    for method in settings.methods:
        if method == "raw_attention_first":
            scores[method] = explanations["raw_attention"].layer_scores[:, 0].numpy()
        elif method in explanations:
            scores[method] = explanations[method].scores.numpy()
    n = batch.input_ids.shape[1]
    rng = np.random.default_rng(1_000 + seed)
    if "random" in settings.methods:
        scores["random"] = rng.random(batch.input_ids.shape)
    if "position_first" in settings.methods:
        # positive and decreasing with the column, since methods are ranked by |score|
        scores["position_first"] = np.broadcast_to(n - np.arange(n, dtype=float), batch.input_ids.shape)
    if "position_profile" in settings.methods:
        padded = np.zeros(n)
        padded[: min(n, len(profile))] = profile[:n]
        scores["position_profile"] = np.broadcast_to(padded, batch.input_ids.shape)

    candidates = inputs.special_tokens_mask.logical_not().numpy()  # [b, n]
    relevant = batch.relevant.numpy()
    cues = batch.cues.numpy() if hasattr(batch, "cues") else np.zeros_like(relevant)
    family = dict(zip(list_methods()["id"], list_methods()["family"], strict=True))
    rows = []
    for example in np.flatnonzero(correct):
        keep = candidates[example]
        truth = relevant[example][keep]
        cue = cues[example][keep]
        lenient = truth | cue
        for method, values in scores.items():
            ranked = np.abs(values[example][keep])
            precision, auc, top1 = rank_recovery(ranked, truth)
            top = ranked == ranked.max()
            rows.append(
                {
                    **keys,
                    "example_id": int(example),
                    "method": method,
                    "family": "baseline" if method in BASELINES else family.get(method.removesuffix("_first"), ""),
                    "n_candidates": int(keep.sum()),
                    "n_relevant": int(truth.sum()),
                    "chance_precision": float(truth.sum() / keep.sum()),
                    "precision": precision,
                    "auc": auc,
                    "top1": top1,
                    "top1_cue": float(cue[top].mean()) if cue.any() else math.nan,
                    "auc_lenient": rank_recovery(ranked, lenient)[1] if cue.any() else math.nan,
                }
            )
    extras = {"n_scored": int(correct.sum()), "n_explained": len(correct), "methods_skipped": "; ".join(skipped)}
    if "integrated_gradients" in explanations:
        delta = explanations["integrated_gradients"].details["relative_convergence_delta"].abs().numpy()
        extras["ig_relative_delta_median"] = float(np.median(delta))
        extras["ig_share_delta_over_5pct"] = float(np.mean(delta > 0.05))
    return pd.DataFrame(rows), extras


def _position_tables(
    model: EncoderClassifier, task: Any, settings: Settings, seed: int, keys: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per layer: locality (attention and uniform), position_logit_share, r2_position_vs_uniform; and the
    distance profile (layer, head, distance, share)."""
    batch = task.sample(settings.examples, torch.Generator().manual_seed(EVAL_SEED + seed))
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    captured = capture(model, inputs, measure_drift=False)
    distance = attention_by_distance(captured)
    distance["weighted"] = distance["share"] * distance["distance"].abs()
    locality = distance.groupby(["layer", "head"])["weighted"].sum().groupby("layer").mean()  # [L]
    lengths = batch.attention_mask.sum(-1).tolist()
    per_row = []
    for m in lengths:
        grid = np.abs(np.arange(m)[:, None] - np.arange(m)[None])  # [m, m]
        per_row.extend(grid.mean(1).tolist())
    uniform = float(np.mean(per_row))

    profile_batch = task.sample(settings.profile_examples, torch.Generator().manual_seed(PROFILE_SEED + seed))
    profile_capture = capture(
        model,
        {"input_ids": profile_batch.input_ids, "attention_mask": profile_batch.attention_mask},
        measure_drift=False,
    )
    profile = attention_by_distance(profile_capture, max_distance=8)
    explained = position_explained(captured, profile=profile).groupby("layer")["r2_position_vs_uniform"].mean()
    try:
        share = position_logit_share(model, inputs).groupby("layer")["position_share"].mean()
    except ValueError:  # learned / sinusoidal: position enters at the embeddings, nothing to split
        share = pd.Series(math.nan, index=locality.index)
    layers = pd.DataFrame(
        {
            **{k: [v] * len(locality) for k, v in keys.items()},
            "layer": locality.index.astype(int),
            "locality": locality.to_numpy(),
            "locality_uniform": uniform,
            "position_logit_share": share.reindex(locality.index).to_numpy(),
            "r2_position_vs_uniform": explained.reindex(locality.index).to_numpy(),
        }
    )
    # uniform attention's mean weight at each distance over the same (query, key) pairs: sum over examples of
    # (m - |d|) pairs of weight 1/m, divided by the number of pairs
    sizes = np.asarray(lengths, dtype=float)
    pairs = {d: np.clip(sizes - abs(d), 0, None) for d in distance["distance"].unique()}
    uniform_weight = {d: float((w / sizes).sum() / w.sum()) for d, w in pairs.items()}
    distance["uniform_weight"] = distance["distance"].map(uniform_weight)
    distance["relative_to_uniform"] = distance["mean_weight"] / distance["uniform_weight"]
    profile_rows = distance[
        ["layer", "head", "distance", "share", "mean_weight", "uniform_weight", "relative_to_uniform", "count"]
    ].assign(**keys)
    return layers, profile_rows


def run_study(settings: Settings, log: Callable[[str], None] = print) -> dict[str, pd.DataFrame]:
    """Train every (variant, task, seed) model and return the raw tables."""
    torch.set_num_threads(1)
    accuracy_rows, recovery, layers, profiles = [], [], [], []
    for task_name in settings.tasks:
        task = TASKS[task_name]()
        for variant in settings.variants:
            for seed in settings.seeds:
                keys = {"variant": variant, "task": task_name, "seed": seed}
                config = TransformerConfig(
                    vocab_size=task.vocab_size,
                    num_classes=task.num_classes,
                    embed_dim=settings.width,
                    num_heads=settings.heads,
                    num_layers=settings.layers,
                    ffn_dim=2 * settings.width,
                    position=variant,
                )
                model = build_model(config, task, seed=seed)
                report = train(model, task, steps=settings.steps, seed=seed)
                low, high = wilson(round(report.accuracy * report.evaluated), report.evaluated)
                learned = report.accuracy >= settings.learned
                row = {
                    **keys,
                    "accuracy": report.accuracy,
                    "accuracy_low": low,
                    "accuracy_high": high,
                    "n_evaluated": report.evaluated,
                    "chance": 1 / task.num_classes,
                    "learned": learned,
                    "final_loss": float(np.mean(report.losses[-20:])),
                    "train_seconds": report.seconds,
                }
                started = time.perf_counter()
                layer_table, profile_table = _position_tables(model, task, settings, seed, keys)
                layers.append(layer_table.assign(learned=learned))
                profiles.append(profile_table.assign(learned=learned))
                if learned:
                    table, extras = _explain_model(model, task, settings, seed, keys)
                    recovery.append(table)
                    row.update(extras)
                row["probe_seconds"] = time.perf_counter() - started
                accuracy_rows.append(row)
                log(
                    f"{task_name:>6} {variant:>10} seed {seed}: accuracy {report.accuracy:.3f}"
                    f"{'' if learned else ' (not learned: excluded)'} "
                    f"[{report.seconds:.1f}s train, {row['probe_seconds']:.1f}s probe]"
                )
    recovery_frame = pd.concat(recovery, ignore_index=True) if recovery else pd.DataFrame()
    return {
        "accuracy": pd.DataFrame(accuracy_rows),
        "examples": recovery_frame,
        "layers": pd.concat(layers, ignore_index=True),
        "profiles": pd.concat(profiles, ignore_index=True),
    }


# ----------------------------------------------------------------------------------------------------
# aggregation
# ----------------------------------------------------------------------------------------------------
def _group_seed(*keys: Any) -> int:
    """A bootstrap seed per group that does not depend on the order groups are visited in."""
    import zlib

    return zlib.crc32("/".join(str(k) for k in keys).encode())


def _bootstrap_columns(frame: pd.DataFrame, metric: str, resamples: int, *keys: Any) -> dict[str, float]:
    groups = [group[metric].to_numpy() for _, group in frame.groupby("seed")]
    point, low, high = hierarchical_bootstrap(groups, resamples=resamples, seed=_group_seed(metric, *keys))
    per_seed = frame.groupby("seed")[metric].mean()
    return {
        metric: point,
        f"{metric}_low": low,
        f"{metric}_high": high,
        f"{metric}_seed_min": float(per_seed.min()) if len(per_seed) else math.nan,
        f"{metric}_seed_max": float(per_seed.max()) if len(per_seed) else math.nan,
    }


def summarise(tables: dict[str, pd.DataFrame], settings: Settings) -> dict[str, pd.DataFrame]:
    """The reported tables: accuracy by cell, recovery with intervals, attention-minus-reference gaps, the
    per-seed recovery and the per-layer position measures."""
    accuracy = tables["accuracy"]
    cells = (
        accuracy.groupby(["task", "variant"], sort=False)
        .agg(
            accuracy=("accuracy", "mean"),
            accuracy_seed_min=("accuracy", "min"),
            accuracy_seed_max=("accuracy", "max"),
            n_seeds=("seed", "size"),
            n_learned=("learned", "sum"),
            chance=("chance", "first"),
        )
        .reset_index()
    )
    examples = tables["examples"]
    recovery_rows, gap_rows = [], []
    by_seed = pd.DataFrame()
    if not examples.empty:
        by_seed = (
            examples.groupby(["task", "variant", "seed", "method"], sort=False)
            .agg(
                n_examples=("example_id", "size"),
                precision=("precision", "mean"),
                auc=("auc", "mean"),
                top1=("top1", "mean"),
                top1_cue=("top1_cue", "mean"),
                chance_precision=("chance_precision", "mean"),
            )
            .reset_index()
        )
        for (task, variant, method), group in examples.groupby(["task", "variant", "method"], sort=False):
            row = {
                "task": task,
                "variant": variant,
                "method": method,
                "family": group["family"].iloc[0],
                "n_seeds": group["seed"].nunique(),
                "n_examples": len(group),
                "chance_precision": group["chance_precision"].mean(),
            }
            for metric in (*METRICS, "top1_cue", "auc_lenient"):
                if group[metric].notna().any():
                    row.update(_bootstrap_columns(group, metric, settings.resamples, task, variant, method))
            recovery_rows.append(row)
        present = set(examples["method"])
        keyed = examples.set_index(["task", "variant", "seed", "example_id", "method"])
        for reference in GAP_REFERENCES:
            for method in GAP_METHODS:
                if method not in present or reference not in present:
                    continue
                a = keyed.xs(method, level="method")[["precision", "auc"]]
                b = keyed.xs(reference, level="method")[["precision", "auc"]]
                diff = (a - b).reset_index()
                for (task, variant), group in diff.groupby(["task", "variant"], sort=False):
                    row = {"task": task, "variant": variant, "method": method, "reference": reference}
                    row["n_examples"] = len(group)
                    for metric in ("precision", "auc"):
                        columns = _bootstrap_columns(
                            group, metric, settings.resamples, "gap", task, variant, method, reference
                        )
                        row.update({f"gap_{k}": v for k, v in columns.items()})
                    gap_rows.append(row)
    layers = tables["layers"]
    layer_summary = (
        layers.groupby(["task", "variant", "layer"], sort=False)
        .agg(
            n_models=("seed", "size"),
            n_learned=("learned", "sum"),
            locality=("locality", "mean"),
            locality_seed_min=("locality", "min"),
            locality_seed_max=("locality", "max"),
            locality_uniform=("locality_uniform", "mean"),
            position_logit_share=("position_logit_share", "mean"),
            position_logit_share_seed_min=("position_logit_share", "min"),
            position_logit_share_seed_max=("position_logit_share", "max"),
            r2_position_vs_uniform=("r2_position_vs_uniform", "mean"),
            r2_position_vs_uniform_seed_min=("r2_position_vs_uniform", "min"),
            r2_position_vs_uniform_seed_max=("r2_position_vs_uniform", "max"),
        )
        .reset_index()
    )
    return {
        "accuracy_cells": cells,
        "recovery": pd.DataFrame(recovery_rows),
        "recovery_by_seed": by_seed,
        "gaps": pd.DataFrame(gap_rows),
        "layer_position": layer_summary,
    }


# ----------------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------------
def accuracy_figure(cells: pd.DataFrame, variants: Sequence[str]) -> Figure:
    grid = cells.pivot(index="task", columns="variant", values="accuracy").reindex(columns=list(variants))
    learned = cells.pivot(index="task", columns="variant", values="n_learned").reindex(columns=list(variants))
    seeds = cells.pivot(index="task", columns="variant", values="n_seeds").reindex(columns=list(variants))
    labels = (
        grid.map(lambda v: f"{v:.2f}")
        + "\n"
        + learned.astype("Int64").astype(str)
        + "/"
        + seeds.astype("Int64").astype(str)
    )
    figure = Figure(figsize=(1.3 + 1.05 * grid.shape[1], 1.2 + 0.8 * grid.shape[0]), layout="constrained")
    axes = figure.subplots()
    sns.heatmap(grid, ax=axes, vmin=0.5, vmax=1.0, cmap="viridis", annot=labels, fmt="", cbar_kws={"label": "accuracy"})
    axes.set_title("Held-out accuracy, mean over seeds (below: seeds that learned / seeds)", loc="left", fontsize=10)
    axes.set_xlabel("position variant")
    axes.set_ylabel("task")
    return figure


def recovery_figure(recovery: pd.DataFrame, variants: Sequence[str], metric: str = "precision") -> Figure:
    tasks = list(dict.fromkeys(recovery["task"]))
    methods = [m for m in ALL_METHODS if m in set(recovery["method"])]
    figure = Figure(figsize=(3.0 + 1.0 * len(variants) * len(tasks), 1.5 + 0.36 * len(methods)), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(tasks), sharey=True))
    for axis, task in zip(axes, tasks, strict=True):
        rows = recovery[recovery["task"] == task]
        grid = rows.pivot(index="method", columns="variant", values=metric).reindex(
            index=methods, columns=[v for v in variants if v in set(rows["variant"])]
        )
        sns.heatmap(
            grid,
            ax=axis,
            vmin=0,
            vmax=1,
            cmap="magma",
            annot=True,
            fmt=".2f",
            cbar=axis is axes[-1],
            annot_kws={"fontsize": 7},
        )
        chance = rows["chance_precision"].mean()
        axis.set_title(f"{task} (random ≈ {chance:.2f})", fontsize=10)
        axis.set_xlabel("")
        axis.set_ylabel("" if axis is not axes[0] else "method")
    figure.suptitle(f"Recovery of the decisive tokens ({metric}; learned models, mean over seeds)", x=0.01, ha="left")
    return figure


def gap_figure(gaps: pd.DataFrame, variants: Sequence[str], reference: str = "leave_one_out") -> Figure:
    rows = gaps[gaps["reference"] == reference]
    tasks = list(dict.fromkeys(rows["task"]))
    methods = [m for m in GAP_METHODS if m in set(rows["method"])]
    figure = Figure(figsize=(3.0 + 3.6 * len(tasks), 3.8), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(tasks), sharey=True))
    palette = dict(zip(methods, sns.color_palette("tab10", len(methods)), strict=True))
    for axis, task in zip(axes, tasks, strict=True):
        chosen = [v for v in variants if v in set(rows.loc[rows["task"] == task, "variant"])]
        for offset, method in enumerate(methods):
            part = rows[(rows["task"] == task) & (rows["method"] == method)].set_index("variant").reindex(chosen)
            x = np.arange(len(chosen)) + (offset - (len(methods) - 1) / 2) * 0.12
            y = part["gap_precision"].to_numpy()
            error = np.stack([y - part["gap_precision_low"].to_numpy(), part["gap_precision_high"].to_numpy() - y])
            axis.errorbar(x, y, yerr=error, fmt="o", ms=4, capsize=2, color=palette[method], label=method)
        axis.axhline(0, color="grey", lw=0.8)
        axis.set_xticks(np.arange(len(chosen)), chosen, rotation=45, ha="right")
        axis.set_title(task, fontsize=10)
    axes[0].set_ylabel(f"R-precision: method − {reference}")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figure.suptitle(f"Attention-derived recovery minus {reference} (95% hierarchical bootstrap)", x=0.01, ha="left")
    return figure


def profile_figure(profiles: pd.DataFrame, variants: Sequence[str], reach: int = 8) -> Figure:
    last = profiles[(profiles["layer"] == profiles["layer"].max()) & (profiles["distance"].abs() <= reach)]
    table = last.groupby(["task", "variant", "distance"], sort=False)["relative_to_uniform"].mean().reset_index()
    tasks = list(dict.fromkeys(table["task"]))
    figure = Figure(figsize=(3.0 + 3.6 * len(tasks), 3.8), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(tasks), sharey=True))
    order = [v for v in variants if v in set(table["variant"])]
    for axis, task in zip(axes, tasks, strict=True):
        sns.lineplot(
            data=table[table["task"] == task],
            x="distance",
            y="relative_to_uniform",
            hue="variant",
            hue_order=order,
            ax=axis,
            marker="o",
            markersize=3,
            legend=axis is axes[-1],
        )
        axis.axhline(1.0, color="grey", lw=0.7)
        axis.set_title(task, fontsize=10)
        axis.set_xlabel("key − query (tokens)")
    sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, title_fontsize=8)
    axes[0].set_ylabel("mean weight / uniform's")
    figure.suptitle(
        f"Attention by relative distance, last layer, |d| <= {reach}, relative to uniform attention\n"
        "over the same rows (1 = uniform; heads and seeds averaged, every model)",
        x=0.01,
        ha="left",
        fontsize=10,
    )
    return figure


# ----------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------
def _cell(row: pd.Series | None, metric: str, digits: int = 2) -> str:
    if row is None or metric not in row or pd.isna(row[metric]):
        return "–"
    return ci_text(row[metric], row[f"{metric}_low"], row[f"{metric}_high"], digits)


def _lookup(frame: pd.DataFrame, **where: Any) -> pd.Series | None:
    if frame.empty:
        return None
    mask = np.ones(len(frame), dtype=bool)
    for key, value in where.items():
        mask &= (frame[key] == value).to_numpy()
    rows = frame[mask]
    return None if rows.empty else rows.iloc[0]


def headline(summary: dict[str, pd.DataFrame], settings: Settings) -> dict[str, Any]:
    """The numbers summary.json carries: per task and variant, accuracy and the key recoveries with CIs."""
    out: dict[str, Any] = {}
    recovery, gaps, layers = summary["recovery"], summary["gaps"], summary["layer_position"]
    last = layers["layer"].max() if not layers.empty else 0
    for cell in summary["accuracy_cells"].itertuples(index=False):
        entry: dict[str, Any] = {
            "accuracy_mean": round(float(cell.accuracy), 4),
            "accuracy_seed_range": [round(float(cell.accuracy_seed_min), 4), round(float(cell.accuracy_seed_max), 4)],
            "seeds_learned": f"{int(cell.n_learned)}/{int(cell.n_seeds)}",
        }
        for method in (
            "raw_attention",
            "attention_rollout",
            "attention_flow",
            "leave_one_out",
            "integrated_gradients",
            "random",
            "position_profile",
        ):
            row = _lookup(recovery, task=cell.task, variant=cell.variant, method=method)
            if row is not None:
                entry[f"precision_{method}"] = [
                    round(float(row[c]), 4) for c in ("precision", "precision_low", "precision_high")
                ]
        row = _lookup(recovery, task=cell.task, variant=cell.variant, method="raw_attention")
        if row is not None:
            entry["chance_precision"] = round(float(row["chance_precision"]), 4)
        gap = _lookup(gaps, task=cell.task, variant=cell.variant, method="raw_attention", reference="leave_one_out")
        if gap is not None:
            entry["gap_raw_attention_minus_leave_one_out"] = [
                round(float(gap[c]), 4) for c in ("gap_precision", "gap_precision_low", "gap_precision_high")
            ]
        position = layers[(layers["task"] == cell.task) & (layers["variant"] == cell.variant)]
        if not position.empty:
            final = position[position["layer"] == last].iloc[0]
            entry["locality_last_layer"] = round(float(final["locality"]), 3)
            entry["locality_uniform"] = round(float(final["locality_uniform"]), 3)
            share = position["position_logit_share"].mean()
            entry["position_logit_share_mean"] = None if pd.isna(share) else round(float(share), 4)
        out.setdefault(cell.task, {})[cell.variant] = entry
    return out


def observations(summary: dict[str, pd.DataFrame], settings: Settings) -> list[str]:
    """Sentences computed from the tables (no hand-written claims about the numbers)."""
    lines = []
    cells = summary["accuracy_cells"]
    failed = cells[cells["n_learned"] < cells["n_seeds"]]
    for row in failed.itertuples(index=False):
        lines.append(
            f"**{row.variant} on {row.task}** learned in {int(row.n_learned)}/{int(row.n_seeds)} seeds (mean accuracy "
            f"{row.accuracy:.2f}, chance {row.chance:.2f}); seeds below {settings.learned} are excluded from the "
            "explanation comparison."
        )
    gaps = summary["gaps"]
    if not gaps.empty:
        for method in ("raw_attention", "attention_rollout", "attention_flow"):
            part = gaps[(gaps["method"] == method) & (gaps["reference"] == "leave_one_out")]
            if part.empty:
                continue
            below = part[part["gap_precision_high"] < 0]
            above = part[part["gap_precision_low"] > 0]
            worst = part.sort_values("gap_precision").iloc[0]
            lines.append(
                f"`{method}` vs erasure: its R-precision is below leave_one_out's (95% CI under 0) in "
                f"{len(below)}/{len(part)} learned (task, variant) cells and above it in {len(above)}; largest "
                f"shortfall {worst['gap_precision']:.2f} [{worst['gap_precision_low']:.2f}, "
                f"{worst['gap_precision_high']:.2f}] ({worst['variant']} on {worst['task']})."
            )
    recovery = summary["recovery"]
    offset = (
        recovery[(recovery["task"] == "offset") & (recovery["method"] == "raw_attention")]
        if not recovery.empty
        else recovery
    )
    if not offset.empty and "top1_cue" in offset:
        text = ", ".join(f"{r.variant} {r.top1:.2f}/{r.top1_cue:.2f}" for r in offset.itertuples(index=False))
        lenient = ", ".join(f"{r.variant} {r.auc:.2f}/{r.auc_lenient:.2f}" for r in offset.itertuples(index=False))
        erasure = recovery[(recovery["task"] == "offset") & (recovery["method"] == "leave_one_out")]
        text += "; leave_one_out for comparison: " + ", ".join(
            f"{r.variant} {r.top1:.2f}/{r.top1_cue:.2f}" for r in erasure.itertuples(index=False)
        )
        lines.append(
            "OffsetToken, last-layer raw attention's top token is the decisive value / the marker (cue) — "
            f"share of examples per variant: {text}. A top token on the marker is the case where attention shows "
            "*where the model looked to find* the answer rather than the answer's token. Its AUC, strict / lenient "
            f"(marker counted as right): {lenient}."
        )
    layers = summary["layer_position"]
    if not gaps.empty and not layers.empty:
        last = layers[layers["layer"] == layers["layer"].max()]
        merged = gaps[(gaps["method"] == "raw_attention") & (gaps["reference"] == "leave_one_out")].merge(
            last, on=["task", "variant"]
        )
        merged = merged.assign(excess=merged["locality"] / merged["locality_uniform"])
        if len(merged) >= 4:
            rho = stats.spearmanr(merged["excess"], merged["gap_precision"]).statistic
            lines.append(
                f"Across the {len(merged)} learned cells, Spearman correlation between last-layer locality (relative "
                f"to uniform) and the raw-attention-minus-erasure gap: {rho:.2f} (descriptive; cells are few and "
                "not independent: they share tasks and variants)."
            )
    return lines


def _ig_caveat(accuracy: pd.DataFrame) -> str:
    if "ig_relative_delta_median" not in accuracy or accuracy["ig_relative_delta_median"].isna().all():
        return "- Integrated gradients was not run."
    poor = accuracy[accuracy["ig_relative_delta_median"] > 0.05]
    named = ", ".join(
        f"{r.task}/{r.variant}/seed {r.seed} (median {r.ig_relative_delta_median:.2f})" for r in poor.itertuples()
    )
    return (
        f"- Integrated gradients: {IG_STEPS} Gauss–Legendre steps from the [PAD] baseline; median relative "
        f"convergence error per model {accuracy['ig_relative_delta_median'].median():.4f}, worst model "
        f"{accuracy['ig_share_delta_over_5pct'].max():.0%} of its examples over 5% (`accuracy.csv`). "
        + (f"IG did not converge for {named}: its numbers there are unreliable." if len(poor) else "")
    )


def _skipped_caveat(accuracy: pd.DataFrame) -> str:
    if "methods_skipped" not in accuracy:
        return "- No method was skipped."
    skipped = accuracy.dropna(subset=["methods_skipped"])
    skipped = skipped[skipped["methods_skipped"] != ""]
    if skipped.empty:
        return "- No method was skipped."
    by_variant = skipped.groupby("variant")["methods_skipped"].first()
    text = "; ".join(f"{variant}: {reason}" for variant, reason in by_variant.items())
    return (
        f"- Methods that refused a variant (left out of its cells): {text}. `attention_norm` on `shaw` leaves out "
        "Shaw's relative value term (the capture does not hold it), so it is an approximation there."
    )


def write_tables_and_figures(
    out: Path, tables: dict[str, pd.DataFrame], summary: dict[str, pd.DataFrame], variants: Sequence[str]
) -> dict[str, Figure]:
    """Every table of a variant study as CSV (raw per-model ones and the summaries) and its figures as PNG, in
    ``out``; the figures written, by file name. Shared with :mod:`analyses.efficient_attention`."""
    out.mkdir(parents=True, exist_ok=True)
    tables["accuracy"].to_csv(out / "accuracy.csv", index=False)
    tables["layers"].to_csv(out / "layer_position_by_seed.csv", index=False)
    for name, table in summary.items():
        table.to_csv(out / f"{name}.csv", index=False)
    profile = (
        tables["profiles"]
        .groupby(["task", "variant", "layer", "distance"], sort=False)[
            ["share", "mean_weight", "uniform_weight", "relative_to_uniform"]
        ]
        .mean()
    )
    profile.reset_index().to_csv(out / "distance_profile.csv", index=False)
    figures = {
        "accuracy.png": accuracy_figure(summary["accuracy_cells"], variants),
        "distance_profile.png": profile_figure(tables["profiles"], variants),
    }
    if not summary["recovery"].empty:
        figures["recovery.png"] = recovery_figure(summary["recovery"], variants)
    if not summary["gaps"].empty:
        figures["gap_vs_erasure.png"] = gap_figure(summary["gaps"], variants)
    for name, figure in figures.items():
        save_figure(figure, out / name)
    return figures


def recovery_sections(recovery: pd.DataFrame, tasks: Sequence[str], variants: Sequence[str]) -> list[str]:
    """Markdown: per task, every method's R-precision (95% CI) per variant, and the exact chance level."""
    lines: list[str] = []
    for task in tasks:
        rows = recovery[recovery["task"] == task] if not recovery.empty else recovery
        if rows.empty:
            lines += [f"`{task}`: no model learned it.", ""]
            continue
        present = [v for v in variants if v in set(rows["variant"])]
        table = pd.DataFrame(
            [
                {"method": method, **{v: _cell(_lookup(rows, variant=v, method=method), "precision") for v in present}}
                for method in ALL_METHODS
                if method in set(rows["method"])
            ]
        )
        chance = rows.groupby("variant")["chance_precision"].first().reindex(present)
        table.loc[len(table)] = {"method": "*chance (exact)*", **{v: f"{chance[v]:.2f}" for v in present}}
        lines += [f"### `{task}`", "", markdown_table(table), ""]
    return lines


def write_report(
    out: Path, settings: Settings, tables: dict[str, pd.DataFrame], summary: dict[str, pd.DataFrame], seconds: float
) -> None:
    figures = write_tables_and_figures(out, tables, summary, settings.variants)

    facts = headline(summary, settings)
    n_models = len(tables["accuracy"])
    n_learned = int(tables["accuracy"]["learned"].sum())
    (out / "summary.json").write_text(
        json.dumps(
            {
                "study": NAME,
                "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()},
                "seconds": round(seconds, 1),
                "models": n_models,
                "models_learned": n_learned,
                "headline": facts,
                "observations": observations(summary, settings),
            },
            indent=2,
        )
    )

    lines = [
        "# Position variants: when does attention recover the tokens the model used?",
        "",
        f"{'**Smoke run** (tiny settings: numbers are not results). ' if settings.smoke else ''}"
        f"{n_models} models ({len(settings.variants)} variants x {len(settings.tasks)} tasks x {len(settings.seeds)} "
        f"seeds), {n_learned} learned their task; {seconds / 60:.1f} min on CPU (1 thread).",
        "",
        "## Protocol",
        "",
        f"- Encoder: {settings.layers} layers x {settings.heads} heads, width {settings.width}, post-norm, [CLS] "
        f"pooling; {settings.steps} training steps (batch 64, AdamW, lr 3e-3), seeds {list(settings.seeds)}.",
        "- Tasks (ground truth `relevant` known): "
        + ", ".join(f"`{t}` = {TASKS[t]()!r}" for t in settings.tasks)
        + ".",
        f"- Learned = held-out accuracy >= {settings.learned} (512 fresh examples, Wilson CI in `accuracy.csv`). "
        "Models below are reported and **excluded** from the explanation comparison.",
        f"- Explanations on {settings.examples} held-out examples per model, correctly classified ones scored; target: "
        "the predicted class's logit; tokens ranked by |score| over content tokens ([CLS]/[SEP] left out).",
        "- Recovery: R-precision (share of the top-|R| tokens that are decisive, ties shared in expectation), AUC "
        "(ties 1/2), top-1. Baselines: `random` (seeded uniform scores; expectation = `chance_precision`), "
        "`position_first` (closest to [CLS] first), `position_profile` (the model's mean last-layer [CLS] attention "
        f"per column over {settings.profile_examples} other inputs: attention from position alone).",
        f"- 95% intervals: hierarchical bootstrap ({settings.resamples} resamples; seeds, then examples within seeds), "
        "seeds weighted equally. Seed min/max of every mean are in the CSVs.",
        "- `raw_attention` = last layer, heads averaged; `raw_attention_first` = first layer. Erasure "
        "(`leave_one_out`) replaces a token by the [PAD] id (the toy vocabulary has no [MASK]).",
        "- Locality: attention-weighted mean |key − query| over all real query rows (`attention_by_distance`), "
        "vs uniform attention over the same rows (length-only baseline). `position_logit_share`: R² of the "
        "logits by the position term (shaw/t5/alibi exact, rotary an interaction, none = 0, learned/sinusoidal "
        "undefined). `r2_position_vs_uniform`: share of the departure from uniform recovered by the distance "
        "profile alone (`position_explained`, profile from other inputs).",
        "",
        "## Training",
        "",
        markdown_table(
            summary["accuracy_cells"].assign(
                seeds=lambda f: (
                    f["accuracy_seed_min"].map("{:.3f}".format) + "–" + f["accuracy_seed_max"].map("{:.3f}".format)
                ),
                learned=lambda f: f["n_learned"].astype(int).astype(str) + "/" + f["n_seeds"].astype(int).astype(str),
            )[["task", "variant", "accuracy", "seeds", "learned", "chance"]]
        ),
        "",
        "![accuracy](accuracy.png)",
        "",
        "## Recovery of the decisive tokens (R-precision, 95% CI)",
        "",
    ]
    recovery = summary["recovery"]
    lines += recovery_sections(recovery, settings.tasks, settings.variants)
    if "recovery.png" in figures:
        lines += ["![recovery](recovery.png)", ""]
    offset = recovery[recovery["task"] == "offset"] if not recovery.empty else recovery
    if not offset.empty and offset["top1_cue"].notna().any():
        variants = [v for v in settings.variants if v in set(offset["variant"])]
        table = pd.DataFrame(
            [
                {
                    "method": method,
                    **{
                        v: (
                            "–"
                            if (row := _lookup(offset, variant=v, method=method)) is None
                            else f"{row['top1']:.2f} / {row['top1_cue']:.2f}"
                        )
                        for v in variants
                    },
                }
                for method in ALL_METHODS
                if method in set(offset["method"])
            ]
        )
        lines += [
            "### `offset`: does the top token land on the value or on the marker?",
            "",
            "Share of examples whose top-ranked token is the decisive value token / the marker (the cue that says "
            "where the value is; erasing it also changes the answer, so a method may fairly point there). Chance "
            "for either is about 1/m.",
            "",
            markdown_table(table),
            "",
        ]
    lines += ["## When is attention misleading? Attention-derived recovery minus erasure / IG", ""]
    gaps = summary["gaps"]
    if not gaps.empty:
        table = gaps.assign(
            gap=lambda f: [
                ci_text(a, b, c)
                for a, b, c in zip(f["gap_precision"], f["gap_precision_low"], f["gap_precision_high"], strict=True)
            ]
        ).pivot_table(index=["task", "method"], columns=["reference", "variant"], values="gap", aggfunc="first")
        for reference in GAP_REFERENCES:
            if reference not in table.columns.get_level_values(0):
                continue
            part = table[reference].reset_index()
            part = part[["task", "method", *[v for v in settings.variants if v in part.columns]]]
            lines += [f"R-precision gap, method − `{reference}`:", "", markdown_table(part.fillna("–")), ""]
        lines += ["![gap](gap_vs_erasure.png)", ""]
    lines += ["## Locality and position's share", ""]
    layers = summary["layer_position"]
    if not layers.empty:
        view = layers.assign(
            learned=lambda f: f["n_learned"].astype(int).astype(str) + "/" + f["n_models"].astype(int).astype(str)
        )[
            [
                "task",
                "variant",
                "layer",
                "learned",
                "locality",
                "locality_uniform",
                "position_logit_share",
                "r2_position_vs_uniform",
            ]
        ]
        lines += [
            "Means over seeds (all models, learned or not; seed ranges in `layer_position.csv`).",
            "",
            markdown_table(view),
            "",
            "![profile](distance_profile.png)",
            "",
        ]
    lines += ["## Observations (computed from the tables)", ""]
    lines += [f"- {line}" for line in observations(summary, settings)] + [""]
    lines += [
        "## Caveats",
        "",
        "- Tiny models (2 layers) on toy tasks: what holds here is a property of these models, not of BERT-size ones.",
        f"- {len(settings.seeds)} seeds: the seed level of the bootstrap is coarse; a pattern whose seed range crosses "
        "the comparison (see `recovery_by_seed.csv`) is seed-dependent.",
        "- Only correctly classified examples are scored, so a learned model's few errors are not explained.",
        "- Erasure uses the [PAD] id inside the sequence, which the model never saw there: out of distribution, the "
        "usual caveat of occlusion. Integrated gradients (same baseline) is the second reference.",
        "- Tokens are ranked by |score|: a token that pushes against the predicted class counts as important.",
        _ig_caveat(tables["accuracy"]),
        _skipped_caveat(tables["accuracy"]),
        "- The symmetric ALiBi of this library (−m|i−j|) cannot tell left from right; OffsetToken needs the direction.",
        "- Locality and position share are reported for every model; a failed model's attention is not an "
        "explanation of anything, read those rows with its accuracy.",
        "",
        "## Files",
        "",
        "`accuracy.csv` (per model), `accuracy_cells.csv`, `recovery.csv` (per task/variant/method, all metrics with "
        "CIs and seed ranges), `recovery_by_seed.csv`, `gaps.csv`, `layer_position.csv`, `layer_position_by_seed.csv`, "
        "`distance_profile.csv`, `summary.json`, and the PNG figures.",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))


# ----------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------
SMOKE = {
    "variants": ("learned", "t5", "alibi"),
    "tasks": ("marked", "offset"),
    "seeds": (0,),
    "steps": 150,
    "examples": 48,
    "profile_examples": 128,
    "resamples": 200,
}


def parse(argv: Sequence[str] | None) -> tuple[Settings, Path]:
    parser = argparse.ArgumentParser(prog=f"python -m analyses.{NAME}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("analyses/results") / NAME)
    parser.add_argument("--smoke", action="store_true", help="tiny settings (seconds): a check that it runs")
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS)
    parser.add_argument("--tasks", nargs="+", choices=tuple(TASKS))
    parser.add_argument("--examples", type=int, help="held-out examples explained per model")
    parser.add_argument("--learned", type=float, help="accuracy at or above which a model counts as learned")
    parser.add_argument("--resamples", type=int)
    args = parser.parse_args(argv)
    settings = Settings(**SMOKE, smoke=True) if args.smoke else Settings()
    for name in ("seeds", "variants", "tasks"):
        if getattr(args, name) is not None:
            setattr(settings, name, tuple(getattr(args, name)))
    for name in ("steps", "examples", "learned", "resamples"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    return settings, args.out


def main(argv: Sequence[str] | None = None) -> int:
    settings, out = parse(argv)
    started = time.perf_counter()
    tables = run_study(settings)
    summary = summarise(tables, settings)
    write_report(out, settings, tables, summary, time.perf_counter() - started)
    print(f"wrote {out / 'report.md'} ({time.perf_counter() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
