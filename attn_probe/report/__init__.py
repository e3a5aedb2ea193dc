"""Reports of what a probe found: seaborn figures of the tidy tables (``figures``) and the analysis report of a
run directory (``write_report``: one standalone HTML page and a Markdown twin with PNG / SVG figures).

    from attn_probe.report import write_report
    write_report("runs/demo")          # runs/demo/report/report.html, report.md, figures/*.png|svg
"""

from attn_probe.report.build import (
    build_report,
    example_statements,
    figure_blocks,
    misleading_ranking,
    token_view,
    write_report,
)
from attn_probe.report.document import TOKEN_VIEW_CSS, md_escape, token_view_html
from attn_probe.report.stats import bootstrap_shares

__all__ = [
    "TOKEN_VIEW_CSS",
    "bootstrap_shares",
    "build_report",
    "example_statements",
    "figure_blocks",
    "md_escape",
    "misleading_ranking",
    "token_view",
    "token_view_html",
    "write_report",
]
