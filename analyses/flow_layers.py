"""Study: attention flow vs rollout vs raw attention, layer by layer (the Abnar & Zuidema 2020 question).

Question. Abnar & Zuidema (2020, "Quantifying Attention Flow in Transformers") found that raw attention of the
[CLS] row correlates less and less with input-attribution scores (blank-out, input gradients) as layers go up,
while attention rollout and attention flow, which follow the information through the residual attention graph,
keep a higher correlation. Does that hold for our own small encoder on a task whose decisive token is known?

Task (built from :func:`attn_probe.data.agreement.agreement_prompts`, not synthetic): a word-level vocabulary of
every word the attractor templates and nouns can produce, plus a few number-neutral prefix words. Each input is
``[CLS] prefix* The <subject> ... the <attractor> ... [SEP]`` (``"[CLS] so The keys near the cabinet [SEP]"``),
and the label is the subject's number (plural = 1). The subject decides the label; the attractor is a noun of
either number (balanced, independent of the label) standing between subject and verb. 0-3 prefix words are drawn
per input, so the subject's absolute position varies and position alone cannot find it. Prompts are split into
a training pool and a held-out pool of distinct prompts (same nouns, new combinations).

Protocol:

- model: encoder with ``--layers`` layers x ``--heads`` heads, width ``--width``, position variant in
  ``--variants`` (default learned and t5: what should not matter for the question), trained with
  :func:`attn_probe.attention.training.train` for ``--steps`` steps per seed in ``--seeds``.
- accuracy: on the held-out pool (each prompt once, seeded prefixes), Wilson interval; a model below
  ``--learned`` (0.9) is reported and excluded.
- per correctly classified held-out example, the target is the predicted class's logit; per layer ``l``:
  ``raw_attention`` (the [CLS] row at layer l, heads averaged), ``attention_rollout`` and ``attention_flow``
  (residual 0.5, the graph up to layer l), each compared with three references computed on the output:
  ``leave_one_out`` (erasure with the [PAD] id), ``input_x_gradient`` and ``integrated_gradients`` (100 steps).
  Comparison: Spearman's rho and Kendall's tau-b (:func:`attn_probe.compare.layer_agreement`, ``|score|``, over
  the content tokens: [CLS]/[SEP] left out).
- baselines: ``random`` (seeded uniform scores: expectation 0) and ``position_first`` (closer to [CLS] ranks
  higher: position and length alone).
- ground truth: per layer, the share of examples whose top token is the subject (``top1_subject``) or the
  attractor (``top1_attractor``).
- intervals: hierarchical percentile bootstrap over seeds then examples (``analyses.position_variants``);
  paired differences (flow − raw, rollout − raw) are bootstrapped on the per-example differences.

At layer 0 the three attention methods rank the content tokens identically (rollout and flow of one layer are
that layer's attention row plus the residual on [CLS], which is left out), so their layer-0 correlations are
equal: a check built into the numbers.

Run: ``python -m analyses.flow_layers [--smoke] [--out DIR] [--seeds 0 1 2 3 4] [--steps 800]``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from analyses.position_variants import (
    _group_seed,
    ci_text,
    hierarchical_bootstrap,
    markdown_table,
    save_figure,
    token_batch,
    wilson,
)
from attn_probe.attention.models import EncoderClassifier, TransformerConfig
from attn_probe.attention.toy_tasks import CLS, PAD, SEP
from attn_probe.attention.training import build_model, train
from attn_probe.compare.agreement import layer_agreement
from attn_probe.data.agreement import NOUNS, TEMPLATES, agreement_prompts
from attn_probe.data.synthetic import SyntheticBatch
from attn_probe.methods import explain

NAME = "flow_layers"
LAYERED = ("raw_attention", "attention_rollout", "attention_flow")
REFERENCES = ("leave_one_out", "input_x_gradient", "integrated_gradients")
BASELINES = ("random", "position_first")
PREFIX_WORDS = ("so", "well", "now", "then", "yes", "look", "okay", "still")
IG_STEPS = 100
TEST_SEED = 40_000


# ----------------------------------------------------------------------------------------------------
# the task
# ----------------------------------------------------------------------------------------------------
def vocabulary() -> list[str]:
    """``[PAD] [CLS] [SEP]`` then every word a template, a noun form or a prefix can give, sorted."""
    words = {w for t in TEMPLATES for w in t.pattern.split() if not w.startswith("{")}
    words |= {n.singular for n in NOUNS} | {n.plural for n in NOUNS} | set(PREFIX_WORDS)
    return ["[PAD]", "[CLS]", "[SEP]", *sorted(words)]


class AgreementNumber:
    """Classify the subject's number of an agreement prompt; ``relevant`` = the subject, ``cues`` = the attractor.

    ``sample`` draws prompts of the training pool (with replacement) with 0..``max_prefix`` prefix words;
    :meth:`held_out` gives each prompt of the held-out pool once. Follows the toy-task protocol, so
    :func:`attn_probe.attention.training.train` trains on it.
    """

    kind = "classification"
    num_classes = 2

    def __init__(self, train_prompts: int = 3000, test_prompts: int = 500, max_prefix: int = 3, seed: int = 0) -> None:
        frame = agreement_prompts(n=train_prompts + test_prompts, seed=seed)
        self.words = vocabulary()
        self.index = {w: i for i, w in enumerate(self.words)}
        self.vocab_size = len(self.words)
        self.max_prefix = max_prefix
        self.test = frame[frame["prompt_id"] < test_prompts].reset_index(drop=True)
        self.train = frame[frame["prompt_id"] >= test_prompts].reset_index(drop=True)
        self.max_words = max_prefix + int(frame["text"].str.split().str.len().max())
        if set(self.test["text"]) & set(self.train["text"]):
            raise AssertionError("held-out prompts overlap the training pool")

    def _encode(self, frame: pd.DataFrame, generator: torch.Generator) -> SyntheticBatch:
        size = len(frame)
        total = self.max_words + 2
        input_ids = torch.full((size, total), PAD, dtype=torch.long)
        relevant = torch.zeros(size, total, dtype=torch.bool)
        cues = torch.zeros(size, total, dtype=torch.bool)
        labels = torch.zeros(size, dtype=torch.long)
        for row, record in enumerate(frame.itertuples(index=False)):
            prefix = int(torch.randint(0, self.max_prefix + 1, (1,), generator=generator))
            chosen = torch.randint(0, len(PREFIX_WORDS), (prefix,), generator=generator).tolist()
            words = [PREFIX_WORDS[i] for i in chosen] + record.text.split()
            ids = [CLS, *(self.index[w] for w in words), SEP]
            input_ids[row, : len(ids)] = torch.tensor(ids)
            relevant[row, 1 + prefix + int(record.subject_word_index)] = True
            cues[row, 1 + prefix + int(record.attractor_word_index)] = True
            labels[row] = int(record.subject_number == "plural")
        return SyntheticBatch(input_ids, (input_ids != PAD).long(), labels, relevant, cues)

    def sample(self, batch_size: int, generator: torch.Generator) -> SyntheticBatch:
        rows = torch.randint(0, len(self.train), (batch_size,), generator=generator).tolist()
        return self._encode(self.train.iloc[rows], generator)

    def held_out(self, count: int | None = None, seed: int = TEST_SEED) -> tuple[SyntheticBatch, pd.DataFrame]:
        frame = self.test if count is None else self.test.iloc[:count]
        return self._encode(frame, torch.Generator().manual_seed(seed)), frame.reset_index(drop=True)

    def name(self, token: int) -> str:
        return self.words[token]


# ----------------------------------------------------------------------------------------------------
# the study
# ----------------------------------------------------------------------------------------------------
@dataclass
class Settings:
    variants: tuple[str, ...] = ("learned", "t5")
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    steps: int = 800
    examples: int = 300
    train_prompts: int = 3000
    test_prompts: int = 500
    width: int = 32
    heads: int = 4
    layers: int = 4
    learned: float = 0.9
    resamples: int = 1000
    smoke: bool = False


def _ranking_rows(
    scores: np.ndarray, truth: np.ndarray, attractor: np.ndarray, keep: np.ndarray, correct: np.ndarray
) -> dict[str, np.ndarray]:
    """Per example: the share of the tokens tied at the top that are the subject / the attractor (a random
    tie-break's chance of a hit), and the share of the content tokens tied at the top (1/m without ties; attention
    flow saturates: many tokens reach the full unit inflow)."""
    out = {name: np.full(len(scores), np.nan) for name in ("top1_subject", "top1_attractor", "top_tied_share")}
    for example in np.flatnonzero(correct):
        values = np.abs(scores[example][keep[example]])
        top = values == values.max()
        out["top1_subject"][example] = truth[example][keep[example]][top].mean()
        out["top1_attractor"][example] = attractor[example][keep[example]][top].mean()
        out["top_tied_share"][example] = top.mean()
    return out


def probe_model(
    model: EncoderClassifier, task: AgreementNumber, settings: Settings, keys: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Per (example, layer, method, reference) correlations, per (example, layer, method) top-token truth, extras."""
    batch, frame = task.held_out(settings.examples)
    inputs = token_batch(batch.input_ids, batch.attention_mask, task.name, (CLS, SEP))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # IG convergence: recorded in the extras
        explanations = explain(
            model, inputs, [*LAYERED, *REFERENCES], options={"integrated_gradients": {"n_steps": IG_STEPS}}
        )
    with torch.no_grad():
        predicted = model(batch.input_ids, batch.attention_mask).logits.argmax(-1)
    correct = (predicted == batch.labels).numpy()
    num_layers = settings.layers
    n = batch.input_ids.shape[1]

    # baselines as layered explanations: the same view at every layer
    rng = np.random.default_rng(_group_seed("random", *keys.values()))
    template = explanations["raw_attention"]
    baselines = {
        "random": torch.from_numpy(rng.random((len(frame), n))).float(),
        "position_first": torch.arange(n, 0, -1).float().expand(len(frame), n).clone(),
    }
    layered = {name: explanations[name] for name in LAYERED}
    for name, values in baselines.items():
        values = values.masked_fill(~template.real, 0.0)
        layered[name] = type(template)(
            method=name,
            info=template.info,
            scores=values,
            target=template.target,
            special=template.special,
            real=template.real,
            layer_scores=values[:, None].expand(-1, num_layers, -1).clone(),
        )
    correlation_rows = []
    for name, explanation in layered.items():
        for reference in REFERENCES:
            table = layer_agreement(explanation, explanations[reference], level="layer", absolute=True)
            table = table[["example_id", "layer", "n_tokens", "spearman_rho", "kendall_tau"]]
            correlation_rows.append(table.assign(method=name, reference=reference, **keys))
    correlations = pd.concat(correlation_rows, ignore_index=True)
    correlations = correlations[correlations["example_id"].isin(np.flatnonzero(correct))]

    keep = inputs.special_tokens_mask.logical_not().numpy()
    truth, attractor = batch.relevant.numpy(), batch.cues.numpy()
    truth_rows = []
    examples = np.arange(len(frame))
    for name, explanation in layered.items():
        for layer in range(num_layers):
            found = _ranking_rows(explanation.layer_scores[:, layer].numpy(), truth, attractor, keep, correct)
            truth_rows.append(pd.DataFrame({"example_id": examples, "layer": layer, "method": name, **found}))
    for reference in REFERENCES:
        found = _ranking_rows(explanations[reference].scores.numpy(), truth, attractor, keep, correct)
        truth_rows.append(pd.DataFrame({"example_id": examples, "layer": -1, "method": reference, **found}))
    truth_table = pd.concat(truth_rows, ignore_index=True).assign(**keys).dropna(subset=["top1_subject"])
    delta = explanations["integrated_gradients"].details["relative_convergence_delta"].abs().numpy()
    extras = {
        "n_explained": len(frame),
        "n_scored": int(correct.sum()),
        "held_out_accuracy_incongruent": float(correct[~frame["congruent"].astype(bool).to_numpy()].mean()),
        "held_out_accuracy_congruent": float(correct[frame["congruent"].astype(bool).to_numpy()].mean()),
        "ig_relative_delta_median": float(np.median(delta)),
        "ig_share_delta_over_5pct": float(np.mean(delta > 0.05)),
        "flow_max_error_bound": float(explanations["attention_flow"].details["max_error_bound"]),
    }
    return correlations, truth_table, extras


