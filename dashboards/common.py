"""What every page shares: the model, text and run directory chosen (kept across pages in session state),
cached loading of models, runs and explanations, and errors shown as one-line messages in the page, never
tracebacks. Any text that comes from data (tokens, texts, labels, paths, model names) goes to the page through
:func:`safe` (Markdown) or the report's escaped HTML, never as markup.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import streamlit as st

from attn_probe.report import md_escape
from dashboards.data import ExampleData, example_from_result, example_from_run

RUN_DIR_ENV = "ATTN_PROBE_RUN_DIR"  # a run directory to open, when not given on the command line
RUN_ROOT_ENV = "ATTN_PROBE_RUN_ROOT"  # the folder runs may be opened from, when not given on the command line
DEFAULT_MODEL = "minilm-sentiment"
DEFAULT_TEXT = "a gorgeous, witty, seductive movie, though the ending drags"
STATE_MODEL, STATE_TEXT, STATE_RUN = "model_name", "text", "run_dir"


# ----------------------------------------------------------------------------------------------------
# start-up arguments and shared choices
# ----------------------------------------------------------------------------------------------------
def _app_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """The app's own arguments: what follows ``--`` in ``streamlit run app.py -- --run-dir D --run-root R``."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--run-root", default=None)
    known, _ = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    return known


def startup_run_dir(argv: Sequence[str] | None = None) -> str | None:
    """The run directory the dashboard was started with: ``--run-dir PATH`` (what ``attn-probe dashboard
    RUN_DIR`` passes), else the ``ATTN_PROBE_RUN_DIR`` environment variable."""
    return _app_arguments(argv).run_dir or os.environ.get(RUN_DIR_ENV) or None


def run_root(argv: Sequence[str] | None = None) -> Path:
    """The folder runs may be opened from: ``--run-root``, else ``ATTN_PROBE_RUN_ROOT``, else the start-up run
    directory's parent, else the current directory. Paths typed in the page cannot leave it."""
    given = _app_arguments(argv).run_root or os.environ.get(RUN_ROOT_ENV)
    if given:
        return Path(given).expanduser().resolve()
    start = startup_run_dir(argv)
    return Path(start).expanduser().resolve().parent if start else Path.cwd().resolve()


def resolve_inside(typed: str, roots: Sequence[Path], what: str) -> Path:
    """``typed`` (a path from the page) resolved inside one of ``roots``: relative paths start at the first root;
    ``..`` and symbolic links are resolved before the check, so nothing outside can be reached."""
    roots = [root.resolve() for root in roots]
    path = Path(typed.strip()).expanduser()
    resolved = (path if path.is_absolute() else roots[0] / path).resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        allowed = " or ".join(str(root) for root in roots)
        raise ValueError(
            f"{typed.strip()} is outside the folders this dashboard opens {what} from ({allowed}); choose one inside, "
            "or start the dashboard with --run-root set to a folder that holds it"
        )
    return resolved


def resolve_run_dir(typed: str, root: Path | None = None) -> str:
    """The run directory ``typed`` in the page, as an absolute path inside the run root."""
    return str(resolve_inside(typed, [root or run_root()], "runs"))


def init_state() -> None:
    """Defaults of the choices the pages share (set once per browser session)."""
    st.session_state.setdefault(STATE_MODEL, DEFAULT_MODEL)
    st.session_state.setdefault(STATE_TEXT, DEFAULT_TEXT)
    st.session_state.setdefault(STATE_RUN, startup_run_dir() or "")


def safe(value: object) -> str:
    """``value`` as Markdown that shows exactly its text: Markdown, HTML and Streamlit's ``$`` math escaped."""
    return md_escape(value).replace("$", "\\$")


# ----------------------------------------------------------------------------------------------------
# errors: a clear message in the page, never a traceback
# ----------------------------------------------------------------------------------------------------
def one_line(error: BaseException) -> str:
    """An exception's message on one line (a KeyError's without its quotes)."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(text.split()) or type(error).__name__


@contextmanager
def shown_errors(what: str) -> Iterator[None]:
    """Run the block; on an error show ``what`` failed and why in the page, and stop this page's script there
    (the rest of the page needs what failed). Streamlit's own stop / rerun signals are BaseExceptions and pass."""
    try:
        yield
    except (ValueError, OSError, KeyError, LookupError, RuntimeError, ImportError, TypeError) as error:
        st.error(f"{safe(what)}: {safe(one_line(error))}")
        st.stop()
    except Exception as error:  # anything else still ends as a message, with its type to report it by
        st.error(f"{safe(what)} failed unexpectedly ({type(error).__name__}): {safe(one_line(error))}")
        st.stop()


# ----------------------------------------------------------------------------------------------------
# cached loading
# ----------------------------------------------------------------------------------------------------
@st.cache_resource(show_spinner=False, max_entries=3)
def load_probe(name: str) -> Any:
    """A :class:`~attn_probe.Probe` for ``name`` (offline name, Hugging Face id or local path), loaded once per
    server process and shared by every session (models are read-only here)."""
    from attn_probe import Probe

    cleaned = name.strip()
    if not cleaned:
        raise ValueError("no model given: type an offline name (e.g. minilm-sentiment), a Hugging Face id or a path")
    return Probe.load(cleaned)


def run_stamp(path: str) -> float:
    """When the run's manifest last changed: part of the cache key, so a run still being written reloads."""
    manifest = Path(path) / "manifest.json"
    return manifest.stat().st_mtime if manifest.is_file() else 0.0


@st.cache_resource(show_spinner=False, max_entries=8)
def open_run(path: str, stamp: float) -> Any:
    """The run directory ``path`` (read-only; ``stamp`` from :func:`run_stamp`), which must lie in the run root."""
    from attn_probe.store import load_run

    if not path.strip():
        raise ValueError("no run directory given: type the path of a directory made by `attn-probe run`")
    return load_run(resolve_run_dir(path), verify=False)


@st.cache_data(show_spinner=False, max_entries=16)
def run_table(path: str, stamp: float, name: str) -> Any:
    """Table ``name`` of the run (a DataFrame), read once per run version."""
    return open_run(path, stamp).table(name)


@st.cache_data(show_spinner=False, max_entries=64)
def run_example(path: str, stamp: float, example_id: int) -> ExampleData:
    """One example of a run, as the example view shows it."""
    return example_from_run(open_run(path, stamp), example_id)


@st.cache_data(show_spinner=False, max_entries=32)
def explain_text(model_name: str, text: str, methods: tuple[str, ...], checks: tuple[str, ...]) -> ExampleData:
    """Explain one text with the model: every method, the checks, the findings (cached per input)."""
    if not text.strip():
        raise ValueError("the text is empty: type a sentence to explain")
    probe = load_probe(model_name)
    with warnings.catch_warnings(record=True) as caught:  # shown in the page, not only on the server's console
        warnings.simplefilter("always")
        result = probe.explain([text], methods=list(methods), checks=list(checks))
    data = example_from_result(result, 0)
    data.notes = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
    return data


def model_choices() -> list[str]:
    """The offline model names (``attn-probe models``), for the model picker."""
    from attn_probe.models.offline import describe_offline

    try:
        return [str(name) for name in describe_offline()["name"]]
    except Exception:  # a listing problem must not block typing a name or path
        return [DEFAULT_MODEL]
