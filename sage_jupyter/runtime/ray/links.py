"""A producer instance's way to one consumer actor: numbered pushes, at most
`INFLIGHT_PER_LINK` unacknowledged (backpressure), so the consumer restores the order its
threaded actor may break."""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from ..channels import Aborted

INFLIGHT_PER_LINK = 4  # unacknowledged batches per producer->consumer link
SETTLE_S = 0.25  # how often a blocked sender looks at the abort flag


class AbortFlag(Protocol):
    """The producing actor: a blocked send gives up once it is aborted."""

    aborted: bool


class Link:
    """One producer instance's way to one consumer actor."""

    __slots__ = ("handle", "inflight", "key", "owner", "seq")

    def __init__(self, handle: Any, key: str, owner: AbortFlag) -> None:
        self.handle = handle
        self.key = key
        self.seq = 0
        self.inflight: deque[Any] = deque()
        self.owner = owner

    def put(self, batch: Any) -> None:
        if len(self.inflight) >= INFLIGHT_PER_LINK:
            self._settle(self.inflight.popleft())
        self.inflight.append(self.handle.push.remote(self.key, self.seq, batch))
        self.seq += 1

    def flush(self) -> None:
        while self.inflight:
            self._settle(self.inflight.popleft())

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
