"""How long cleanup may take."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CleanupPolicy:
    """Budgets for ending a job.

    graceful_timeout: how long a stop may drain in-flight records, and how long each
    service hook (`stop()`, `cleanup()`) may run before it is recorded as timed out.
    kill_timeout: how long the forced phase may take once the graceful one is over
    (aborting channels and joining task threads, killing Ray actors).
    """

    graceful_timeout: float = 5.0
    kill_timeout: float = 2.0

    def __post_init__(self) -> None:
        for field_name in ("graceful_timeout", "kill_timeout"):
            value = getattr(self, field_name)
            # inf and nan would overflow thread joins or make every hook look timed out
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"CleanupPolicy.{field_name} must be a finite number >= 0 (seconds), got {value!r}")


# At interpreter exit (kernel shutdown) everything must be gone within about 2 s.
EXIT_POLICY = CleanupPolicy(graceful_timeout=0.8, kill_timeout=0.5)
