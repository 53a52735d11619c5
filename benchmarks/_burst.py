"""P1's load: connection bursts of a known height and width, on command.

``python -m benchmarks._burst`` reads lines ``HEIGHT WIDTH_MS NAME`` on stdin. For each it opens
HEIGHT connections at once (one thread each, application_name NAME), waits until all are open,
holds them WIDTH_MS milliseconds, closes them all, and prints ``done NAME`` (or ``error NAME …``).
Connection target from libpq's PG* variables.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import psycopg2


def burst(height: int, width_ms: float, name: str) -> str:
    conns: list[Any] = [None] * height
    errors: list[str] = []
    start = threading.Barrier(height + 1)

    def connect(i: int) -> None:
        start.wait()
        try:
            conns[i] = psycopg2.connect(application_name=name)
        except psycopg2.Error as err:
            errors.append(" ".join(str(err).split())[:120])

    threads = [threading.Thread(target=connect, args=(i,)) for i in range(height)]
    for t in threads:
        t.start()
    start.wait()  # all threads connect at once
    for t in threads:
        t.join()
    time.sleep(width_ms / 1000)
    for c in conns:
        if c is not None:
            c.close()
    return f"error {name} {errors[0]}" if errors else f"done {name}"


def main() -> int:
    for line in sys.stdin:
        parts = line.split()
        if len(parts) != 3:
            continue
        print(burst(int(parts[0]), float(parts[1]), parts[2]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
