"""Seaborn figures of the tidy tables: token scores side by side, head heatmaps, finding shares.

Every function takes the tidy DataFrames the library returns and gives back a :class:`matplotlib.figure.Figure`
built without pyplot's global state (safe in notebooks, scripts, threads and Streamlit). Each figure carries
what a reader needs to interpret it without the code: the model and target in the title (``context``), how
the colours are scaled, and a legend or colour bar. ``fig.savefig("f.svg")`` / ``.png`` exports it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

DIVERGING = "vlag"  # blue = negative, white = 0, red = positive: the sign of a score stays readable


def _show_in_notebooks() -> None:
    """Let a notebook draw these figures when one is the last expression of a cell.

    Jupyter draws a matplotlib Figure through a PNG formatter that only pyplot's inline backend registers;
    our figures are built without pyplot (no global state), so register it here when running in IPython.
    """
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import print_figure
    except ImportError:  # not in IPython: nothing to do
        return
    shell = get_ipython()
    if shell is None:
        return
    shell.display_formatter.formatters["image/png"].for_type(Figure, lambda figure: print_figure(figure, "png"))


_show_in_notebooks()


def token_scores_figure(
    scores: pd.DataFrame,
    example_id: int,
    *,
    methods: Sequence[str] | None = None,
    context: str = "",
    max_tokens: int = 60,
) -> Figure:
    """Heatmap, one row per method, one column per token of one example: which tokens each method ranks high.

    ``scores``: tidy rows ``example_id, method, token_index, token, score`` (``ProbeResult.scores``). Each
    method's row is divided by its largest ``|score|`` over the example, so methods on different scales share
    one colour bar (-1 .. 1); the sign is kept. ``context``: a line for the title (model, target).
    """
    rows = scores[scores["example_id"] == example_id]
    if rows.empty:
        raise ValueError(
            f"no scores for example {example_id}; the examples are {sorted(scores['example_id'].unique())}"
        )
    chosen = list(methods) if methods is not None else list(dict.fromkeys(rows["method"]))
    unknown = [m for m in chosen if m not in set(rows["method"])]
    if unknown:
        raise ValueError(f"no scores for methods {unknown}; there are {sorted(set(rows['method']))}")
    table = rows.pivot_table(index="method", columns="token_index", values="score", aggfunc="first").loc[chosen]
    tokens = rows.drop_duplicates("token_index").set_index("token_index")["token"].reindex(table.columns)
    table = table.iloc[:, :max_tokens]
    scale = table.abs().max(axis=1).replace(0, 1.0)
    normalised = table.div(scale, axis=0)
    width = min(max(6.0, 2.5 + 0.45 * normalised.shape[1]), 24.0)
    figure = Figure(figsize=(width, 1.2 + 0.45 * len(chosen)), layout="constrained")
    axes = figure.subplots()
    sns.heatmap(
        normalised,
        ax=axes,
        cmap=DIVERGING,
        center=0.0,
        vmin=-1.0,
        vmax=1.0,
        linewidths=0.5,
        cbar_kws={"label": "score / max |score|"},
    )
    axes.set_xticks(np.arange(normalised.shape[1]) + 0.5)
    axes.set_xticklabels([str(t) for t in tokens.iloc[: normalised.shape[1]]], rotation=60, ha="right")
    axes.set_xlabel("token" + (f" (first {max_tokens} of {table.shape[1]})" if len(tokens) > max_tokens else ""))
    axes.set_ylabel("")
    title = _title(
        f"Token importance, example {example_id} (each method scaled by its largest |score|)", context, width
    )
    axes.set_title(title, loc="left", fontsize=10)
    return figure


def head_heatmap_figure(
    table: pd.DataFrame,
    value: str,
    *,
    context: str = "",
    label: str | None = None,
    diverging: bool = True,
    limits: tuple[float, float] | None = None,
) -> Figure:
    """Layer x head heatmap of ``value``, averaged over every other column (examples, reference methods).

    ``table``: tidy rows with ``layer``, ``head`` and ``value`` (e.g. ``layer_agreement(level="head")`` with
    ``kendall_tau``, or ``attention_sinks`` with ``special_share``). ``limits``: the colour range (default
    -1..1 for a diverging value, 0..1 otherwise).
    """
    missing = [c for c in ("layer", "head", value) if c not in table]
    if missing:
        raise ValueError(f"the table lacks {missing} for a layer x head heatmap; it has {list(table.columns)}")
    rows = table.dropna(subset=["head"])
    if rows.empty:
        raise ValueError("no per-head rows to draw (every head is NA: per-layer rows only)")
    grid = rows.astype({"layer": int, "head": int}).pivot_table(
        index="layer", columns="head", values=value, aggfunc="mean"
    )
    low, high = limits if limits is not None else ((-1.0, 1.0) if diverging else (0.0, 1.0))
    width = max(5.0, 1.6 + 0.55 * grid.shape[1])
    figure = Figure(figsize=(width, 1.4 + 0.45 * grid.shape[0]), layout="constrained")
    axes = figure.subplots()
    sns.heatmap(
        grid,
        ax=axes,
        cmap=DIVERGING if diverging else "rocket_r",
        center=0.0 if diverging else None,
        vmin=low,
        vmax=high,
        annot=grid.shape[1] <= 16,
        fmt=".2f",
        annot_kws={"fontsize": 7},
        cbar_kws={"label": label or value},
    )
    count = int(rows["example_id"].nunique()) if "example_id" in rows else None
    mean_of = f"mean over {count} examples" if count else "mean"
    axes.set_title(_title(f"{label or value} per layer and head ({mean_of})", context, width), loc="left", fontsize=10)
    return figure


def findings_figure(summary: pd.DataFrame, *, context: str = "") -> Figure:
    """Horizontal bars: the share of assessable cases where each finding holds, with its Wilson interval.

    ``summary``: :func:`attn_probe.findings.summarise` rows (one per finding and subject).
    """
    missing = [c for c in ("finding", "share", "ci_low", "ci_high", "n_assessable") if c not in summary]
    if missing:
        raise ValueError(f"findings_figure needs the table of summarise(); it lacks {missing}")
    rows = summary.dropna(subset=["share"]).copy()
    subject = rows["subject"].astype("string").fillna("") if "subject" in rows else ""
    level = (" per " + rows["level"].astype(str)) if "level" in rows else ""
    rows["label"] = rows["finding"].str.replace("_", " ") + np.where(subject != "", " (" + subject + ")", "") + level
    rows["label"] = rows["label"] + "  n=" + rows["n_assessable"].astype(int).astype(str)
    figure = Figure(figsize=(11.0, 1.2 + 0.35 * max(len(rows), 1)), layout="constrained")
    axes = figure.subplots()
    sns.barplot(rows, x="share", y="label", ax=axes, color="#c44e52", orient="h")
    axes.errorbar(
        rows["share"],
        np.arange(len(rows)),
        xerr=[(rows["share"] - rows["ci_low"]).clip(lower=0), (rows["ci_high"] - rows["share"]).clip(lower=0)],
        fmt="none",
        ecolor="black",
        capsize=3,
        linewidth=1,
    )
    axes.set_xlim(0, 1)
    axes.set_xlabel("share of assessable cases where the finding holds (whiskers: 95% Wilson interval)")
    axes.set_ylabel("")
    axes.set_title(_title("How often each finding holds", context, 6.0), loc="left", fontsize=10)
    return figure


def _title(what: str, context: str, width_inches: float = 8.0) -> str:
    """The title and its context line, wrapped to the figure's width.

    About 9 characters per inch at 10 pt: the title starts at the axes, right of the tick labels."""
    columns = max(40, int(width_inches * 9))
    return "\n".join(textwrap.wrap(what, columns) + (textwrap.wrap(context, columns) if context else []))
