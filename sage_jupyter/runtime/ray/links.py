"""A producer instance's way to one consumer actor: numbered pushes, at most
`INFLIGHT_PER_LINK` unacknowledged (backpressure), so the consumer restores the order its
threaded actor may break. A push is acknowledged once the consumer ran its batch, so the
pushes not yet done are that consumer's backlog from this producer (`backlog`)."""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from ..channels import END, Aborted

INFLIGHT_PER_LINK = 4  # unacknowledged batches per producer->consumer link
SETTLE_S = 0.25  # how often a blocked sender looks at the abort flag


class AbortFlag(Protocol):
    """The producing actor: a blocked send gives up once it is aborted."""

    aborted: bool


class Link:
    """One producer instance's way to one consumer actor."""

    __slots__ = ("handle", "inflight", "key", "owner", "push", "seq", "target")

    def __init__(self, handle: Any, key: str, owner: AbortFlag, target: str = "") -> None:
        self.handle = handle
        self.push = handle.push  # the actor method, looked up once rather than per batch
        self.key = key
        self.target = target  # the consumer's task name
        self.seq = 0
        self.inflight: deque[tuple[Any, int]] = deque()  # (push, records in it)
        self.owner = owner

    def put(self, batch: Any) -> None:
        if len(self.inflight) >= INFLIGHT_PER_LINK:
            self._settle(self.inflight.popleft()[0])
        self.inflight.append((self.push.remote((self.key, self.seq, batch)), len(batch) if batch is not END else 0))
        self.seq += 1

    def flush(self) -> None:
        while self.inflight:
            self._settle(self.inflight.popleft()[0])

    def backlog(self) -> tuple[int, bool]:
        """(records in pushes the consumer has not finished, whether all of this link's window
        is such pushes): read by polls on another thread than the one sending."""
        pending = list(self.inflight)
        if not pending:
            return 0, False
        refs = [ref for ref, _ in pending]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        finished = set(done)
        waiting = [n for ref, n in pending if ref not in finished]
        return sum(waiting), len(waiting) >= INFLIGHT_PER_LINK

    def _settle(self, ref: Any) -> None:
        while True:
            try:
                ray.get(ref, timeout=SETTLE_S)
                return
            except GetTimeoutError:
                if self.owner.aborted:
                    raise Aborted() from None
            except RayActorError:  # the consumer died; the driver reports why
                raise Aborted() from None


Backlog = dict[str, tuple[int, bool]]  # per consumer task: (records not yet taken, a window full)


def add_backlog(into: Backlog, target: str, records: int, full: bool) -> None:
    """Add one link's backlog (or one producer's) to the total of consumer `target`."""
    before = into.get(target, (0, False))
    into[target] = (before[0] + records, before[1] or full)
