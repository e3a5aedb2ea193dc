"""Interactive charts of the dashboard (Altair, which Streamlit draws with Vega-Lite): hover for the numbers.

Static figures come from :mod:`attn_probe.report.figures` (the report's own); these are the views where
hovering, zooming or reading one cell's value helps. Tokens and labels go into Vega-Lite as data, drawn as
text by the chart library, never as HTML.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

DIVERGING = "redblue"  # reversed below: red = positive, blue = negative, as in the report's token colours
SEQUENTIAL = "orangered"


def layer_head_heatmap(grid: pd.DataFrame, value: str, *, title: str, diverging: bool = True) -> alt.Chart:
    """``grid``: ``layer, head, value`` (:func:`dashboards.data.head_grid`). Diverging colours fixed to -1..1."""
    scale = (
        alt.Scale(scheme=DIVERGING, domain=[-1, 1], reverse=True)
        if diverging
        else alt.Scale(scheme=SEQUENTIAL, domain=[0, 1])
    )
    base = alt.Chart(grid, title=title).encode(
        x=alt.X("head:O", title="head"),
        y=alt.Y("layer:O", title="layer"),
    )
    cells = base.mark_rect().encode(
        color=alt.Color(f"{value}:Q", scale=scale, title=value),
        tooltip=["layer:O", "head:O", alt.Tooltip(f"{value}:Q", format=".3f")],
    )
    labels = base.mark_text(fontSize=9).encode(text=alt.Text(f"{value}:Q", format=".2f"))
    return (cells + labels).properties(height=max(120, 28 * grid["layer"].nunique()))


def attention_matrix(weights: pd.DataFrame, *, title: str) -> alt.Chart:
    """``weights``: ``query, key, query_token, key_token, weight`` of one head (real tokens)."""
    order_q = weights.drop_duplicates("query").sort_values("query")["query_label"].tolist()
    order_k = weights.drop_duplicates("key").sort_values("key")["key_label"].tolist()
    return (
        alt.Chart(weights, title=title)
        .mark_rect()
        .encode(
            x=alt.X("key_label:N", sort=order_k, title="key (attended to)"),
            y=alt.Y("query_label:N", sort=order_q, title="query (attending)"),
            color=alt.Color("weight:Q", scale=alt.Scale(scheme="greys", domain=[0, 1]), title="weight"),
            tooltip=["query_token:N", "key_token:N", alt.Tooltip("weight:Q", format=".3f")],
        )
        .properties(height=max(160, 16 * len(order_q)))
    )


def logit_matrix(frame: pd.DataFrame, *, title: str) -> alt.Chart:
    """``frame``: ``part, query, key, query_token, key_token, logit`` (three parts faceted side by side); one
    symmetric colour range over the three so their sizes compare."""
    frame = frame.assign(
        query_label=[f"{q}: {t}" for q, t in zip(frame["query"], frame["query_token"], strict=True)],
        key_label=[f"{k}: {t}" for k, t in zip(frame["key"], frame["key_token"], strict=True)],
    )
    bound = float(frame["logit"].abs().max() or 1.0)
    order_q = frame.drop_duplicates("query").sort_values("query")["query_label"].tolist()
    order_k = frame.drop_duplicates("key").sort_values("key")["key_label"].tolist()
    return (
        alt.Chart(frame)
        .mark_rect()
        .encode(
            x=alt.X("key_label:N", sort=order_k, title="key"),
            y=alt.Y("query_label:N", sort=order_q, title="query"),
            color=alt.Color("logit:Q", scale=alt.Scale(scheme=DIVERGING, domain=[-bound, bound], reverse=True)),
            tooltip=["part:N", "query_token:N", "key_token:N", alt.Tooltip("logit:Q", format=".3f")],
        )
        .properties(width=220, height=220)
        .facet(column=alt.Column("part:N", sort=["total", "content", "position"], title=title))
    )


def findings_chart(summary: pd.DataFrame) -> alt.Chart:
    """Share of judged cases where each finding holds, with its 95% Wilson interval (``summarise`` rows)."""
    rows = summary.dropna(subset=["share"]).copy()
    rows["finding_label"] = [
        f"{f} ({s}, per {lvl})" if isinstance(s, str) and s else f"{f} (per {lvl})"
        for f, s, lvl in zip(rows["finding"], rows["subject"], rows["level"], strict=True)
    ]
    order = rows.sort_values("share", ascending=False)["finding_label"].tolist()
    base = alt.Chart(rows).encode(y=alt.Y("finding_label:N", sort=order, title=None, axis=alt.Axis(labelLimit=420)))
    bars = base.mark_bar(color="#b4043a", opacity=0.75).encode(
        x=alt.X("share:Q", scale=alt.Scale(domain=[0, 1]), title="share of judged cases where it holds"),
        tooltip=[
            "finding:N",
            "subject:N",
            "level:N",
            alt.Tooltip("share:Q", format=".0%"),
            alt.Tooltip("ci_low:Q", format=".0%", title="95% CI low"),
            alt.Tooltip("ci_high:Q", format=".0%", title="95% CI high"),
            "n_holds:Q",
            "n_assessable:Q",
            "n_not_assessable:Q",
        ],
    )
    intervals = base.mark_rule(color="#222").encode(x="ci_low:Q", x2="ci_high:Q")
    return (bars + intervals).properties(height=max(120, 26 * len(rows)))


def distance_chart(profile: pd.DataFrame, *, color: str, title: str) -> alt.Chart:
    """``profile``: ``distance, share`` and a ``color`` column (variant, layer ...): mass by relative distance."""
    return (
        alt.Chart(profile, title=title)
        .mark_line(point=True)
        .encode(
            x=alt.X("distance:Q", title="key - query (tokens)"),
            y=alt.Y("share:Q", title="share of a query's attention"),
            color=alt.Color(f"{color}:N"),
            tooltip=[f"{color}:N", "distance:Q", alt.Tooltip("share:Q", format=".3f")],
        )
        .interactive()
    )


def interval_bars(table: pd.DataFrame, *, x: str, value: str, low: str, high: str, color: str, title: str) -> alt.Chart:
    """Bars of ``value`` per ``x`` (grouped by ``color``) with ``low``-``high`` interval rules."""
    base = alt.Chart(table, title=title).encode(
        x=alt.X(f"{x}:N", title=None),
        xOffset=alt.XOffset(f"{color}:N"),
    )
    bars = base.mark_bar().encode(
        y=alt.Y(f"{value}:Q", title=value),
        color=alt.Color(f"{color}:N"),
        tooltip=[f"{x}:N", f"{color}:N", alt.Tooltip(f"{value}:Q", format=".3f"),
                 alt.Tooltip(f"{low}:Q", format=".3f"), alt.Tooltip(f"{high}:Q", format=".3f")],
    )  # fmt: skip
    rules = base.mark_rule(color="#222").encode(y=f"{low}:Q", y2=f"{high}:Q")
    return bars + rules


def before_after_chart(table: pd.DataFrame, *, labels: dict[int, str]) -> alt.Chart:
    """Output probabilities before and after an attention edit (``counterfactual_outputs(...).table``)."""
    long = table.melt(
        id_vars=["output", "rank"], value_vars=["prob_before", "prob_after"], var_name="when", value_name="probability"
    )
    long["when"] = long["when"].map({"prob_before": "original", "prob_after": "edited"})
    long["output_label"] = [labels.get(int(o), str(o)) for o in long["output"]]
    order = table.sort_values("rank")["output"].map(lambda o: labels.get(int(o), str(o))).tolist()
    return (
        alt.Chart(long)
        .mark_bar()
        .encode(
            x=alt.X("output_label:N", sort=order, title="output"),
            xOffset=alt.XOffset("when:N", sort=["original", "edited"]),
            y=alt.Y("probability:Q", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("when:N", sort=["original", "edited"], scale=alt.Scale(range=["#888", "#b4043a"])),
            tooltip=["output_label:N", "when:N", alt.Tooltip("probability:Q", format=".4f")],
        )
    )
