"""Stop while another cell runs, through a real ipykernel 7: a "sage_jupyter" comm opened by
the frontend on a subshell (as JupyterLab does, and the labextension for the widget's Stop)
is answered while the main shell sleeps; the widget marks its Stop button for the
labextension and says when no such path exists."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from kernel_harness import Kernel, wait_for

from sage_jupyter import LocalEnvironment
from sage_jupyter.jupyter import busy_stop
from sage_jupyter.jupyter.widget import JobWidget

TICKER = '''%%sage_pipeline ticker -o ticker
import time
from sage_jupyter import SourceFunction

class Ticks(SourceFunction):
    def execute(self):
        time.sleep(0.01)
        return 1

env.from_source(Ticks).sink(lambda x: None)'''


def _subshell(k: Kernel) -> str:
    """A new subshell of the kernel (JupyterLab makes one per comm target)."""
    msg = k.kc.session.msg("create_subshell_request", {})
    k.kc.control_channel.send(msg)
    while True:
        reply = k.kc.get_control_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            return str(reply["content"]["subshell_id"])


def _send(k: Kernel, msg_type: str, content: dict[str, Any], subshell_id: str) -> None:
    msg = k.kc.session.msg(msg_type, content)
    msg["header"]["subshell_id"] = subshell_id
    k.kc.shell_channel.send(msg)




def _model_state(k: Kernel, css_class: str) -> tuple[str, dict[str, Any]]:
    """Comm id and latest state of the widget model that has this DOM class."""
    for m in k.all():
        if m["msg_type"] != "comm_open" or "state" not in m["content"].get("data", {}):
            continue
        comm_id, state = m["content"]["comm_id"], dict(m["content"]["data"]["state"])
        for update in k.updates(comm_id):
            state.update(update["content"]["data"]["state"])
        if css_class in state.get("_dom_classes", []):
            return comm_id, state
    raise AssertionError(f"no widget with class {css_class!r}")


@pytest.mark.kernel
def test_stop_over_a_subshell_comm_ends_the_job_while_another_cell_sleeps() -> None:
    k = Kernel()
    try:
        k.ok("%load_ext sage_jupyter")
        k.ok(TICKER)
        job_id = k.ok("print(ticker.job_id)").stream().strip()
        _, button = _model_state(k, busy_stop.job_class(job_id))
        assert busy_stop.STOP_CLASS in button["_dom_classes"] and button["description"] == "Stop"
        hint_id, hint = _model_state(k, "sage-stop-hint")
        assert "no sage-jupyter extension talks to this kernel" in hint["value"]  # no frontend comm yet

        subshell = _subshell(k)
        comm_id = uuid.uuid4().hex
        _send(k, "comm_open", {"comm_id": comm_id, "target_name": "sage_jupyter", "data": {}}, subshell)
        wait_for("job list on the new comm", lambda: k.comm_data(comm_id))
        wait_for("the hint to go", lambda: _model_state(k, "sage-stop-hint")[1]["value"] == "")

        sleeping = k.send("time.sleep(10)\nslept_until = time.time()")
        wait_for("the sleeping cell to start", lambda: any(
            m["msg_type"] == "status" and m["content"]["execution_state"] == "busy" for m in k.of(sleeping)))
        clicked = time.time()
        _send(k, "comm_msg", {"comm_id": comm_id, "data": {"action": "stop", "job_id": job_id}}, subshell)

        def stopped() -> bool:
            return any(j["job_id"] == job_id and j["state"] == "STOPPED"
                       for d in k.comm_data(comm_id) for j in d.get("jobs", []))
        wait_for("STOPPED pushed while the cell sleeps", stopped)
        assert not any(m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
                       for m in k.of(sleeping)), "the sleeping cell ended before the job stopped"

        k.collect(sleeping, timeout=60)
        ended = k.ok("print(ticker.state.value, ticker.status().ended_at, slept_until)").stream().split()
        assert ended[0] == "STOPPED"
        ended_at, slept_until = float(ended[1]), float(ended[2])
        assert clicked < ended_at < slept_until, "the job ended only after the sleeping cell"
        assert k.updates(hint_id)  # the hint is a live widget, updated by the job's view
    finally:
        k.shutdown()


@pytest.mark.kernel
def test_a_comm_opened_while_a_pipeline_cell_runs_does_not_list_its_job_twice() -> None:
    k = Kernel()
    try:
        k.ok("%load_ext sage_jupyter")
        subshell = _subshell(k)
        cell = k.send(TICKER.replace("ticker -o ticker", "slow_body -o slow_body")
                      + "\nenv.submit(block=False)\ntime.sleep(3)  # submitted, not listed yet")
        wait_for("the cell to run", lambda: any(m["msg_type"] == "status" and m["content"]["execution_state"] == "busy"
                                             for m in k.of(cell)))
        time.sleep(1.0)  # the body has submitted and sleeps
        comm_id = uuid.uuid4().hex
        _send(k, "comm_open", {"comm_id": comm_id, "target_name": "sage_jupyter", "data": {}}, subshell)
        first = wait_for("the list while the cell runs", lambda: k.comm_data(comm_id))[0]
        assert first["jobs"] == []  # the cell lists its job itself, when it ends
        assert k.collect(cell).ok
        wait_for("the job in a push", lambda: k.comm_data(comm_id)[-1]["jobs"])
        time.sleep(0.5)  # any later push as well
        assert [j["name"] for j in k.comm_data(comm_id)[-1]["jobs"]] == ["slow_body"]
        assert k.ok("%sage_status").displays()[0]["data"]["text/plain"].count("slow_body") == 1
    finally:
        k.shutdown()


def test_hint_is_empty_outside_a_kernel() -> None:
    assert busy_stop.hint() == ""
    assert busy_stop.job_class("my job-1") == "sage-stop-job-my%20job-1"


def test_a_late_click_on_an_ended_job_leaves_the_button_as_it_is(no_thread_leak: None) -> None:
    env = LocalEnvironment("late-click")
    env.from_batch(range(3)).sink(lambda x: None)
    widget = JobWidget(env.submit(autostop=True, block=False)).start()
    assert widget.wait_final(30)
    assert widget.stop_button.disabled and widget.stop_hint.value == ""
    widget.request_stop()  # e.g. a click that waited behind a busy cell while the sidebar stopped the job
    assert widget.stop_button.disabled and widget.stop_button.description == "Stop"
    assert widget.snapshot.state.value == "FINISHED"
