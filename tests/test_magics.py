"""The magics against a real IPython shell (no kernel: comms go nowhere, display prints)."""

from __future__ import annotations

import os
import sys
import time

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import sage_jupyter
from sage_jupyter import JobHandle, PipelineError
from sage_jupyter.jupyter import sidebar
from sage_jupyter.runtime import output as routing
from sage_jupyter.jupyter.jobs import JOBS, SERVICES, widget_of

SERVICE_CELL = '''
from sage_jupyter import BaseService
class Cache(BaseService):
    cleaned = 0
    def __init__(self):
        super().__init__()
        self.data = {}
    def get(self, key):
        return self.data.get(key, key * 10)
    def cleanup(self):
        type(self).cleaned += 1
'''

PIPELINE_CELL = '''
from sage_jupyter import MapFunction
class Lookup(MapFunction):
    def execute(self, x):
        print("looked up", x)
        return self.call_service["cache"].get(x)
results = []
env.from_batch(range(5)).map(Lookup).sink(results.append)
'''

FOREVER_CELL = '''
import time
from sage_jupyter import SourceFunction
class Forever(SourceFunction):
    def execute(self):
        time.sleep(0.01)
        return 1
env.from_source(Forever).sink(lambda x: None)
'''


def pipeline(ip, line: str, cell: str = PIPELINE_CELL):
    return ip.run_cell_magic("sage_pipeline", line, cell)


def test_service_cell_registers_one_class_for_later_pipelines(ip, capsys):
    ip.run_cell_magic("sage_service", "cache", SERVICE_CELL)
    assert "service 'cache' = Cache (thread)" in capsys.readouterr().out
    handle = pipeline(ip, "lookups --autostop --wait")
    assert isinstance(handle, JobHandle) and handle.state.value == "FINISHED"
    assert ip.user_ns["results"] == [0, 10, 20, 30, 40]
    assert ip.user_ns["Cache"].cleaned == 1
    assert handle.status().service("cache").calls == 5


def test_redefining_a_service_replaces_it(ip):
    ip.run_cell_magic("sage_service", "cache", SERVICE_CELL)
    ip.run_cell_magic("sage_service", "cache", SERVICE_CELL.replace("key * 10", "key * 100"))
    assert len(SERVICES) == 1
    pipeline(ip, "--autostop --wait")
    assert ip.user_ns["results"] == [0, 100, 200, 300, 400]


@pytest.mark.parametrize("cell, found", [
    ("x = 1", "none"),
    (SERVICE_CELL + "\nclass Other(BaseService):\n    pass\n", "Cache, Other"),
])
def test_service_cell_needs_exactly_one_service_class(ip, cell, found):
    with pytest.raises(UsageError, match=f"exactly one BaseService subclass \\(found: {found}\\)"):
        ip.run_cell_magic("sage_service", "cache", cell)
    assert "cache" not in SERVICES


@pytest.mark.parametrize("line, cell, message", [
    ("--bogus", PIPELINE_CELL, "unrecognized arguments: --bogus"),
    ("--backend spark", PIPELINE_CELL, "invalid choice: 'spark'"),
    ("--timeout -2", PIPELINE_CELL, "--timeout must be a number of seconds > 0"),
    ("--timeout soon", PIPELINE_CELL, "invalid float value: 'soon'"),
    ("-o 2x", PIPELINE_CELL, "-o needs a variable name"),
    ("", "  \n", "the cell is empty"),
    ("nosink", "s = env.from_batch(range(3)).map(lambda x: x)", "defined no sink"),
])
def test_bad_input_is_a_short_usage_error(ip, line, cell, message):
    with pytest.raises(UsageError, match=message):
        pipeline(ip, line, cell)
    assert not [j for j in JOBS.all() if not j.handle.state.terminal]


def test_usage_errors_in_a_cell_show_one_line(ip, capsys):
    result = ip.run_cell("%%sage_pipeline --backend spark\nx = 1\n")
    assert isinstance(result.error_in_exec, UsageError)
    err = capsys.readouterr().err
    assert err.strip().startswith("UsageError:") and len(err.strip().splitlines()) == 1


def test_errors_in_the_body_show_the_users_frames_only(ip):
    result = ip.run_cell("%%sage_pipeline\nx = 1\nundefined_name + x\n")
    exc = result.error_in_exec
    assert isinstance(exc, NameError)
    text = "\n".join(exc._render_traceback_())
    assert "undefined_name" in text and "line 2" in text
    assert "magics.py" not in text and "interactiveshell.py" not in text


