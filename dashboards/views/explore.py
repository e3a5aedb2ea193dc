"""Explore an example: pick a model, type a text (or take one from the open run), and see what every method
says about it, how the heads attend, and which findings about attention hold on it."""

from __future__ import annotations

import streamlit as st

from attn_probe.findings import CHECKS
from attn_probe.methods import list_methods
from attn_probe.probe import DEFAULT_CHECKS, DEFAULT_METHODS
from dashboards.common import (
    STATE_MODEL,
    STATE_RUN,
    STATE_TEXT,
    explain_text,
    init_state,
    model_choices,
    resolve_run_dir,
    run_stamp,
    run_table,
    safe,
    shown_errors,
)
from dashboards.example_view import example_ids_label, show_example

REQUEST = "explore-request"  # the inputs of the last Explain press: what the page shows


def _run_example_text() -> str:
    """The text of an example of the open run, picked in a selectbox ("" when no run is open)."""
    run_dir = st.session_state.get(STATE_RUN, "")
    if not run_dir:
        st.info("No run is open: open one on the 'A run' page, or type a text.")
        return ""
    with shown_errors(f"Could not open the run {run_dir}"):
        path = resolve_run_dir(run_dir)
        examples = run_table(path, run_stamp(path), "examples")
    ids = [int(i) for i in examples["example_id"]]
    picked = st.selectbox(
        "Example of the run", ids, format_func=lambda i: example_ids_label(examples, i), key="explore-pick"
    )
    return str(examples.loc[examples["example_id"] == picked, "text"].iloc[0])


init_state()
st.title("Explore an example")
st.caption(
    "Every method explains the same target (the predicted class's logit, or the top next token); the attention-"
    "derived methods are then judged against the gradient and erasure references."
)

offline = model_choices()
source = st.radio("Text from", ["Typing", "An example of the open run"], horizontal=True, key="explore-source")
with st.form("explore"):
    model_name = st.text_input(
        "Model",
        value=st.session_state[STATE_MODEL],
        help=f"An offline model ({', '.join(offline)}), a Hugging Face id or a local directory.",
        key="explore-model",
    )
    if source == "Typing":
        text = st.text_area("Text to explain", value=st.session_state[STATE_TEXT], height=80, key="explore-text")
    else:
        text = _run_example_text()
    methods = st.multiselect(
        "Methods", list_methods()["id"].tolist(), default=list(DEFAULT_METHODS), key="explore-methods"
    )
    checks = st.multiselect("Checks", list(CHECKS), default=list(DEFAULT_CHECKS), key="explore-checks")
    submitted = st.form_submit_button("Explain", type="primary")

if submitted:
    st.session_state[STATE_MODEL], st.session_state[STATE_TEXT] = model_name.strip(), text
    st.session_state[REQUEST] = (model_name.strip(), text, tuple(methods), tuple(checks))
request = st.session_state.get(REQUEST)
if request is None:
    st.info("Choose a model and a text, then press Explain (the first use of a model loads it; results are cached).")
    st.stop()
model_name, text, methods, checks = request
if not model_name:
    st.error("No model given: type an offline name (e.g. minilm-sentiment), a Hugging Face id or a local path.")
    st.stop()
if not text.strip():
    st.error("The text is empty: type a sentence to explain.")
    st.stop()
if not methods:
    st.error("No method chosen: pick at least one attention-derived method and one reference.")
    st.stop()

with (
    st.status(f"Explaining with {safe(model_name)} ...", expanded=False) as status,
    shown_errors(f"Could not explain the text with model {model_name}"),
):
    status.write("Loading the model (once per server) and running every method and check ...")
    data = explain_text(model_name, text, tuple(methods), tuple(checks))
    status.update(label=f"Explained with {safe(model_name)}", state="complete")

for note in data.notes:
    st.warning(safe(note))
row = data.row
left, middle, right = st.columns(3)
left.metric("Tokens", int(row["n_tokens"]))
middle.metric("Prediction", str(row["prediction"]))
findings = data.findings
judged = findings["holds"].dropna() if not findings.empty else findings
right.metric("Findings holding", f"{int(judged.astype(bool).sum())} of {len(judged)}" if len(judged) else "none judged")
st.markdown(f"**Model:** {safe(data.model)}  \n**Target:** {safe(row['target'])}")
show_example(data, key="explore")
