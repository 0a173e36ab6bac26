"""The notebook surface through a real ipykernel (jupyter_client): output routing, widget
messages and throttling, interrupt under --wait, re-runs, %sage_stop, the sidebar comm,
and a shutdown that leaves nothing behind."""

from __future__ import annotations

import time
import uuid

import psutil
import pytest

from kernel_harness import Kernel

pytestmark = pytest.mark.kernel

SLOW_PRINTER = '''%%sage_pipeline talk -o talk
import sys, time
from sage_jupyter import BatchFunction
class SlowCount(BatchFunction):
    def __init__(self):
        super().__init__()
        self.i = 0
    def execute(self):
        if self.i >= 15:
            return None
        time.sleep(0.08)
        self.i += 1
        print("stage-print", self.i)
        return self.i
def complain(x):
    print("sink-stderr", x, file=sys.stderr)
env.from_batch(SlowCount).sink(complain)
'''

FOREVER = '''
import time
from sage_jupyter import BaseService, SourceFunction
class Forever(SourceFunction):
    def execute(self):
        time.sleep(0.005)
        return 1
class Tally(BaseService):
    cleaned = []
    def cleanup(self):
        Tally.cleaned.append(self)
'''


@pytest.fixture(scope="module")
def kernel():
    k = Kernel()
    k.ok("%load_ext sage_jupyter")
    k.ok(FOREVER)
    yield k
    k.shutdown()


def test_stage_prints_land_in_the_job_output_even_after_moving_on(kernel):
    first = kernel.ok(SLOW_PRINTER)
    later = kernel.ok('import time; time.sleep(0.6); print("cell-b")')
    kernel.ok("talk.wait(30); time.sleep(0.3)")
    (out_id,) = kernel.models("OutputModel", first.msg_id)
    text = kernel.output_text(out_id)
    assert all(f"stage-print {i}\n" in text for i in range(1, 16))
    assert "sink-stderr 15" in text
    # none of it reached any cell's own output
    streams = "".join(m["content"]["text"] for m in kernel.all() if m["msg_type"] == "stream")
    assert "stage-print" not in streams and "sink-stderr" not in streams
    assert later.stream() == "cell-b\n"
    # some updates of the job's Output were sent while the later cell was running
    assert any(u["parent_header"].get("msg_id") == later.msg_id for u in kernel.updates(out_id))


def test_widget_updates_are_throttled(kernel):
    run = kernel.ok('''%%sage_pipeline flood -o flood
from sage_jupyter import SourceFunction
class Flood(SourceFunction):
    def execute(self):
        return 1
env.from_source(Flood).map(lambda x: x + 1).sink(lambda x: None)
''')
    kernel.ok("time.sleep(1.5); flood.stop(); flood.wait(30)")
    check = kernel.ok("s = flood.status(); print(s.records_in, s.elapsed_s)")
    records, elapsed = check.stream().split()
    time.sleep(0.3)
    html_id = kernel.models("HTMLModel", run.msg_id)[0]  # the job view (the peek records' HTML comes next)
    updates = kernel.updates(html_id)
    assert int(records) > 10_000
    assert 3 <= len(updates) <= float(elapsed) * 10 + 4, (len(updates), elapsed)
    assert "STOPPED" in updates[-1]["content"]["data"]["state"]["value"]


def test_interrupt_under_wait_stops_the_job_in_one_line(kernel):
    msg_id = kernel.send('''%%sage_service tally
class TallyService(Tally):
    pass
''')
    assert kernel.collect(msg_id).ok
    msg_id = kernel.send("%%sage_pipeline endless --wait -o endless\n"
                         "env.from_source(Forever).map(lambda x: x + 1).sink(lambda x: None)\n")
    deadline = time.monotonic() + 30
    while not any(m["msg_type"] == "comm_msg" for m in kernel.of(msg_id)) and time.monotonic() < deadline:
        time.sleep(0.05)  # the widget's first update: the job is running
    time.sleep(0.2)
    kernel.km.interrupt_kernel()
    run = kernel.collect(msg_id)
    error = run.error()
    assert run.reply["content"]["status"] == "error" and error["ename"] == "KeyboardInterrupt"
    assert len(error["traceback"]) == 1
    assert "job 'endless' stopped by interrupt: STOPPED, services cleaned" in error["traceback"][0]
    check = kernel.ok("print(endless.state, endless.cleanup_report.ok, len(Tally.cleaned))")
    assert check.stream().split() == ["STOPPED", "True", "1"]


