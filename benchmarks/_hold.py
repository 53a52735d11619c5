"""P5's bulk of idle client backends, held by one light process.

``python -m benchmarks._hold COUNT NAME`` opens COUNT connections one after another (application_name
NAME), prints ``ready COUNT`` (or ``error …`` and exits 1), then holds them until its stdin closes.
A replica holds a thread, a pool and its measurement per connection; this holds a socket and a
psycopg2 connection object, so thousands of backends cost the client side little memory. Connection
target from libpq's PG* variables.
"""

from __future__ import annotations

import sys

import psycopg2


def main() -> int:
    count, name = int(sys.argv[1]), sys.argv[2]
    held = []
    try:
        for _ in range(count):
            held.append(psycopg2.connect(application_name=name))
    except psycopg2.Error as err:
        print(f"error after {len(held)}: {' '.join(str(err).split())[:200]}", flush=True)
        return 1
    print(f"ready {len(held)}", flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    for conn in held:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
