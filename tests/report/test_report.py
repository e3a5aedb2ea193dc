"""write_report: a standalone HTML page and a Markdown twin with PNG / SVG figures, every section, escaped data."""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ElementTree
from html.parser import HTMLParser
from pathlib import Path

import pytest

from attn_probe.report import build_report, write_report
from tests.report.conftest import IMG, SCRIPT

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ["head-agreement-0", "method-agreement", "faithfulness", "sinks", "distance", "mean-distance",
           "counterfactuals", "findings"]  # fmt: skip
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "nav", "ol", "ul", "li",
                "a", "section", "dl", "dt", "dd", "table", "caption", "thead", "tbody", "tr", "th", "td", "figure",
                "img", "figcaption", "div", "span"}  # fmt: skip


class _Tags(HTMLParser):
    """Every start tag with its attributes, as a browser's tokenizer would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def tags_of(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(page)
    parser.close()
    return parser.tags


@pytest.fixture(scope="module")
def written(full_run, tmp_path_factory):
    return write_report(full_run, tmp_path_factory.mktemp("report"))


def test_report_has_every_section(written, full_run):
    assert set(written) == {"html", "md", "figures"}
    page = written["html"].read_text()
    markdown = written["md"].read_text()
    sections = ["What was run", "Headline findings", "Where attention is a fair explanation", "Figures", "Gallery",
                "Caveats and uncertainty", "What the methods assume", "bootstrap 95%", "Wilson 95%"]  # fmt: skip
    for text in sections:
        assert text in page and text in markdown, text
    # what was run: model, data, methods with family and sign, checks, thresholds, versions, timing, accuracy
    for text in ("tiny", "6 examples done", "raw_attention", "leave_one_out", "perturbation", "signed:",
                 "counterfactuals", "disagreement_tau", "transformers", "Elapsed", "Finished", "Accuracy"):  # fmt: skip
        assert text in page, text
    assert "labelled examples predicted as labelled" in markdown
    # headline sentences with their numbers
    assert re.search(r"\d+ of \d+ (examples|\(example, head\) cases)", page)
    # every figure, embedded in the page and saved beside the Markdown
    for name in FIGURES:
        assert f'id="figure-{name}"' in page, name
        assert f"(figures/{name}.png)" in markdown and f"(figures/{name}.svg)" in markdown, name
    assert "No deletion / insertion curves" in page  # the run has no curves table: one line says so
    # the gallery: misleading and faithful examples, each method's tokens side by side
    assert page.count(": where attention misleads most</h3>") == 3
    assert page.count(": where attention is most faithful</h3>") == 2
    assert page.count('<div class="card">') == 5
    assert 'class="method">saliency</th>' in page and "background-color: rgba(" in page
    assert "| method | top 5 tokens by" in markdown


def test_html_is_standalone(written):
    page = written["html"].read_text()
    assert not re.search(r"https?://", page)
    tags = tags_of(page)
    assert {tag for tag, _ in tags} <= ALLOWED_TAGS
    images = [attrs["src"] for tag, attrs in tags if tag == "img"]
    assert len(images) == len(FIGURES)
    for source in images:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(PNG_SIGNATURE)
    for tag, attrs in tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        if "href" in attrs:
            assert attrs["href"].startswith("#"), attrs
    assert any(tag == "meta" and "default-src 'none'" in (attrs.get("content") or "") for tag, attrs in tags)


def test_markdown_figures_exist_and_are_valid(written):
    markdown = written["md"].read_text()
    linked = re.findall(r"\]\((figures/[^)]+)\)", markdown)
    assert linked
    for relative in set(linked):
        path = written["md"].parent / relative
        assert path.is_file(), relative
        if path.suffix == ".png":
            assert path.read_bytes().startswith(PNG_SIGNATURE)
        else:
            assert path.suffix == ".svg"
            assert ElementTree.parse(path).getroot().tag.endswith("svg")
    assert sorted(p.name for p in written["figures"].iterdir()) == sorted(
        f"{name}.{ext}" for name in FIGURES for ext in ("png", "svg")
    )


def test_data_is_escaped_everywhere(hostile_run, tmp_path):
    paths = write_report(hostile_run, tmp_path / "report")
    page = paths["html"].read_text()
    assert "<script" not in page.lower() and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # token, text, model, method, statements
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page  # token, label, target
    tags = tags_of(page)
    assert {tag for tag, _ in tags} <= ALLOWED_TAGS
    assert not any(name.startswith("on") for _, attrs in tags for name in attrs)
    assert len([tag for tag, _ in tags if tag == "img"]) >= 6  # figures drawn with markup and $ in their labels
    markdown = paths["md"].read_text()
    assert "<script" not in markdown.lower() and "<img" not in markdown
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in markdown
    assert r"$5 \| \`x\` $$" in markdown  # a pipe and backticks in a table cell cannot break the table
    tables = re.findall(r"(?:^\|.*\|$\n?)+", markdown, flags=re.MULTILINE)
    assert len(tables) > 5
    for table in tables:  # every row of a table has as many cells as its header: no pipe from data split one
        counts = {len(re.findall(r"(?<!\\)\|", line)) for line in table.splitlines()}
        assert len(counts) == 1, table
    for svg in paths["figures"].glob("*.svg"):
        assert "<script" not in svg.read_text().lower(), svg.name


def test_sections_without_tables_are_skipped_with_a_note(agreement_run, tmp_path):
    paths = write_report(agreement_run, tmp_path)
    markdown = paths["md"].read_text()
    for table, check in (("eraser", "erasure"), ("sinks", "sinks"), ("counterfactuals", "counterfactuals")):
        assert f"Skipped: the run has no {table} table (run with the {check} check to get it)." in markdown
    assert "No distance table and no sampled attention matrices" in markdown
    assert "figures/method-agreement.png" in markdown and "figures/head-agreement-0.png" in markdown
    assert "Accuracy" not in markdown  # no labels: no accuracy line
    page = paths["html"].read_text()
    assert "Gallery" in page and "Caveats and uncertainty" in page


def test_formats_default_folder_and_atomic_files(full_run, tmp_path):
    only_html = write_report(full_run, tmp_path / "html", formats="html")
    assert set(only_html) == {"html"} and not (tmp_path / "html" / "figures").exists()
    assert set(write_report(full_run, tmp_path / "md", formats=["md"])) == {"md", "figures"}
    assert not (tmp_path / "md" / "report.html").exists()
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob(".*"))  # temporary files renamed
    with pytest.raises(ValueError, match="choose html, md or both"):
        write_report(full_run, tmp_path / "x", formats=("pdf",))
    assert not (tmp_path / "x").exists()  # refused before anything is written


def test_default_folder_is_inside_the_run(full_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(full_run.path, copy)
    paths = write_report(copy, formats="html")
    assert paths["html"] == copy / "report" / "report.html"
    from attn_probe.store import load_run

    assert load_run(copy).verify() == []  # the report folder does not disturb the run


def test_document_is_built_without_writing(agreement_run):
    document = build_report(agreement_run, resamples=50)
    assert [s.key for s in document.sections] == ["run", "findings", "figures", "gallery", "caveats"]
    assert Path(agreement_run.path, "report").exists() is False


@pytest.mark.parametrize("escape_me", [SCRIPT, IMG])
def test_markdown_escape(escape_me):
    from attn_probe.report.document import md_escape

    escaped = md_escape(escape_me + " | `code` [x](y)\nnext")
    assert "<" not in escaped and ">" not in escaped and "\n" not in escaped
    assert r"\|" in escaped and r"\`code\`" in escaped and r"\[x\]" in escaped