def test_rerunning_a_cell_replaces_its_previous_job(kernel):
    cell_id = str(uuid.uuid4())
    code = "%%sage_pipeline\nenv.from_source(Forever).sink(lambda x: None)\n"
    first = kernel.ok(code, cell_id=cell_id)
    kernel.ok("first = _", cell_id=str(uuid.uuid4()))
    kernel.ok(code, cell_id=cell_id)
    check = kernel.ok("second = _\nprint(first.state, first.cleanup_report.ok, second.state)\n"
                      "from sage_jupyter.jupyter.jobs import JOBS\n"
                      "print(sum(j.handle is first for j in JOBS.all()), sum(j.handle is second for j in JOBS.all()))")
    assert check.stream().split() == ["STOPPED", "True", "RUNNING", "0", "1"]
    assert first.ok
    kernel.ok("second.stop()")


def test_sage_stop_and_status(kernel):
    kernel.ok("%%sage_pipeline ticker\nenv.from_source(Forever).sink(lambda x: None)\n")
    status = kernel.ok("%sage_status")
    (table,) = [d for d in status.displays() if "text/html" in d["data"]]
    assert "ticker" in table["data"]["text/plain"] and "RUNNING" in table["data"]["text/html"]
    stop = kernel.ok("%sage_stop ticker")
    assert "job 'ticker' stopped: STOPPED, services cleaned" in stop.stream()
    again = kernel.run("%sage_stop nobody")
    assert again.reply["content"]["ename"] == "UsageError"
    assert again.stream("stderr").startswith("UsageError: %sage_stop: no job named 'nobody' in this kernel")
    assert len(again.stream("stderr").splitlines()) == 1


def test_sidebar_comm_is_fed_by_pushes_and_answers_actions(kernel):
    comm_id = uuid.uuid4().hex
    msg = kernel.kc.session.msg("comm_open", {"comm_id": comm_id, "target_name": "sage_jupyter", "data": {}})
    kernel.kc.shell_channel.send(msg)
    first = _comm_replies(kernel, comm_id, 1)[0]
    assert "palette" in first and first["palette"]["FAILED"].startswith("background:var(--jp-error-color1")
    # from here the frontend sends nothing: the kernel pushes every change itself
    kernel.ok("%%sage_pipeline sided\nenv.from_source(Forever).sink(lambda x: None)\n", cell_id="cell-sided")
    running = _pushed_job(kernel, comm_id, "sided", lambda j: j["state"] == "RUNNING")
    assert running["cell_id"] == "cell-sided" and running["terminal"] is False
    assert {"elapsed_s", "records_in", "records_out", "elapsed", "records", "where", "stopping"} <= set(running)
    assert running["where"] == "thread" and running["stopping"] is False
    kernel.ok("h = __import__('sage_jupyter.jupyter.jobs', fromlist=['JOBS']).JOBS.find('sided').handle\n"
              "h.stop(wait=True, timeout=30)")
    stopped = _pushed_job(kernel, comm_id, "sided", lambda j: j["state"] == "STOPPED")
    assert stopped["terminal"] is True
    # once every job of the kernel has ended nothing changes, and nothing is pushed
    kernel.ok("from sage_jupyter.jupyter.jobs import JOBS, stop_jobs\nassert not stop_jobs(JOBS.all(), 30)")
    deadline = time.monotonic() + 30
    while not all(j["terminal"] for j in _comm_replies(kernel, comm_id, 1)[-1]["jobs"]):
        assert time.monotonic() < deadline, "no push showed every job ended"
        time.sleep(0.05)
    time.sleep(0.5)
    pushes = len(_comm_replies(kernel, comm_id, 1))
    time.sleep(1.5)
    assert len(_comm_replies(kernel, comm_id, 1)) == pushes

    # actions: stop by job id (through the handle), clear finished, unknown
    kernel.ok("%%sage_pipeline other\nenv.from_source(Forever).sink(lambda x: None)\n", cell_id="cell-other")
    other = _pushed_job(kernel, comm_id, "other", lambda j: j["state"] == "RUNNING")
    _action(kernel, comm_id, {"action": "stop", "job_id": other["job_id"]})
    _pushed_job(kernel, comm_id, "other", lambda j: j["state"] == "STOPPED")
    _action(kernel, comm_id, {"action": "clear_finished"})
    last = _comm_replies(kernel, comm_id, 1)[-1]
    assert not [j for j in last["jobs"] if j["terminal"]]
    _action(kernel, comm_id, {"action": "nope"})
    assert "unknown action" in _comm_replies(kernel, comm_id, 1)[-1]["error"]


