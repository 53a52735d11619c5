"""The embedded server's failure that is the machine's fault, not the spec's (the CLI's exit code 1).

A module of its own so that ``access`` and ``binaries`` can raise it without importing ``embedded``,
which imports them (``embedded`` re-exports it, where the CLI and the runner catch it).
"""

from __future__ import annotations


class EnvironmentFailure(RuntimeError):
    """The machine, not the user's spec, stopped the benchmark (exit code 1)."""