def run_study(settings: Settings, log: Callable[[str], None] = print) -> dict[str, pd.DataFrame]:
    torch.set_num_threads(1)
    task = AgreementNumber(settings.train_prompts, settings.test_prompts)
    models, correlations, truth = [], [], []
    for variant in settings.variants:
        for seed in settings.seeds:
            keys = {"variant": variant, "seed": seed}
            config = TransformerConfig(
                vocab_size=task.vocab_size,
                num_classes=2,
                embed_dim=settings.width,
                num_heads=settings.heads,
                num_layers=settings.layers,
                ffn_dim=2 * settings.width,
                position=variant,
            )
            model = build_model(config, task, seed=seed)
            report = train(model, task, steps=settings.steps, seed=seed)
            held_out, _ = task.held_out()
            with torch.no_grad():
                predicted = model(held_out.input_ids, held_out.attention_mask).logits.argmax(-1)
            hits, total = int((predicted == held_out.labels).sum()), len(held_out.labels)
            low, high = wilson(hits, total)
            accuracy = hits / total
            row = {
                **keys,
                "held_out_accuracy": accuracy,
                "held_out_low": low,
                "held_out_high": high,
                "n_held_out": total,
                "train_pool_accuracy": report.accuracy,
                "learned": accuracy >= settings.learned,
                "final_loss": float(np.mean(report.losses[-20:])),
                "train_seconds": report.seconds,
            }
            started = time.perf_counter()
            if row["learned"]:
                table, truth_table, extras = probe_model(model, task, settings, keys)
                correlations.append(table)
                truth.append(truth_table)
                row.update(extras)
            row["probe_seconds"] = time.perf_counter() - started
            models.append(row)
            log(
                f"{variant:>8} seed {seed}: held-out accuracy {accuracy:.3f} (train pool {report.accuracy:.3f})"
                f"{'' if row['learned'] else ' (not learned: excluded)'} "
                f"[{report.seconds:.1f}s train, {row['probe_seconds']:.1f}s probe]"
            )
    return {
        "models": pd.DataFrame(models),
        "correlations": pd.concat(correlations, ignore_index=True) if correlations else pd.DataFrame(),
        "truth": pd.concat(truth, ignore_index=True) if truth else pd.DataFrame(),
    }


