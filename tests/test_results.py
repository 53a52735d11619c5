"""The results shape agrees with the outcome classes it counts."""

from __future__ import annotations

from poolbench.core.outcomes import OK, OUTCOMES
from poolbench.core.results import ERROR_CLASSES, ErrorCounts


def test_error_counts_have_one_field_per_error_class() -> None:
    assert tuple(o for o in OUTCOMES if o != OK) == ERROR_CLASSES
    assert set(ErrorCounts().to_json()) == set(ERROR_CLASSES)


def test_error_counts_add_and_rank_the_classes() -> None:
    counts = ErrorCounts()
    counts.add({"ok": 9, "reservedSlots": 2, "other": 1, "unknown": 5})
    assert counts.total() == 3
    assert counts.first_class() == "reservedSlots"
