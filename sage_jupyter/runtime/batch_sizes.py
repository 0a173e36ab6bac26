"""How big a source's next micro-batch is: large for fast sources (on Ray every batch is
an actor call), small for slow ones (latency) and for large records (memory)."""

from __future__ import annotations

MAX_BATCH = 1024
MAX_BATCH_BYTES = 2 * 2**20  # large records make small batches: memory does not grow with record size
# A source batch is sent on as soon as it took this long to fill, so slow sources keep
# low latency while fast ones reach full batches.
FAST_BATCH_S = 0.002
SLOW_BATCH_S = 0.02


def next_batch_size(size: int, filled: int, seconds: float, nbytes: int) -> int:
    """A source's next batch size, after a batch of `filled` records (of `size` asked for)
    that took `seconds` and holds about `nbytes`. A full batch well under `FAST_BATCH_S`
    grows at once to what should take half of it (at least double): a fast source reaches
    full batches in two or three batches rather than ten, and on Ray every batch is an actor
    call. Large records and slow batches halve it."""
    if nbytes > MAX_BATCH_BYTES and size > 1:
        return size // 2
    if seconds < FAST_BATCH_S and size < MAX_BATCH and filled == size and 2 * nbytes <= MAX_BATCH_BYTES:
        fits = int(size * FAST_BATCH_S / 2 / seconds) if seconds > 0 else MAX_BATCH
        if nbytes:
            fits = min(fits, MAX_BATCH_BYTES * filled // nbytes)
        return min(MAX_BATCH, max(2 * size, fits))
    if seconds > SLOW_BATCH_S and size > 1:
        return size // 2
    return size
