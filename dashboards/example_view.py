"""The example view, shared by the Explore page (a typed text) and the run page (an example of a run).

It shows, for one example: the text, target and prediction; every method's token highlights side by side (the
report's own token view, so both look and escape the same); the findings in words with their evidence; the
layer x head heatmaps (agreement with the references, attention sinks, entropy) and one head's attention
matrix; the agreement between methods; and the raw scores.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from attn_probe.report import TOKEN_VIEW_CSS, misleading_ranking, token_view, token_view_html
from dashboards import charts
from dashboards.data import ExampleData, attention_frame, head_grid

EVIDENCE_COLUMNS = ["finding", "subject", "layer", "head", "holds", "value", "threshold", "baseline", "evidence"]


def show_example(data: ExampleData, *, key: str) -> None:
    """Draw the example view of ``data``; ``key`` keeps this view's widgets apart from another's."""
    if data.scores.empty:
        st.warning(f"Example {data.example_id} has no scores: nothing to show.")
        return
    ranking = misleading_ranking(data.findings) if not data.findings.empty else None
    view = token_view(
        data.example_id,
        data.scores,
        title=f"Example {data.example_id}",
        methods=data.methods,
        findings=data.findings if not data.findings.empty else None,
        examples=data.examples if not data.examples.empty else None,
        ranking=ranking,
    )
    st.html(f"<style>{TOKEN_VIEW_CSS}</style>{token_view_html(view)}")
    st.caption(
        "Each method's row is coloured by score / its largest |score| on this example: red pushes the target up "
        "(or ranks high), blue pushes it down; hover a token for its score. Grey headers are special tokens."
    )
    findings_tab, heads_tab, agreement_tab, scores_tab = st.tabs(
        ["Evidence of the findings", "Attention heads", "Agreement between methods", "Scores"]
    )
    with findings_tab:
        _findings(data)
    with heads_tab:
        _heads(data, key=key)
    with agreement_tab:
        _agreement(data)
    with scores_tab:
        st.dataframe(data.score_table(), key=f"{key}-scores")


def _findings(data: ExampleData) -> None:
    """The evidence behind the statements of the card above: one row per judged case."""
    if data.findings.empty:
        st.info("No findings for this example (it was explained without checks).")
        return
    st.markdown(
        "Each finding of the card above, case by case: the measured **value**, the **threshold** it is judged "
        "against, and the **baseline** that would explain it away (random order, uniform attention, ...)."
    )
    columns = [c for c in EVIDENCE_COLUMNS if c in data.findings]
    st.dataframe(data.findings[columns], hide_index=True)


def _heads(data: ExampleData, *, key: str) -> None:
    shown = False
    agreement = data.evidence.get("head_agreement")
    if agreement is not None and not agreement.empty:
        grid = head_grid(agreement, "kendall_tau")
        st.altair_chart(
            charts.layer_head_heatmap(grid, "kendall_tau", title="Kendall tau of each head with the references"),
            width="stretch",
        )
        st.caption(
            "Each head's target-row attention ranked against the reference attributions (gradient / erasure), "
            "mean over references. Red: ranks tokens as they do; blue: the opposite order."
        )
        shown = True
    sinks = data.evidence.get("sinks")
    if sinks is not None and not sinks.empty:
        grid = head_grid(sinks, "special_share")
        st.altair_chart(
            charts.layer_head_heatmap(
                grid, "special_share", title="Share of attention on special tokens", diverging=False
            ),
            width="stretch",
        )
        shown = True
    if data.attention is not None:
        _attention_matrix(data, key=key)
        shown = True
    elif data.attention is None:
        st.info(
            "The full attention of this example was not kept (a run keeps it for a sample of its examples only; "
            "type the text on the Explore page to see it)."
        )
    if not shown:
        st.info("No per-head evidence for this example (run it with the agreement or sinks check).")


def _attention_matrix(data: ExampleData, *, key: str) -> None:
    attention = data.attention
    layers, heads = attention.shape[0], attention.shape[1]
    left, right = st.columns(2)
    layer = left.selectbox("Layer", list(range(layers)), index=layers - 1, key=f"{key}-layer")
    head = right.selectbox("Head", list(range(heads)), key=f"{key}-head")
    frame = attention_frame(attention, int(layer), int(head), data.tokens)
    st.altair_chart(charts.attention_matrix(frame, title=f"Attention of layer {layer}, head {head}"), width="stretch")
    rows = frame.groupby("query")["weight"].sum()
    st.caption(f"Each row sums to 1 (checked: {rows.min():.4f} to {rows.max():.4f}); darker = more weight.")


def _agreement(data: ExampleData) -> None:
    agreement = data.evidence.get("agreement")
    if agreement is None or agreement.empty:
        st.info("No agreement table for this example (run it with the agreement check).")
        return
    table = agreement.pivot_table(index="method_a", columns="method_b", values="kendall_tau", aggfunc="mean")
    st.markdown("**Kendall tau between the token rankings of each pair of methods** (1 = same order, 0 = unrelated):")
    st.dataframe(table.round(3))
    columns = [c for c in ("method_a", "method_b", "kendall_tau", "kendall_p", "spearman_rho", "topk_jaccard", "k")]
    st.dataframe(agreement[[c for c in columns if c in agreement]], hide_index=True)


def example_ids_label(examples: pd.DataFrame, example_id: int) -> str:
    """``"12: the first words of the text"`` for a picker (the text truncated; shown as plain text)."""
    row = examples[examples["example_id"] == example_id]
    text = str(row["text"].iloc[0]) if len(row) and "text" in row else ""
    return f"{example_id}: {text[:70]}{'...' if len(text) > 70 else ''}"
