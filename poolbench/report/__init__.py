"""The HTML report of a finished benchmark: one self-contained page (no script, no external request).

``render_html(document)`` takes what ``poolbench run --output`` writes, or a PoolBenchmark custom
resource read from a cluster, and returns the page. It reads its template from this package and
imports neither platform: the CLI and a cluster client use it alike.
"""

from __future__ import annotations

from typing import Any

from .view import STEP_COLUMNS, ReportView, number, report_view, step_value


def render_html(document: dict[str, Any]) -> str:
    """The report of ``document`` ({apiVersion, kind, metadata, spec, status}, optional timeline and
    serverTimeline) as one HTML page. Needs the ``report`` extra (Jinja2)."""
    from .html import render

    return render(report_view(document))


__all__ = ["STEP_COLUMNS", "ReportView", "number", "render_html", "report_view", "step_value"]
