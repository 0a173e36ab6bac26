"""What a failure looks like (thread backend): the failing stage alone is FAILED, tracebacks
hold the user's frames, a service that failed to start is "failed" everywhere."""

from __future__ import annotations

import os

import pytest

import sage_jupyter
from sage_jupyter import BaseService, LocalEnvironment, PipelineError
from sage_jupyter.jupyter import templates
from sage_jupyter.runtime.job import status_from_dict

PACKAGE = os.path.dirname(sage_jupyter.__file__)


def parse(x: int) -> int:
    if x == 7:
        raise ValueError(f"cannot parse record {x}")
    return x


class Broken(BaseService):
    def setup(self) -> None:
        raise ConnectionError("database is not reachable")


class Fine(BaseService):
    def lookup(self, x: int) -> int:
        return x


def own_frames(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip().startswith(f'File "{PACKAGE}')]


def failed_job(env: LocalEnvironment):
    handle = env.submit(autostop=True, block=False)
    with pytest.raises(PipelineError) as info:
        handle.wait(30)
    return handle, info.value


def test_only_the_raising_stage_fails_and_the_stopped_ones_say_so(no_thread_leak):
    env = LocalEnvironment("fragile")
    # parallelism 2 after the source breaks the chain: the map runs in tasks of its own
    env.from_batch(range(20)).map(parse, parallelism=2).sink(lambda x: None)
    handle, err = failed_job(env)
    status = handle.status()
    failed = [t for t in status.tasks if t.state.value == "FAILED"]
    assert [t.stage for t in failed] == ["map:parse"] and failed[0].error is not None
    others = [t for t in status.tasks if t not in failed]
    assert others and all(t.state.value in ("STOPPED", "FINISHED") for t in others), others
    assert templates.stage_state("map:parse", status.tasks) == "FAILED"
    assert templates.stage_state("sink:lambda", status.tasks) != "FAILED"
    assert err.stage.startswith("stage 'map:parse'")


def test_traceback_holds_the_user_frames_and_the_full_one_everything(no_thread_leak):
    env = LocalEnvironment("frames")
    env.from_batch(range(20)).map(parse).sink(lambda x: None)
    handle, err = failed_job(env)
    info = handle.error
    assert own_frames(info.traceback) == []
    assert 'in parse\n    raise ValueError(f"cannot parse record {x}")' in info.traceback
    assert info.traceback.rstrip().endswith("ValueError: cannot parse record 7")
    assert own_frames(info.full_traceback) != [] and "in parse" in info.full_traceback
    assert own_frames(str(err)) == []  # the PipelineError's text too
    # the JobManager protocol carries both through JSON
    again = status_from_dict(handle.status().to_dict()).error
    assert again == info


def test_a_service_whose_setup_raised_ends_failed_never_cleaned(no_thread_leak):
    env = LocalEnvironment("no-start")
    env.register_service("fine", Fine)
    env.register_service("broken", Broken)
    env.from_batch(range(3)).sink(lambda x: None)
    handle, err = failed_job(env)
    assert "service 'broken' setup" in err.stage
    status = handle.status()
    assert status.service("broken").state.value == "failed"
    assert status.service("broken").error.message == "database is not reachable"
    assert own_frames(status.service("broken").error.traceback) == []
    assert status.service("fine").state.value == "cleaned"
    report = handle.cleanup_report
    assert not report["broken"].cleaned and report["fine"].cleaned
    assert "failed to start: ConnectionError: database is not reachable" in report["broken"].describe()
    html = templates.job_html(status)
    assert "all services cleaned" not in html and "all services cleaned" not in templates.job_text(status)
    assert 'data-state="cleaned"' in html and 'data-state="failed"' in html
    again = status_from_dict(status.to_dict())
    assert again.service("broken").state.value == "failed"
    assert again.cleanup_report["broken"].start_error == report["broken"].start_error


def test_the_widget_shows_the_traceback_once_user_frame_first(no_thread_leak):
    env = LocalEnvironment("shown")
    env.from_batch(range(20)).map(parse).sink(lambda x: None)
    handle, _ = failed_job(env)
    html = templates.job_html(handle.status())
    assert html.count('class="sage-traceback"') == 1
    shown = html.split('class="sage-traceback"', 1)[1]
    first_frame = shown.split("File &quot;", 2)[1]
    assert "in parse" in first_frame.split("\n", 1)[0] and not first_frame.startswith(PACKAGE)
    # the task row only names the error; the full text (runtime frames too) stays folded
    assert html.count("<pre") == 2 and html.count('<details class="sage-full-traceback">') == 1
    assert html.index('class="sage-traceback"') < html.index("sage-full-traceback")
    text = templates.job_text(handle.status())
    assert text.count("ValueError: cannot parse record 7") == 3  # task line, job line, end of its traceback
    assert text.count("Traceback (most recent call last)") == 1


def test_wording_avg_rates_ms_durations_and_records_label():
    assert templates.duration(0.0123) == "12 ms" and templates.duration(0.0042) == "4.2 ms"
    assert templates.duration(2.5) == "2.5 s"
    assert templates.rate(1500.0, average=True) == "avg 1.5 k/s" and templates.rate(12.0) == "12/s"
    assert "records in -> out" in templates.JOB_COLUMNS
