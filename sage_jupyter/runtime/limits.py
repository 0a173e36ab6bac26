"""Bounded runs: `submit(max_records=N, max_duration=S)`.

The sources of a job emit at most N records in total, or stop S seconds after they started,
and then end exactly as if exhausted (end markers, FINISHED, autostop). N is shared by every
source instance of the job through a `RecordBudget`: a source takes a grant before it pulls a
batch and gives back what it did not use, so the total is exactly N whenever the sources
together have that many records, however they are spread.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Callable, Protocol

WAIT_STEP_S = 0.01  # how often a source waiting on other sources' grants looks at its stop flag


@dataclass(frozen=True)
class SourceLimits:
    """What bounds a job's sources; both None: they run until exhausted or stopped."""

    max_records: int | None = None
    max_duration: float | None = None

    @property
    def bounded(self) -> bool:
        return self.max_records is not None or self.max_duration is not None


def check_limits(max_records: Any, max_duration: Any, where: str = "submit") -> SourceLimits:
    """`SourceLimits` from user values; ValueError naming the parameter when one is bad."""
    if max_records is not None and (isinstance(max_records, bool) or not isinstance(max_records, int)
                                    or max_records < 0):
        raise ValueError(f"{where}(max_records={max_records!r}): max_records must be an integer >= 0 or None")
    if max_duration is not None:
        if isinstance(max_duration, bool) or not isinstance(max_duration, (int, float)) \
                or not math.isfinite(max_duration) or max_duration < 0:
            raise ValueError(
                f"{where}(max_duration={max_duration!r}): max_duration must be a finite number of seconds >= 0 or None")
        max_duration = float(max_duration)
    return SourceLimits(max_records, max_duration)


class RecordBudget(Protocol):
    """Grants of records to the sources of one job (threads: shared memory; Ray: an actor)."""

    def take(self, want: int, should_stop: Callable[[], bool]) -> int:
        """Up to `want` records to emit now; 0 means the budget is spent: end as if exhausted.
        Waits while other sources hold grants that they may still give back."""

    def settle(self, unused: int) -> None:
        """Give back what the last grant did not use (the source had fewer records)."""


class BudgetLedger:
    """The arithmetic of a budget, without waiting: `grant` returns None when the caller must
    ask again later (everything left is granted to others, who may give some back)."""

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.outstanding = 0

    def grant(self, want: int) -> int | None:
        if self.left > 0:
            granted = min(want, self.left)
            self.left -= granted
            self.outstanding += granted
            return granted
        return None if self.outstanding > 0 else 0

    def settle(self, granted: int, unused: int) -> None:
        self.outstanding -= granted
        self.left += unused


class SharedBudget:
    """A budget shared by the source threads of one job."""

    def __init__(self, limit: int) -> None:
        self._ledger = BudgetLedger(limit)
        self._granted: dict[int, int] = {}  # source thread -> its open grant
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)

    def take(self, want: int, should_stop: Callable[[], bool]) -> int:
        me = threading.get_ident()
        with self._lock:
            while True:
                granted = self._ledger.grant(want)
                if granted is not None:
                    self._granted[me] = granted
                    return granted
                if should_stop():
                    return 0
                self._settled.wait(WAIT_STEP_S)

    def settle(self, unused: int) -> None:
        with self._lock:
            self._ledger.settle(self._granted.pop(threading.get_ident(), 0), unused)
            self._settled.notify_all()


@dataclass
class SourceBounds:
    """What one source instance runs under: a shared budget, a duration, and how many source
    instances the job has (a single source's total is capped by max_records)."""

    budget: RecordBudget | None = None
    max_records: int | None = None
    max_duration: float | None = None
    sources: int = 1

    def cap(self, total: int | None) -> int | None:
        """The number of records a source will emit, from its own length and the budget:
        exact for a single source; with several, a bound only when its own length is known."""
        if self.max_records is None:
            return total
        if total is None:
            return self.max_records if self.sources == 1 else None
        return min(total, self.max_records)
