"""A Ray job in the widget: prints from actors land in the job's output area, and service
actors are shown with their actor id and the cleanup report's kill result."""

from __future__ import annotations

import sys

import pytest
import ray

from sage_jupyter import BaseService, LocalEnvironment, MapFunction
from sage_jupyter.jupyter import JobOutput, JobWidget

pytestmark = pytest.mark.ray

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/


class Loud(BaseService):
    def shout(self, x):
        print(f"actor service got {x}")
        return x


class Shout(MapFunction):
    def execute(self, x):
        print(f"actor stage got {x}", file=sys.stderr)
        return self.call_service["loud"].shout(x)


def test_ray_job_prints_land_in_its_output_and_actors_are_shown(ray_session, no_thread_leak):
    env = LocalEnvironment("on-ray", backend="ray")
    env.register_service("loud", Loud)
    output = JobOutput()
    env._output = output
    env.from_batch(range(3)).map(Shout).sink(lambda x: None)
    handle = env.submit(autostop=True, block=False)
    widget = JobWidget(handle, output=output).start()
    assert handle.wait(120).value == "FINISHED"
    assert widget.wait_final(10)
    assert "actor stage got 2" in output.text("stderr")
    assert "actor service got 2" in output.text("stdout")
    service = handle.status().service("loud")
    assert f"Ray actor {service.actor_id[:12]}" in widget.html.value
    assert "actor killed" in widget.html.value  # the cleanup report says what happened to it
    assert all(t.worker != "thread" for t in handle.status().tasks)
    assert "<th" in widget.html.value and ">worker<" in widget.html.value