def test_a_rerun_job_keeps_its_place_in_the_list(kernel):
    kernel.ok("%%sage_pipeline first\nenv.from_batch(range(3)).sink(lambda x: None)\n", cell_id="c-first")
    kernel.ok("%%sage_pipeline second\nenv.from_batch(range(3)).sink(lambda x: None)\n", cell_id="c-second")
    kernel.ok("%%sage_pipeline first\nenv.from_batch(range(3)).sink(lambda x: None)\n", cell_id="c-first")
    run = kernel.ok("from sage_jupyter.jupyter.jobs import JOBS\nprint([j.name for j in JOBS.all()])")
    names = eval(run.stream().strip())
    assert names.index("first") < names.index("second")


def test_sidebar_stop_over_a_subshell_works_while_another_cell_runs(kernel):
    """JupyterLab 4.4+ sends the sidebar's comm over a kernel subshell. The kernel's pushes come
    from a thread of its own; they must not re-route that comm to the busy main shell, or a
    Stop would wait for the running cell (ipykernel routes a comm by its last sent message)."""
    request = kernel.kc.session.msg("create_subshell_request", {})
    kernel.kc.control_channel.send(request)
    subshell = kernel.kc.get_control_msg(timeout=30)["content"]["subshell_id"]
    comm_id = uuid.uuid4().hex
    opened = kernel.kc.session.msg("comm_open", {"comm_id": comm_id, "target_name": "sage_jupyter", "data": {}})
    opened["header"]["subshell_id"] = subshell
    kernel.kc.shell_channel.send(opened)
    _comm_replies(kernel, comm_id, 1)
    kernel.ok("%%sage_pipeline busy_stop\nenv.from_source(Forever).sink(lambda x: None)\n")
    running = _pushed_job(kernel, comm_id, "busy_stop", lambda j: j["state"] == "RUNNING")
    sleeping = kernel.send("import time; time.sleep(20)")
    pushes = len(_comm_replies(kernel, comm_id, 1))
    _comm_replies(kernel, comm_id, pushes + 1)  # the feed pushed while the main shell sleeps
    stop = kernel.kc.session.msg("comm_msg", {"comm_id": comm_id,
                                              "data": {"action": "stop", "job_id": running["job_id"]}})
    stop["header"]["subshell_id"] = subshell
    kernel.kc.shell_channel.send(stop)
    _pushed_job(kernel, comm_id, "busy_stop", lambda j: j["state"] == "STOPPED")
    assert not [m for m in kernel.of(sleeping) if m["msg_type"] == "status"
                and m["content"]["execution_state"] == "idle"], "the stop waited for the sleeping cell"
    assert kernel.collect(sleeping, timeout=60).ok


def _pushed_job(kernel: Kernel, comm_id: str, name: str, ready) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for payload in reversed(_comm_replies(kernel, comm_id, 1)):
            job = next((j for j in payload.get("jobs", []) if j["name"] == name), None)
            if job is not None and ready(job):
                return job
        time.sleep(0.05)
    raise AssertionError(f"no push showed job {name!r} as expected")


