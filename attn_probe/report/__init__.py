"""Reports of what a probe found: seaborn figures of the tidy tables (``figures``) and the analysis report of a
run directory (``write_report``: one standalone HTML page and a Markdown twin with PNG / SVG figures).

    from attn_probe.report import write_report
    write_report("runs/demo")          # runs/demo/report/report.html, report.md, figures/*.png|svg
"""

from attn_probe.report.build import build_report, write_report
from attn_probe.report.stats import bootstrap_shares

__all__ = ["bootstrap_shares", "build_report", "write_report"]
