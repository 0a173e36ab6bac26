"""The widget's progress (n of N, bar, ETA, rate sparkline), full-input mark and peek toggles,
against real jobs on threads (widgets without a frontend: their comms go nowhere)."""

from __future__ import annotations

import re
import threading
from html import escape
import time
from typing import Any, Callable

from sage_jupyter import LocalEnvironment, SourceFunction
from sage_jupyter.jupyter import JobWidget
from sage_jupyter.runtime.handle import JobHandle
from sage_jupyter.runtime.job import JobStatus


def row(page: str, stage: str) -> str:
    """The progress row of one stage in the widget's HTML."""
    match = re.search(rf'<tr class="sage-stage-progress" data-stage="{re.escape(escape(stage))}">(.*?)</tr>', page)
    assert match, f"no progress row for {stage}"
    return match.group(1)


def until(condition: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def slow_double(x: int) -> int:
    time.sleep(0.005)
    return x * 2


class Counting(SourceFunction):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def execute(self) -> int:
        time.sleep(0.002)
        self.n += 1
        return self.n


def test_a_bounded_source_and_the_map_it_feeds_show_n_of_N_a_bar_and_an_eta(no_thread_leak):
    env = LocalEnvironment("progress")
    env.from_batch(list(range(300))).map(slow_double).filter(lambda x: x % 3 == 0).sink(lambda x: None)
    handle = env.submit(autostop=True, block=False)
    widget = JobWidget(handle).start()
    live = until(lambda: "ETA" in row(widget.html.value, "map:slow_double") and widget.html.value)
    assert re.search(r"[\d,]+ of 300", row(live, "map:slow_double"))
    assert 'class="sage-progress" role="progressbar"' in row(live, "source:list")
    handle.wait(30)
    assert widget.wait_final(10)
    final = widget.html.value
    for stage in ("source:list", "map:slow_double", "filter:lambda"):  # the filter gets what the map emits
        assert "300 of 300" in row(final, stage) and 'aria-valuenow="100"' in row(final, stage)
        assert "ETA" not in row(final, stage)
    assert " of " not in row(final, "sink:lambda")  # after a filter the number is unknown: no N
    assert ">100<" in row(final, "sink:lambda")
    plain = widget._repr_mimebundle_()["text/plain"]
    assert "stage map:slow_double: 300 of 300" in plain  # the saved notebook's fallback


def test_an_unbounded_source_shows_the_rate_of_the_last_minute(no_thread_leak):
    env = LocalEnvironment("unbounded")
    env.from_source(Counting).sink(lambda x: None)
    handle = env.submit(autostop=True, block=False)
    widget = JobWidget(handle).start()
    try:
        source = until(lambda: 'class="sage-sparkline"' in row(widget.html.value, "source:Counting")
                       and row(widget.html.value, "source:Counting"))
        assert " of " not in source and "sage-progress" not in source
        assert re.search(r"<polyline points=\"[\d.]+,[\d.]+ [\d.]+,[\d.]+", source)
    finally:
        handle.stop(wait=True, timeout=30)
        widget.wait_final(10)


def test_a_stage_whose_input_channel_is_full_is_marked(no_thread_leak):
    gate = threading.Event()  # the sink waits on it: its input fills up, then it drains at once

    def held_sink(_x: int) -> None:
        gate.wait()

    env = LocalEnvironment("backpressure")
    env.from_source(Counting).map(lambda x: x).sink(held_sink, parallelism=2)  # its own tasks, fed by a channel
    handle = env.submit(autostop=True, block=False)
    widget = JobWidget(handle).start()
    try:
        sink = until(lambda: "input full" in row(widget.html.value, "sink:held_sink")
                     and row(widget.html.value, "sink:held_sink"))
        assert 'data-state="full"' in sink and re.search(r"[\d,]+ queued", sink)
        assert "input full" not in row(widget.html.value, "source:Counting")
    finally:
        gate.set()
        handle.stop(wait=True, timeout=30)
        widget.wait_final(10)
    assert "input full" not in widget.html.value  # an ended job waits on nothing


def test_a_peek_toggle_shows_a_stage_newest_records_live_on_the_throttled_updates(no_thread_leak):
    env = LocalEnvironment("peeked")
    env.from_source(Counting).map(lambda x: x * 10).sink(lambda x: None)
    handle = env.submit(autostop=True, block=False)
    widget = JobWidget(handle).start()
    try:
        assert list(widget.peek.toggles) == ["source:Counting", "map:lambda", "sink:lambda"]
        assert widget.peek.html.value == ""
        toggle = widget.peek.toggles["map:lambda"]
        # a click handled off the main thread, as a comm message on a kernel subshell is
        clicker = threading.Thread(target=lambda: setattr(toggle, "value", True))
        clicker.start()
        clicker.join()
        first = until(lambda: "sage-peek" in widget.peek.html.value and widget.peek.html.value)
        assert 'data-stage="map:lambda"' in first and "source:Counting" not in first
        values = [int(v) for v in re.findall(r"^(\d+)$", re.sub(r"<[^>]+>", "\n", first), re.M)]
        assert values and all(v % 10 == 0 for v in values)
        until(lambda: widget.peek.html.value != first)  # live: newer records replace them
        assert widget.peek.updates <= widget.updates + 1  # on the job view's beat, never more often
        toggle.value = False
        assert widget.peek.html.value == ""
    finally:
        handle.stop(wait=True, timeout=30)
        widget.wait_final(10)


class CountingHandle:
    """A local handle that counts what the widget asks of it and what it is pushed."""

    def __init__(self, handle: JobHandle) -> None:
        self._handle = handle
        self.status_calls = 0
        self.pushed: list[JobStatus] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def status(self) -> JobStatus:
        self.status_calls += 1
        return self._handle.status()

    def subscribe(self, listener: Callable[[JobStatus], None]) -> Callable[[], None]:
        def push(snapshot: JobStatus) -> None:
            self.pushed.append(snapshot)
            listener(snapshot)

        return self._handle.subscribe(push)


def test_the_widget_renders_the_snapshot_it_was_pushed(no_thread_leak):
    env = LocalEnvironment("pushed")
    env.from_batch(range(200)).map(slow_double).sink(lambda x: None)
    handle = CountingHandle(env.submit(autostop=True, block=False))
    widget = JobWidget(handle)  # type: ignore[arg-type]
    shown: list[JobStatus] = []
    widget.listeners.append(shown.append)
    widget.start()
    handle.wait(30)
    assert widget.wait_final(10)
    assert shown[0] is handle.pushed[0]  # the snapshot subscribe delivered, shown as it came
    polled = [s for s in shown if not any(s is p for p in handle.pushed)]
    # one status() in the constructor, then one per update that had no pushed snapshot: never both
    assert handle.status_calls == 1 + len(polled)
    assert len(polled) < len(shown) and "FINISHED" in widget.html.value


def test_a_source_of_unknown_length_shows_a_count_without_n(no_thread_leak):
    env = LocalEnvironment("generated")
    env.from_batch(x for x in range(50)).map(lambda x: x).sink(lambda x: None)  # a generator has no len()
    handle = env.submit(autostop=True)
    final = JobWidget(handle)._repr_mimebundle_()["text/html"]
    for stage in ("source:<genexpr>", "map:lambda"):
        assert " of " not in row(final, stage) and "sage-progress" not in row(final, stage)
        assert ">50<" in row(final, stage)
