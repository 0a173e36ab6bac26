"""Progress of each stage, worked out from `JobStatus` snapshots for the widget.

A bounded source knows how many records it will emit (`TaskStatus.total`); a stage fed by
it through one-to-one stages (a map) will see as many, so it gets "n of N", a fraction and
an ETA too. Unbounded sources, and stages after a filter or a flatmap, have no N: they show
the rate of the last 60 s instead. A stage is marked when one of its instances' input
channel is full (`TaskStatus.input_full`: its upstream waits for it).
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

from ..runtime.job import JobStatus, StageInfo, TaskStatus

HISTORY_S = 60.0  # how far back the rate sparkline reaches
SAMPLE_S = 1.0  # one point of the sparkline per second
RATE_WINDOW_S = 1.0  # the rate shown: over about the last second
ONE_TO_ONE = ("source", "map")  # stages that emit exactly one record per record (or per item)


@dataclass(frozen=True)
class StageProgress:
    """What the widget shows about one stage."""

    stage: str
    done: int  # records emitted (sources) or received (other stages)
    total: int | None  # the records it will see, when known
    rate: float | None  # records per second now (None: not measured yet)
    eta_s: float | None  # seconds left at the current rate, when the total is known
    queued: int  # records waiting in its instances' input channels
    full: bool  # an instance's input channel is full
    history: tuple[float, ...]  # rates per second over the last minute, oldest first

    @property
    def fraction(self) -> float | None:
        if self.total is None:
            return None
        return 1.0 if self.total == 0 else min(1.0, self.done / self.total)


def stage_done(stage: StageInfo, tasks: list[TaskStatus]) -> int:
    if stage.kind == "source":
        return sum(t.records_out for t in tasks)
    return sum(t.records_in for t in tasks)


def stage_totals(s: JobStatus) -> dict[str, int | None]:
    """N of each stage: a bounded source's own total (None if an instance's is unknown),
    then passed on to the single downstream of a one-to-one stage."""
    by_stage: dict[str, list[TaskStatus]] = collections.defaultdict(list)
    for t in s.tasks:
        by_stage[t.stage].append(t)
    totals: dict[str, int | None] = {}
    kinds = {st.name: st.kind for st in s.stages}
    for st in s.stages:  # the graph's stages come upstream first
        if st.kind == "source":
            own = [t.total for t in by_stage.get(st.name, [])]
            totals[st.name] = sum(n for n in own if n is not None) if own and None not in own else None
        elif len(st.upstream) == 1 and kinds.get(st.upstream[0]) in ONE_TO_ONE:
            totals[st.name] = totals.get(st.upstream[0])
        else:
            totals[st.name] = None
    return totals


class ProgressTracker:
    """Keeps the last minute of each stage's counts (one per second) to give rates, ETAs
    and sparklines. Fed by the widget's updater, one snapshot at a time; read also by the
    main thread (the display's static fallback), hence the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: dict[str, collections.deque[tuple[float, int]]] = {}
        self._recent: dict[str, collections.deque[tuple[float, int]]] = {}

    def update(self, s: JobStatus) -> list[StageProgress]:
        """Take a new snapshot into account and return the progress of every stage."""
        now = s.taken_at
        with self._lock:
            self._sample(s, now)
        return self.rows(s)

    def _sample(self, s: JobStatus, now: float) -> None:
        for stage, done in self._counts(s).items():
            samples = self._samples.setdefault(stage, collections.deque())
            if not samples or now - samples[-1][0] >= SAMPLE_S:
                samples.append((now, done))
            while samples and now - samples[0][0] > HISTORY_S + SAMPLE_S:
                samples.popleft()
            recent = self._recent.setdefault(stage, collections.deque())
            recent.append((now, done))
            while len(recent) > 2 and now - recent[1][0] >= RATE_WINDOW_S:
                recent.popleft()

    def rows(self, s: JobStatus) -> list[StageProgress]:
        """The progress of every stage from what was seen so far (no new sample)."""
        totals = stage_totals(s)
        out = []
        with self._lock:
            for st in s.stages:
                out.append(self._row(s, st, totals.get(st.name)))
        return out

    def _row(self, s: JobStatus, st: StageInfo, total: int | None) -> StageProgress:
        tasks = [t for t in s.tasks if t.stage == st.name]
        done = stage_done(st, tasks)
        ended = s.state.terminal
        if ended:  # a final rate is an average over the whole run
            rate = done / s.elapsed_s if s.elapsed_s > 0 else None
        else:
            rate = self._rate(st.name)
        eta = max(0, total - done) / rate if total is not None and rate and not ended else None
        return StageProgress(st.name, done, total, rate, eta, sum(t.queued for t in tasks),
                             any(t.input_full for t in tasks), self._history(st.name))

    @staticmethod
    def _counts(s: JobStatus) -> dict[str, int]:
        return {st.name: stage_done(st, [t for t in s.tasks if t.stage == st.name]) for st in s.stages}

    def _rate(self, stage: str) -> float | None:
        recent = self._recent.get(stage)
        if not recent or len(recent) < 2 or recent[-1][0] <= recent[0][0]:
            return None
        (t0, n0), (t1, n1) = recent[0], recent[-1]
        return max(0, n1 - n0) / (t1 - t0)

    def _history(self, stage: str) -> tuple[float, ...]:
        samples = list(self._samples.get(stage, ()))
        pairs = zip(samples, samples[1:], strict=False)
        return tuple(max(0, n1 - n0) / (t1 - t0) for (t0, n0), (t1, n1) in pairs if t1 > t0)
