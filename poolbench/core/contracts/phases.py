"""A replica's phases, in order: what its summary's ``phase`` and its ``poolbench_phase`` metric say."""

from __future__ import annotations

from typing import Final, Literal, get_args

ReplicaPhase = Literal["starting", "running", "holding", "done", "crashed"]
PHASES: tuple[ReplicaPhase, ...] = get_args(ReplicaPhase)

STARTING: Final = "starting"  # the engine is built, no attempt yet
RUNNING: Final = "running"  # the caller threads (or tasks) attempt statements
HOLDING: Final = "holding"  # the work is over; the pool keeps its idle connections (the ghosts)
DONE: Final = "done"  # the hold is over and the engine disposed of
CRASHED: Final = "crashed"  # an attempt failed with on_error crash, or a worker process died

#: The replica's work is over: the pool holds only its ghosts now, or it died.
WORK_OVER: tuple[ReplicaPhase, ...] = (HOLDING, DONE, CRASHED)
#: The replica has nothing more to do (its summary then says when it finished).
FINISHED: tuple[ReplicaPhase, ...] = (DONE, CRASHED)


def known_phase(value: object) -> ReplicaPhase | None:
    """``value`` as a phase, None when it is none (a reader never trusts a message it did not write)."""
    for phase in PHASES:
        if value == phase:
            return phase
    return None