# ----------------------------------------------------------------------------------------------------
# aggregation
# ----------------------------------------------------------------------------------------------------
def _boot(frame: pd.DataFrame, column: str, resamples: int, *keys: Any) -> dict[str, float]:
    groups = [g[column].to_numpy() for _, g in frame.groupby("seed")]
    point, low, high = hierarchical_bootstrap(groups, resamples=resamples, seed=_group_seed(column, *keys))
    per_seed = frame.groupby("seed")[column].mean()
    return {
        column: point,
        f"{column}_low": low,
        f"{column}_high": high,
        f"{column}_seed_min": float(per_seed.min()),
        f"{column}_seed_max": float(per_seed.max()),
        "n_seeds": int(per_seed.size),
        "n_examples": int(frame[column].notna().sum()),
    }


def summarise(tables: dict[str, pd.DataFrame], settings: Settings) -> dict[str, pd.DataFrame]:
    correlations, truth = tables["correlations"], tables["truth"]
    if correlations.empty:
        empty = pd.DataFrame()
        return {"correlation": empty, "differences": empty, "truth": empty}
    rows = []
    for (variant, reference, method, layer), group in correlations.groupby(
        ["variant", "reference", "method", "layer"], sort=False
    ):
        row = {"variant": variant, "reference": reference, "method": method, "layer": layer}
        for column in ("spearman_rho", "kendall_tau"):
            row.update(_boot(group, column, settings.resamples, variant, reference, method, layer))
        rows.append(row)
    keyed = correlations.set_index(["variant", "seed", "reference", "layer", "example_id", "method"])
    differences = []
    for method in ("attention_flow", "attention_rollout"):
        for column in ("spearman_rho", "kendall_tau"):
            diff = keyed[column].xs(method, level="method") - keyed[column].xs("raw_attention", level="method")
            diff = diff.rename("difference").reset_index()
            for (variant, reference, layer), group in diff.groupby(["variant", "reference", "layer"], sort=False):
                differences.append(
                    {
                        "variant": variant,
                        "reference": reference,
                        "layer": layer,
                        "comparison": f"{method} - raw_attention",
                        "statistic": column,
                        **_boot(group, "difference", settings.resamples, variant, reference, layer, method, column),
                    }
                )
    truth_rows = []
    for (variant, method, layer), group in truth.groupby(["variant", "method", "layer"], sort=False):
        row = {"variant": variant, "method": method, "layer": layer}
        for column in ("top1_subject", "top1_attractor", "top_tied_share"):
            boot = _boot(group, column, settings.resamples, variant, method, layer)
            row.update({k: v for k, v in boot.items() if k.startswith(column)})
            row["n_examples"] = boot["n_examples"]
        truth_rows.append(row)
    return {
        "correlation": pd.DataFrame(rows),
        "differences": pd.DataFrame(differences),
        "truth": pd.DataFrame(truth_rows),
    }


