"""The breaking-point search (``steps: {search: {min, max}}``): bisection, guided by the prediction.

The invariant: ``lo`` passes and ``hi`` fails, starting from the virtual bounds ``min − 1`` (no
replica trivially passes) and ``max + 1``. The first probe is the predicted answer and, when it
passes, the second is one more: a right prediction is confirmed in two steps. Every later probe
halves (lo, hi). So a search never takes more than 2 + ⌈log2(max − min + 1)⌉ steps, and ends with
adjacent counts: the largest passing and the smallest failing (either may lie outside the range:
then the range was too small, and the verdict says so). Probes are real steps, each from a clean
slate; an inconclusive one ends the search (nothing can be bracketed with it).
"""

from __future__ import annotations

import math

from .results import StepResult
from .spec import SearchRange


def bracket(search: SearchRange, probes: list[StepResult]) -> tuple[int, int]:
    """(lo, hi): the largest count known to pass and the smallest known to fail (virtual bounds
    when none is known)."""
    lo, hi = search.min - 1, search.max + 1
    for step in probes:
        if step.outcome == "Passed":
            lo = max(lo, step.replicas)
        elif step.outcome == "Failed":
            hi = min(hi, step.replicas)
    return lo, hi


def next_probe(search: SearchRange, predicted: int, probes: list[StepResult]) -> int | None:
    """The replica count to try next, or None when the breaking point is found (or cannot be)."""
    if any(step.outcome not in ("Passed", "Failed") for step in probes):
        return None
    lo, hi = bracket(search, probes)
    if hi - lo <= 1:
        return None
    if not probes:
        return min(max(predicted, search.min), search.max)
    if len(probes) == 1 and probes[0].outcome == "Passed" and lo + 1 < hi:
        return lo + 1
    return (lo + hi) // 2


def most_probes(search: SearchRange) -> int:
    """The longest a search can take (the progress column's denominator)."""
    return 2 + math.ceil(math.log2(search.max - search.min + 1))


def searched(search: SearchRange, probes: list[StepResult]) -> tuple[int | None, StepResult | None]:
    """The verdict's two counts: the largest passing count below the smallest failing one, and the
    step that stopped it (the smallest failing probe, or an inconclusive one)."""
    unseen = next((s for s in probes if s.outcome not in ("Passed", "Failed")), None)
    lo, hi = bracket(search, probes)
    failing = unseen or next((s for s in probes if s.outcome == "Failed" and s.replicas == hi), None)
    return (lo if lo >= search.min else None), failing


def found(search: SearchRange, probes: list[StepResult]) -> bool:
    """The search did what it is for: adjacent counts inside the range, one passing and one failing,
    every probe seen."""
    if any(step.outcome not in ("Passed", "Failed") for step in probes):
        return False
    lo, hi = bracket(search, probes)
    return search.min <= lo and hi <= search.max and hi - lo == 1


def findings(search: SearchRange, probes: list[StepResult]) -> str:
    """What the probes that ran showed, for the verdict: only counts that were probed are named."""
    unseen = next((s for s in probes if s.outcome not in ("Passed", "Failed")), None)
    lo, hi = bracket(search, probes)
    known = " and ".join(
        ([f"{lo} passed"] if lo >= search.min else []) + ([f"{hi} failed"] if hi <= search.max else [])
    )
    if unseen is not None:
        return f"stopped by the probe of {unseen.replicas}, which was {(unseen.outcome or 'unfinished').lower()}" + (
            f" (before it, {known})" if known else " (no probe before it)"
        )
    if hi - lo > 1:
        return f"unfinished: {known}" if known else "no probe ran"
    if lo < search.min:
        return f"even {hi} (the search's min) failed"
    if hi > search.max:
        return f"up to {lo} (the search's max) every probe passed: the breaking point lies higher"
    return f"found between {lo} and {hi}"
