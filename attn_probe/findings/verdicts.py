"""Verdicts: the numbers of :mod:`attn_probe.compare` turned into claims a person can read, with their evidence.

Each function reads one comparison table and returns finding rows (:data:`FINDING_COLUMNS`), one per example
(and layer / head, or method) it can judge:

=================================  ===================================================  ========================
finding                            holds when                                           read from
=================================  ===================================================  ========================
``attention_disagrees``            attention's mean Kendall tau with the reference      ``agreement_table``,
                                   attributions <= ``disagreement_tau`` while those     ``layer_agreement``
                                   agree among themselves (>= ``consensus_tau``); per   (per head)
                                   example, and per layer / head
``attention_sink``                 >= ``sink_share`` of a head's attention is on        ``attention_sinks``
                                   special tokens, and their norm-weighted share is
                                   <= ``sink_norm_drop`` x that (small value vectors)
``output_ignores_attention``       permuting (every seed) and uniformising a layer's    ``attention_counterfactuals``
                                   / head's attention moves the output by TVD <=
                                   ``ignored_tvd``, though the attention did change
``adversarial_attention_exists``   an attention >= ``adversarial_jsd`` away from the    ``adversarial_attention``
                                   original keeps the output within epsilon
``erasure_prefers_attributions``   erasing the most attended tokens moves the target    ``comprehensiveness_
                                   <= ``erasure_ratio`` x what erasing the best         sufficiency`` (per example)
                                   reference's top tokens does
``attention_no_better_than_random`` deleting tokens in attention's order flips the      ``decision_flips``
                                   decision no sooner than random orders do (mean)
``position_explains_head``         the head's relative-distance profile alone gives     ``position_explained``
                                   R^2 >= ``position_r2``
``survives_randomisation``         an explanation keeps Spearman rho >= ``randomisation_ ``randomisation_check``
                                   rho`` with itself once the whole model is random
=================================  ===================================================  ========================

Every row says what holds *and* what does not: ``holds`` is True, False, or NA (not assessable, e.g. the
reference methods disagree among themselves, or no erasure order flips the decision), and ``statement`` is
written for each case, so a reader sees where attention **is** a fair explanation as clearly as where it is
not. ``value``, ``threshold`` and ``baseline`` are the numbers the verdict compared; ``evidence`` says which.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from attn_probe.findings.thresholds import DEFAULT_THRESHOLDS, Thresholds

FINDING_COLUMNS = [
    "example_id",
    "layer",
    "head",
    "subject",  # the method judged (attention method, or any method for randomisation); NA for layer/head findings
    "finding",
    "holds",  # pandas "boolean": True, False or NA (not assessable)
    "statement",
    "evidence",
    "value",
    "threshold",
    "baseline",
]
FINDINGS = (
    "attention_disagrees",
    "attention_sink",
    "output_ignores_attention",
    "adversarial_attention_exists",
    "erasure_prefers_attributions",
    "attention_no_better_than_random",
    "position_explains_head",
    "survives_randomisation",
)


# ----------------------------------------------------------------------------------------------------
# method-level findings
# ----------------------------------------------------------------------------------------------------
def attention_disagrees(
    agreement: pd.DataFrame,
    attention_methods: Sequence[str],
    reference_methods: Sequence[str],
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> pd.DataFrame:
    """Does each attention method rank tokens unlike the gradient / erasure attributions that agree together?

    ``agreement``: :func:`attn_probe.compare.agreement.agreement_table` over (at least) every attention x
    reference pair and the reference pairs. With one reference method there is no consensus to check, and the
    verdict rests on attention vs that method alone (the statement says so).
    """
    _need_columns(agreement, ["example_id", "method_a", "method_b", "kendall_tau"], "agreement_table")
    references = list(dict.fromkeys(reference_methods))
    rows = []
    for example, table in agreement.groupby("example_id", sort=True):
        tau = _pair_lookup(table)
        consensus = _mean([tau.get(frozenset((a, b))) for i, a in enumerate(references) for b in references[i + 1 :]])
        for method in attention_methods:
            with_references = _mean([tau.get(frozenset((method, r))) for r in references if r != method])
            pairs = ", ".join(r for r in references if r != method)
            if np.isnan(with_references):
                holds, statement = pd.NA, f"{method}: no agreement with the reference methods could be computed"
            elif len(references) >= 2 and np.isnan(consensus):
                holds, statement = pd.NA, f"{method}: the reference methods' agreement is undefined for this example"
            elif len(references) >= 2 and consensus < thresholds.consensus_tau:
                holds = pd.NA
                statement = (
                    f"the reference methods disagree among themselves (tau = {consensus:.2f} < "
                    f"{thresholds.consensus_tau}): no consensus to test {method} against"
                )
            elif with_references <= thresholds.disagreement_tau:
                holds = True
                among = f" vs {consensus:.2f} among themselves" if len(references) >= 2 else " (a single reference)"
                statement = f"{method} disagrees with {pairs} (tau = {with_references:.2f}{among})"
            else:
                holds = False
                statement = (
                    f"{method} agrees with {pairs} (tau = {with_references:.2f} > {thresholds.disagreement_tau})"
                )
            rows.append(
                _row(
                    example,
                    "attention_disagrees",
                    holds,
                    statement,
                    evidence=f"mean Kendall tau of {method} with {pairs}; baseline: mean tau among the references",
                    value=with_references,
                    threshold=thresholds.disagreement_tau,
                    baseline=consensus,
                    subject=method,
                )
            )
    return _frame(rows)


def head_disagrees(
    head_agreement: pd.DataFrame,
    agreement: pd.DataFrame,
    reference_methods: Sequence[str],
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> pd.DataFrame:
    """:func:`attention_disagrees` per layer and head: does each head's attention rank tokens unlike the consensus?

    ``head_agreement``: :func:`attn_probe.compare.agreement.layer_agreement` rows (``level="head"`` or
    ``"layer"``) of an attention method's per-head view against each reference method, stacked;
    ``agreement``: the :func:`~attn_probe.compare.agreement.agreement_table` that holds the reference pairs
    (the consensus). Rows are finding ``attention_disagrees`` with ``layer`` / ``head`` set.
    """
    _need_columns(
        head_agreement, ["example_id", "layer", "head", "method_a", "method_b", "kendall_tau"], "layer_agreement"
    )
    _need_columns(agreement, ["example_id", "method_a", "method_b", "kendall_tau"], "agreement_table")
    references = list(dict.fromkeys(reference_methods))
    consensus_by_example = {
        example: _mean(
            [_pair_lookup(table).get(frozenset((a, b))) for i, a in enumerate(references) for b in references[i + 1 :]]
        )
        for example, table in agreement.groupby("example_id", sort=True)
    }
    rows = []
    keys = ["example_id", "method_a", "layer", "head"]
    judged = head_agreement[head_agreement["method_b"].isin(references)]
    # one mean per head over the references (NaN skipped, all-NaN stays NaN), without a sub-frame per group
    means = judged.assign(tau=judged["kendall_tau"].astype(float)).groupby(keys, sort=True, dropna=False)["tau"].mean()
    for (example, method, layer, head), with_references in means.items():
        with_references = float(with_references)
        consensus = consensus_by_example.get(example, float("nan"))
        where = f"{_where(layer, head)} of {method}"
        if np.isnan(with_references):
            holds, statement = pd.NA, f"{where}: no agreement with the reference methods could be computed"
        elif len(references) >= 2 and not consensus >= thresholds.consensus_tau:
            holds, statement = (
                pd.NA,
                f"{where}: the reference methods do not agree among themselves (tau = {consensus:.2f})",
            )
        elif with_references <= thresholds.disagreement_tau:
            holds, statement = (
                True,
                f"{where} disagrees with the attributions (tau = {with_references:.2f} vs {consensus:.2f})",
            )
        else:
            holds, statement = False, f"{where} agrees with the attributions (tau = {with_references:.2f})"
        rows.append(
            _row(
                example,
                "attention_disagrees",
                holds,
                statement,
                evidence=f"mean Kendall tau of this head's target-row attention with {', '.join(references)}; "
                "baseline: mean tau among the references",
                value=with_references,
                threshold=thresholds.disagreement_tau,
                baseline=consensus,
                subject=method,
                layer=layer,
                head=head,
            )
        )
    return _frame(rows)


def erasure_prefers_attributions(
    eraser: pd.DataFrame,
    attention_methods: Sequence[str],
    reference_methods: Sequence[str],
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> pd.DataFrame:
    """Does erasing the most attended tokens change the prediction less than erasing the most attributed ones?

    ``eraser``: the ``per_example`` table of :func:`attn_probe.compare.faithfulness.comprehensiveness_sufficiency`
    for the attention and reference methods (stacked). Comprehensiveness of the originally predicted class's
    probability is used where the model has one (ERASER's definition), the target scalar otherwise.
    """
    _need_columns(eraser, ["example_id", "method", "comprehensiveness"], "comprehensiveness_sufficiency per_example")
    column = "comprehensiveness"
    if "comprehensiveness_probability" in eraser and eraser["comprehensiveness_probability"].notna().any():
        column = "comprehensiveness_probability"
    unit = "probability of the predicted class" if column.endswith("probability") else "target"
    rows = []
    for example, table in eraser.groupby("example_id", sort=True):
        score = dict(zip(table["method"], table[column].astype(float), strict=True))
        known = {r: score[r] for r in reference_methods if r in score and not np.isnan(score[r])}
        for method in attention_methods:
            if method not in score or np.isnan(score[method]) or not known:
                rows.append(
                    _row(
                        example,
                        "erasure_prefers_attributions",
                        pd.NA,
                        f"{method}: no erasure scores to compare",
                        evidence="",
                        value=np.nan,
                        threshold=thresholds.erasure_ratio,
                        baseline=np.nan,
                        subject=method,
                    )
                )
                continue
            best_method = max(known, key=known.get)
            best, ours = known[best_method], score[method]
            if best < thresholds.erasure_min_effect:
                holds = pd.NA
                statement = (
                    f"erasing {best_method}'s top tokens moves the {unit} by only {best:.3f} "
                    f"(< {thresholds.erasure_min_effect}): erasure does not separate the methods here"
                )
            elif ours <= thresholds.erasure_ratio * best:
                holds = True
                statement = (
                    f"erasing the tokens {method} ranks highest moves the {unit} by {ours:.3f}, "
                    f"erasing {best_method}'s by {best:.3f}"
                )
            else:
                holds = False
                statement = (
                    f"erasing the tokens {method} ranks highest moves the {unit} as much as the attributions' "
                    f"({ours:.3f} vs {best:.3f} for {best_method})"
                )
            rows.append(
                _row(
                    example,
                    "erasure_prefers_attributions",
                    holds,
                    statement,
                    evidence=f"ERASER comprehensiveness ({unit}), mean over the top-k% bins; baseline: the best "
                    f"reference method ({best_method}); judged: value <= threshold x baseline",
                    value=ours,
                    threshold=thresholds.erasure_ratio,
                    baseline=best,
                    subject=method,
                )
            )
    return _frame(rows)


def attention_no_better_than_random(flips: pd.DataFrame, attention_methods: Sequence[str]) -> pd.DataFrame:
    """Does deleting tokens in attention's order flip the decision no sooner than deleting them at random?

    ``flips``: :func:`attn_probe.compare.faithfulness.decision_flips` rows of the attention methods. The
    baseline is the mean flip count of the random orders that flip (Serrano & Smith 2019 compare with random
    orders the same way).
    """
    _need_columns(flips, ["example_id", "method", "flipped", "flip_k", "random_flip_k_mean"], "decision_flips")
    rows = []
    for record in flips[flips["method"].isin(list(attention_methods))].itertuples(index=False):
        flipped = bool(record.flipped)
        random_mean = float(record.random_flip_k_mean)
        random_share = float(getattr(record, "random_flips_fraction", np.nan))
        k = float(record.flip_k) if flipped else np.nan
        if not flipped and np.isnan(random_mean):
            holds, statement = pd.NA, "no deletion order flips this decision: erasure cannot rank the methods here"
        elif not flipped:
            holds = True
            statement = (
                f"deleting every token in {record.method}'s order never flips the decision, random orders flip it "
                f"after {random_mean:.1f} tokens on average"
            )
        elif np.isnan(random_mean):
            holds = False
            statement = f"{record.method}'s order flips the decision after {k:.0f} tokens; no random order does"
        elif k >= random_mean:
            holds = True
            statement = (
                f"{record.method}'s order needs {k:.0f} deletions to flip the decision, random orders "
                f"{random_mean:.1f} on average"
            )
        else:
            holds = False
            statement = (
                f"{record.method}'s order flips the decision after {k:.0f} deletions, sooner than random orders "
                f"({random_mean:.1f} on average)"
            )
        rows.append(
            _row(
                record.example_id,
                "attention_no_better_than_random",
                holds,
                statement,
                evidence="tokens deleted in ranked order until the predicted class / next token changes; baseline: "
                f"mean over random orders that flip ({random_share:.0%} of them flip)",
                value=k,
                threshold=np.nan,
                baseline=random_mean,
                subject=record.method,
            )
        )
    return _frame(rows)


def survives_randomisation(sanity: pd.DataFrame, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> pd.DataFrame:
    """Does an explanation stay the same when the model's parameters are randomised? (Adebayo et al. 2018)

    ``sanity``: :func:`attn_probe.compare.sanity.randomisation_check` rows. The verdict reads each method's
    last step (in a cascade: every layer and the head randomised) and the rank correlation of absolute scores.
    An explanation that survives explains the architecture (or the input), not what the trained model learnt.
    """
    _need_columns(sanity, ["example_id", "method", "step", "spearman_abs"], "randomisation_check")
    last = sanity.loc[sanity.groupby(["example_id", "method"])["step"].idxmax()]
    rows = []
    for record in last.itertuples(index=False):
        rho = float(record.spearman_abs)
        where = getattr(record, "randomised_from", "the model")
        if np.isnan(rho):
            holds, statement = pd.NA, f"{record.method}: the correlation is undefined (constant scores or < 2 tokens)"
        elif rho >= thresholds.randomisation_rho:
            holds = True
            statement = (
                f"{record.method} barely changes when the model is randomised (from {where}): Spearman rho "
                f"{rho:.2f}; it reflects the architecture or the input more than the trained weights"
            )
        else:
            holds = False
            statement = (
                f"{record.method} changes when the model is randomised (Spearman rho {rho:.2f}): it depends on "
                "the trained weights"
            )
        rows.append(
            _row(
                record.example_id,
                "survives_randomisation",
                holds,
                statement,
                evidence=f"Spearman rho of |scores| before and after randomising {where} (cascading from the top)",
                value=rho,
                threshold=thresholds.randomisation_rho,
                baseline=np.nan,
                subject=record.method,
            )
        )
    return _frame(rows)


# ----------------------------------------------------------------------------------------------------
# layer / head findings
# ----------------------------------------------------------------------------------------------------
def attention_sink(sinks: pd.DataFrame, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> pd.DataFrame:
    """Does a head put most of its attention on sink tokens whose value vectors carry little? (a sink)

    ``sinks``: :func:`attn_probe.compare.sinks.attention_sinks` rows with the norm-weighted columns. Two kinds
    of sink tokens are judged, and the one that draws more attention decides: the special tokens ([CLS],
    [SEP], BOS, ...) and the first token (a decoder's usual sink, special or not: many decoder tokenizers add
    no BOS).
    """
    _need_columns(sinks, ["example_id", "layer", "head", "special_share", "special_share_norm"], "attention_sinks")
    rows = []
    for record in sinks.itertuples(index=False):
        first, first_norm = getattr(record, "first_share", np.nan), getattr(record, "first_share_norm", np.nan)
        candidates = [
            ("special tokens", float(record.special_share), float(record.special_share_norm)),
            ("the first token", float(first), float(first_norm)),
        ]
        judged = [c for c in candidates if not (np.isnan(c[1]) or np.isnan(c[2]))]
        where = _where(record.layer, record.head)
        if not judged:
            holds, statement = pd.NA, f"{where}: no sink tokens or no value norms to judge a sink by"
            what, share, norm_share = "special tokens", np.nan, np.nan
        else:
            what, share, norm_share = max(judged, key=lambda c: c[1])
            if share < thresholds.sink_share:
                holds = False
                statement = f"{where} puts {share:.0%} of its attention on {what}: not a sink"
            elif norm_share <= thresholds.sink_norm_drop * share:
                holds = True
                statement = (
                    f"{where} puts {share:.0%} of its attention on {what}, but they carry only {norm_share:.0%} of "
                    f"what it writes (norm-weighted): a sink, its weights overstate those tokens"
                )
            else:
                holds = False
                statement = (
                    f"{where} puts {share:.0%} of its attention on {what} and they carry {norm_share:.0%} of what it "
                    f"writes: the attention is not empty there"
                )
        rows.append(
            _row(
                record.example_id,
                "attention_sink",
                holds,
                statement,
                evidence=f"share of attention on {what} (value; the larger of special tokens and the first token), "
                "and of the norm-weighted contributions ||alpha f(x)|| (baseline); judged: value >= sink_share and "
                "baseline <= sink_norm_drop x value",
                value=share,
                threshold=thresholds.sink_share,
                baseline=norm_share,
                layer=record.layer,
                head=record.head,
            )
        )
    return _frame(rows)


def output_ignores_attention(
    counterfactuals: pd.DataFrame, thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> pd.DataFrame:
    """Does the output barely move when a layer's (head's) attention is permuted or made uniform?

    ``counterfactuals``: :func:`attn_probe.compare.counterfactual.attention_counterfactuals` rows. The verdict
    takes the *largest* output change over the permutation seeds and the uniform replacement (the output must
    stay put under all of them), and is not assessable when none of them changed the attention by at least
    ``changed_attention_jsd`` (an already uniform head cannot be tested by making it uniform). The frozen
    (position-only) replacement is reported in the evidence.
    """
    _need_columns(
        counterfactuals,
        ["example_id", "layer", "head", "intervention", "output_tvd", "attention_jsd"],
        "attention_counterfactuals",
    )
    rows = []
    keys = ["example_id", "layer", "head"]
    for (example, layer, head), table in counterfactuals.groupby(keys, sort=True, dropna=False):
        tested = table[table["intervention"].isin(["permute", "uniform"])]
        changed = tested[tested["attention_jsd"] >= thresholds.changed_attention_jsd]
        frozen = table.loc[table["intervention"] == "frozen", "output_tvd"]
        frozen_text = f"; position-only (frozen) attention: TVD {float(frozen.max()):.3f}" if len(frozen) else ""
        where = _where(layer, head)
        if changed.empty:
            holds, value = pd.NA, np.nan
            statement = f"permuting or uniformising {where}'s attention barely changes it: the test says nothing here"
        else:
            value = float(changed["output_tvd"].max())
            how = ", ".join(
                f"{name}: TVD {float(group['output_tvd'].max()):.3f}" for name, group in changed.groupby("intervention")
            )
            if value <= thresholds.ignored_tvd:
                holds = True
                statement = (
                    f"the output barely moves when {where}'s attention is changed ({how}): the model does not use "
                    f"this attention pattern for this prediction"
                )
            else:
                holds = False
                statement = f"changing {where}'s attention moves the output ({how}): the model uses it"
        rows.append(
            _row(
                example,
                "output_ignores_attention",
                holds,
                statement,
                evidence="largest total variation distance of the output distribution over the permutations and the "
                f"uniform replacement that changed the attention (JSD >= {thresholds.changed_attention_jsd})"
                + frozen_text,
                value=value,
                threshold=thresholds.ignored_tvd,
                baseline=float(changed["attention_jsd"].mean()) if not changed.empty else np.nan,
                layer=layer,
                head=head,
            )
        )
    return _frame(rows)


def adversarial_attention_exists(
    adversarial: pd.DataFrame, thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> pd.DataFrame:
    """Is there a very different attention that gives the same output? (Jain & Wallace 2019)

    ``adversarial``: :func:`attn_probe.compare.counterfactual.adversarial_attention` rows.
    """
    _need_columns(
        adversarial,
        ["example_id", "layer", "head", "feasible", "attention_jsd", "epsilon", "max_jsd"],
        "adversarial_attention",
    )
    rows = []
    for record in adversarial.itertuples(index=False):
        where = _where(record.layer, record.head)
        jsd = float(record.attention_jsd) if bool(record.feasible) else np.nan
        measure = getattr(record, "measure", "tvd").upper()
        if not bool(record.feasible):
            holds = False
            statement = (
                f"no attention for {where} other than the original kept the output within {measure} {record.epsilon}"
            )
        elif jsd >= thresholds.adversarial_jsd:
            holds = True
            statement = (
                f"an adversarial attention for {where} with JSD {jsd:.2f} from the original (max "
                f"{float(record.max_jsd):.2f}) gives the same output (within {measure} {record.epsilon})"
            )
        else:
            holds = False
            statement = (
                f"the most different attention for {where} that keeps the output within {measure} {record.epsilon} "
                f"is only JSD {jsd:.2f} away: the output depends on this attention"
            )
        rows.append(
            _row(
                record.example_id,
                "adversarial_attention_exists",
                holds,
                statement,
                evidence=f"largest attention JSD found by gradient search with the output within {measure} "
                f"{record.epsilon}; baseline: the maximum possible JSD",
                value=jsd,
                threshold=thresholds.adversarial_jsd,
                baseline=float(record.max_jsd),
                layer=record.layer,
                head=record.head,
            )
        )
    return _frame(rows)


def position_explains_head(explained: pd.DataFrame, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> pd.DataFrame:
    """Does position alone (the head's mean attention by relative distance) reproduce the head's pattern?

    ``explained``: :func:`attn_probe.compare.position.position_explained` rows; the uniform pattern's R^2 is
    the baseline.
    """
    _need_columns(explained, ["example_id", "layer", "head", "r2_position", "r2_uniform"], "position_explained")
    rows = []
    for record in explained.itertuples(index=False):
        r2, uniform = float(record.r2_position), float(record.r2_uniform)
        where = _where(record.layer, record.head)
        if np.isnan(r2):
            holds, statement = pd.NA, f"{where}: too few tokens to judge its position profile"
        elif r2 >= thresholds.position_r2:
            holds = True
            statement = f"position alone explains most of {where}'s pattern (R^2 {r2:.2f}; uniform: {uniform:.2f})"
        else:
            holds = False
            statement = f"{where}'s pattern depends on content, not only on position (R^2 of position {r2:.2f})"
        rows.append(
            _row(
                record.example_id,
                "position_explains_head",
                holds,
                statement,
                evidence="R^2 of the attention weights predicted by the head's mean attention at each relative "
                "distance; baseline: R^2 of uniform attention",
                value=r2,
                threshold=thresholds.position_r2,
                baseline=uniform,
                layer=record.layer,
                head=record.head,
            )
        )
    return _frame(rows)


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def _row(
    example: object,
    finding: str,
    holds: object,
    statement: str,
    *,
    evidence: str,
    value: float,
    threshold: float,
    baseline: float,
    subject: str | None = None,
    layer: object = None,
    head: object = None,
) -> dict:
    return {
        "example_id": int(example),  # type: ignore[call-overload]
        "layer": _optional_int(layer),
        "head": _optional_int(head),
        "subject": subject,
        "finding": finding,
        "holds": holds,
        "statement": statement,
        "evidence": evidence,
        "value": value,
        "threshold": threshold,
        "baseline": baseline,
    }


def _frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=FINDING_COLUMNS)
    frame["example_id"] = frame["example_id"].astype("int64")
    for column in ("layer", "head"):
        frame[column] = frame[column].astype("Int64")
    frame["holds"] = frame["holds"].astype("boolean")
    frame["subject"] = frame["subject"].astype("string")
    for column in ("value", "threshold", "baseline"):
        frame[column] = frame[column].astype("float64")
    return frame


def _optional_int(value: object) -> object:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return pd.NA
    return int(value)  # type: ignore[call-overload]


def _where(layer: object, head: object) -> str:
    layer, head = _optional_int(layer), _optional_int(head)
    if layer is pd.NA:
        return "the model"
    return f"layer {layer}" if head is pd.NA else f"layer {layer} head {head}"


def _pair_lookup(table: pd.DataFrame) -> dict[frozenset, float]:
    return {
        frozenset((a, b)): float(tau)
        for a, b, tau in zip(table["method_a"], table["method_b"], table["kendall_tau"], strict=True)
    }


def _mean(values: list[float | None]) -> float:
    known = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(known)) if known else float("nan")


def _need_columns(frame: pd.DataFrame, columns: list[str], source: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"expected the DataFrame returned by {source}, got {type(frame).__name__}")
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(
            f"this table lacks the columns {missing}: pass the DataFrame returned by {source} "
            f"(it has {list(frame.columns)})"
        )
