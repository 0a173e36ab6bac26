"""The widget's progress and peek toggle in a real ipykernel (jupyter_client): what a frontend
receives, and a toggle switched the way a frontend switches it (a comm update of its model)."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from kernel_harness import Kernel

pytestmark = pytest.mark.kernel

COUNTED = '''%%sage_pipeline counted --autostop -o counted
import time
from sage_jupyter import MapFunction, SourceFunction
class Slow(MapFunction):
    def execute(self, x):
        time.sleep(0.01)
        return x * 10
env.from_batch(list(range(400))).map(Slow).sink(lambda x: None)
'''


@pytest.fixture(scope="module")
def kernel():
    k = Kernel()
    k.ok("%load_ext sage_jupyter")
    yield k
    k.shutdown()


def states(kernel: Kernel, comm_id: str, key: str) -> list[Any]:
    return [u["content"]["data"]["state"][key] for u in kernel.updates(comm_id)
            if key in u["content"]["data"]["state"]]


def wait_for(condition: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_progress_and_a_peek_toggle_reach_the_frontend(kernel):
    run = kernel.ok(COUNTED)
    opened = [m["content"] for m in kernel.all()
              if m["msg_type"] == "comm_open" and m["parent_header"].get("msg_id") == run.msg_id]
    job_html = kernel.models("HTMLModel", run.msg_id)[0]  # the job view comes first
    (peek_html,) = [c["comm_id"] for c in opened if "sage-peek-records" in c["data"]["state"].get("_dom_classes", ())]
    toggles = {c["data"]["state"]["description"]: c["comm_id"] for c in opened
               if c["data"]["state"].get("_model_name") == "ToggleButtonModel"}
    assert list(toggles) == ["source:list", "map:Slow", "sink:lambda"]
    # while it runs: "n of 400", a bar and an ETA per stage fed by the source
    live = wait_for(lambda: [v for v in states(kernel, job_html, "value") if " of 400" in v and "ETA" in v])
    assert 'role="progressbar"' in live[-1]
    # the frontend switches the map's toggle on: an update of the ToggleButton model over its comm
    msg = kernel.kc.session.msg("comm_msg", {"comm_id": toggles["map:Slow"],
                                             "data": {"method": "update", "state": {"value": True},
                                                      "buffer_paths": []}})
    kernel.kc.shell_channel.send(msg)
    peeks = wait_for(lambda: [v for v in states(kernel, peek_html, "value") if 'data-stage="map:Slow"' in v])
    assert 'data-stage="source:list"' not in peeks[0]  # only the toggled stage
    kernel.ok("counted.wait(60)")
    final = wait_for(lambda: [v for v in states(kernel, job_html, "value") if "FINISHED" in v])[-1]
    assert final.count("400 of 400") == 3  # source, map and sink
    shown = [records(v) for v in states(kernel, peek_html, "value")]
    assert all(r and all(x % 10 == 0 for x in r) for r in shown)  # what the map emitted
    assert len({tuple(r) for r in shown}) >= 2 and shown[-1][-1] == 3990  # live, up to its last record


def records(html: str) -> list[int]:
    body = re.search(r"<pre[^>]*>(.*?)</pre>", html, re.S)
    assert body, html
    return [int(line) for line in body.group(1).split()]
