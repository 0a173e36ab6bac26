"""The record budget of `max_records` on Ray: one small actor when a job has several source
instances (each in its own actor), so their total is exactly N however the records are
spread; a job with one source keeps its budget inside that source's actor."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import ray

from ..limits import WAIT_STEP_S, BudgetLedger, SharedBudget, SourceBounds, SourceLimits
from .service_actor import remote_class


class BudgetActor:
    """The ledger, one call at a time (a plain actor runs its calls in order)."""

    def __init__(self, limit: int) -> None:
        self._ledger = BudgetLedger(limit)

    def take(self, want: int) -> int | None:
        return self._ledger.grant(want)

    def settle(self, granted: int, unused: int) -> None:
        self._ledger.settle(granted, unused)


RemoteBudgetActor: Any = remote_class(num_cpus=0)(BudgetActor)


class ActorBudget:
    """A `RecordBudget` over the budget actor, used by one source actor."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor
        self._granted = 0

    def take(self, want: int, should_stop: Callable[[], bool]) -> int:
        while True:
            granted: int | None = ray.get(self._actor.take.remote(want))
            if granted is not None:
                self._granted = granted
                return granted
            if should_stop():
                return 0
            time.sleep(WAIT_STEP_S)  # other sources hold grants they may give back

    def settle(self, unused: int) -> None:
        # Not awaited: the actor applies a caller's calls in order, and the others wait on
        # the grant still outstanding until this lands.
        self._actor.settle.remote(self._granted, unused)
        self._granted = 0


@dataclass(frozen=True)
class BoundsSpec:
    """What a source actor needs to build its `SourceBounds` (picklable: no lock in it)."""

    limits: SourceLimits
    sources: int
    budget_actor: Any = None  # set when several source instances share the budget

    def build(self) -> SourceBounds:
        budget: Any = None
        if self.limits.max_records is not None:
            budget = ActorBudget(self.budget_actor) if self.budget_actor is not None \
                else SharedBudget(self.limits.max_records)
        return SourceBounds(budget, self.limits.max_records, self.limits.max_duration, self.sources)
