"""Counterfactual attention: replace one layer's (or one head's) attention and watch the output.

If attention explained the prediction, a different attention should give a different output. Permuting a
head's weights, making them uniform, or replacing them with the position-only pattern (frozen) tests that
(Jain & Wallace 2019); the adversarial search looks for the most different attention that keeps the output
within epsilon.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from attn_probe.compare import adversarial_attention, attention_counterfactuals, counterfactual_outputs
from dashboards import charts
from dashboards.common import STATE_MODEL, STATE_TEXT, init_state, load_probe, safe, shown_errors
from dashboards.data import attention_frame

EDITS = {
    "permute": "permute: each query row's weights shuffled among its keys",
    "uniform": "uniform: each query row spread evenly over its keys",
    "frozen": "frozen: the position-only pattern of a content-free input",
    "adversarial": "adversarial: the most different attention that keeps the output within epsilon",
}
ALL_HEADS = "all heads"


@st.cache_data(show_spinner=False, max_entries=16)
def shape_of(model_name: str, text: str) -> tuple[list[str], int, int]:
    """``(tokens, layers, heads)`` of the model's main stack on ``text`` (one capture)."""
    from attn_probe.capture import capture

    probe = load_probe(model_name)
    batch = probe.tokenize([text])
    weights = capture(probe.model, batch, keep_values=False, measure_drift=False).weights  # [1, L, H, n, n]
    return list(batch.tokens[0]), int(weights.shape[1]), int(weights.shape[2])


@st.cache_data(show_spinner=False, max_entries=32)
def counterfactual(
    model_name: str, text: str, layer: int, head: int | None, edit: str, seeds: tuple[int, ...], epsilon: float,
    steps: int,
) -> dict[str, Any]:  # fmt: skip
    """Everything the page shows for one edit: the library's distance table, and (except for the adversary)
    the output distribution before / after and the edited weights of the first seed."""
    probe = load_probe(model_name)
    batch = probe.tokenize([text])
    if edit == "adversarial":
        table = adversarial_attention(
            probe.model, batch, layer=layer, head=head, epsilon=epsilon, steps=steps, tokenizer=probe.tokenizer
        )
        return {"table": table}
    table = attention_counterfactuals(
        probe.model, batch, interventions=[edit], layers=[layer], heads="all" if head is None else [head],
        seeds=seeds, tokenizer=probe.tokenizer,
    )  # fmt: skip
    full = counterfactual_outputs(
        probe.model, batch, layer=layer, head=head, intervention=edit, seed=seeds[0], tokenizer=probe.tokenizer
    )
    real = batch.attention_mask[0].bool()
    old = full.old[0].float().mean(0)[real][:, real].numpy()  # [n, n] real tokens, mean over the edited heads
    new = full.new[0].float().mean(0)[real][:, real].numpy()
    return {"table": table, "outputs": full.table, "old": old, "new": new}


def output_labels(probe: Any, outputs: pd.DataFrame) -> dict[int, str]:
    """Readable names of output ids: the classifier's ``id2label``, or the language model's decoded token."""
    config = getattr(probe.model, "config", None)
    names = getattr(config, "id2label", None) or {}
    labels = {}
    for output in outputs["output"].astype(int):
        if names and output in names:
            labels[output] = f"{output}: {names[output]}"
        elif probe.tokenizer is not None and getattr(probe.model, "config", None) is not None and not names:
            labels[output] = f"{output}: {probe.tokenizer.decode([output])!r}"
        else:
            labels[output] = str(output)
    return labels


init_state()
st.title("Counterfactual attention")
st.caption(
    "Does the output depend on this attention? Replace it and compare. Near-zero output change under a large "
    "attention change means the attention map was not what the prediction rested on."
)
with st.form("counterfactual-input"):
    model_name = st.text_input("Model", value=st.session_state[STATE_MODEL], key="cf-model").strip()
    text = st.text_area("Text", value=st.session_state[STATE_TEXT], height=80, key="cf-text")
    if st.form_submit_button("Use this model and text"):
        st.session_state[STATE_MODEL], st.session_state[STATE_TEXT] = model_name, text
