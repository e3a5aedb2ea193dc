"""The attn_probe dashboard: ``streamlit run dashboards/app.py [-- --run-dir RUN_DIR]`` or
``attn-probe dashboard [RUN_DIR]`` (which binds to localhost).

Four pages: explore one example, browse a run, edit attention and watch the output, and compare position
variants. Opened with a run directory, it starts on the run page.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run dashboards/app.py` puts dashboards/ itself on the path; the pages import `dashboards.*`.
_REPOSITORY = Path(__file__).resolve().parent.parent
if str(_REPOSITORY) not in sys.path:
    sys.path.insert(0, str(_REPOSITORY))

import streamlit as st  # noqa: E402

from dashboards.common import init_state, startup_run_dir  # noqa: E402

st.set_page_config(page_title="attn_probe", page_icon="🔎", layout="wide")
init_state()
# views/, not pages/: a pages/ folder beside app.py would also be served page by page, without app.py
_PAGES = Path(__file__).resolve().parent / "views"
_STARTED_WITH_RUN = bool(startup_run_dir())  # then the run page is the one that opens
pages = [
    st.Page(
        _PAGES / "explore.py", title="Explore an example", icon="🔎", url_path="explore", default=not _STARTED_WITH_RUN
    ),
    st.Page(_PAGES / "run.py", title="A run", icon="📂", url_path="run", default=_STARTED_WITH_RUN),
    st.Page(_PAGES / "counterfactual.py", title="Counterfactual attention", icon="🔀", url_path="counterfactual"),
    st.Page(_PAGES / "position.py", title="Position variants", icon="📏", url_path="position"),
]
st.navigation(pages).run()