def test_output_variable_gets_the_handle(ip, capsys):
    routing.install()  # again over the stdout pytest put back for the test's call phase
    ip.run_cell_magic("sage_service", "cache", SERVICE_CELL)
    assert pipeline(ip, "-o h --autostop --wait") is None
    handle = ip.user_ns["h"]
    assert handle.state.value == "FINISHED"
    job = JOBS.find(handle.name)
    assert "looked up 4" in job.widget.output.text()  # the stage's prints, in the job's output
    assert "looked up" not in capsys.readouterr().out.replace(job.widget.output.text(), "")


def test_without_wait_the_cell_returns_while_the_job_runs(ip):
    handle = pipeline(ip, "forever", FOREVER_CELL)
    assert handle.state.value == "RUNNING"
    ip.run_line_magic("sage_stop", "forever")
    assert handle.state.value == "STOPPED" and handle.cleanup_report.ok


def test_rerunning_the_same_name_stops_the_previous_job(ip):
    first = pipeline(ip, "again", FOREVER_CELL)
    second = pipeline(ip, "again", FOREVER_CELL)
    assert first.state.value == "STOPPED" and first.cleanup_report is not None
    assert second.state.value == "RUNNING"
    assert [j.handle for j in JOBS.all()] == [second]
    second.stop()


def test_timeout_stops_the_job(ip, capsys):
    handle = pipeline(ip, "short --wait --timeout 0.3", FOREVER_CELL)
    assert handle.state.value == "STOPPED"
    assert "job 'short' stopped after --timeout 0.3 s: STOPPED, services cleaned" in capsys.readouterr().out
    background = pipeline(ip, "bg --timeout 0.3", FOREVER_CELL)
    background.wait(30)  # no autostop: returns once the tasks ended, i.e. after the timeout
    assert background.stop(wait=True, timeout=30).value == "STOPPED"  # and its cleanup
    job = JOBS.find("bg")
    job.widget.wait_final(5)
    assert "--timeout 0.3 s passed" in job.widget.output.text("stderr")


def test_failing_pipeline_under_wait_shows_the_stage_traceback(ip):
    cell = "def bad(x):\n    raise KeyError('no such key')\nenv.from_batch(range(3)).map(bad).sink(print)\n"
    with pytest.raises(PipelineError) as info:
        pipeline(ip, "broken --autostop --wait", cell)
    lines = info.value._render_traceback_()
    assert lines[0].startswith("PipelineError: job 'broken' failed in stage 'map:bad'")
    assert "services cleaned" in lines[1]
    assert "Original traceback:" in lines and "KeyError: 'no such key'" in lines[-1]
    shown = "\n".join(lines[lines.index("Original traceback:") + 1:])
    frames = [line.strip() for line in shown.splitlines() if line.strip().startswith("File ")]
    assert frames and "in bad" in frames[0] and f'File "{os.path.dirname(sage_jupyter.__file__)}' not in shown


def test_status_table_and_stop_all(ip, capsys):
    ip.run_cell_magic("sage_service", "cache", SERVICE_CELL)
    pipeline(ip, "one", FOREVER_CELL)
    pipeline(ip, "two --autostop --wait")
    table = ip.run_line_magic("sage_status", "")
    rows = {r["name"]: r for r in table.rows}
    assert rows["one"]["state"] == "RUNNING" and rows["two"]["state"] == "FINISHED"
    assert rows["two"]["records in -> out"] == "5 -> 5" and rows["two"]["services"] == "cache: cleaned"
    assert "RUNNING" in table._repr_html_() and "records" in repr(table)
    capsys.readouterr()
    ip.run_line_magic("sage_stop", "--all")
    assert "job 'one' stopped: STOPPED, services cleaned" in capsys.readouterr().out
    assert {r["state"] for r in ip.run_line_magic("sage_status", "").rows} == {"STOPPED", "FINISHED"}


@pytest.mark.parametrize("line, message", [("", "give a job name or --all"),
                                           ("x --all", "give a job name or --all"),
                                           ("ghost", "no job named 'ghost'")])
def test_stop_needs_a_known_name_or_all(ip, line, message):
    with pytest.raises(UsageError, match=message):
        ip.run_line_magic("sage_stop", line)


def test_sidebar_protocol_lists_and_stops(ip):
    handle = pipeline(ip, "side", FOREVER_CELL)
    listed = sidebar.handle_message({"action": "list"})
    assert [j["name"] for j in listed["jobs"]] == ["side"]
    entry = listed["jobs"][0]
    assert entry["state"] == "RUNNING" and entry["terminal"] is False
    assert entry["records"].startswith("records in -> out: ")
    sidebar.handle_message({"action": "stop", "job_id": entry["job_id"]})
    assert handle.wait(30).value == "STOPPED"
    widget_of(handle).wait_final(10)
    assert sidebar.handle_message({"action": "list"})["jobs"][0]["terminal"] is True
    assert sidebar.handle_message({"action": "clear_finished"})["jobs"] == []
    assert "unknown action" in sidebar.handle_message({"action": "explode"})["error"]
    assert "no job 'ghost'" in sidebar.handle_message({"action": "stop", "name": "ghost"})["error"]
    assert "expected a JSON object" in sidebar.handle_message(["list"])["error"]


