"""Seaborn figures of the tidy tables: token scores side by side, head heatmaps, finding shares.

Every function takes the tidy DataFrames the library returns and gives back a :class:`matplotlib.figure.Figure`
built without pyplot's global state (safe in notebooks, scripts, threads and Streamlit). Each figure carries
what a reader needs to interpret it without the code: the model and target in the title (``context``), how
the colours are scaled, and a legend or colour bar. ``fig.savefig("f.svg")`` / ``.png`` exports it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

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
    axes.set_xticklabels([_plain(t) for t in tokens.iloc[: normalised.shape[1]]], rotation=60, ha="right")
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
    rows["label"] = (rows["label"] + "  n=" + rows["n_assessable"].astype(int).astype(str)).map(_plain)
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


def method_agreement_figure(
    agreement: pd.DataFrame,
    value: str = "kendall_tau",
    *,
    methods: Sequence[str] | None = None,
    context: str = "",
    label: str | None = None,
) -> Figure:
    """Method x method matrix of the mean agreement ``value`` over examples (symmetric; 1 on the diagonal).

    ``agreement``: tidy rows ``method_a, method_b, value`` (``ProbeResult.agreement``, a run's ``agreement``
    table). ``methods``: the order of rows and columns (default: order of appearance).
    """
    missing = [c for c in ("method_a", "method_b", value) if c not in agreement]
    if missing:
        raise ValueError(f"the table lacks {missing} for a method x method matrix; it has {list(agreement.columns)}")
    pairs = agreement[["method_a", "method_b", value]].dropna(subset=[value])
    if pairs.empty:
        raise ValueError(f"no {value} values to draw")
    both = pd.concat([pairs, pairs.rename(columns={"method_a": "method_b", "method_b": "method_a"})])
    both = both.astype({"method_a": str, "method_b": str})
    grid = both.pivot_table(index="method_a", columns="method_b", values=value, aggfunc="mean")
    order = list(methods) if methods is not None else list(dict.fromkeys([*pairs["method_a"], *pairs["method_b"]]))
    order = [str(m) for m in order if str(m) in grid.index]
    grid = grid.reindex(index=order, columns=order)
    for method in order:
        grid.loc[method, method] = 1.0
    size = max(4.5, 2.5 + 0.9 * len(order))
    figure = Figure(figsize=(size + 1.5, size), layout="constrained")
    axes = figure.subplots()
    sns.heatmap(
        grid, ax=axes, cmap=DIVERGING, center=0.0, vmin=-1.0, vmax=1.0, annot=len(order) <= 12, fmt=".2f",
        square=True, linewidths=0.5, cbar_kws={"label": label or value},
    )  # fmt: skip
    axes.set_xticks(np.arange(len(order)) + 0.5)
    axes.set_xticklabels([_plain(m) for m in order], rotation=40, ha="right")
    axes.set_yticks(np.arange(len(order)) + 0.5)
    axes.set_yticklabels([_plain(m) for m in order], rotation=0)
    axes.set_xlabel("")
    axes.set_ylabel("")
    count = int(agreement["example_id"].nunique()) if "example_id" in agreement else None
    what = f"Agreement between methods: mean {label or value}" + (f" over {count} examples" if count else "")
    axes.set_title(_title(what, context, size), loc="left", fontsize=10)
    return figure


def faithfulness_figure(
    eraser: pd.DataFrame,
    *,
    roles: Mapping[str, str] | None = None,
    context: str = "",
) -> Figure:
    """ERASER comprehensiveness and sufficiency per method, side by side (mean over examples, 95% bootstrap CI).

    ``eraser``: per-example rows ``method, comprehensiveness, sufficiency`` (a run's ``eraser`` table).
    ``roles``: method -> a role for the legend (e.g. ``"judged (attention)"`` / ``"reference"``).
    """
    missing = [c for c in ("method", "comprehensiveness", "sufficiency") if c not in eraser]
    if missing:
        raise ValueError(f"faithfulness_figure needs the eraser table; it lacks {missing}")
    rows = eraser.astype({"method": str}).copy()
    rows["role"] = rows["method"].map(lambda m: (roles or {}).get(m, "method"))
    rows["label"] = rows["method"].map(_plain)
    order = list(dict.fromkeys(rows["label"]))
    figure = Figure(figsize=(11.0, 1.8 + 0.42 * max(len(order), 1)), layout="constrained")
    left, right = figure.subplots(1, 2, sharey=True)
    for axes, column, meaning in (
        (left, "comprehensiveness", "target drop, top tokens erased (higher = more faithful)"),
        (right, "sufficiency", "target drop, only top tokens kept (lower = more faithful)"),
    ):
        sns.barplot(
            rows, x=column, y="label", hue="role", order=order, ax=axes, orient="h", errorbar=("ci", 95),
            seed=0, n_boot=1000, palette=_ROLE_PALETTE if set(rows["role"]) <= set(_ROLE_PALETTE) else None,
            dodge=False, capsize=0.2, err_kws={"linewidth": 1},
        )  # fmt: skip
        axes.axvline(0.0, color="black", linewidth=0.8)
        axes.set_xlabel(f"{column}\n{meaning}", fontsize=8)
        axes.set_ylabel("")
    handles, labels = left.get_legend_handles_labels()
    for axes in (left, right):
        if axes.get_legend():
            axes.get_legend().remove()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8, frameon=False)
    count = int(rows["example_id"].nunique()) if "example_id" in rows else None
    what = "Faithfulness (ERASER): mean over " + (f"{count} examples" if count else "examples") + ", whiskers 95% CI"
    figure.suptitle(_title(what, context, 11.0), x=0.01, ha="left", fontsize=10)
    return figure


def curves_figure(curves: pd.DataFrame, *, context: str = "", points: int = 21) -> Figure:
    """Deletion / insertion curves (AOPC) per method, each example's curve interpolated onto ``points``
    fractions and averaged; random orders dashed.

    ``curves``: rows ``example_id, method, order, curve, fraction, value`` (:func:`deletion_insertion`'s curves).
    """
    missing = [c for c in ("method", "curve", "fraction", "value") if c not in curves]
    if missing:
        raise ValueError(f"curves_figure needs deletion / insertion curves; the table lacks {missing}")
    keys = [c for c in ("example_id", "method", "order", "curve", "mode") if c in curves]
    grid = np.linspace(0.0, 1.0, points)
    pieces = []
    for key, group in curves.dropna(subset=["fraction", "value"]).groupby(keys, sort=False):
        ordered = group.sort_values("fraction")
        piece = pd.DataFrame(dict(zip(keys, key, strict=True)), index=range(points))
        piece["fraction"] = grid
        piece["value"] = np.interp(grid, ordered["fraction"].to_numpy(float), ordered["value"].to_numpy(float))
        pieces.append(piece)
    if not pieces:
        raise ValueError("no curve points to draw")
    rows = pd.concat(pieces, ignore_index=True)
    rows["method"] = rows["method"].map(_plain)
    if "order" not in rows:
        rows["order"] = "explanation"
    kinds = list(dict.fromkeys(rows["curve"]))
    figure = Figure(figsize=(5.5 * len(kinds), 4.2), layout="constrained")
    panels = np.atleast_1d(figure.subplots(1, len(kinds), squeeze=False)[0])
    for axes, kind in zip(panels, kinds, strict=True):
        sns.lineplot(
            rows[rows["curve"] == kind], x="fraction", y="value", hue="method", style="order", ax=axes,
            errorbar=None, style_order=[o for o in ("explanation", "random") if o in set(rows["order"])],
        )  # fmt: skip
        axes.set_xlabel(f"fraction of tokens {'deleted' if kind == 'deletion' else 'inserted'} (by the ranking)")
        axes.set_ylabel("target")
        axes.set_title(_plain(kind), fontsize=9)
    figure.suptitle(_title("Deletion / insertion curves (AOPC), mean over examples", context, 11.0), x=0.01,
                    ha="left", fontsize=10)  # fmt: skip
    return figure


def sinks_figure(sinks: pd.DataFrame, *, context: str = "") -> Figure:
    """Share of attention on special tokens per layer: raw, and weighted by the norm of what each token writes
    (``||v W_O||``). A head can look at [CLS]/[SEP] a lot and take little from them: the gap is the sink.

    ``sinks``: :func:`attn_probe.compare.attention_sinks` rows (``layer, special_share[, special_share_norm]``).
    """
    missing = [c for c in ("layer", "special_share") if c not in sinks]
    if missing:
        raise ValueError(f"sinks_figure needs the sinks table; it lacks {missing}")
    columns = {"special_share": "raw attention weights"}
    if "special_share_norm" in sinks and sinks["special_share_norm"].notna().any():
        columns["special_share_norm"] = "weighted by ||v W_O|| (what the tokens write)"
    id_vars = [c for c in ("example_id", "layer", "head") if c in sinks]
    rows = sinks[[*id_vars, *columns]].melt(id_vars=id_vars, var_name="weighting", value_name="share")
    rows["weighting"] = rows["weighting"].map(columns)
    rows["layer"] = rows["layer"].astype(int)
    figure = Figure(figsize=(8.0, 4.2), layout="constrained")
    axes = figure.subplots()
    sns.lineplot(rows, x="layer", y="share", hue="weighting", marker="o", errorbar=("ci", 95), seed=0, ax=axes)
    axes.set_ylim(0, 1)
    axes.set_xticks(sorted(rows["layer"].unique()))
    axes.set_ylabel("share on special tokens")
    axes.legend(title="", loc="best", fontsize=8)
    what = "Attention sinks per layer: raw vs value-norm weighted (mean over heads and examples, band: 95% CI)"
    axes.set_title(_title(what, context, 8.0), loc="left", fontsize=10)
    return figure


def distance_figure(profile: pd.DataFrame, *, context: str = "", source: str = "") -> Figure:
    """Attention mass by relative distance ``d = key - query``, one line per layer.

    ``profile``: rows ``layer, distance, share`` (the mean share of a query's attention on the key ``d`` tokens
    away; :func:`attn_probe.compare.attention_by_distance`'s ``share``). ``source``: where the profile comes
    from, for the title.
    """
    missing = [c for c in ("layer", "distance", "share") if c not in profile]
    if missing:
        raise ValueError(f"distance_figure needs a distance profile; it lacks {missing}")
    rows = profile.groupby(["layer", "distance"], as_index=False)["share"].mean()
    rows["layer"] = rows["layer"].astype(int)
    figure = Figure(figsize=(8.0, 4.2), layout="constrained")
    axes = figure.subplots()
    sns.lineplot(rows, x="distance", y="share", hue="layer", palette="viridis", marker=".", ax=axes, legend="full")
    axes.axvline(0.0, color="grey", linewidth=0.6)
    axes.set_xlabel("relative distance d = key - query (tokens; negative = earlier tokens)")
    axes.set_ylabel("share of a query's attention")
    axes.legend(title="layer", fontsize=7, ncol=2 if rows["layer"].nunique() > 8 else 1)
    what = "Attention mass by relative distance" + (f" ({source})" if source else "")
    axes.set_title(_title(what, context, 8.0), loc="left", fontsize=10)
    return figure


def counterfactual_figure(counterfactuals: pd.DataFrame, *, context: str = "") -> Figure:
    """How much the output moves when a layer's attention is replaced, per layer and intervention: the total
    variation distance of the output distribution, and the share of predictions that flip (95% CI).

    ``counterfactuals``: :func:`attn_probe.compare.attention_counterfactuals` rows (``layer, intervention,
    output_tvd[, prediction_flips]``); rows of single heads are left out when whole-layer rows exist.
    """
    missing = [c for c in ("layer", "intervention", "output_tvd") if c not in counterfactuals]
    if missing:
        raise ValueError(f"counterfactual_figure needs the counterfactuals table; it lacks {missing}")
    rows = counterfactuals
    if "head" in rows and rows["head"].isna().any():
        rows = rows[rows["head"].isna()]
    rows = rows.astype({"layer": int, "intervention": str}).copy()
    rows["intervention"] = rows["intervention"].map(_plain)
    panels: list[tuple[str, str, tuple[float, float] | None]] = [
        ("output_tvd", "output change (total variation distance)", None)
    ]
    if "prediction_flips" in rows:
        rows["prediction_flips"] = rows["prediction_flips"].astype(float)
        panels.append(("prediction_flips", "share of predictions that flip", (0, 1)))
    figure = Figure(figsize=(6.0 * len(panels), 4.2), layout="constrained")
    for axes, (column, label, limits) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        sns.barplot(rows, x="layer", y=column, hue="intervention", errorbar=("ci", 95), seed=0, ax=axes,
                    err_kws={"linewidth": 1}, capsize=0.1)  # fmt: skip
        if limits is not None:
            axes.set_ylim(*limits)
        else:
            axes.set_ylim(bottom=0)
        axes.set_ylabel(label)
        axes.legend(title="attention replaced by", fontsize=8)
    figure.suptitle(_title("Counterfactual attention: does the output move when a layer's attention changes?",
                           context, 6.0 * len(panels)), x=0.01, ha="left", fontsize=10)  # fmt: skip
    return figure


_ROLE_PALETTE = {
    "judged (attention-derived)": "#c44e52",
    "reference (gradient / perturbation)": "#4c72b0",
    "other (method not registered here)": "#8c8c8c",
}


def _title(what: str, context: str, width_inches: float = 8.0) -> str:
    """The title and its context line, wrapped to the figure's width, with ``$`` shown as itself.

    About 9 characters per inch at 10 pt: the title starts at the axes, right of the tick labels."""
    columns = max(40, int(width_inches * 9))
    lines = textwrap.wrap(what, columns) + (textwrap.wrap(context, columns) if context else [])
    return "\n".join(_plain(line) for line in lines)


def _plain(text: object) -> str:
    """``text`` as matplotlib should print it: a ``$`` in a token or a model name is a dollar, not mathtext
    (an unbalanced pair would otherwise fail at drawing time, or typeset the text between them)."""
    return str(text).replace("\\$", "$").replace("$", "\\$")
