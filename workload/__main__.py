"""Entry point: ``python -m workload`` / ``poolbench-workload``. Configured by environment only
(``poolbench.core.contracts.replica_env``): one ``Replica``, or a ``ProcessGroup`` of worker processes."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from poolbench.core.contracts.replica_env import WorkloadConfig, WorkloadEnvError

from .metrics import serve_http
from .processes import ProcessGroup
from .replica import Replica


def run(env: dict[str, str]) -> int:
    try:
        cfg = WorkloadConfig.checked_from_env(env)
    except WorkloadEnvError as err:
        print(f"poolbench workload: {err}", file=sys.stderr, flush=True)
        return 2
    replica: Replica | ProcessGroup
    if cfg.processes > 1:
        replica = ProcessGroup(cfg)
        replica.start()  # fork the workers before any thread of ours runs
    else:
        replica = Replica(cfg)

    def on_term(_sig: int, _frame: Any) -> None:
        replica.stop.set()

    signal.signal(signal.SIGTERM, on_term)
    if cfg.metrics_port:
        serve_http(cfg.metrics_port, replica.registry, replica.summary_json)
    code = replica.run()
    if code:
        # Don't wait for caller threads stuck in a query: a crash is a crash.
        os._exit(code)
    return code


def main() -> None:
    sys.exit(run(dict(os.environ)))


if __name__ == "__main__":
    main()
