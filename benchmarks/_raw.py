"""The anchor of P3: N threads, each with its own psycopg2 connection, running ``SELECT 1`` in a loop.

``python -m benchmarks._raw N SECONDS MODE`` with MODE ``txn`` (psycopg2's default: every statement in
its own transaction, BEGIN … COMMIT, what ``engine.begin()`` sends) or ``autocommit`` (one round trip
per statement). Connection target from libpq's PG* variables. Prints JSON: the rate over a window
that skips the first second (connects and warm-up) and the last half second.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable

import psycopg2


def measure_window(
    n: int,
    seconds: float,
    worker: Callable[[int], None],
    counts: list[int],
    stop: threading.Event,
    ready: threading.Barrier,
) -> dict[str, float]:
    """Start N workers (each counting into counts[i], starting at ``ready``, ending at ``stop``) and
    measure their rate and client CPU over the window: after the first second, before the last half."""
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    ready.wait()
    warm = min(1.0, seconds / 4)
    time.sleep(warm)
    t1, c1, cpu1 = time.monotonic(), sum(counts), time.process_time()
    time.sleep(max(0.5, seconds - warm - 0.5))
    t2, c2, cpu2 = time.monotonic(), sum(counts), time.process_time()
    stop.set()
    for t in threads:
        t.join(5)
    return {"qps": (c2 - c1) / (t2 - t1), "n": n, "client_cpu_us": 1e6 * (cpu2 - cpu1) / max(1, c2 - c1)}


def main() -> int:
    n, seconds, mode = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    counts = [0] * n
    stop = threading.Event()
    ready = threading.Barrier(n + 1)

    def worker(i: int) -> None:
        conn = psycopg2.connect(application_name=f"raw-{i}")
        conn.autocommit = mode == "autocommit"
        cur = conn.cursor()
        ready.wait()
        done = 0
        if mode == "autocommit":
            while not stop.is_set():
                cur.execute("SELECT 1")
                done += 1
                counts[i] = done
        else:
            while not stop.is_set():
                cur.execute("SELECT 1")
                conn.commit()
                done += 1
                counts[i] = done
        conn.close()

    print(json.dumps({**measure_window(n, seconds, worker, counts, stop, ready), "mode": mode}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