def _action(kernel: Kernel, comm_id: str, data: dict) -> None:
    before = len(_comm_replies(kernel, comm_id, 1))
    msg = kernel.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
    kernel.kc.shell_channel.send(msg)
    _comm_replies(kernel, comm_id, before + 1)


def _comm_replies(kernel: Kernel, comm_id: str, count: int) -> list[dict]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = [m["content"]["data"] for m in kernel.all()
               if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == comm_id]
        if len(got) >= count:
            return got
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} replies on the sidebar comm")


def test_final_state_is_saved_in_the_display_data(kernel):
    run = kernel.ok("%%sage_pipeline saved -o saved\nenv.from_batch(range(100)).sink(lambda x: None)\n")
    later = kernel.ok("saved.wait(30); saved.stop()")  # no autostop: stop cleans the services
    final = kernel.ok("pass")
    (shown,) = [d for d in run.displays() if "text/html" in d["data"]]
    display_id = shown["transient"]["display_id"]
    updates = [m["content"] for m in later.messages + final.messages if m["msg_type"] == "update_display_data"]
    assert updates and updates[-1]["transient"]["display_id"] == display_id
    data = updates[-1]["data"]
    assert "STOPPED" in data["text/html"] and "application/vnd.jupyter.widget-view+json" in data
    assert "Job 'saved'" in data["text/plain"] and "STOPPED" in data["text/plain"]


def test_shutdown_stops_jobs_and_leaves_no_process(tmp_path):
    marker = tmp_path / "cleaned"
    k = Kernel()
    try:
        k.ok("%load_ext sage_jupyter")
        k.ok(f'''%%sage_service journal
from sage_jupyter import BaseService
class Journal(BaseService):
    def cleanup(self):
        open({str(marker)!r}, "w").write("cleaned")
''')
        k.ok('''%%sage_pipeline running
import subprocess, time
from sage_jupyter import SourceFunction
class Busy(SourceFunction):
    def execute(self):
        time.sleep(0.01)
        return 1
env.from_source(Busy).sink(lambda x: None)
''')
        process = k.km.provisioner.process
        kernel_proc = psutil.Process(process.pid)
        children = kernel_proc.children(recursive=True)
    finally:
        k.shutdown()
    assert process.poll() is not None
    assert process.returncode == 0  # exited by itself: jupyter_client did not have to kill it
    assert marker.read_text() == "cleaned"  # the atexit hook stopped the job and cleaned its service
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.ray
def test_shutdown_cleans_and_kills_ray_service_actors(ray_session, tmp_path):
    from sage_jupyter.runtime.ray.orphans import parse_name, sage_actors

    marker = tmp_path / "actor-cleaned"
    k = Kernel(env={"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address})
    try:
        k.ok("%load_ext sage_jupyter")
        k.ok(f'''%%sage_service journal --remote
import os
from sage_jupyter import BaseService
class Journal(BaseService):
    def note(self, x):
        return x
    def cleanup(self):
        open({str(marker)!r}, "w").write(str(os.getpid()))
''')
        k.ok('''%%sage_pipeline on_actor -o on_actor
import time
from sage_jupyter import MapFunction, SourceFunction
class Busy(SourceFunction):
    def execute(self):
        time.sleep(0.01)
        return 1
class Note(MapFunction):
    def execute(self, x):
        return self.call_service["journal"].note(x)
env.from_source(Busy).map(Note).sink(lambda x: None)
''')
        k.ok("import time\nwhile on_actor.status().records_in == 0:\n    time.sleep(0.05)", timeout=120)
        process = k.km.provisioner.process
        pid = process.pid
        before = [a for a in sage_actors() if (parse_name(a["name"]) or ("", 0))[1] == pid]
    finally:
        k.shutdown()
    assert process.returncode == 0
    assert marker.read_text().isdigit() and int(marker.read_text()) != pid  # cleaned inside the actor
    assert len(before) == 1  # the service actor, alive while the job ran
    mine = [a for a in sage_actors() if (parse_name(a["name"]) or ("", 0))[1] == pid]
    assert mine == [], mine
