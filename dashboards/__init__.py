"""The Streamlit dashboard of attn_probe: ``attn-probe dashboard [RUN_DIR]`` or ``streamlit run dashboards/app.py``.

Pages (``dashboards/views/``): Explore an example, A run, Counterfactual attention, Position variants. What the
pages show is prepared in :mod:`dashboards.data` (no Streamlit there, so tests check the numbers directly).
"""
