"""Nothing injected: no file this project reads can run code, and the dashboard serves only this machine.

The source itself is scanned, so a later change that adds an unsafe load fails here with the line to fix.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
SOURCES = [
    path
    for folder in ("attn_probe", "dashboards", "analyses", "benchmarks")
    for path in sorted((REPOSITORY / folder).rglob("*.py"))
]
UNSAFE = {
    r"\bpickle\.loads?\(": "pickle runs code from the file: store tables as Parquet, arrays with np.save",
    r"\bdill\.|\bjoblib\.load\(": "these unpickle: same risk as pickle",
    r"allow_pickle\s*=\s*True": "np.load with pickles runs code from the file",
    r"(?<![.\w])(eval|exec)\(": "never evaluate text as code (model.eval() is fine: a method)",
    r"trust_remote_code\s*=\s*True\s*[,)]": "remote code stays off unless the user passes it",
    r"unsafe_allow_html\s*=\s*True": "data reaches the dashboard as escaped text, never as raw HTML",
    r"components\.html\(": "a component iframe runs scripts: data must not reach one",
}


def lines_matching(pattern: str) -> list[str]:
    found = []
    for path in SOURCES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#", 1)[0]
            if re.search(pattern, code):
                found.append(f"{path.relative_to(REPOSITORY)}:{number}: {line.strip()}")
    return found


def test_the_sources_are_found():
    assert len(SOURCES) > 50 and any(p.name == "app.py" for p in SOURCES)


@pytest.mark.parametrize("pattern", sorted(UNSAFE))
def test_no_unsafe_load_or_markup(pattern):
    assert lines_matching(pattern) == [], UNSAFE[pattern]


def test_every_torch_load_is_weights_only():
    calls = lines_matching(r"\btorch\.load\(")
    unsafe = [line for line in calls if "weights_only=True" not in line]
    assert unsafe == [], "torch.load without weights_only=True unpickles arbitrary code"


def test_the_dashboard_serves_this_machine_by_default():
    text = (REPOSITORY / ".streamlit" / "config.toml").read_text()  # what `streamlit run` reads from here
    sections = dict(re.findall(r"^\[(\w+)\]\n((?:(?!\[).*\n?)*)", text, flags=re.MULTILINE))  # no tomllib on 3.10
    assert re.search(r'^address = "127\.0\.0\.1"$', sections["server"], flags=re.MULTILINE)
    assert re.search(r"^gatherUsageStats = false$", sections["browser"], flags=re.MULTILINE)
