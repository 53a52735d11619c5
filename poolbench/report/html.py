"""The report's markup: a Jinja2 template with autoescape on, read from this package."""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from .view import ReportView

_environment: Environment | None = None


def environment() -> Environment:
    """One environment per process: autoescape for every template, an undefined name is an error."""
    global _environment
    if _environment is None:
        _environment = Environment(
            loader=PackageLoader("poolbench.report", "templates"),
            autoescape=select_autoescape(enabled_extensions=("html", "j2"), default=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
    return _environment


def render(view: ReportView) -> str:
    return environment().get_template("report.html.j2").render(view=view)
