"""Numerical honesty: whether the numbers a verdict is drawn from can be trusted, one tidy row per example.

    flags = numerical_flags(explanations, captured, thresholds)   # FLAG_COLUMNS, what assess() keeps
    flags[flags["flagged"]]                                        # the results not to lean on
    resting_on_flags(findings, flags, references)                  # which finding rows lean on them

=================================  ==========================================================  =================
check                              value                                                        flagged above
=================================  ==========================================================  =================
``ig_relative_convergence_delta``  ``|sum of the scores - (f(input) - f(baseline))|`` over      ``ig_relative_
                                   ``|f(input) - f(baseline)|``: how far integrated gradients   convergence_delta``
                                   is from completeness (one row per example and IG method)
``ig_convergence_delta``           the same delta, signed and absolute, for the record (never   (not flagged)
                                   flagged itself: its relative form is)
``capture_drift``                  max ``|logits(model's own backend) - logits(capture)|`` of   ``capture_drift``
                                   the example (``scope="example"``; ``"batch"``: the batch's
                                   maximum, when only that was measured): how far the
                                   eager pass whose attention is read is from the model's own
=================================  ==========================================================  =================

An integrated-gradients row is flagged when its relative delta is above the threshold and its absolute delta is
above :data:`attn_probe.methods.gradient.ABSOLUTE_DELTA_FLOOR` (float rounding of a target that barely moves);
a NaN is always flagged. For a float16 / bfloat16 model the drift line is raised to :data:`DRIFT_ROUNDING_ULPS`
units in the last place of the batch's largest logit (its own rounding); the row's ``threshold`` is the line
used. A flagged IG result weakens the findings judged against the reference methods (:data:`REFERENCE_FINDINGS`)
on that example, and any finding about IG itself; a flagged capture weakens every finding about attention on
its examples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from attn_probe.findings.thresholds import DEFAULT_THRESHOLDS, Thresholds

FLAG_COLUMNS = ["example_id", "method", "check", "scope", "value", "threshold", "flagged"]
IG_CHECK = "ig_relative_convergence_delta"
IG_DELTA = "ig_convergence_delta"
DRIFT_CHECK = "capture_drift"
FLAG_CHECKS = (IG_CHECK, IG_DELTA, DRIFT_CHECK)
REFERENCE_FINDINGS = ("attention_disagrees", "erasure_prefers_attributions")  # judged against the references
DRIFT_ROUNDING_ULPS = 16


def empty_flags() -> pd.DataFrame:
    """A flags table without rows, with its columns and types."""
    return pd.DataFrame(
        {
            "example_id": pd.Series(dtype="int64"),
            "method": pd.Series(dtype="object"),
            "check": pd.Series(dtype="object"),
            "scope": pd.Series(dtype="object"),
            "value": pd.Series(dtype="float64"),
            "threshold": pd.Series(dtype="float64"),
            "flagged": pd.Series(dtype="bool"),
        }
    )


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    if not rows:
        return empty_flags()
    frame = pd.DataFrame(rows, columns=FLAG_COLUMNS)
    return frame.astype({"example_id": "int64", "value": "float64", "threshold": "float64", "flagged": "bool"})


def convergence_flags(explanations: Mapping[str, Any], thresholds: Thresholds = DEFAULT_THRESHOLDS) -> pd.DataFrame:
    """Two rows per example of every explanation with a convergence delta (integrated gradients): its relative
    delta (flagged above ``thresholds.ig_relative_convergence_delta``) and its signed absolute delta."""
    from attn_probe.methods.gradient import ABSOLUTE_DELTA_FLOOR

    line = float(thresholds.ig_relative_convergence_delta)
    rows = []
    for method, explanation in explanations.items():
        details = getattr(explanation, "details", None) or {}
        if "relative_convergence_delta" not in details or "convergence_delta" not in details:
            continue
        relative = torch.as_tensor(details["relative_convergence_delta"]).detach().float().cpu().reshape(-1)
        delta = torch.as_tensor(details["convergence_delta"]).detach().float().cpu().reshape(-1)
        for example, (rel, absolute) in enumerate(zip(relative.tolist(), delta.tolist(), strict=True)):
            unsound = not (math.isfinite(rel) and math.isfinite(absolute))
            flagged = unsound or (rel > line and abs(absolute) > ABSOLUTE_DELTA_FLOOR)
            rows.append(
                {"example_id": example, "method": method, "check": IG_CHECK, "scope": "example", "value": rel,
                 "threshold": line, "flagged": flagged}
            )  # fmt: skip
            rows.append(
                {"example_id": example, "method": method, "check": IG_DELTA, "scope": "example", "value": absolute,
                 "threshold": np.nan, "flagged": False}
            )  # fmt: skip
    return _frame(rows)


def drift_threshold(thresholds: Thresholds = DEFAULT_THRESHOLDS, logits: torch.Tensor | None = None) -> float:
    """The drift line for a batch: ``thresholds.capture_drift``, raised for half-precision logits to
    :data:`DRIFT_ROUNDING_ULPS` units in the last place of their largest magnitude."""
    line = float(thresholds.capture_drift)
    if logits is None or not logits.is_floating_point() or torch.finfo(logits.dtype).bits >= 32:
        return line
    largest = (
        float(logits.detach().float().abs().nan_to_num(0.0, posinf=0.0, neginf=0.0).max()) if logits.numel() else 0
    )
    return max(line, DRIFT_ROUNDING_ULPS * torch.finfo(logits.dtype).eps * max(1.0, largest))


def drift_flags(
    n_examples: int,
    drift: float | Sequence[float] | torch.Tensor | None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    logits: torch.Tensor | None = None,
) -> pd.DataFrame:
    """One row per example of a batch whose capture drift was measured (none when ``drift`` is None). ``drift``:
    one value per example (``AttentionCapture.drift_per_example``; scope ``"example"``), or the batch's maximum
    for every example (scope ``"batch"``)."""
    if drift is None:
        return empty_flags()
    line = drift_threshold(thresholds, logits)
    per_example = not isinstance(drift, int | float)
    values = [float(v) for v in drift] if per_example else [float(drift)] * n_examples
    if len(values) != n_examples:
        raise ValueError(f"{len(values)} drift values for a batch of {n_examples} examples")
    rows = [
        {"example_id": example, "method": None, "check": DRIFT_CHECK, "scope": "example" if per_example else "batch",
         "value": value, "threshold": line, "flagged": not math.isfinite(value) or value > line}
        for example, value in enumerate(values)
    ]  # fmt: skip
    return _frame(rows)


def numerical_flags(
    explanations: Mapping[str, Any], captured: Any = None, thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> pd.DataFrame:
    """:func:`convergence_flags` of ``explanations`` and :func:`drift_flags` of ``captured`` (an
    :class:`~attn_probe.capture.AttentionCapture`, or None when nothing captured)."""
    parts = [convergence_flags(explanations, thresholds)]
    if captured is not None and getattr(captured, "drift", None) is not None:
        n_examples = int(captured.input_ids.shape[0])
        drift = getattr(captured, "drift_per_example", None)
        drift = captured.drift if drift is None else drift
        parts.append(drift_flags(n_examples, drift, thresholds, getattr(captured, "logits", None)))
    return concat_flags(parts)


def concat_flags(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Flag tables stacked (empty ones left out, so that the column types hold)."""
    kept = [part for part in parts if part is not None and not part.empty]
    return pd.concat(kept, ignore_index=True) if kept else empty_flags()


