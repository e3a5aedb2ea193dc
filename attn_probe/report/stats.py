"""Bootstrap intervals on the shares of findings, resampling examples (the unit that was sampled).

:func:`attn_probe.findings.summarise` gives each share a Wilson interval, which treats every row as an
independent trial. Head- and layer-level findings are not independent within an example (the 144 heads of one
sentence share its tokens), so the Wilson interval of a per-head share is too narrow. Resampling whole examples
with replacement (a cluster bootstrap) keeps that dependence: with one row per example the two intervals agree
closely; with many rows per example the bootstrap interval is the honest one.

    table = bootstrap_shares(findings, resamples=1000, seed=0)
    # finding, subject, level, n_examples, n_assessable, n_holds, share, boot_low, boot_high, resamples
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

BOOTSTRAP_COLUMNS = ["n_examples", "n_assessable", "n_holds", "share", "boot_low", "boot_high", "resamples"]
_BLOCK = 200  # resamples drawn at a time: memory stays at block x examples counts, whatever the run's size


def finding_level(findings: pd.DataFrame) -> pd.Series:
    """``"example"`` (no layer), ``"layer"`` (a layer, all heads) or ``"head"``: what one finding row judges."""
    layer = findings["layer"] if "layer" in findings else pd.Series(pd.NA, index=findings.index)
    head = findings["head"] if "head" in findings else pd.Series(pd.NA, index=findings.index)
    level = np.where(layer.isna(), "example", np.where(head.isna(), "layer", "head"))
    return pd.Series(level, index=findings.index)


def bootstrap_shares(
    findings: pd.DataFrame,
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Percentile bootstrap interval of each finding's share, resampling examples with replacement.

    One row per ``finding, subject, level`` (the keys of :func:`~attn_probe.findings.summarise`). A resample
    draws as many example ids as the findings hold, with replacement; the share is then (rows that hold) /
    (assessable rows) over the drawn examples, every row of an example counted as often as it was drawn. Every
    group shares the same resamples, and the same ``seed`` gives the same intervals. Resamples where a group has
    no assessable row are left out of its interval; ``resamples`` in the result counts the ones used.
    """
    missing = [column for column in ("example_id", "finding", "holds") if column not in findings]
    if missing:
        raise ValueError(f"bootstrap_shares needs the findings table; it lacks {missing}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    keys = ["finding", "subject", "level"]
    table = findings.assign(level=finding_level(findings))
    if "subject" not in table:
        table = table.assign(subject=pd.NA)
    holds = table["holds"].astype("boolean")
    table = table.assign(_assessable=holds.notna().astype(int), _hits=holds.fillna(False).astype(int))
    examples = np.sort(table["example_id"].unique())
    groups = list(table.groupby(keys, sort=True, dropna=False))
    if len(examples) == 0 or not groups:
        return pd.DataFrame(columns=[*keys, *BOOTSTRAP_COLUMNS])
    position = pd.Index(examples)
    hits = np.zeros((len(groups), len(examples)))  # [groups, examples]
    assessable = np.zeros((len(groups), len(examples)))
    for index, (_, group) in enumerate(groups):
        per_example = group.groupby("example_id")[["_hits", "_assessable"]].sum()
        where = position.get_indexer(per_example.index)
        hits[index, where] = per_example["_hits"].to_numpy()
        assessable[index, where] = per_example["_assessable"].to_numpy()
    drawn_hits, drawn_assessable = [], []
    for counts in _resample_counts(len(examples), resamples, seed):  # [block, examples] each
        drawn_hits.append(counts @ hits.T)
        drawn_assessable.append(counts @ assessable.T)
    all_hits = np.concatenate(drawn_hits)  # [resamples, groups]
    all_assessable = np.concatenate(drawn_assessable)
    alpha = (1 - confidence) / 2
    rows = []
    for index, (key, group) in enumerate(groups):
        usable = all_assessable[:, index] > 0
        shares = all_hits[usable, index] / all_assessable[usable, index]
        low, high = np.quantile(shares, [alpha, 1 - alpha]) if len(shares) else (np.nan, np.nan)
        total = assessable[index].sum()
        rows.append(
            {
                **dict(zip(keys, key, strict=True)),
                "n_examples": int(group["example_id"].nunique()),
                "n_assessable": int(total),
                "n_holds": int(hits[index].sum()),
                "share": hits[index].sum() / total if total else np.nan,
                "boot_low": float(low),
                "boot_high": float(high),
                "resamples": int(usable.sum()),
            }
        )
    return pd.DataFrame(rows, columns=[*keys, *BOOTSTRAP_COLUMNS])


def _resample_counts(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of ``[block, n]``: how often each of ``n`` examples is drawn in each resample (rows sum to ``n``)."""
    generator = np.random.default_rng(seed)
    for start in range(0, resamples, _BLOCK):
        size = min(_BLOCK, resamples - start)
        drawn = generator.integers(0, n, size=(size, n))
        offsets = (np.arange(size)[:, None] * n + drawn).ravel()
        yield np.bincount(offsets, minlength=size * n).reshape(size, n).astype(np.float64)
