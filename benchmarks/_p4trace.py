"""``poolbench run FILE`` with timestamps at each phase (used by P4 for the breakdown only).

Run as ``python -m benchmarks._p4trace EVENTS.json FILE``: it wraps a few methods of the local
runner to note when each phase starts and ends, then calls the real CLI. The headline time of P4 is
measured on the untraced CLI; this run only says where the time goes.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

T_START = time.time()
EVENTS: list[tuple[float, str]] = [(T_START, "interpreter up")]


def note(what: str) -> None:
    EVENTS.append((time.time(), what))


def wrap(cls: type, name: str, before: str | None, after: str | None) -> None:
    orig = getattr(cls, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before:
            note(before)
        try:
            return orig(*args, **kwargs)
        finally:
            if after:
                note(after)

    setattr(cls, name, wrapper)


def main() -> int:
    events_path, *argv = sys.argv[1:]
    from poolbench import cli

    note("cli imported")
    from poolbench.core import benchmark, steploop
    from poolbench.local import embedded as localpg
    from poolbench.local import runner as local

    note("runner imported")
    wrap(localpg.LocalPostgres, "start", "server: start", "server: ready")
    wrap(localpg.LocalPostgres, "_wait_ready", "server: launched", None)
    wrap(localpg.LocalPostgres, "stop", "server: stop", "server: stopped")
    wrap(steploop.StepLoop, "clean_slate", "step: drain", "step: drained")
    wrap(local.LocalRunner, "cleanup", "cleanup", "cleanup done")
    wrap(benchmark.BenchmarkRun, "begin_step", "step: begin", None)
    wrap(benchmark.BenchmarkRun, "mark_work_done", "step: work done", None)
    wrap(benchmark.BenchmarkRun, "finish_step", "step: replicas gone", None)
    wrap(local.ReplicaProcess, "__init__", None, "step: replica spawned")
    orig_add_sample = benchmark.BenchmarkRun.add_sample
    seen = {"step": 0, "first": False}

    def add_sample(self: benchmark.BenchmarkRun, sample: Any) -> None:
        orig_add_sample(self, sample)
        step = self.status.current_step or 0
        if step != seen["step"]:
            seen["step"], seen["first"] = step, False
        if not seen["first"] and self.step is not None and sample.ok and sample.total > 0:
            seen["first"] = True
            note("step: first connection seen")

    setattr(benchmark.BenchmarkRun, "add_sample", add_sample)  # noqa: B010 - mypy rejects assigning to a method (method-assign)
    code = cli.main(["run", *argv])
    note("table printed")
    with open(events_path, "w") as fh:
        json.dump(EVENTS, fh)
    return code


if __name__ == "__main__":
    sys.exit(main())