def max_drift(flags: pd.DataFrame) -> float | None:
    """The largest capture drift in ``flags`` (None when none was measured)."""
    if flags is None or flags.empty:
        return None
    values = flags.loc[flags["check"] == DRIFT_CHECK, "value"]
    if values.empty:
        return None
    return float("inf") if values.isna().any() else float(values.max())


def flag_summary(flags: pd.DataFrame, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """JSON data for a run's manifest: the capture drift (largest, threshold, flagged / measured examples) and,
    per integrated-gradients method, the largest relative convergence delta and the flagged examples."""
    flags = flags if flags is not None else empty_flags()
    out: dict[str, Any] = {}
    drift = flags[flags["check"] == DRIFT_CHECK]
    largest = max_drift(flags)
    out["capture_drift"] = {
        "max": largest if largest is None or math.isfinite(largest) else "not finite",
        "threshold": float(thresholds.capture_drift),
        "flagged_examples": int(drift.loc[drift["flagged"].astype(bool), "example_id"].nunique()),
        "measured_examples": int(drift["example_id"].nunique()),
    }
    convergence = {}
    ig = flags[flags["check"] == IG_CHECK]
    for method, rows in ig.groupby("method", sort=True):
        finite = rows["value"][np.isfinite(rows["value"].to_numpy(dtype=float))]
        convergence[str(method)] = {
            "max_relative_convergence_delta": float(finite.max()) if not finite.empty else None,
            "threshold": float(thresholds.ig_relative_convergence_delta),
            "flagged_examples": int(rows.loc[rows["flagged"].astype(bool), "example_id"].nunique()),
            "examples": int(rows["example_id"].nunique()),
        }
    if convergence:
        out["ig_convergence"] = convergence
    return out


def resting_on_flags(findings: pd.DataFrame, flags: pd.DataFrame | None, reference_methods: Sequence[str]) -> pd.Series:
    """Per finding row, the flagged results it rests on, as text (``""``: none): ``"integrated_gradients"`` for
    a finding judged against a flagged IG reference on its example (or about IG itself), ``"capture drift"`` for
    a finding about attention on an example whose capture drift is flagged; several joined by ``", "``."""
    out = pd.Series("", index=findings.index, dtype="object")
    if flags is None or flags.empty or findings.empty:
        return out
    flagged = flags[flags["flagged"].astype(bool)]
    references = set(reference_methods)
    subject = findings["subject"] if "subject" in findings else pd.Series(pd.NA, index=findings.index)
    subject = subject.astype("object").where(subject.notna(), None)
    reasons: dict[Any, list[str]] = {}
    for method, rows in flagged[flagged["check"] == IG_CHECK].groupby("method", sort=True):
        examples = set(rows["example_id"].astype(int))
        on_example = findings["example_id"].astype(int).isin(examples)
        judged_against = findings["finding"].isin(REFERENCE_FINDINGS) & (method in references)
        hit = on_example & (judged_against | (subject == method))
        for index in findings.index[hit]:
            reasons.setdefault(index, []).append(str(method))
    drifted = set(flagged.loc[flagged["check"] == DRIFT_CHECK, "example_id"].astype(int))
    if drifted:
        about_attention = ~subject.isin(references)
        hit = findings["example_id"].astype(int).isin(drifted) & about_attention
        for index in findings.index[hit]:
            reasons.setdefault(index, []).append("capture drift")
    for index, names in reasons.items():
        out[index] = ", ".join(names)
    return out


def flag_dependence(
    findings: pd.DataFrame, flags: pd.DataFrame | None, reference_methods: Sequence[str]
) -> pd.DataFrame:
    """Per headline (``finding, subject, level``, as :func:`attn_probe.findings.summarise` groups them), how many
    of its judged cases rest on a flagged result (:func:`resting_on_flags`) and what it comes to without them:
    ``n_assessable, n_resting, resting_on, n_holds_without, n_assessable_without, share_without``. Only the
    headlines with at least one such case are listed."""
    from attn_probe.findings.summary import _level

    columns = ["finding", "subject", "level", "n_assessable", "n_resting", "resting_on", "n_holds_without",
               "n_assessable_without", "share_without"]  # fmt: skip
    if findings is None or findings.empty:
        return pd.DataFrame(columns=columns)
    resting = resting_on_flags(findings, flags, reference_methods)
    holds = findings["holds"].astype("boolean")
    subject = findings["subject"] if "subject" in findings else pd.Series(pd.NA, index=findings.index)
    table = pd.DataFrame(
        {"finding": findings["finding"], "subject": subject, "level": _level(findings), "holds": holds,
         "resting": resting}
    )[holds.notna()]  # fmt: skip
    rows = []
    for key, group in table.groupby(["finding", "subject", "level"], sort=True, dropna=False):
        leaning = group["resting"] != ""
        if not leaning.any():
            continue
        kept = group.loc[~leaning, "holds"].astype(bool)
        names = sorted({name for text in group.loc[leaning, "resting"] for name in text.split(", ")})
        rows.append(
            {
                **dict(zip(["finding", "subject", "level"], key, strict=True)),
                "n_assessable": len(group),
                "n_resting": int(leaning.sum()),
                "resting_on": ", ".join(names),
                "n_holds_without": int(kept.sum()),
                "n_assessable_without": len(kept),
                "share_without": float(kept.mean()) if len(kept) else np.nan,
            }
        )
    return pd.DataFrame(rows, columns=columns)


__all__ = [
    "DRIFT_CHECK",
    "FLAG_CHECKS",
    "FLAG_COLUMNS",
    "IG_CHECK",
    "IG_DELTA",
    "REFERENCE_FINDINGS",
    "concat_flags",
    "convergence_flags",
    "drift_flags",
    "drift_threshold",
    "empty_flags",
    "flag_dependence",
    "flag_summary",
    "max_drift",
    "numerical_flags",
    "resting_on_flags",
]
