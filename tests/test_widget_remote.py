"""A remote job (JobManager daemon on loopback) shown with `track()`: widget, job table,
output area and `%sage_stop` work through the same handle interface as local jobs."""

from __future__ import annotations

import re
import time

import pytest

from sage_jupyter import BaseService, MapFunction, RemoteEnvironment, SourceFunction
from sage_jupyter.jupyter import track
from sage_jupyter.jupyter.jobs import JOBS


class Greeter(BaseService):
    def greet(self, x):
        print(f"remote service greets {x}")
        return x


class Greet(MapFunction):
    def execute(self, x):
        return self.call_service["greeter"].greet(x)


class Slowly(SourceFunction):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def execute(self):
        time.sleep(0.02)
        self.n += 1
        return self.n


def test_tracked_remote_job_is_shown_listed_and_stopped(daemon, ip, capsys):
    env = RemoteEnvironment("far", port=daemon.port, token=daemon.token)
    env.register_service("greeter", Greeter)
    env.from_source(Slowly).map(Greet).sink(lambda x: None)
    handle = env.submit(autostop=True, block=False)
    widget = track(handle)
    assert widget.interval == pytest.approx(0.5)  # polled over the wire, gently
    deadline = time.monotonic() + 30
    while "remote service greets 3" not in widget.output.text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "remote service greets 3" in widget.output.text()  # prints on the daemon, shown here

    widget.peek.toggles["map:Greet"].value = True  # peek over the wire, on the widget's polled beat
    while not re.search(r"<pre[^>]*>\d+", widget.peek.html.value) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 'data-stage="map:Greet"' in widget.peek.html.value
    assert re.search(r"<pre[^>]*>\d+", widget.peek.html.value), widget.peek.html.value  # the records it emitted
    assert 'class="sage-stage-progress" data-stage="source:Slowly"' in widget.html.value

    (row,) = ip.run_line_magic("sage_status", "").rows
    assert row["name"] == "far" and row["state"] == "RUNNING" and row["services"] == "greeter: running"
    ip.run_line_magic("sage_stop", "far")
    assert "job 'far' stopped: STOPPED, services cleaned" in capsys.readouterr().out
    assert widget.wait_final(10)
    assert "STOPPED" in widget.html.value and f"on {daemon.host}:{daemon.port}" in widget.html.value
    assert widget.stop_button.disabled
    assert JOBS.find("far").handle is handle
