"""A report as plain blocks (paragraphs, facts, tables, figures, token views), and its HTML and Markdown forms.

The report's content is assembled once (:mod:`attn_probe.report.build`) as data, and rendered twice. Every
string a block holds is treated as untrusted text: the renderers escape all of it, so token text, example
texts, labels, method and model names never reach the page as markup. The HTML page is standalone: inline CSS,
figures embedded as base64 PNG, no script, no external resource, and a Content-Security-Policy that would block
scripts and remote loads even if something slipped through.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field

# ----------------------------------------------------------------------------------------------------
# blocks
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Paragraph:
    text: str
    note: bool = False  # a muted one-line note (e.g. "skipped: the run has no sinks table")


@dataclass(frozen=True)
class Heading:
    text: str


@dataclass(frozen=True)
class Facts:
    """Label: value lines."""

    items: list[tuple[str, str]]


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass(frozen=True)
class Plot:
    """A rendered figure: ``name`` is its file stem (``figures/<name>.png`` / ``.svg`` beside the Markdown)."""

    name: str
    title: str
    caption: str
    png: bytes
    svg: bytes


@dataclass(frozen=True)
class TokenView:
    """One example of the gallery: its tokens coloured by each method's scores, side by side.

    ``scores``: method -> one float per shown token, already divided by the method's largest ``|score|`` over
    the example (so in [-1, 1]); ``raw``: the same, unscaled (shown on hover and in the Markdown table).
    """

    title: str
    facts: list[tuple[str, str]]
    statements: list[tuple[bool | None, str]]
    tokens: list[str]
    special: list[bool]
    scores: dict[str, list[float]]
    raw: dict[str, list[float]]
    hidden_tokens: int = 0  # tokens of the example past the ones shown
    top: int = 5


Block = Paragraph | Heading | Facts | Bullets | Table | Plot | TokenView


@dataclass
class Section:
    key: str  # the anchor: letters, digits and dashes only
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Document:
    title: str
    subtitle: str
    sections: list[Section]

    def plots(self) -> list[Plot]:
        return [block for section in self.sections for block in section.blocks if isinstance(block, Plot)]


# ----------------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------------
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
# what a token view needs (the report page and the dashboard both use it)
TOKEN_VIEW_CSS = """
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 0.15em 1em; }
dl.facts dt { font-weight: 600; }
dl.facts dd { margin: 0; }
.tokens { overflow-x: auto; }
.tokens table { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.85em; }
.tokens td { white-space: pre; border-color: #eee; }
.tokens th.method { white-space: nowrap; }
.tokens .special { color: #888; }
.holds { color: #b00020; } .fair { color: #1b7a1b; } .na { color: #777; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.2em 1em 0.8em; margin: 1.2em 0; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f6; }
"""
_CSS = (
    TOKEN_VIEW_CSS
    + """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f; margin: 0 auto;
       max-width: 1100px; padding: 1.5em 2em 4em; }
h1 { font-size: 1.7em; margin-bottom: 0.1em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
h3 { margin-top: 1.5em; }
.subtitle { color: #555; margin-top: 0; }
.note { color: #777; font-style: italic; }
nav ol { columns: 2; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f6; }
caption { caption-side: bottom; color: #666; font-size: 0.85em; text-align: left; padding-top: 0.3em; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
"""
)


def _h(value: object) -> str:
    """Any value as HTML text: ``&``, ``<``, ``>`` and both quotes escaped."""
    return html.escape(str(value), quote=True)


def render_html(document: Document) -> str:
    """The standalone HTML page of ``document`` (no script, no external resource; figures as data URLs)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_h(document.title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{_h(document.title)}</h1>",
        f'<p class="subtitle">{_h(document.subtitle)}</p>',
        "<nav><ol>",
        *(f'<li><a href="#{_anchor(s.key)}">{_h(s.title)}</a></li>' for s in document.sections),
        "</ol></nav>",
    ]
    for section in document.sections:
        parts.append(f'<section id="{_anchor(section.key)}">')
        parts.append(f"<h2>{_h(section.title)}</h2>")
        parts.extend(_html_block(block) for block in section.blocks)
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _html_block(block: Block) -> str:
    if isinstance(block, Paragraph):
        return f'<p class="note">{_h(block.text)}</p>' if block.note else f"<p>{_h(block.text)}</p>"
    if isinstance(block, Heading):
        return f"<h3>{_h(block.text)}</h3>"
    if isinstance(block, Facts):
        items = "".join(f"<dt>{_h(label)}</dt><dd>{_h(value)}</dd>" for label, value in block.items)
        return f'<dl class="facts">{items}</dl>'
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{_h(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Table):
        head = "".join(f"<th>{_h(cell)}</th>" for cell in block.header)
        body = "".join("<tr>" + "".join(f"<td>{_h(cell)}</td>" for cell in row) + "</tr>" for row in block.rows)
        caption = f"<caption>{_h(block.caption)}</caption>" if block.caption else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(block, Plot):
        data = base64.b64encode(block.png).decode("ascii")
        return (
            f'<figure id="figure-{_anchor(block.name)}">'
            f'<img alt="{_h(block.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_h(block.caption)}</figcaption></figure>"
        )
    if isinstance(block, TokenView):
        return token_view_html(block)
    raise TypeError(f"unknown report block {type(block).__name__}")


def token_view_html(view: TokenView) -> str:
    """One token view as an HTML fragment (a ``div.card``; style it with :data:`TOKEN_VIEW_CSS`): every string
    escaped, colours computed from the scores only."""
    facts = "".join(f"<dt>{_h(label)}</dt><dd>{_h(value)}</dd>" for label, value in view.facts)
    marks = {True: ("holds", "holds"), False: ("fair", "does not hold"), None: ("na", "not assessable")}
    statements = "".join(
        f'<li><span class="{marks[holds][0]}">[{marks[holds][1]}]</span> {_h(text)}</li>'
        for holds, text in view.statements
    )
    head = "<th>method</th>" + "".join(
        f'<th class="special">{_h(t)}</th>' if special else f"<th>{_h(t)}</th>"
        for t, special in zip(view.tokens, view.special, strict=True)
    )
    rows = []
    for method, scaled in view.scores.items():
        cells = "".join(
            f'<td style="{_cell_style(value)}" title="{_h(_number(raw))}">{_h(token)}</td>'
            for token, value, raw in zip(view.tokens, scaled, view.raw[method], strict=True)
        )
        rows.append(f'<tr><th class="method">{_h(method)}</th>{cells}</tr>')
    hidden = (
        f'<p class="note">{view.hidden_tokens} more tokens not shown (the figures and tables cover them).</p>'
        if view.hidden_tokens
        else ""
    )
    return (
        f'<div class="card"><h3>{_h(view.title)}</h3><dl class="facts">{facts}</dl>'
        + (f"<ul>{statements}</ul>" if statements else "")
        + f'<div class="tokens"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
        + hidden
        + "</div>"
    )


def _cell_style(value: float) -> str:
    """A token cell's colours: red for positive, blue for negative, opacity = |value| (value in [-1, 1]); white
    text on the darker cells. Only numbers computed here enter the style, never data."""
    if value != value:  # NaN: no colour
        return "background-color: transparent"
    alpha = min(abs(float(value)), 1.0) * 0.85
    red, green, blue = (180, 4, 38) if value >= 0 else (59, 76, 192)
    text = "; color: #fff" if alpha > 0.5 else ""
    return f"background-color: rgba({red}, {green}, {blue}, {alpha:.3f}){text}"


def _number(value: float) -> str:
    return "NaN" if value != value else f"{value:.4g}"


def _anchor(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "-", key).strip("-") or "section"


# ----------------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------------
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


def md_escape(value: object) -> str:
    """Any value as Markdown text on one line: backslash, backticks, emphasis, brackets, pipes escaped, and
    ``&``, ``<``, ``>`` as HTML entities (Markdown renderers pass raw HTML through)."""
    text = " ".join(str(value).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def render_markdown(document: Document, figures_folder: str = "figures") -> str:
    """``document`` as Markdown; figures are referenced as ``<figures_folder>/<name>.png`` (and ``.svg``)."""
    lines = [f"# {md_escape(document.title)}", "", md_escape(document.subtitle), ""]
    lines += [f"{i}. [{md_escape(s.title)}](#{_anchor(s.key)})" for i, s in enumerate(document.sections, 1)]
    lines.append("")
    for section in document.sections:
        lines += [f'<a id="{_anchor(section.key)}"></a>', "", f"## {md_escape(section.title)}", ""]
        for block in section.blocks:
            lines += [*_md_block(block, figures_folder), ""]
    return "\n".join(lines).rstrip() + "\n"


def _md_block(block: Block, figures_folder: str) -> list[str]:
    if isinstance(block, Paragraph):
        return [f"*{md_escape(block.text)}*" if block.note else md_escape(block.text)]
    if isinstance(block, Heading):
        return [f"### {md_escape(block.text)}"]
    if isinstance(block, Facts):
        return [f"- **{md_escape(label)}:** {md_escape(value)}" for label, value in block.items]
    if isinstance(block, Bullets):
        return [f"- {md_escape(item)}" for item in block.items]
    if isinstance(block, Table):
        lines = _md_table(block.header, block.rows)
        return [*lines, "", f"*{md_escape(block.caption)}*"] if block.caption else lines
    if isinstance(block, Plot):
        return [
            f"![{md_escape(block.title)}]({figures_folder}/{block.name}.png)",
            "",
            f"{md_escape(block.caption)} ([SVG]({figures_folder}/{block.name}.svg), "
            f"[PNG]({figures_folder}/{block.name}.png))",
        ]
    if isinstance(block, TokenView):
        return _md_tokens(block)
    raise TypeError(f"unknown report block {type(block).__name__}")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(md_escape(cell) for cell in header) + " |"]
    lines.append("| " + " | ".join("---" for _ in header) + " |")
    lines += ["| " + " | ".join(md_escape(cell) for cell in row) + " |" for row in rows]
    return lines


def _md_tokens(view: TokenView) -> list[str]:
    marks = {True: "holds", False: "does not hold", None: "not assessable"}
    lines = [f"### {md_escape(view.title)}", ""]
    lines += [f"- **{md_escape(label)}:** {md_escape(value)}" for label, value in view.facts]
    lines += [f"- [{marks[holds]}] {md_escape(text)}" for holds, text in view.statements]
    lines.append("")
    rows = []
    for method, scaled in view.scores.items():
        ranked = sorted(
            (i for i, value in enumerate(scaled) if value == value and not view.special[i]),
            key=lambda i: -abs(scaled[i]),
        )[: view.top]
        rows.append([method, ", ".join(f"{view.tokens[i]} ({scaled[i]:+.2f})" for i in ranked) or "-"])
    header = ["method", f"top {view.top} tokens by |score| (score / max |score| of the method)"]
    lines += _md_table(header, rows)
    return lines
