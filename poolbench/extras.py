"""What ``poolbench`` and ``kubectl poolbench`` share at their edge: the optional parts of poolbench a
command needs (the extras in pyproject.toml) with the one-line refusal when one is missing, and the
one line that reports a failure nobody foresaw."""

from __future__ import annotations

import importlib.util
import os
import sys


class MissingExtra(Exception):
    """A command needs an optional part of poolbench that is not installed."""

    def __init__(self, extra: str, module: str, purpose: str):
        super().__init__(
            f"{purpose} needs the '{extra}' extra ({module} is not installed): pip install 'poolbench[{extra}]'"
        )


def require(extra: str, module: str, purpose: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(extra, module, purpose)


def report_unexpected(program: str, err: Exception) -> None:
    """A bug, or a failure nobody foresaw: one line on stderr, not a traceback (POOLBENCH_DEBUG=1 raises it)."""
    if os.environ.get("POOLBENCH_DEBUG"):
        raise err
    sys.stderr.write(
        f"{program}: unexpected error: {type(err).__name__}: {err} (POOLBENCH_DEBUG=1 shows the traceback)\n"
    )
