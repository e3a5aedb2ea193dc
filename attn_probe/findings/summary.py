"""Dataset summaries: how often each finding holds, overall and by slice (layer / head, label, length, ...).

A share without its count and interval invites over-reading, so every share comes with the number of
examples it was assessable on and a 95 % Wilson score interval (Wilson 1927; well behaved at 0 %, 100 % and
small counts, where the normal approximation is not). Rows where a finding was not assessable (``holds`` NA)
are counted apart (``n_not_assessable``), never as "does not hold".

    summary = summarise(findings)                                     # per finding (and subject)
    summary = summarise(findings, by=["layer", "head"])               # per finding and head
    summary = summarise(findings, slices=examples, by=["label", "length_bin"])
    examples = example_slices(batch, labels=labels)                   # example_id, n_tokens, length_bin, label
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from attn_probe.findings.verdicts import FINDING_COLUMNS

SUMMARY_COLUMNS = ["n_examples", "n_assessable", "n_holds", "share", "ci_low", "ci_high", "n_not_assessable"]


def summarise(
    findings: pd.DataFrame,
    *,
    by: Sequence[str] = (),
    slices: pd.DataFrame | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Share of assessable rows where each finding holds, per ``finding``, ``subject``, ``level`` (``"example"``,
    ``"layer"`` or ``"head"``: what one row judges) and the ``by`` columns.

    ``slices``: one row per ``example_id`` with columns to slice by (label, length, source, ...), joined onto
    the findings first (see :func:`example_slices`). ``by`` may name finding columns (``layer``, ``head``) or
    slice columns. Layer/head findings are counted per (example, layer, head) row: with ``by=[]`` their share is
    over every head of every example.
    """
    missing = [column for column in ("example_id", "finding", "holds") if column not in findings]
    if missing:
        raise ValueError(f"summarise needs the findings table (columns {FINDING_COLUMNS}); missing {missing}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    table = findings
    if slices is not None:
        if "example_id" not in slices:
            raise ValueError("slices needs an example_id column to join on (one row per example)")
        if slices["example_id"].duplicated().any():
            raise ValueError("slices has several rows for one example_id: give one row per example")
        table = table.merge(slices, on="example_id", how="left", suffixes=("", "_slice"))
    unknown = [column for column in by if column not in table]
    if unknown:
        raise ValueError(
            f"cannot group by {unknown}: not a column of the findings or the slices ({list(table.columns)})"
        )
    # A finding can be judged per example, per layer and per head (attention_disagrees is all three): a share
    # over a mix of those would mean nothing, so the level is always part of the key.
    table = table.assign(level=_level(table))
    keys = ["finding", "subject", "level", *by]
    rows = []
    for key, group in table.groupby(keys, sort=True, dropna=False):
        holds = group["holds"].astype("boolean")
        assessable = int(holds.notna().sum())
        hits = int(holds.fillna(False).sum())
        low, high = wilson_interval(hits, assessable, confidence)
        rows.append(
            {
                **dict(zip(keys, key, strict=True)),
                "n_examples": int(group["example_id"].nunique()),
                "n_assessable": assessable,
                "n_holds": hits,
                "share": hits / assessable if assessable else np.nan,
                "ci_low": low,
                "ci_high": high,
                "n_not_assessable": len(group) - assessable,
            }
        )
    return pd.DataFrame(rows, columns=[*keys, *SUMMARY_COLUMNS])


_HEADLINES = {
    "attention_disagrees": "{subject} ranks tokens unlike the gradient / erasure attributions",
    "attention_sink": "a head puts most of its attention on special tokens that carry little (a sink)",
    "output_ignores_attention": "the output barely moves when a layer's attention is permuted or made uniform",
    "adversarial_attention_exists": "a very different attention gives the same output",
    "erasure_prefers_attributions": "erasing {subject}'s top tokens moves the prediction less than erasing the "
    "attributions' top tokens",
    "attention_no_better_than_random": "deleting tokens in {subject}'s order flips the decision no sooner than "
    "random orders",
    "position_explains_head": "position alone explains a head's pattern",
    "survives_randomisation": "{subject} barely changes when the model's weights are randomised",
}
_UNITS = {"example": "examples", "layer": "(example, layer) cases", "head": "(example, head) cases"}


def headlines(summary: pd.DataFrame) -> list[str]:
    """One plain sentence per row of :func:`summarise` (no ``by`` columns), most frequent findings first:

    ``"attention_rollout ranks tokens unlike the gradient / erasure attributions: 2 of 3 examples (67%, 95% CI
    21-94%)"``. The count of cases that hold *and* of those that do not is in every sentence, so the same line
    says where attention is a fair explanation.
    """
    rows = summary.dropna(subset=["share"]).sort_values(["share", "n_assessable"], ascending=[False, False])
    sentences = []
    for row in rows.itertuples(index=False):
        subject = row.subject if isinstance(row.subject, str) else "attention"
        claim = _HEADLINES.get(row.finding, row.finding.replace("_", " ")).format(subject=subject)
        unit = _UNITS.get(getattr(row, "level", "example"), "cases")
        sentence = (
            f"{claim}: {row.n_holds} of {row.n_assessable} {unit} ({row.share:.0%}, 95% CI "
            f"{row.ci_low:.0%}-{row.ci_high:.0%})"
        )
        if row.n_not_assessable:
            sentence += f"; {row.n_not_assessable} not assessable"
        sentences.append(sentence)
    return sentences


def _level(findings: pd.DataFrame) -> pd.Series:
    """``"example"`` (no layer), ``"layer"`` (a layer, all heads) or ``"head"``, per finding row."""
    layer = findings["layer"] if "layer" in findings else pd.Series(pd.NA, index=findings.index)
    head = findings["head"] if "head" in findings else pd.Series(pd.NA, index=findings.index)
    level = np.where(layer.isna(), "example", np.where(head.isna(), "layer", "head"))
    return pd.Series(level, index=findings.index)


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial share; (NaN, NaN) for no trials."""
    if trials == 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, trials], got {successes} of {trials}")
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    share = successes / trials
    denominator = 1 + z**2 / trials
    centre = (share + z**2 / (2 * trials)) / denominator
    half = z * np.sqrt(share * (1 - share) / trials + z**2 / (4 * trials**2)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends: no 1e-17 from rounding
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return float(low), float(high)


def example_slices(
    attention_mask: object,
    *,
    labels: Sequence[object] | None = None,
    length_bins: Sequence[int] = (8, 16, 32, 64),
    **columns: Sequence[object],
) -> pd.DataFrame:
    """One row per example to slice findings by: ``example_id, n_tokens, length_bin`` (+ ``label``, + columns).

    ``attention_mask``: ``[batch, n]`` (tensor or array; 1 = real token) or a :class:`TokenizedBatch`.
    ``length_bins``: upper edges of the token-count bins (``"<=8"``, ``"9-16"``, ..., ``">64"``).
    """
    mask = getattr(attention_mask, "attention_mask", attention_mask)
    lengths = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask).sum(-1).astype(int)
    edges = sorted(int(edge) for edge in length_bins)
    if any(edge <= 0 for edge in edges):
        raise ValueError(f"length_bins must be positive token counts, got {list(length_bins)}")
    frame = pd.DataFrame({"example_id": np.arange(len(lengths)), "n_tokens": lengths})
    frame["length_bin"] = [_length_bin(length, edges) for length in lengths]
    for name, values in {"label": labels, **columns}.items():
        if values is None:
            continue
        values = list(values)
        if len(values) != len(lengths):
            raise ValueError(f"{name} has {len(values)} values for {len(lengths)} examples")
        frame[name] = values
    return frame


def _length_bin(length: int, edges: list[int]) -> str:
    lower = 1
    for edge in edges:
        if length <= edge:
            return f"<={edge}" if lower == 1 else f"{lower}-{edge}"
        lower = edge + 1
    return f">{edges[-1]}"