model_name, text = st.session_state[STATE_MODEL].strip(), st.session_state[STATE_TEXT]
if not model_name:
    st.error("No model given: type an offline name (e.g. minilm-sentiment), a Hugging Face id or a local path.")
    st.stop()
if not text.strip():
    st.error("The text is empty: type a sentence to edit the attention of.")
    st.stop()

with st.spinner(f"Loading {safe(model_name)} ..."), shown_errors(f"Could not run model {model_name} on the text"):
    tokens, num_layers, num_heads = shape_of(model_name, text)
    probe = load_probe(model_name)

left, middle, right = st.columns(3)
layer = left.selectbox("Layer", list(range(num_layers)), index=num_layers - 1, key="cf-layer")
head_choice = middle.selectbox("Head", [ALL_HEADS, *range(num_heads)], key="cf-head")
edit = right.radio("Edit", list(EDITS), format_func=lambda e: EDITS[e], key="cf-edit")
seeds: tuple[int, ...] = (0,)
epsilon, steps = 0.01, 150
if edit == "permute":
    count = st.number_input("Permutations (seeds 0, 1, ...)", min_value=1, max_value=20, value=5, key="cf-seeds")
    seeds = tuple(range(int(count)))
if edit == "adversarial":
    a, b = st.columns(2)
    epsilon = float(a.number_input("epsilon (output TVD allowed)", 0.001, 0.5, 0.01, step=0.005, key="cf-epsilon"))
    steps = int(b.number_input("Search steps", 10, 1000, 150, step=10, key="cf-steps"))
head = None if head_choice == ALL_HEADS else int(head_choice)

with st.spinner("Editing the attention and running the model ..."), shown_errors("The counterfactual failed"):
    result = counterfactual(model_name, text, int(layer), head, edit, seeds, epsilon, steps)

table = result["table"]
where = f"layer {layer}, " + ("all heads" if head is None else f"head {head}")
if edit == "adversarial":
    row = table.iloc[0]
    a, b, c = st.columns(3)
    a.metric("Found within epsilon", "yes" if bool(row["feasible"]) else "no")
    b.metric("Attention JSD found", f"{row['attention_jsd']:.3f}", help=f"of at most ln 2 = {np.log(2):.3f} nats")
    c.metric("Output TVD", f"{row['output_tvd']:.4f}", help=f"allowed: {epsilon}")
    st.markdown(
        f"The search ({int(row['steps'])} steps) changed the attention of {safe(where)} by a Jensen-Shannon divergence "
        f"of {row['attention_jsd']:.3f} (at most {np.log(2):.3f}) while the output moved by a total variation of "
        f"{row['output_tvd']:.4f}. A large divergence within a small epsilon: this attention was one of many that "
        "give the same output."
    )
else:
    a, b, c, d = st.columns(4)
    a.metric("Output TVD (mean)", f"{table['output_tvd'].mean():.4f}", help="total variation distance, 0..1")
    b.metric("Target change (mean)", f"{table['target_change'].mean():+.4f}")
    c.metric("Prediction flips", f"{int(table['prediction_flips'].sum())} of {len(table)}")
    d.metric("Attention JSD (mean)", f"{table['attention_jsd'].mean():.3f}", help="how much the attention changed")
    st.altair_chart(charts.before_after_chart(result["outputs"], labels=output_labels(probe, result["outputs"])))
    st.caption(f"Output probabilities with the original attention and with the {edit} edit of {where}"
               + (f" (seed {seeds[0]})" if edit == "permute" else "") + ".")  # fmt: skip
    before, after = st.columns(2)
    what = "" if head is not None else " (mean over heads)"
    before.altair_chart(charts.attention_matrix(attention_frame(result["old"][None, None], 0, 0, tokens),
                                                title=f"Original attention{what}"), width="stretch")  # fmt: skip
    after.altair_chart(charts.attention_matrix(attention_frame(result["new"][None, None], 0, 0, tokens),
                                               title=f"Edited attention{what}"), width="stretch")  # fmt: skip
st.dataframe(table, hide_index=True, key="cf-table")