# ----------------------------------------------------------------------------------------------------
# figures and report
# ----------------------------------------------------------------------------------------------------
def correlation_figure(correlation: pd.DataFrame, statistic: str = "spearman_rho") -> Figure:
    references = [r for r in REFERENCES if r in set(correlation["reference"])]
    variants = list(dict.fromkeys(correlation["variant"]))
    methods = [m for m in (*LAYERED, *BASELINES) if m in set(correlation["method"])]
    palette = dict(zip(methods, sns.color_palette("tab10", len(methods)), strict=True))
    figure = Figure(figsize=(1.5 + 3.4 * len(references), 1.2 + 2.8 * len(variants)), layout="constrained")
    axes = np.atleast_2d(figure.subplots(len(variants), len(references), sharex=True, sharey=True, squeeze=False))
    for i, variant in enumerate(variants):
        for j, reference in enumerate(references):
            axis = axes[i, j]
            rows = correlation[(correlation["variant"] == variant) & (correlation["reference"] == reference)]
            sns.lineplot(
                data=rows,
                x="layer",
                y=statistic,
                hue="method",
                hue_order=methods,
                palette=palette,
                marker="o",
                ax=axis,
                legend=(i == 0 and j == len(references) - 1),
            )
            for method in methods:
                part = rows[rows["method"] == method].sort_values("layer")
                axis.fill_between(
                    part["layer"],
                    part[f"{statistic}_low"],
                    part[f"{statistic}_high"],
                    color=palette[method],
                    alpha=0.18,
                    lw=0,
                )
            axis.axhline(0, color="grey", lw=0.7)
            if axis.get_legend() is not None:
                sns.move_legend(axis, "upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, title_fontsize=8)
            axis.set_title(f"{variant} · vs {reference}", fontsize=9)
            axis.set_xticks(sorted(rows["layer"].unique()))
    figure.suptitle(
        f"{statistic} with the output attribution, per layer (mean over seeds, 95% hierarchical bootstrap)",
        x=0.01,
        ha="left",
        fontsize=10,
    )
    return figure


def truth_figure(truth: pd.DataFrame) -> Figure:
    rows = truth[truth["layer"] >= 0]
    variants = list(dict.fromkeys(rows["variant"]))
    figure = Figure(figsize=(1.5 + 3.6 * len(variants), 3.4), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(variants), sharey=True))
    methods = [m for m in (*LAYERED, *BASELINES) if m in set(rows["method"])]
    for axis, variant in zip(axes, variants, strict=True):
        part = rows[rows["variant"] == variant]
        sns.lineplot(
            data=part,
            x="layer",
            y="top1_subject",
            hue="method",
            hue_order=methods,
            marker="o",
            ax=axis,
            legend=axis is axes[-1],
        )
        sns.lineplot(
            data=part,
            x="layer",
            y="top1_attractor",
            hue="method",
            hue_order=methods,
            marker="x",
            linestyle="--",
            ax=axis,
            legend=False,
        )
        references = truth[(truth["variant"] == variant) & (truth["layer"] < 0)]
        for reference in references.itertuples(index=False):
            axis.axhline(reference.top1_subject, lw=0.7, color="black", alpha=0.4)
        if axis.get_legend() is not None:
            sns.move_legend(axis, "upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, title_fontsize=8)
        axis.set_title(f"{variant} (grey lines: references' subject share)", fontsize=9)
        axis.set_ylabel("top token = subject (solid) / attractor (dashed)")
        axis.set_xticks(sorted(part["layer"].unique()))
    return figure


def headline(summary: dict[str, pd.DataFrame], tables: dict[str, pd.DataFrame], settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    models = tables["models"]
    correlation, differences, truth = summary["correlation"], summary["differences"], summary["truth"]
    for variant in settings.variants:
        part = models[models["variant"] == variant]
        entry: dict[str, Any] = {
            "held_out_accuracy": [round(float(v), 4) for v in part["held_out_accuracy"]],
            "seeds_learned": f"{int(part['learned'].sum())}/{len(part)}",
        }
        if not correlation.empty and variant in set(correlation["variant"]):
            last = int(correlation["layer"].max())
            for reference in REFERENCES:
                for method in (*LAYERED, *BASELINES):
                    rows = correlation[
                        (correlation["variant"] == variant)
                        & (correlation["reference"] == reference)
                        & (correlation["method"] == method)
                    ]
                    if rows.empty:
                        continue
                    by_layer = rows.set_index("layer")
                    entry[f"spearman_{method}_vs_{reference}_by_layer"] = [
                        [
                            round(float(by_layer.loc[layer, c]), 4)
                            for c in ("spearman_rho", "spearman_rho_low", "spearman_rho_high")
                        ]
                        for layer in sorted(by_layer.index)
                    ]
                for comparison in ("attention_flow - raw_attention", "attention_rollout - raw_attention"):
                    rows = differences[
                        (differences["variant"] == variant)
                        & (differences["reference"] == reference)
                        & (differences["comparison"] == comparison)
                        & (differences["layer"] == last)
                        & (differences["statistic"] == "spearman_rho")
                    ]
                    if not rows.empty:
                        row = rows.iloc[0]
                        key = f"last_layer_{comparison.split(' ')[0]}_minus_raw_spearman_vs_{reference}"
                        entry[key] = [
                            round(float(row[c]), 4) for c in ("difference", "difference_low", "difference_high")
                        ]
            rows = truth[(truth["variant"] == variant) & (truth["layer"].isin([last, -1]))]
            entry["top1_subject_last_layer_or_reference"] = {
                r.method: round(float(r.top1_subject), 4) for r in rows.itertuples(index=False)
            }
            entry["top_tied_share_last_layer"] = {
                r.method: round(float(r.top_tied_share), 4) for r in rows.itertuples(index=False) if r.layer == last
            }
        out[variant] = entry
    return out


def observations(summary: dict[str, pd.DataFrame], settings: Settings) -> list[str]:
    lines = []
    differences = summary["differences"]
    if differences.empty:
        return ["No model learned the task: nothing to compare."]
    rho = differences[differences["statistic"] == "spearman_rho"]
    last = int(rho["layer"].max())
    for comparison in ("attention_flow - raw_attention", "attention_rollout - raw_attention"):
        part = rho[(rho["comparison"] == comparison) & (rho["layer"] == last)]
        above = part[part["difference_low"] > 0]
        below = part[part["difference_high"] < 0]
        cells = ", ".join(
            f"{r.variant}/{r.reference} {r.difference:+.2f} [{r.difference_low:+.2f}, {r.difference_high:+.2f}]"
            for r in part.itertuples(index=False)
        )
        lines.append(
            f"Last layer ({last}), `{comparison}` in Spearman rho with the output attribution: CI above 0 in "
            f"{len(above)}/{len(part)} (variant, reference) cells, below 0 in {len(below)}. Cells: {cells}."
        )
    correlation = summary["correlation"]
    raw = correlation[(correlation["method"] == "raw_attention") & (correlation["reference"] == "leave_one_out")]
    for variant, part in raw.groupby("variant", sort=False):
        part = part.sort_values("layer")
        trend = ", ".join(f"L{r.layer} {r.spearman_rho:.2f}" for r in part.itertuples(index=False))
        lines.append(f"`{variant}`: raw attention vs leave_one_out, Spearman by layer: {trend}.")
    truth = summary["truth"]
    flow = truth[(truth["method"] == "attention_flow") & (truth["layer"] == last)]
    raw = truth[(truth["method"] == "raw_attention") & (truth["layer"] == last)]
    if not flow.empty:
        text = ", ".join(
            f"{f.variant} {f.top_tied_share:.2f} [{f.top_tied_share_low:.2f}, {f.top_tied_share_high:.2f}] (raw "
            f"attention {r.top_tied_share:.2f})"
            for f, r in zip(flow.itertuples(index=False), raw.itertuples(index=False), strict=True)
        )
        saturated = bool((flow["top_tied_share"].to_numpy() > 1.5 * raw["top_tied_share"].to_numpy()).any())
        lines.append(
            f"Share of the content tokens tied at the top score at the last layer, attention_flow: {text}. "
            + (
                "Flow saturates: each token's max-flow is computed on its own, so several tokens can each carry the "
                "full unit into [CLS]; the ties lower flow's top-1 hit rate and its rank correlation."
                if saturated
                else "No sign of saturation (ties no more common than for raw attention x 1.5)."
            )
        )
    zero = correlation[correlation["layer"] == 0].pivot_table(
        index=["variant", "reference"], columns="method", values="spearman_rho"
    )
    if set(LAYERED) <= set(zero.columns):
        spread = float((zero[list(LAYERED)].max(axis=1) - zero[list(LAYERED)].min(axis=1)).max())
        lines.append(f"Layer-0 check: the three attention methods' layer-0 rho differ by at most {spread:.2e}.")
    return lines


def _ci_column(frame: pd.DataFrame, column: str) -> list[str]:
    """``point [low, high]`` strings of ``column`` with its ``_low`` / ``_high`` companions."""
    return [
        ci_text(a, b, c) for a, b, c in zip(frame[column], frame[f"{column}_low"], frame[f"{column}_high"], strict=True)
    ]


def write_report(
    out: Path, settings: Settings, tables: dict[str, pd.DataFrame], summary: dict[str, pd.DataFrame], seconds: float
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tables["models"].to_csv(out / "models.csv", index=False)
    for name in ("correlation", "differences", "truth"):
        summary[name].to_csv(out / f"{name}.csv", index=False)
    figures = {}
    if not summary["correlation"].empty:
        figures["correlation_by_layer.png"] = correlation_figure(summary["correlation"])
        figures["top_token_by_layer.png"] = truth_figure(summary["truth"])
    for name, figure in figures.items():
        save_figure(figure, out / name)
    models = tables["models"]
    facts = headline(summary, tables, settings)
    (out / "summary.json").write_text(
        json.dumps(
            {
                "study": NAME,
                "task": "agreement-derived (word-level vocabulary from agreement_prompts); label = subject number",
                "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()},
                "seconds": round(seconds, 1),
                "models": len(models),
                "models_learned": int(models["learned"].sum()),
                "headline": facts,
                "observations": observations(summary, settings),
            },
            indent=2,
        )
    )
    task = AgreementNumber(settings.train_prompts, settings.test_prompts)
    example, _ = task.held_out(1)
    shown = " ".join(task.name(int(t)) for t in example.input_ids[0] if int(t) != PAD)
    lines = [
        "# Attention flow vs rollout vs raw attention, layer by layer",
        "",
        f"{'**Smoke run** (tiny settings: numbers are not results). ' if settings.smoke else ''}"
        f"{len(models)} models ({len(settings.variants)} position variants x {len(settings.seeds)} seeds), "
        f"{int(models['learned'].sum())} learned; {seconds / 60:.1f} min on CPU (1 thread).",
        "",
        "The Abnar & Zuidema (2020) question: does raw attention drift away from input attributions in later "
        "layers while rollout and flow keep tracking them?",
        "",
        "## Protocol",
        "",
        f"- Task (agreement data, not synthetic): label = the subject's number; word-level vocabulary of "
        f"{task.vocab_size} ids built from the agreement templates and nouns; {len(task.train)} training prompts, "
        f"{len(task.test)} held-out prompts (distinct texts), 0–{task.max_prefix} number-neutral prefix words per "
        f"input so the subject's position varies. Example: `{shown}` (label {int(example.labels[0])}).",
        f"- Encoder: {settings.layers} layers x {settings.heads} heads, width {settings.width}, variants "
        f"{list(settings.variants)}, {settings.steps} steps (batch 64, AdamW, lr 3e-3), seeds {list(settings.seeds)}; "
        f"learned = held-out accuracy >= {settings.learned}.",
        f"- {settings.examples} held-out examples explained per model, correctly classified ones scored; target: the "
        "predicted class's logit. Per layer: `raw_attention` ([CLS] row, heads averaged), `attention_rollout`, "
        "`attention_flow` (residual 0.5, graph up to that layer). References on the output: `leave_one_out` "
        f"([PAD] id in place of the token), `input_x_gradient`, `integrated_gradients` ({IG_STEPS} steps, [PAD] "
        "baseline). Spearman / Kendall over content tokens, by |score|.",
        "- Baselines: `random` (expectation 0), `position_first` (closer to [CLS] first: position and length alone).",
        f"- 95% CIs: hierarchical bootstrap ({settings.resamples} resamples; seeds, then examples within seeds); "
        "differences flow − raw and rollout − raw are paired per example.",
        "",
        "## Models",
        "",
        markdown_table(
            models[
                [
                    c
                    for c in (
                        "variant",
                        "seed",
                        "held_out_accuracy",
                        "held_out_low",
                        "held_out_high",
                        "train_pool_accuracy",
                        "learned",
                        "held_out_accuracy_incongruent",
                        "n_scored",
                    )
                    if c in models
                ]
            ]
        ),
        "",
    ]
    correlation, differences = summary["correlation"], summary["differences"]
    if not correlation.empty:
        lines += ["## Spearman rho with the output attribution, per layer (95% CI)", ""]
        for reference in REFERENCES:
            rows = correlation[correlation["reference"] == reference].assign(
                cell=lambda f: _ci_column(f, "spearman_rho")
            )
            table = rows.pivot_table(index=["variant", "layer"], columns="method", values="cell", aggfunc="first")
            table = table[[m for m in (*LAYERED, *BASELINES) if m in table.columns]].reset_index()
            lines += [f"### vs `{reference}`", "", markdown_table(table), ""]
        lines += ["![correlation](correlation_by_layer.png)", ""]
        lines += ["## Flow / rollout minus raw attention (paired Spearman difference, 95% CI)", ""]
        rho = differences[differences["statistic"] == "spearman_rho"].assign(cell=lambda f: _ci_column(f, "difference"))
        table = rho.pivot_table(
            index=["variant", "reference", "layer"], columns="comparison", values="cell", aggfunc="first"
        ).reset_index()
        lines += [markdown_table(table), ""]
        lines += ["## Does the top token land on the subject?", ""]
        truth = summary["truth"].assign(
            subject=lambda f: _ci_column(f, "top1_subject"),
            attractor=lambda f: _ci_column(f, "top1_attractor"),
            tied=lambda f: _ci_column(f, "top_tied_share"),
        )
        truth["layer"] = truth["layer"].map(lambda v: "output" if v < 0 else str(v))
        lines += [
            "Share of examples whose highest-scored content token is the subject / the attractor (ties at the top "
            "shared, as a random tie-break would; layer `output`: the references, computed on the output). `tied`: "
            "mean share of the content tokens tied at the top score (1/m without ties).",
            "",
            markdown_table(truth[["variant", "method", "layer", "subject", "attractor", "tied", "n_examples"]]),
            "",
            "![truth](top_token_by_layer.png)",
            "",
        ]
    lines += ["## Observations (computed from the tables)", ""]
    lines += [f"- {line}" for line in observations(summary, settings)] + [""]
    ig = models.get("ig_relative_delta_median")
    lines += [
        "## Caveats",
        "",
        f"- Small encoder ({settings.layers} layers) on a word-level toy version of agreement: the model sees a closed "
        "vocabulary and learns the nouns' numbers as token identities; this is not a pretrained language model.",
        "- The subject always follows `The` (after the prefix words), so a model can find it by a one-token relative "
        "pattern; the attractor follows lowercase `the`. Which shortcut the model uses is not controlled.",
        f"- {len(settings.seeds)} seeds per variant: the seed level of the bootstrap is coarse; seed ranges are in "
        "the CSVs (`*_seed_min`, `*_seed_max`).",
        "- Correlations over 4–8 content tokens are coarse per example (Spearman takes few values); the means "
        "over hundreds of examples are what is compared.",
        "- Erasure with the [PAD] id is out of distribution for the model (occlusion's usual caveat).",
        "- The references explain the output; per-layer attention is compared with them, as in the paper, not with "
        "per-layer attributions.",
        (
            f"- Integrated gradients: median relative convergence error {ig.median():.4f}, worst model "
            f"{models['ig_share_delta_over_5pct'].max():.0%} of examples over 5%."
            if ig is not None and ig.notna().any()
            else "- Integrated gradients was not run."
        ),
        "",
        "## Files",
        "",
        "`models.csv` (per model: accuracies with Wilson CI, timings, IG convergence), `correlation.csv` (per "
        "variant / reference / method / layer: Spearman and Kendall with CIs and seed ranges), `differences.csv`, "
        "`truth.csv`, `summary.json`, figures.",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))


# ----------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------
SMOKE = {
    "variants": ("learned",),
    "seeds": (0,),
    "steps": 300,
    "examples": 40,
    "train_prompts": 1000,
    "test_prompts": 200,
    "layers": 3,
    "resamples": 200,
}


def parse(argv: Sequence[str] | None) -> tuple[Settings, Path]:
    parser = argparse.ArgumentParser(prog=f"python -m analyses.{NAME}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("analyses/results") / NAME)
    parser.add_argument("--smoke", action="store_true", help="tiny settings (seconds): a check that it runs")
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--variants", nargs="+")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--examples", type=int, help="held-out examples explained per model")
    parser.add_argument("--learned", type=float, help="held-out accuracy at or above which a model counts as learned")
    parser.add_argument("--resamples", type=int)
    args = parser.parse_args(argv)
    settings = Settings(**SMOKE, smoke=True) if args.smoke else Settings()
    for name in ("seeds", "variants"):
        if getattr(args, name) is not None:
            setattr(settings, name, tuple(getattr(args, name)))
    for name in ("steps", "layers", "examples", "learned", "resamples"):
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
