"""The job widget against real jobs (widgets without a frontend: their comms go nowhere)."""

from __future__ import annotations

import threading
import time

import pytest

from sage_jupyter import BaseService, LocalEnvironment, MapFunction, PipelineError, SourceFunction
from sage_jupyter.jupyter import JobWidget, templates
from sage_jupyter.runtime.job import JobHandle, status_from_dict

VIEW_MIME = "application/vnd.jupyter.widget-view+json"


class Counter(BaseService):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def bump(self, x):
        self.n += 1
        return x


class Bump(MapFunction):
    def execute(self, x):
        return self.call_service["counter"].bump(x)


class Ticks(SourceFunction):
    def execute(self):
        time.sleep(0.005)
        return 1


def boom(x):
    if x == 3:
        raise ValueError("boom at three")
    return x


class WireHandle:
    """The JobHandle interface as a remote client offers it: every status travels through
    the wire format (to_dict/status_from_dict) and there is no subscribe()."""

    def __init__(self, handle: JobHandle) -> None:
        self._handle = handle
        self.polls = 0

    @property
    def state(self):
        return self.status().state

    @property
    def cleanup_report(self):
        return self.status().cleanup_report

    def status(self):
        self.polls += 1
        return status_from_dict(self._handle.status().to_dict())

    def stop(self, wait: bool = True, timeout: float | None = None):
        return self._handle.stop(wait=wait, timeout=timeout)


def follow(handle, **kw) -> JobWidget:
    return JobWidget(handle, **kw).start()


def test_widget_follows_a_job_to_its_cleanup_report(no_thread_leak):
    env = LocalEnvironment("followed")
    env.register_service("counter", Counter)
    env.from_batch(range(50)).map(Bump).sink(lambda x: None)
    handle = env.submit(autostop=True, block=False)
    widget = follow(handle)
    handle.wait(30)
    assert widget.wait_final(10)
    body = widget.html.value
    assert "FINISHED" in body and "all services cleaned" in body
    assert "counter" in body and ">50<" in body  # calls of the service
    assert widget.stop_button.disabled
    assert not widget.following


class Flood(SourceFunction):
    def execute(self):
        return 1


def test_updates_are_throttled_for_a_fast_pipeline(no_thread_leak):
    env = LocalEnvironment("fast")
    env.from_source(Flood).map(lambda x: x + 1).sink(lambda x: None)
    handle = env.submit(autostop=True, block=False)
    widget = follow(handle)
    time.sleep(1.0)
    handle.stop(wait=True, timeout=30)
    widget.wait_final(10)
    status = handle.status()
    assert status.records_in > 10_000  # many records per update
    # about 10 per second whatever the record rate, plus the first and the final one
    assert 3 <= widget.updates <= status.elapsed_s * 10 + 3, (widget.updates, status.elapsed_s)


def test_stop_button_stops_a_running_job(no_thread_leak):
    env = LocalEnvironment("stoppable")
    env.register_service("counter", Counter)
    env.from_source(Ticks).map(Bump).sink(lambda x: None)
    handle = env.submit(autostop=True, block=False)
    widget = follow(handle)
    deadline = time.monotonic() + 10
    while handle.status().records_in == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    widget.stop_button.click()
    assert widget.stop_button.disabled
    assert handle.wait(30).value == "STOPPED"
    assert widget.wait_final(10)
    assert "STOPPED" in widget.html.value and handle.cleanup_report.ok
    assert widget.stop_button.disabled and widget.stop_button.description == "Stop"  # not "Stopping"


def test_failure_shows_a_clickable_traceback_and_the_cleanup(no_thread_leak):
    env = LocalEnvironment("failing")
    env.register_service("counter", Counter)
    env.from_batch(range(10)).map(boom).map(Bump).sink(lambda x: None)
    handle = env.submit(autostop=True, block=False)
    widget = follow(handle)
    with pytest.raises(Exception, match="boom at three"):
        handle.wait(30)
    widget.wait_final(10)
    body = widget.html.value
    assert "FAILED" in body and "<details" in body
    assert "ValueError: boom at three" in body  # the traceback text behind the badge
    assert "all services cleaned" in body
    data = widget._repr_mimebundle_()
    assert "FAILED" in data["text/plain"] and "ValueError" in data["text/plain"]


def test_display_data_carries_widget_view_and_static_fallbacks(no_thread_leak):
    env = LocalEnvironment("shown")
    env.register_service("counter", Counter)
    env.from_batch(range(5)).map(Bump).keyby(lambda x: x % 2).map(lambda x: x, parallelism=2).sink(lambda x: None)
    handle = env.submit(autostop=True)
    widget = JobWidget(handle)
    widget.output("stdout", "hello from a stage\n")
    data = widget._repr_mimebundle_()
    assert data[VIEW_MIME]["model_id"] == widget.view.model_id
    assert "FINISHED" in data["text/html"] and "hello from a stage" in data["text/html"]
    assert data["text/plain"].startswith("Job 'shown'") and "hello from a stage" in data["text/plain"]
    for stage in ("source:range", "map:Bump", "map:lambda", "sink:lambda"):
        assert stage in data["text/html"]
    assert "&times;2" in data["text/html"]  # parallelism shown in the graph


def test_polled_handle_is_followed_without_subscribe(no_thread_leak):
    env = LocalEnvironment("polled")
    env.from_source(Ticks).sink(lambda x: None)
    local = env.submit(autostop=True, block=False)
    remote = WireHandle(local)
    widget = follow(remote)
    assert widget.interval == pytest.approx(0.5)
    time.sleep(1.2)
    polls_while_running = remote.polls
    widget.request_stop()
    assert local.wait(30).value == "STOPPED"
    assert widget.wait_final(10)
    assert "STOPPED" in widget.html.value and widget.stop_button.disabled
    assert 2 <= polls_while_running <= 6  # ~2 Hz, not 10 Hz


def test_graph_colours_each_stage_by_its_tasks():
    env = LocalEnvironment("graph")
    env.from_batch(range(10)).map(boom).sink(lambda x: None)
    handle = env.submit(autostop=True, block=False)
    with pytest.raises(PipelineError):
        handle.wait(30)
    status = handle.status()
    assert templates.stage_state("map:boom", status.tasks) == "FAILED"
    html = templates.graph_html(status)
    assert 'data-stage="map:boom" data-state="FAILED"><title>map:boom: FAILED</title>' in html
    assert f'stroke="{templates.colour("FAILED")}"' in html


def test_closing_the_widget_leaves_the_job_running(no_thread_leak):
    env = LocalEnvironment("closed-view")
    env.from_source(Ticks).sink(lambda x: None)
    handle = env.submit(autostop=True, block=False)
    widget = follow(handle)
    widget.close()
    assert not widget.following and handle.state.value == "RUNNING"
    assert handle.stop(wait=True, timeout=30).value == "STOPPED"
    assert not [t for t in threading.enumerate() if t.name.startswith("sage-widget")]

