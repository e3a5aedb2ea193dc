"""What the dashboard tests share: a tiny classifier saved as a model directory (what a user types into the
model box), a run of it (what the run page opens), and AppTest started on a page of the app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from attn_probe import Probe
from tests.threads import one_torch_thread

APP = Path(__file__).resolve().parents[2] / "dashboards" / "app.py"
TEXTS = ["a gorgeous, witty movie", "dull and slow, a lifeless film", "superb acting", "it is what it is"]
METHODS = ["raw_attention", "attention_rollout", "leave_one_out", "saliency"]
CHECKS = ["agreement", "erasure", "flips", "sinks", "counterfactuals"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, model_dir) -> Path:
    """A complete run of the saved model on four texts, with every example's attention kept (sample=4)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    probe = Probe.load(str(model_dir))
    probe.run(TEXTS, out, methods=METHODS, checks=CHECKS, sample=len(TEXTS), batch_size=2, progress=False)
    return out


@pytest.fixture
def app(monkeypatch) -> Iterator[AppTest]:
    """The dashboard as AppTest sees it, started without a run directory (the Explore page opens)."""
    monkeypatch.delenv("ATTN_PROBE_RUN_DIR", raising=False)
    monkeypatch.setattr("sys.argv", ["app.py"])
    with one_torch_thread():  # AppTest runs the pages in this process: tiny models, steady on a shared machine
        yield AppTest.from_file(str(APP), default_timeout=180)


def page(app: AppTest, name: str) -> AppTest:
    """``app`` switched to ``dashboards/views/{name}.py`` and run."""
    app.run()
    return app.switch_page(f"views/{name}.py").run()


def no_problems(app: AppTest) -> None:
    """The page ran without an exception and shows no error message."""
    assert not app.exception, [e.value for e in app.exception]
    assert not app.error, [e.value for e in app.error]