def test_unload_stops_jobs_and_unregisters_everything(no_thread_leak):
    shell = InteractiveShell.instance()
    stdout = sys.stdout
    shell.run_line_magic("load_ext", "sage_jupyter")
    assert routing.installed()
    handle = pipeline(shell, "left-running", FOREVER_CELL)
    started = time.monotonic()
    shell.run_line_magic("unload_ext", "sage_jupyter")
    assert handle.state.value == "STOPPED" and handle.cleanup_report.ok
    assert time.monotonic() - started < 30
    assert sys.stdout is stdout
    assert "sage_pipeline" not in shell.magics_manager.magics["cell"]
    assert "sage_status" not in shell.magics_manager.magics["line"]
    assert JOBS.all() == [] and SERVICES == {}
    shell.user_ns.pop("env", None)


def test_jobs_submitted_without_the_magics_are_listed_and_stopped(ip, capsys):
    ip.run_cell('''
import time
from sage_jupyter import LocalEnvironment, SourceFunction
class Drip(SourceFunction):
    def execute(self):
        time.sleep(0.01)
        return 1
plain_env = LocalEnvironment("plain")
plain_env.from_source(Drip).sink(lambda x: None)
plain_job = plain_env.submit(block=False)
''')
    handle = ip.user_ns.pop("plain_job")
    rows = {r["name"]: r for r in ip.run_line_magic("sage_status", "").rows}
    assert rows["plain"]["state"] == "RUNNING"
    assert [j["name"] for j in sidebar.handle_message({"action": "list"})["jobs"]] == ["plain"]
    ip.run_line_magic("sage_stop", "plain")
    assert handle.state.value == "STOPPED"
    assert "job 'plain' stopped" in capsys.readouterr().out
    ip.user_ns.pop("plain_env", None)


AUDIT_CELL = '''
from sage_jupyter import BaseService
class Audit(BaseService):
    def record(self, x):
        return x
'''


def test_sage_services_lists_removes_and_clears(ip, capsys):
    ip.run_cell_magic("sage_service", "cache", SERVICE_CELL)
    ip.run_cell_magic("sage_service", "audit --remote", AUDIT_CELL)
    table = ip.run_line_magic("sage_services", "")
    assert [(r["name"], r["class"], r["kind"]) for r in table.rows] == [
        ("cache", "Cache", "thread"), ("audit", "Audit", "Ray actor")]
    assert "audit" in table._repr_html_() and "Ray actor" in repr(table)
    with pytest.raises(UsageError, match=r"no service named 'nope' in this kernel \(services: cache, audit\)"):
        ip.run_line_magic("sage_services", "--remove cache nope")
    assert list(SERVICES) == ["cache", "audit"]  # nothing removed when one name is wrong
    with pytest.raises(UsageError, match="not both"):
        ip.run_line_magic("sage_services", "--remove cache --clear")
    assert [r["name"] for r in ip.run_line_magic("sage_services", "--remove audit").rows] == ["cache"]
    assert "removed 'audit'" in capsys.readouterr().out
    assert len(ip.run_line_magic("sage_services", "--clear")) == 0 and not SERVICES
    assert "No sage_jupyter services in this kernel." in repr(ip.run_line_magic("sage_services", ""))


def test_pipeline_services_starts_only_the_named_ones(ip):
    ip.run_cell_magic("sage_service", "cache", SERVICE_CELL)
    ip.run_cell_magic("sage_service", "audit", AUDIT_CELL)
    handle = pipeline(ip, "only_cache --autostop --wait --services cache")
    assert [s.name for s in handle.status().services] == ["cache"]
    assert ip.user_ns["results"] == [0, 10, 20, 30, 40]
    none = pipeline(ip, '--autostop --wait --services ""', "env.from_batch(range(3)).sink(lambda x: None)")
    assert none.state.value == "FINISHED" and none.status().services == ()
    every = pipeline(ip, "every --autostop --wait")
    assert sorted(s.name for s in every.status().services) == ["audit", "cache"]


@pytest.mark.parametrize("spec, message", [
    ("cache,nope", r"--services: no service named 'nope' in this kernel \(services: cache\)"),
    ("cache,,", r"--services 'cache,,' has an empty name"),
])
def test_pipeline_services_refuses_unknown_or_empty_names(ip, spec, message):
    ip.run_cell_magic("sage_service", "cache", SERVICE_CELL)
    with pytest.raises(UsageError, match=message):
        pipeline(ip, f"--autostop --services {spec}")
    assert not [j for j in JOBS.all() if not j.handle.state.terminal]
