"""What the server or initdb said when it gave up, for the errors poolbench raises.

A log holds mostly noise; the cause is its FATAL/PANIC line (or a client tool's ``error:`` line) and
the DETAIL/HINT after it. Quoting just those makes a start-up failure name its cause, and turns a
refused setting into the one line ``SettingsError`` reports.
"""

from __future__ import annotations

import re

_SEVERE = re.compile(r"\b(?:FATAL|PANIC):\s.*|\b[\w.-]+: error: .*")
_FOLLOW_UP = re.compile(r"\b(?:DETAIL|HINT):\s.*|\b[\w.-]+: (?:detail|hint): .*")


def cause_lines(text: str) -> list[str]:
    """The lines that say why a server or initdb gave up: each FATAL/PANIC line (or a client tool's
    ``error:`` line) with the DETAIL/HINT lines right after it, without the log line prefix."""
    found: list[str] = []
    following = False
    for raw in text.splitlines():
        severe = _SEVERE.search(raw)
        if severe:
            found.append(severe.group(0).strip())
            following = True
            continue
        follow = _FOLLOW_UP.search(raw) if following else None
        if follow:
            found.append(follow.group(0).strip())
        else:
            following = False
    return list(dict.fromkeys(found))


def explain(text: str, tail: int = 20) -> str:
    """The cause lines of ``text``, else its last ``tail`` lines (there was no FATAL line to quote)."""
    lines = cause_lines(text) or text.strip().splitlines()[-tail:]
    return "\n  ".join(lines) if lines else "(no output)"


def refusal(stderr: str, returncode: int) -> str:
    """The server's reason for refusing a setting, as one line: ``invalid value for parameter "x": "y"``."""
    lines = cause_lines(stderr)
    if not lines:
        rest = [line.strip() for line in stderr.splitlines() if line.strip()]
        return rest[-1] if rest else f"postgres exited with code {returncode}"
    first = re.sub(r"^(?:FATAL|PANIC):\s+", "", lines[0])
    extra = (re.sub(r"^(\w+):\s+", lambda m: f"{m.group(1).lower()}: ", line) for line in lines[1:])
    return "; ".join([first, *extra])
