"""Study: does minilm-sentiment's attention tell what the model used on held-out Rotten Tomatoes snippets?

Question. ``minilm-sentiment`` (all-MiniLM-L6-v2, 6 layers x 12 heads, fine-tuned here on the human-rated Rotten
Tomatoes snippets) classifies held-out snippets as positive / negative. For the class it predicts, do the
attention-derived explanations (raw attention per layer and head, rollout, flow, norm-based, ALTI, value zeroing)
rank the tokens the way the gradient and erasure attributions do (integrated gradients, input x gradient,
leave-one-out)? Does erasing their top tokens move the prediction (ERASER), more than a random ranking does? Are
their top words the words people find clearly positive or negative (VADER)? Does the output move when a layer's
attention is permuted, made uniform or frozen to its position-only pattern?

Protocol (every number of ``report.md`` is in a CSV beside it):

- data: ``--limit`` snippets of ``builtin_dataset("rotten_tomatoes:test")`` (the held-out split; snippets with
  a mean rating of exactly 0 have no label and are not in it), drawn at random with ``--seed``.
- target: the logit of the class the model predicts (the library's default), the same for every method.
- main run: :meth:`attn_probe.Probe.run` into ``--run-dir`` (default: a folder in the system's temporary
  directory) with the methods :data:`RUN_METHODS` and the checks
  agreement, erasure, sinks, position, counterfactuals (seed ``--seed``); the library's report of that run is
  written to ``<out>/run_report/`` when :func:`attn_probe.report.write_report` is available; the run directory
  (full tables, sampled attention matrices) is deleted afterwards unless ``--keep-run``.
- second pass (same snippets, same batches, same target; checked against the run's predictions): ``value_zeroing``
  (which the library files under the *perturbation* family, so inside ``Probe.run`` it would become one of the
  references the attention methods are judged against: it is computed here instead and reported beside the
  attention methods), each layer's and head's raw attention of the [CLS] row, and three baselines that could
  explain a result away: ``random`` (:data:`N_RANDOM` seeded random rankings per snippet, averaged),
  ``position_first`` and ``position_last`` (rank by position alone).
- agreement: Kendall tau-b of ``|score|`` over the snippet's word pieces ([CLS]/[SEP] left out) with
  ``leave_one_out`` and with ``integrated_gradients``; the random ranking's tau is the chance level (0).
- faithfulness: ERASER comprehensiveness (target drop when the top 1/5/10/20/50 % tokens are replaced by
  [MASK], averaged over the bins; higher = the top tokens were needed) and sufficiency (drop when only those are
  kept; lower = they suffice), in logits, against the random rankings (paired difference per snippet); decision
  flips: how many tokens must be deleted (in ranked order) before the prediction changes, against 10 random
  orders (the library's ``flips`` table).
- plausibility: of each method's top-3 *words* (a word's score: the mean of its pieces', ranked by ``|score|``;
  the sum, which favours words split into many pieces, is reported beside it), how many carry
  strong human valence in VADER's lexicon (``|valence| >= 1.5``), against the exact expectation of a random
  ranking of the same snippet's words (``lift = precision - random precision``). Plausibility is not
  faithfulness: a method can convince a reader without being what the model used, and the reverse.
- counterfactual attention: the run's ``counterfactuals`` table (each layer's attention permuted with 3 seeds,
  made uniform, frozen to its position-only pattern; all heads together), summarised per layer.
- sinks: share of each head's attention on [CLS]/[SEP], raw and weighted by ``||v W_O||``.
- uncertainty: percentile bootstrap over snippets (``--resamples``), Wilson intervals for counts; everything is
  also sliced by gold label and by snippet length (at most / above the median token count), which should not
  matter, and the permutation counterfactuals are reported per seed.

Run: ``python -m analyses.sentiment_minilm [--smoke] [--limit N] [--seed S] [--out DIR]``.
:mod:`analyses.agreement_smollm2` reuses the helpers here (bootstrap, tables, figures).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

NAME = "sentiment_minilm"
MODEL = "minilm-sentiment"
DATASET = "rotten_tomatoes:test"
RESULTS = Path(__file__).resolve().parent / "results"
RUN_METHODS = (
    "raw_attention",
    "attention_rollout",
    "attention_flow",
    "attention_norm",
    "alti",
    "integrated_gradients",
    "input_x_gradient",
    "leave_one_out",
)
SMOKE_METHODS = ("raw_attention", "attention_rollout", "input_x_gradient", "leave_one_out")
CHECKS = ("agreement", "erasure", "flips", "sinks", "position", "counterfactuals")
EXTRA_METHODS = ("value_zeroing",)  # computed in the second pass, beside the attention methods
BASELINES = ("random", "position_first", "position_last")
REFERENCES = ("leave_one_out", "integrated_gradients")  # what agreement is measured against
N_RANDOM = 5  # random rankings per snippet for the ERASER / agreement baseline
TOP_K = 3  # plausibility: top words looked at
# How a word's score is made from its pieces' for plausibility. "mean" does not favour words split into many
# pieces (a sum does: a random *token* ranking summed to words is not a random *word* ranking, and VADER's words
# are mostly single pieces); "sum" is reported beside it as a robustness check.
WORD_AGGREGATION = "mean"
FULL_LIMIT, SMOKE_LIMIT = 100, 4
BATCH_SIZE = 8
METHOD_METRICS = (  # per-snippet numbers averaged per method (with bootstrap intervals)
    "tau_leave_one_out",
    "tau_integrated_gradients",
    "comprehensiveness",
    "comp_minus_random",
    "sufficiency",
    "suff_minus_random",
    "precision",
    "random_precision",
    "lift",
    "lift_sum",
)


# ----------------------------------------------------------------------------------------------------
# helpers shared with analyses.agreement_smollm2
# ----------------------------------------------------------------------------------------------------
def bootstrap_ci(
    values: Any, *, resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)``: the mean of the finite ``values`` and its percentile bootstrap interval
    (examples resampled with replacement, ``resamples`` times, seeded). One value: the interval is the value."""
    x = np.asarray(values, dtype=float).ravel()
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan, math.nan, 0
    estimate = float(x.mean())
    if len(x) == 1 or np.all(x == x[0]):
        return estimate, estimate, estimate, len(x)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 256):  # chunks keep the index matrix small for long inputs
        stop = min(start + 256, resamples)
        means[start:stop] = x[rng.integers(0, len(x), size=(stop - start, len(x)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return estimate, float(low), float(high), len(x)


def ci_columns(values: Any, prefix: str, *, resamples: int, seed: int) -> dict[str, float]:
    """``{prefix: mean, prefix_low, prefix_high}`` (see :func:`bootstrap_ci`)."""
    estimate, low, high, _ = bootstrap_ci(values, resamples=resamples, seed=seed)
    return {prefix: estimate, f"{prefix}_low": low, f"{prefix}_high": high}


def wilson_columns(successes: int, total: int, prefix: str) -> dict[str, float]:
    """``{prefix: share, prefix_low, prefix_high, n_prefix}`` with a 95 % Wilson interval."""
    from attn_probe.findings import wilson_interval

    low, high = wilson_interval(int(successes), int(total))
    share = successes / total if total else math.nan
    return {prefix: share, f"{prefix}_low": low, f"{prefix}_high": high, f"n_{prefix}": int(total)}


def ci_text(point: float, low: float, high: float, digits: int = 2, percent: bool = False) -> str:
    """``"0.42 [0.31, 0.55]"`` (or ``"42% [31%, 55%]"``); ``"n/a"`` for NaN."""
    if point is None or not np.isfinite(point):
        return "n/a"
    if percent:
        return f"{point:.0%} [{low:.0%}, {high:.0%}]"
    return f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub Markdown table of ``frame`` (floats rounded, ``|`` escaped, NaN as ``n/a``)."""

    def cell(value: Any) -> str:
        if isinstance(value, float | np.floating):
            return "n/a" if not np.isfinite(value) else f"{value:.{digits}f}"
        if value is None or value is pd.NA:
            return "n/a"
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def save_figure(figure: Any, path: Path) -> str:
    """Save ``figure`` as PNG at ``path`` (closing it) and return its file name, for a Markdown link."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path.name


def write_json(path: Path, payload: Any) -> None:
    """JSON with NaN written as null (strict JSON readers refuse NaN)."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        if isinstance(value, np.integer):
            return int(value)
        if isinstance(value, float | np.floating):
            return None if not np.isfinite(value) else round(float(value), 6)
        if isinstance(value, np.bool_):
            return bool(value)
        return value

    path.write_text(json.dumps(clean(payload), indent=2) + "\n")


def baseline_explanation(ctx: Any, name: str, scores: torch.Tensor) -> Any:
    """An :class:`~attn_probe.methods.Explanation` named ``name`` holding baseline ``scores [batch, n]``."""
    from attn_probe.methods.base import MethodInfo

    info = MethodInfo(
        id=name,
        family="perturbation",  # the contract wants a family; a baseline is judged by no verdict here
        needs_gradients=False,
        cost="none",
        sign="baseline ranking (not an explanation)",
        description=f"baseline ranking {name}",
    )
    return ctx.finish(info, scores)


def random_scores(ctx: Any, example_ids: Sequence[int], seed: int, draw: int) -> torch.Tensor:
    """``[batch, n]`` uniform random scores on real tokens, drawn per example from ``(seed, example id, draw)``,
    so a snippet gets the same random ranking whatever batch it is in."""
    mask = ctx.attention_mask.bool().cpu()
    scores = torch.zeros(mask.shape)
    for row, example in enumerate(example_ids):
        rng = np.random.default_rng([seed, int(example), draw, 7919])
        columns = torch.nonzero(mask[row]).flatten()
        scores[row, columns] = torch.from_numpy(rng.random(len(columns))).float()
    return scores


def position_scores(ctx: Any, *, first: bool) -> torch.Tensor:
    """``[batch, n]`` positive scores by position alone among the real tokens: earlier tokens higher when
    ``first`` (``m - i``), later tokens higher otherwise (``i + 1``)."""
    mask = ctx.attention_mask.bool().cpu()
    scores = torch.zeros(mask.shape)
    for row in range(mask.shape[0]):
        columns = torch.nonzero(mask[row]).flatten()
        index = torch.arange(len(columns), dtype=torch.float32)
        scores[row, columns] = (len(columns) - index) if first else (index + 1)
    return scores


# ----------------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Settings:
    out: Path
    limit: int
    seed: int = 0
    smoke: bool = False
    batch_size: int = BATCH_SIZE
    resamples: int = 1000
    run_dir: Path | None = None
    keep_run: bool = False
    threads: int = 1

    @property
    def methods(self) -> tuple[str, ...]:
        return SMOKE_METHODS if self.smoke else RUN_METHODS

    @property
    def run_path(self) -> Path:
        """Where ``Probe.run`` writes: ``--run-dir``, else a folder under the system's temporary directory (the run
        keeps full tables and sampled attention matrices: it stays out of the repository, and a rerun with the same
        settings resumes it)."""
        if self.run_dir is not None:
            return self.run_dir
        kind = "smoke" if self.smoke else "full"
        return Path(tempfile.gettempdir()) / "attn_probe_analyses" / f"{NAME}-{kind}-n{self.limit}-seed{self.seed}"


def parse(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog=f"python -m analyses.{NAME}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / NAME, help="output folder (default: %(default)s)")
    parser.add_argument("--smoke", action="store_true", help=f"tiny run ({SMOKE_LIMIT} snippets, 4 methods)")
    parser.add_argument("--limit", type=int, default=None, help=f"snippets (default {FULL_LIMIT}; smoke {SMOKE_LIMIT})")
    parser.add_argument("--seed", type=int, default=0, help="sample, permutations, random orders, bootstrap")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (default 1000; smoke 200)")
    parser.add_argument("--run-dir", type=Path, default=None, help="where Probe.run writes (default: a temp folder)")
    parser.add_argument("--keep-run", action="store_true", help="keep the run directory (large) afterwards")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    limit = args.limit if args.limit is not None else (SMOKE_LIMIT if args.smoke else FULL_LIMIT)
    if limit < 1:
        parser.error("--limit must be at least 1")
    return Settings(
        out=args.out,
        limit=limit,
        seed=args.seed,
        smoke=args.smoke,
        batch_size=args.batch_size,
        resamples=args.resamples if args.resamples is not None else (200 if args.smoke else 1000),
        run_dir=args.run_dir,
        keep_run=args.keep_run,
        threads=args.threads,
    )


# ----------------------------------------------------------------------------------------------------
# the study
# ----------------------------------------------------------------------------------------------------
def sample_snippets(limit: int, seed: int) -> pd.DataFrame:
    """``limit`` labelled held-out snippets drawn with ``seed``: ``example_id, text, label, snippet_id``."""
    from attn_probe.data.builtin import builtin_dataset

    frame = builtin_dataset(DATASET).frame
    chosen = frame.sample(n=min(limit, len(frame)), random_state=seed).reset_index(drop=True)
    chosen.insert(0, "example_id", np.arange(len(chosen), dtype=np.int64))
    return chosen


def main_run(probe: Any, snippets: pd.DataFrame, settings: Settings) -> dict[str, pd.DataFrame]:
    """``Probe.run`` of the snippets; returns its tables by name."""
    run = probe.run(
        snippets[["text", "label"]],
        out=settings.run_path,
        methods=list(settings.methods),
        checks=CHECKS,
        label_column="label",
        batch_size=settings.batch_size,
        seed=settings.seed,
        progress=not settings.smoke,
    )
    names = ("examples", "scores", "findings", "agreement", "head_agreement", "eraser", "flips", "sinks", "position")
    tables = {name: run.table(name) for name in (*names, "counterfactuals")}
    return tables


def library_report(settings: Settings) -> str:
    """Write the library's own report of the run into ``<out>/run_report`` (Markdown + figures); returns a
    line saying what happened (it is optional: another part of the project)."""
    try:
        from attn_probe.report import write_report
    except ImportError:
        return "No library report of the run: attn_probe.report.write_report is not available"
    try:
        paths = write_report(settings.run_path, settings.out / "run_report", formats=("md",), seed=settings.seed)
    except Exception as error:  # the report is an extra: the study's own numbers do not depend on it
        warnings.warn(f"the library report of the run failed: {error}", RuntimeWarning, stacklevel=2)
        return f"The library report of the run failed: {type(error).__name__}: {error}"
    return f"The library report of the run: `{Path(paths['md']).relative_to(settings.out).as_posix()}`"


def _rebuild(ctx: Any, batch: Any, scores: pd.DataFrame, method: str, local: dict[int, int]) -> Any:
    """The run's ``method`` scores of this batch as an Explanation on ``batch`` (token texts checked)."""
    from attn_probe.methods.base import get_method

    values = torch.zeros(batch.input_ids.shape)
    rows = scores[scores["method"] == method]
    for example_id, group in rows.groupby("example_id"):
        i = local[int(example_id)]
        columns = [batch.positions[i][j] for j in group["token_index"]]
        tokens = [batch.tokens[i][j] for j in group["token_index"]]
        if tokens != group["token"].tolist():
            raise RuntimeError(f"example {example_id}: the run's tokens differ from this tokenization")
        values[i, columns] = torch.tensor(group["score"].to_numpy(), dtype=torch.float32)
    return ctx.finish(get_method(method)[0], values)


def second_pass(probe: Any, snippets: pd.DataFrame, tables: dict[str, pd.DataFrame], settings: Settings) -> dict:
    """Value zeroing, per-layer / per-head raw attention and the baselines, on the run's snippets and target."""
    from attn_probe.compare.agreement import agreement_table, layer_agreement
    from attn_probe.compare.faithfulness import faithfulness_report
    from attn_probe.data.lexicon import plausibility
    from attn_probe.methods.base import ExplainContext, get_method

    predictions = tables["examples"].set_index("example_id")["prediction"]
    parts: dict[str, list[pd.DataFrame]] = {k: [] for k in ("agreement", "layer_agreement", "eraser", "flips")}
    parts.update({"plausibility": [], "layer_plausibility": [], "head_plausibility": []})
    for start in range(0, len(snippets), settings.batch_size):
        part = snippets.iloc[start : start + settings.batch_size]
        ids = [int(i) for i in part["example_id"]]
        local = {example: row for row, example in enumerate(ids)}
        batch = probe.tokenize(part["text"].tolist())
        ctx = ExplainContext(probe.model, batch, tokenizer=probe.tokenizer)
        if ctx.target.ids.cpu().tolist() != [int(predictions[i]) for i in ids]:
            raise RuntimeError("the second pass explains another class than the run did: the model is not the same")
        mine = tables["scores"][tables["scores"]["example_id"].isin(ids)]
        explanations = {m: _rebuild(ctx, batch, mine, m, local) for m in settings.methods}
        raw = get_method("raw_attention")[1](ctx)  # its layer / head views (the run keeps the last layer only)
        explanations["value_zeroing"] = get_method("value_zeroing")[1](ctx)
        randoms = {
            f"random_{r}": baseline_explanation(ctx, f"random_{r}", random_scores(ctx, ids, settings.seed, r))
            for r in range(N_RANDOM)
        }
        positions = {
            "position_first": baseline_explanation(ctx, "position_first", position_scores(ctx, first=True)),
            "position_last": baseline_explanation(ctx, "position_last", position_scores(ctx, first=False)),
        }
        everything = {**explanations, **randoms, **positions}
        pairs = [(m, ref) for m in everything for ref in REFERENCES if m != ref and ref in explanations]
        parts["agreement"].append(_relabel(agreement_table(everything, pairs=pairs, absolute=True), ids))
        for ref in REFERENCES:
            if ref in explanations:
                parts["layer_agreement"].append(
                    _relabel(layer_agreement(raw, explanations[ref], level="layer", absolute=True), ids)
                )
        # n_random=0: the random deletion orders of the decision-flip baseline depend only on the seed and the
        # snippet's tokens, and the run already computed them; summarise() takes them from the run's flips table
        report = faithfulness_report(
            ctx, {"value_zeroing": explanations["value_zeroing"], **positions}, protocols=("eraser", "flips"),
            seed=settings.seed, n_random=0,
        )  # fmt: skip
        parts["eraser"].append(_relabel(report.eraser, ids))
        parts["flips"].append(_relabel(report.flips, ids))
        # the random rankings: ERASER only (decision flips carry their own random orders, in every method's row)
        report = faithfulness_report(ctx, randoms, protocols=("eraser",), seed=settings.seed)
        parts["eraser"].append(_relabel(report.eraser, ids))
        table = plausibility(everything, batch, k=TOP_K, how=WORD_AGGREGATION)
        summed = plausibility(everything, batch, k=TOP_K, how="sum")
        table["precision_sum"] = summed["precision"].to_numpy()  # same rows, same order
        parts["plausibility"].append(_relabel(table, ids))
        num_layers, num_heads = raw.head_scores.shape[1:3]
        layer_views = {
            f"L{layer}": _renamed(ctx, raw, f"raw_attention_l{layer}", raw.layer_scores[:, layer])
            for layer in range(num_layers)
        }
        table = plausibility(layer_views, batch, k=TOP_K, how=WORD_AGGREGATION)
        table["layer"] = table["method"].str.extract(r"_l(\d+)$")[0].astype(int)
        parts["layer_plausibility"].append(_relabel(table, ids))
        head_views = {
            f"L{layer}H{head}": _renamed(ctx, raw, f"raw_attention_l{layer}_h{head}", raw.head_scores[:, layer, head])
            for layer in range(num_layers)
            for head in range(num_heads)
        }
        table = plausibility(head_views, batch, k=TOP_K, how=WORD_AGGREGATION)
        found = table["method"].str.extract(r"_l(\d+)_h(\d+)$").astype(int)
        table["layer"], table["head"] = found[0], found[1]
        parts["head_plausibility"].append(_relabel(table, ids))
    return {name: pd.concat(frames, ignore_index=True) for name, frames in parts.items()}


def _renamed(ctx: Any, raw: Any, name: str, scores: torch.Tensor) -> Any:
    return ctx.finish(dataclasses.replace(raw.info, id=name), scores)


def _relabel(table: pd.DataFrame, ids: list[int]) -> pd.DataFrame:
    out = table.copy()
    out["example_id"] = [ids[int(i)] for i in out["example_id"]]
    return out


def _collapse_random(table: pd.DataFrame, value_columns: Sequence[str]) -> pd.DataFrame:
    """Rows of ``random_0..random_{R-1}`` averaged per example into one ``random`` method."""
    is_random = table["method"].str.fullmatch(r"random_\d+")
    randoms = table[is_random].groupby("example_id", as_index=False)[list(value_columns)].mean()
    randoms["method"] = "random"
    return pd.concat([table[~is_random], randoms], ignore_index=True)


def summarise(
    snippets: pd.DataFrame, tables: dict[str, pd.DataFrame], extra: dict[str, pd.DataFrame], settings: Settings
) -> dict[str, pd.DataFrame]:
    """Per example, per method, per layer, per head and robustness tables (every number the report shows)."""
    resamples, seed = settings.resamples, settings.seed
    examples = tables["examples"].merge(snippets[["example_id", "snippet_id"]], on="example_id")
    median_tokens = float(examples["n_tokens"].median())
    examples["length_bin"] = np.where(examples["n_tokens"] <= median_tokens, "short", "long")
    examples["label_name"] = examples["label"].map({0: "negative", 1: "positive"})

    # --- per example and method ---------------------------------------------------------------------
    agreement = extra["agreement"].rename(columns={"method_a": "method"})
    tau = agreement.pivot_table(index=["example_id", "method"], columns="method_b", values="kendall_tau")
    tau = tau.add_prefix("tau_").reset_index()
    tau = _collapse_random(tau, [c for c in tau.columns if c.startswith("tau_")])
    # agreement of the references with each other (the ceiling attention is measured against), from the run
    references = [m for m in settings.methods if _role(m, _families([m])[m]) == "reference"]
    run_agreement = tables["agreement"]
    both = run_agreement["method_a"].isin(references) & run_agreement["method_b"].isin(references)
    reference_pair = run_agreement[both]
    eraser_columns = ["comprehensiveness", "sufficiency", "comprehensiveness_probability", "sufficiency_probability"]
    eraser = pd.concat([tables["eraser"], extra["eraser"]], ignore_index=True)
    eraser = _collapse_random(eraser[["example_id", "method", *eraser_columns]], eraser_columns)
    random_columns = ["random_flip_k_mean", "random_flip_k_median", "random_flips_fraction"]
    run_random = tables["flips"].groupby("example_id")[random_columns].first()  # the same for every method
    second = extra["flips"].drop(columns=random_columns).merge(run_random, on="example_id", how="left")
    flips = pd.concat([tables["flips"], second], ignore_index=True)
    flips = flips[~flips["method"].str.fullmatch(r"random_\d+")].copy()
    flips["flip_k"] = pd.to_numeric(flips["flip_k"], errors="coerce").astype(float)
    flips["sooner_than_random"] = np.where(
        flips["flipped"].astype(bool) & np.isfinite(flips["random_flip_k_mean"]),
        (flips["flip_k"] < flips["random_flip_k_mean"]).astype(float),
        np.nan,
    )
    plaus = extra["plausibility"].copy()
    plaus["lift"] = plaus["precision"] - plaus["random_precision"]
    plaus["lift_sum"] = plaus["precision_sum"] - plaus["random_precision"]
    plaus = _collapse_random(
        plaus[["example_id", "method", "precision", "random_precision", "lift", "lift_sum"]],
        ["precision", "random_precision", "lift", "lift_sum"],
    )
    per_example = (
        tau.merge(eraser, on=["example_id", "method"], how="outer")
        .merge(
            flips[["example_id", "method", "flipped", "flip_fraction", "sooner_than_random", "random_flip_k_mean"]],
            on=["example_id", "method"],
            how="left",
        )
        .merge(plaus, on=["example_id", "method"], how="outer")
    )
    random_comp = eraser[eraser["method"] == "random"].set_index("example_id")
    per_example["comp_minus_random"] = per_example["comprehensiveness"] - per_example["example_id"].map(
        random_comp["comprehensiveness"]
    )
    per_example["suff_minus_random"] = per_example["sufficiency"] - per_example["example_id"].map(
        random_comp["sufficiency"]
    )
    per_example = per_example.merge(examples[["example_id", "label_name", "length_bin", "n_tokens"]], on="example_id")
    spread = score_spread(tables["scores"])

    # --- per method ---------------------------------------------------------------------------------
    order = [*settings.methods, *EXTRA_METHODS, *BASELINES]
    families = _families(order)
    rows = []
    for index, method in enumerate(order):
        mine = per_example[per_example["method"] == method]
        if mine.empty:
            continue
        row: dict[str, Any] = {"method": method, "family": families[method], "role": _role(method, families[method])}
        for column in METHOD_METRICS:
            if column in mine:
                row.update(ci_columns(mine[column], column, resamples=resamples, seed=seed + index))
        flipped = mine["flipped"].dropna().astype(bool)
        row.update(wilson_columns(int(flipped.sum()), len(flipped), "flipped"))
        sooner = mine["sooner_than_random"].dropna()
        row.update(wilson_columns(int(sooner.sum()), len(sooner), "sooner_than_random"))
        row["median_flip_fraction"] = float(mine["flip_fraction"].median()) if flipped.any() else math.nan
        row["median_relative_spread"] = spread.get(method, math.nan)
        rows.append(row)
    methods = pd.DataFrame(rows)
    tau_refs = reference_pair.groupby(["method_a", "method_b"])["kendall_tau"].apply(list)
    reference_ceiling = [
        {"pair": f"{a} vs {b}", **ci_columns(values, "kendall_tau", resamples=resamples, seed=seed)}
        for (a, b), values in tau_refs.items()
    ]

    # --- per layer ----------------------------------------------------------------------------------
    layer_rows = []
    layer_agreement = extra["layer_agreement"]
    layer_plaus = extra["layer_plausibility"].assign(
        lift=lambda t: t["precision"] - t["random_precision"]
    )  # per (example, layer)
    sinks = tables["sinks"].groupby(["example_id", "layer"], as_index=False)[["special_share", "special_share_norm"]]
    sinks = sinks.mean()
    counterfactuals = tables["counterfactuals"].copy()
    counterfactuals["prediction_flips"] = counterfactuals["prediction_flips"].astype(float)
    cf = counterfactuals.groupby(["example_id", "layer", "intervention"], as_index=False)[
        ["output_tvd", "prediction_flips", "attention_jsd_target_row", "target_change"]
    ].mean()  # the permutation seeds averaged per example
    for layer in sorted(layer_agreement["layer"].unique()):
        row = {"layer": int(layer)}
        for ref in REFERENCES:
            values = layer_agreement[(layer_agreement["layer"] == layer) & (layer_agreement["method_b"] == ref)]
            row.update(ci_columns(values["kendall_tau"], f"raw_tau_{ref}", resamples=resamples, seed=seed + layer))
        values = layer_plaus[layer_plaus["layer"] == layer]
        row.update(ci_columns(values["precision"], "raw_precision", resamples=resamples, seed=seed + layer))
        row.update(ci_columns(values["lift"], "raw_lift", resamples=resamples, seed=seed + layer))
        mine = sinks[sinks["layer"] == layer]
        row.update(ci_columns(mine["special_share"], "special_share", resamples=resamples, seed=seed + layer))
        row.update(ci_columns(mine["special_share_norm"], "special_share_norm", resamples=resamples, seed=seed + layer))
        for name in ("permute", "uniform", "frozen"):
            mine = cf[(cf["layer"] == layer) & (cf["intervention"] == name)]
            row.update(ci_columns(mine["output_tvd"], f"{name}_tvd", resamples=resamples, seed=seed + layer))
            row.update(ci_columns(mine["prediction_flips"], f"{name}_flips", resamples=resamples, seed=seed + layer))
            row[f"{name}_attention_jsd"] = float(mine["attention_jsd_target_row"].mean())
        layer_rows.append(row)
    layers = pd.DataFrame(layer_rows)
    per_seed = (
        counterfactuals[counterfactuals["intervention"] == "permute"]
        .groupby(["layer", "seed"], as_index=False)["output_tvd"]
        .mean()
        .pivot(index="layer", columns="seed", values="output_tvd")
        .add_prefix("permute_tvd_seed_")
        .reset_index()
    )
    layers = layers.merge(per_seed, on="layer", how="left")

    # --- per head -----------------------------------------------------------------------------------
    head_agreement = tables["head_agreement"]
    head_agreement = head_agreement[head_agreement["method_a"] == "raw_attention"]
    heads = head_agreement.pivot_table(index=["layer", "head"], columns="method_b", values="kendall_tau")
    heads = heads.add_prefix("tau_").reset_index()
    head_plaus = extra["head_plausibility"].assign(lift=lambda t: t["precision"] - t["random_precision"])
    heads = heads.merge(
        head_plaus.groupby(["layer", "head"], as_index=False)[["precision", "lift"]].mean(), on=["layer", "head"]
    )
    heads = heads.merge(
        tables["sinks"].groupby(["layer", "head"], as_index=False)[["special_share", "special_share_norm"]].mean(),
        on=["layer", "head"],
    )
    heads = heads.merge(
        tables["position"].groupby(["layer", "head"], as_index=False)["r2_position"].mean(), on=["layer", "head"]
    )
    for column, source in (("tau_leave_one_out", head_agreement), ("lift", head_plaus)):
        if column == "tau_leave_one_out":
            source = source[source["method_b"] == "leave_one_out"].rename(columns={"kendall_tau": column})
        ci = source.groupby(["layer", "head"])[column].apply(
            lambda v, c=column: pd.Series(ci_columns(v, c, resamples=min(resamples, 500), seed=seed))
        )
        ci = ci.unstack().reset_index()[["layer", "head", f"{column}_low", f"{column}_high"]]
        heads = heads.merge(ci, on=["layer", "head"], how="left")

    # --- robustness: what should not matter ---------------------------------------------------------
    robust_rows = []
    for slice_name in ("label_name", "length_bin"):
        for value, group in per_example.groupby(slice_name):
            for index, method in enumerate(order):
                mine = group[group["method"] == method]
                if mine.empty:
                    continue
                row = {"slice": slice_name, "value": value, "method": method, "n": int(mine["example_id"].nunique())}
                for column in ("tau_leave_one_out", "comp_minus_random", "lift", "lift_sum"):
                    row.update(ci_columns(mine[column], column, resamples=resamples, seed=seed + index))
                robust_rows.append(row)
    robustness = pd.DataFrame(robust_rows)

    # --- model and findings -------------------------------------------------------------------------
    from attn_probe.findings import summarise as summarise_findings

    correct = examples["correct"].astype(bool)
    accuracy = [{"slice": "all", **wilson_columns(int(correct.sum()), len(correct), "accuracy")}]
    for value, group in examples.groupby("label_name"):
        accuracy.append(
            {"slice": f"label={value}", **wilson_columns(int(group["correct"].sum()), len(group), "accuracy")}
        )
    findings = summarise_findings(tables["findings"])
    # The second pass rebuilt the run's explanations from its scores table: its agreement must equal the run's.
    mine = extra["agreement"].set_index(["example_id", "method_a", "method_b"])["kendall_tau"]
    theirs = run_agreement.set_index(["example_id", "method_a", "method_b"])["kendall_tau"]
    shared = mine.index.intersection(theirs.index)
    consistency = pd.DataFrame(
        [{"pairs_compared": len(shared), "max_abs_tau_difference": float((mine[shared] - theirs[shared]).abs().max())}]
    )
    return {
        "examples": examples,
        "per_example": per_example,
        "methods": methods,
        "reference_ceiling": pd.DataFrame(reference_ceiling),
        "layers": layers,
        "heads": heads,
        "robustness": robustness,
        "accuracy": pd.DataFrame(accuracy),
        "findings_summary": findings,
        "consistency": consistency,
    }


def score_spread(scores: pd.DataFrame) -> dict[str, float]:
    """Per method: the median over snippets of ``(max - min) / mean`` of ``|score|`` over the non-special tokens.
    A method whose scores are nearly flat (attention flow saturates: every token can pass almost the same flow)
    ranks tokens by small differences, and erasure breaks its near-ties by position."""
    content = scores[~scores["special"].astype(bool)].assign(magnitude=lambda t: t["score"].abs())
    grouped = content.groupby(["method", "example_id"])["magnitude"]
    ratio = (grouped.max() - grouped.min()) / grouped.mean().where(grouped.mean() > 0)
    return ratio.groupby(level="method").median().to_dict()


def _families(methods: Sequence[str]) -> dict[str, str]:
    from attn_probe.methods.base import get_method

    return {m: ("baseline" if m in BASELINES else get_method(m)[0].family) for m in methods}


def _role(method: str, family: str) -> str:
    if method in BASELINES:
        return "baseline"
    if method in EXTRA_METHODS:
        return "attention-side (second pass)"
    return "judged" if family in ("attention", "hybrid") else "reference"


# ----------------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------------
def methods_figure(methods: pd.DataFrame) -> Any:
    import matplotlib.pyplot as plt

    panels = [
        ("tau_leave_one_out", "Kendall tau with leave_one_out"),
        ("comp_minus_random", "comprehensiveness - random (logit)"),
        ("lift", f"plausibility: precision@{TOP_K} - random"),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(14, 0.45 * len(methods) + 1.5), sharey=True)
    colours = {"judged": "tab:blue", "reference": "tab:orange", "baseline": "tab:gray"}
    y = np.arange(len(methods))
    for axis, (column, title) in zip(axes, panels, strict=True):
        values = methods[column].to_numpy(float)
        low = values - methods[f"{column}_low"].to_numpy(float)
        high = methods[f"{column}_high"].to_numpy(float) - values
        colour = [colours.get(role, "tab:green") for role in methods["role"]]
        axis.barh(y, values, xerr=[np.nan_to_num(low), np.nan_to_num(high)], color=colour, alpha=0.8, capsize=3)
        axis.axvline(0, color="black", lw=0.8)
        axis.set_title(title, fontsize=10)
    axes[0].set_yticks(y, methods["method"])
    axes[0].invert_yaxis()
    figure.suptitle(f"{MODEL} on Rotten Tomatoes (held out): methods with 95% bootstrap intervals", fontsize=11)
    figure.tight_layout()
    return figure


def layers_figure(layers: pd.DataFrame) -> Any:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    x = layers["layer"].to_numpy()

    def band(axis: Any, column: str, label: str) -> None:
        axis.plot(x, layers[column], marker="o", label=label)
        axis.fill_between(x, layers[f"{column}_low"], layers[f"{column}_high"], alpha=0.2)

    band(axes[0], "raw_tau_leave_one_out", "vs leave_one_out")
    band(axes[0], "raw_tau_integrated_gradients", "vs integrated_gradients")
    axes[0].set_title("raw attention ([CLS] row, head mean):\nKendall tau", fontsize=10)
    band(axes[1], "raw_lift", "lift")
    axes[1].set_title(f"raw attention: plausibility lift\n(precision@{TOP_K} - random)", fontsize=10)
    for name in ("permute", "uniform", "frozen"):
        band(axes[2], f"{name}_tvd", name)
    axes[2].set_title("output TVD when the layer's\nattention is replaced", fontsize=10)
    band(axes[3], "special_share", "raw")
    band(axes[3], "special_share_norm", "norm-weighted")
    axes[3].set_title("share of attention on [CLS]/[SEP]", fontsize=10)
    for axis in axes:
        axis.axhline(0, color="black", lw=0.6)
        axis.set_xlabel("layer")
        axis.legend(fontsize=8)
    figure.suptitle(f"{MODEL}: per layer, 95% bootstrap bands over snippets", fontsize=11)
    figure.tight_layout()
    return figure


def heads_figure(heads: pd.DataFrame) -> Any:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(16, 3.8))
    for axis, (column, title, cmap) in zip(
        axes,
        [
            ("tau_leave_one_out", "Kendall tau with leave_one_out", "RdBu_r"),
            ("lift", f"plausibility lift (precision@{TOP_K} - random)", "RdBu_r"),
            ("special_share", "share on [CLS]/[SEP]", "viridis"),
        ],
        strict=True,
    ):
        grid = heads.pivot(index="layer", columns="head", values=column)
        limit = float(np.nanmax(np.abs(grid.to_numpy()))) or 1.0
        options = {"vmin": -limit, "vmax": limit} if cmap == "RdBu_r" else {"vmin": 0, "vmax": 1}
        image = axis.imshow(grid.to_numpy(), cmap=cmap, aspect="auto", **options)
        axis.set_xticks(range(grid.shape[1]), grid.columns)
        axis.set_yticks(range(grid.shape[0]), grid.index)
        axis.set_xlabel("head")
        axis.set_ylabel("layer")
        axis.set_title(title, fontsize=10)
        figure.colorbar(image, ax=axis)
    figure.suptitle(f"{MODEL}: each head's [CLS]-row attention, mean over snippets", fontsize=11)
    figure.tight_layout()
    return figure


# ----------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------
def headline(summary: dict[str, pd.DataFrame], settings: Settings, elapsed: float) -> dict[str, Any]:
    methods = summary["methods"].set_index("method")
    layers = summary["layers"]
    accuracy = summary["accuracy"].set_index("slice").loc["all"]

    def triple(method: str, column: str) -> dict[str, float] | None:
        if method not in methods.index or column not in methods:
            return None
        row = methods.loc[method]
        return {"estimate": row[column], "low": row[f"{column}_low"], "high": row[f"{column}_high"]}

    per_method = {
        method: {
            column: triple(method, column)
            for column in (
                "tau_leave_one_out",
                "tau_integrated_gradients",
                "comprehensiveness",
                "comp_minus_random",
                "sufficiency",
                "precision",
                "lift",
                "sooner_than_random",
            )
        }
        for method in methods.index
    }
    return {
        "study": NAME,
        "model": MODEL,
        "data": DATASET,
        "n_snippets": len(summary["examples"]),
        "seed": settings.seed,
        "smoke": settings.smoke,
        "elapsed_seconds": elapsed,
        "accuracy": {
            "estimate": accuracy["accuracy"],
            "low": accuracy["accuracy_low"],
            "high": accuracy["accuracy_high"],
        },
        "methods": per_method,
        "reference_ceiling": summary["reference_ceiling"].to_dict(orient="records"),
        "layers": layers[
            ["layer", "raw_tau_leave_one_out", "raw_lift", "uniform_tvd", "permute_tvd", "frozen_tvd", "special_share"]
        ].to_dict(orient="records"),
    }


def observations(summary: dict[str, pd.DataFrame]) -> list[str]:
    """Plain sentences read off the tables (each with its interval), for the report's headline section."""
    methods = summary["methods"].set_index("method")
    lines = []

    def get(method: str, column: str, **kw: Any) -> str:
        if method not in methods.index or column not in methods:
            return "n/a"
        row = methods.loc[method]
        return ci_text(row[column], row[f"{column}_low"], row[f"{column}_high"], **kw)

    judged = [m for m in methods.index if methods.loc[m, "role"] in ("judged", "attention-side (second pass)")]
    refs = [m for m in methods.index if methods.loc[m, "role"] == "reference"]
    best = methods.loc[judged, "tau_leave_one_out"].idxmax() if judged else None
    if best is not None:
        lines.append(
            f"Agreement with leave-one-out (Kendall tau of |score|): best attention-side method {best} "
            f"{get(best, 'tau_leave_one_out')}; raw attention (last layer) "
            f"{get('raw_attention', 'tau_leave_one_out')}; "
            f"random ranking {get('random', 'tau_leave_one_out')}; integrated gradients "
            f"{get('integrated_gradients', 'tau_leave_one_out')}."
        )
    ceiling = summary["reference_ceiling"]
    if not ceiling.empty:
        pairs = "; ".join(
            f"{r.pair}: {ci_text(r.kendall_tau, r.kendall_tau_low, r.kendall_tau_high)}" for r in ceiling.itertuples()
        )
        lines.append(
            f"The references agree among themselves at (Kendall tau) {pairs}: below the library's consensus line "
            "(0.4), which is why its `attention_disagrees` verdict is mostly not assessable here."
        )
    comp = "; ".join(f"{m} {get(m, 'comp_minus_random')}" for m in [*judged, *refs, "position_first", "position_last"])
    lines.append(f"ERASER comprehensiveness minus a random ranking's (logit, paired per snippet): {comp}.")
    lines.append(
        f"Comprehensiveness of the random ranking itself: {get('random', 'comprehensiveness')} (the floor any "
        "ranking gets by erasing tokens at all)."
    )
    lift = "; ".join(f"{m} {get(m, 'lift')}" for m in [*judged, *refs])
    lines.append(
        f"Plausibility (precision@{TOP_K} of strong-valence VADER words minus a random ranking's exact expectation "
        f"{get('random', 'random_precision')}): {lift}; empirical random rankings {get('random', 'lift')}."
    )
    sooner = "; ".join(f"{m} {get(m, 'sooner_than_random', percent=True)}" for m in [*judged, *refs])
    lines.append(f"Decision flips sooner than the mean of 10 random deletion orders (share of snippets): {sooner}.")
    flat = methods[methods["median_relative_spread"] < 0.1] if "median_relative_spread" in methods else methods[:0]
    if len(flat):
        lines.append(
            "Nearly flat scores (median (max - min) / mean of |score| below 0.1 over a snippet's tokens): "
            + "; ".join(f"{m} {v:.3f}" for m, v in flat["median_relative_spread"].items())
            + ": their rankings rest on small differences, and erasure breaks near-ties by position."
        )
    layers = summary["layers"]
    if not layers.empty:
        most = layers.loc[layers["uniform_tvd"].idxmax()]
        least = layers.loc[layers["uniform_tvd"].idxmin()]
        lines.append(
            f"Uniform attention moves the output most at layer {int(most.layer)} (TVD "
            f"{ci_text(most.uniform_tvd, most.uniform_tvd_low, most.uniform_tvd_high)}) and least at layer "
            f"{int(least.layer)} ({ci_text(least.uniform_tvd, least.uniform_tvd_low, least.uniform_tvd_high)})."
        )
    return lines


def write_report(
    summary: dict[str, pd.DataFrame], settings: Settings, *, elapsed: float, library: str, timings: dict[str, float]
) -> Path:
    out = settings.out
    figures = {
        "methods": save_figure(methods_figure(summary["methods"]), out / "methods.png"),
        "layers": save_figure(layers_figure(summary["layers"]), out / "layers.png"),
        "heads": save_figure(heads_figure(summary["heads"]), out / "heads.png"),
    }
    methods = summary["methods"]
    methods_view = pd.DataFrame(
        {
            "method": methods["method"],
            "role": methods["role"],
            "tau vs LOO": [_ci(methods, i, "tau_leave_one_out") for i in range(len(methods))],
            "tau vs IG": [_ci(methods, i, "tau_integrated_gradients") for i in range(len(methods))],
            "comprehensiveness": [_ci(methods, i, "comprehensiveness") for i in range(len(methods))],
            "comp - random": [_ci(methods, i, "comp_minus_random") for i in range(len(methods))],
            "sufficiency": [_ci(methods, i, "sufficiency") for i in range(len(methods))],
            f"precision@{TOP_K}": [_ci(methods, i, "precision") for i in range(len(methods))],
            "lift": [_ci(methods, i, "lift") for i in range(len(methods))],
            "lift (sum)": [_ci(methods, i, "lift_sum") for i in range(len(methods))],
            "spread": methods["median_relative_spread"],
            "flips sooner than random": [
                _ci(methods, i, "sooner_than_random", percent=True) + f" (n={methods['n_sooner_than_random'].iloc[i]})"
                for i in range(len(methods))
            ],
        }
    )
    layers = summary["layers"]
    layers_view = pd.DataFrame(
        {
            "layer": layers["layer"],
            "raw tau vs LOO": [_ci(layers, i, "raw_tau_leave_one_out") for i in range(len(layers))],
            "raw lift": [_ci(layers, i, "raw_lift") for i in range(len(layers))],
            "permute TVD": [_ci(layers, i, "permute_tvd") for i in range(len(layers))],
            "permute TVD per seed": [
                ", ".join(f"{layers[c].iloc[i]:.3f}" for c in layers.columns if c.startswith("permute_tvd_seed_"))
                for i in range(len(layers))
            ],
            "uniform TVD": [_ci(layers, i, "uniform_tvd") for i in range(len(layers))],
            "frozen TVD": [_ci(layers, i, "frozen_tvd") for i in range(len(layers))],
            "uniform flips": [_ci(layers, i, "uniform_flips", percent=True) for i in range(len(layers))],
            "on [CLS]/[SEP]": [_ci(layers, i, "special_share") for i in range(len(layers))],
            "norm-weighted": [_ci(layers, i, "special_share_norm") for i in range(len(layers))],
        }
    )
    heads = summary["heads"]
    top = heads.sort_values("tau_leave_one_out", ascending=False).head(5)
    bottom = heads.sort_values("tau_leave_one_out").head(3)
    head_view = pd.concat([top, bottom])[
        ["layer", "head", "tau_leave_one_out", "tau_leave_one_out_low", "tau_leave_one_out_high", "lift",
         "special_share", "special_share_norm", "r2_position"]
    ]  # fmt: skip
    robustness = summary["robustness"]
    robust_view = robustness.assign(
        tau=[_ci(robustness, i, "tau_leave_one_out") for i in range(len(robustness))],
        comp=[_ci(robustness, i, "comp_minus_random") for i in range(len(robustness))],
        lift=[_ci(robustness, i, "lift") for i in range(len(robustness))],
        lift_sum=[_ci(robustness, i, "lift_sum") for i in range(len(robustness))],
    )[["slice", "value", "method", "n", "tau", "comp", "lift", "lift_sum"]]
    accuracy = summary["accuracy"]
    accuracy_view = accuracy.assign(
        accuracy=[_ci(accuracy, i, "accuracy", percent=True) for i in range(len(accuracy))]
    )[["slice", "accuracy", "n_accuracy"]]
    from attn_probe.findings import headlines

    findings = headlines(summary["findings_summary"])
    n = len(summary["examples"])
    lines = [
        f"# {MODEL} on held-out Rotten Tomatoes snippets: does attention tell what the model used?",
        "",
        f"{n} snippets, seed {settings.seed}{' (SMOKE RUN: a handful of snippets, few methods)' * settings.smoke}; "
        f"{elapsed / 60:.1f} min on {settings.threads} CPU thread(s). Intervals: 95% percentile bootstrap over "
        f"snippets ({settings.resamples} resamples) unless marked Wilson.",
        "",
        "## Protocol",
        "",
        *_protocol_lines(settings),
        "",
        "## Headline numbers",
        "",
        *[f"- {line}" for line in observations(summary)],
        f"- Model accuracy on these snippets: {accuracy_view.iloc[0]['accuracy']} (Wilson; n={n}).",
        "",
        "## Methods",
        "",
        "Role: *judged* = attention-derived (the library judges them), *reference* = gradient / erasure attributions "
        "they are judged against, *baseline* = rankings that know nothing about the model. Comprehensiveness and "
        "sufficiency in logits of the predicted class, averaged over the 1/5/10/20/50 % bins; `comp - random` is "
        "paired per snippet against the mean of the random rankings; `spread`: median over snippets of (max - min) / "
        "mean of the method's |score| over the snippet's tokens (near 0: nearly flat scores).",
        "",
        markdown_table(methods_view),
        "",
        f"![methods]({figures['methods']})",
        "",
        "## Layers",
        "",
        "Raw attention of the [CLS] row, heads averaged, per layer; counterfactuals replace one layer's attention "
        "(all heads) and measure the total variation distance of the output distribution (the permutation: "
        "mean over 3 seeds; each seed's mean is listed, to show the seed does not matter); sinks: share of all "
        "query rows' attention on [CLS]/[SEP], raw and weighted by the value vectors' norms.",
        "",
        markdown_table(layers_view),
        "",
        f"![layers]({figures['layers']})",
        "",
        "## Heads",
        "",
        "The five heads whose [CLS] row agrees most with leave-one-out, and the three that agree least (mean over "
        "snippets; full table in `heads.csv`; `r2_position`: how much of the head's pattern its attention-by-distance "
        "profile alone reproduces).",
        "",
        markdown_table(head_view),
        "",
        f"![heads]({figures['heads']})",
        "",
        "## Does it hold where it should not matter? (label, length)",
        "",
        markdown_table(robust_view),
        "",
        "## The library's verdicts (Wilson intervals)",
        "",
        *[f"- {line}" for line in findings[:12]],
        "",
        f"Full table: `findings_summary.csv`. {library}.",
        "",
        "## Model accuracy",
        "",
        markdown_table(accuracy_view),
        "",
        "## Caveats",
        "",
        *[f"- {line}" for line in _caveats(settings)],
        "",
        "## Files",
        "",
        "`summary.json` (headline numbers), `methods.csv`, `layers.csv`, `heads.csv`, `robustness.csv`, "
        "`per_example.csv` (every per-snippet number the means come from), `reference_ceiling.csv`, `accuracy.csv`, "
        "`findings_summary.csv`, `examples.csv`, the figures above; timings (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
        + ".",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _ci(frame: pd.DataFrame, i: int, column: str, percent: bool = False) -> str:
    if column not in frame:
        return "n/a"
    row = frame.iloc[i]
    return ci_text(row[column], row[f"{column}_low"], row[f"{column}_high"], percent=percent)


def _protocol_lines(settings: Settings) -> list[str]:
    methods = ", ".join(settings.methods)
    return [
        f"- **Model**: `{MODEL}` (all-MiniLM-L6-v2 fine-tuned here on Rotten Tomatoes; 6 layers x 12 heads).",
        f"- **Data**: {settings.limit} snippets drawn at random (seed {settings.seed}) from `{DATASET}`, the held-out "
        "split, with their human label (mean rating > 0).",
        "- **Target**: the logit of the class the model predicts, the same scalar for every method.",
        f"- **Main run** (`Probe.run`): methods {methods}; checks {', '.join(CHECKS)}; seed {settings.seed}.",
        "- **Second pass** (same batches and target, checked against the run's predictions): value_zeroing, "
        "per-layer and per-head raw attention, and the baselines `random` (5 seeded random rankings per snippet, "
        "averaged), `position_first`, `position_last` (rank by position alone).",
        "- **Agreement**: Kendall tau-b of |score| over word pieces ([CLS]/[SEP] excluded) with leave_one_out and "
        "with integrated_gradients.",
        "- **Faithfulness**: ERASER comprehensiveness / sufficiency ([MASK] replacement; 1/5/10/20/50 % bins; ranked "
        "by the signed score), paired against the random rankings; decision flips against 10 random deletion orders.",
        f"- **Plausibility**: precision@{TOP_K} of words with |VADER valence| >= 1.5 among each method's top words "
        f"(a word scores the {WORD_AGGREGATION} of its pieces, ranked by |score|), minus the exact expectation under a "
        "random ranking of the same words; `lift (sum)`: the same with pieces summed (favours split words).",
        "- **Counterfactual attention**: each layer's attention (all heads) permuted (3 seeds), made uniform, or "
        "frozen to the position-only pattern; output TVD and prediction flips.",
    ]


def _caveats(settings: Settings) -> list[str]:
    lines = [
        "Erasure replaces tokens by [MASK], which the fine-tuned classifier rarely saw: part of any drop can be the "
        "out-of-distribution input rather than the lost evidence (the random-ranking baseline carries the same "
        "effect, which is why the comparisons are paired against it).",
        "leave_one_out is itself an erasure method and is favoured by the erasure metrics; integrated gradients "
        "(50 Gauss-Legendre steps from the [MASK] baseline) is the gradient-side reference.",
        "Raw attention, rollout, flow and ALTI are non-negative; agreement and plausibility compare |score|, erasure "
        "ranks by the signed score (for non-negative scores the two coincide).",
        "value_zeroing (layers x forward passes per example) is computed in a second pass, outside the run: it is "
        "not part of the run's verdicts.",
        "Plausibility counts whole words found in VADER's lexicon (7,506 entries, mostly lowercase words); "
        "sentiment carried by phrases, negation or domain words ('tighter', 'flat') is invisible to it, so a "
        "method's lift is a lower bound on how often its top words carry sentiment to a reader.",
        "One model, one data set, one fine-tuning seed: the per-layer and per-head patterns are this model's.",
        "Snippets are short (median about 20 word pieces): top-k% bins round up to at least one token.",
    ]
    if settings.smoke:
        lines.insert(0, "SMOKE RUN: a handful of snippets; the numbers only show the pipeline works.")
    return lines


# ----------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------
def run_study(settings: Settings, log: Any = print) -> dict[str, Any]:
    """Run the study into ``settings.out``; returns the summary tables and the headline dictionary."""
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    from attn_probe import Probe

    started = time.perf_counter()
    timings: dict[str, float] = {}
    settings.out.mkdir(parents=True, exist_ok=True)
    probe = Probe.load(MODEL)
    probe.model.eval()
    snippets = sample_snippets(settings.limit, settings.seed)
    log(f"[{NAME}] {len(snippets)} snippets; Probe.run into {settings.run_path}")
    tick = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*did not converge.*")  # IG convergence is read from its delta
        tables = main_run(probe, snippets, settings)
    timings["probe_run"] = time.perf_counter() - tick
    tick = time.perf_counter()
    library = library_report(settings)
    timings["library_report"] = time.perf_counter() - tick
    log(f"[{NAME}] second pass (value zeroing, layers, heads, baselines)")
    tick = time.perf_counter()
    extra = second_pass(probe, snippets, tables, settings)
    timings["second_pass"] = time.perf_counter() - tick
    tick = time.perf_counter()
    summary = summarise(snippets, tables, extra, settings)
    for name, table in summary.items():
        table.to_csv(settings.out / f"{name}.csv", index=False)
    elapsed = time.perf_counter() - started
    timings["summary"] = time.perf_counter() - tick
    headline_numbers = headline(summary, settings, elapsed)
    headline_numbers["timings_seconds"] = timings
    write_json(settings.out / "summary.json", headline_numbers)
    write_report(summary, settings, elapsed=elapsed, library=library, timings=timings)
    if not settings.keep_run:
        shutil.rmtree(settings.run_path, ignore_errors=True)
    log(f"[{NAME}] done in {elapsed:.0f} s: {settings.out / 'report.md'}")
    return {"summary": summary, "headline": headline_numbers}


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse(argv)
    run_study(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
