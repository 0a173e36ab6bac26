"""`%%sage_pipeline --max-records N --max-duration S` in a real ipykernel: the sources end as
if exhausted (FINISHED, services cleaned), `--timeout` still stops (STOPPED), bad values are
one-line UsageErrors."""

from __future__ import annotations

import pytest

from kernel_harness import Kernel

pytestmark = pytest.mark.kernel

SETUP = '''
from sage_jupyter import BaseService, SourceFunction
class Count(SourceFunction):
    def __init__(self):
        super().__init__()
        self.i = 0
    def execute(self):
        self.i += 1
        return self.i
class Tally(BaseService):
    cleaned = 0
    def cleanup(self):
        Tally.cleaned += 1
got = []
'''

SERVICE = '''%%sage_service tally
class Tally2(Tally):
    pass
'''


@pytest.fixture(scope="module")
def kernel():
    k = Kernel()
    k.ok("%load_ext sage_jupyter")
    k.ok(SETUP)
    k.ok(SERVICE)
    yield k
    k.shutdown()


def value(kernel: Kernel, expression: str) -> str:
    run = kernel.ok(f"print(repr(({expression})))")
    return run.stream("stdout").strip()


def test_max_records_ends_the_sources_as_if_exhausted(kernel):
    kernel.ok("got.clear()")
    kernel.ok("%%sage_pipeline counted --max-records 2500 --autostop --wait -o h\n"
              "env.from_source(Count).connect(env.from_source(Count)).sink(got.append)")
    assert value(kernel, "h.state.value") == "'FINISHED'"
    assert value(kernel, "len(got), len(set(got)) <= len(got)") == "(2500, True)"
    assert value(kernel, "h.cleanup_report.reason, h.cleanup_report['tally'].cleaned") == "('finished', True)"


def test_max_duration_ends_an_unbounded_source_and_cleans(kernel):
    kernel.ok("got.clear(); before = Tally.cleaned")
    kernel.ok("%%sage_pipeline timed --max-duration 0.3 --autostop --wait -o h\n"
              "env.from_source(Count).sink(got.append)")
    assert value(kernel, "h.state.value") == "'FINISHED'"
    assert value(kernel, "got == list(range(1, len(got) + 1)) and len(got) > 0") == "True"
    assert value(kernel, "h.status().records_in == len(got)") == "True"
    assert value(kernel, "Tally.cleaned - before") == "1"


def test_timeout_keeps_stopping_the_job(kernel):
    kernel.ok("%%sage_pipeline capped --max-records 1000000000 --timeout 0.3 --autostop --wait -o h\n"
              "import time\n"
              "env.from_source(Count).sink(lambda x: time.sleep(0.001))")
    assert value(kernel, "h.state.value") == "'STOPPED'"


@pytest.mark.parametrize(("flags", "message"), [
    ("--max-records -3", "%%sage_pipeline: --max-records must be a whole number of records >= 0, got -3"),
    ("--max-records ten", "argument --max-records: invalid int value: 'ten'"),
    ("--max-duration nan", "--max-duration must be a finite number of seconds >= 0, got nan"),
    ("--max-duration -1", "--max-duration must be a finite number of seconds >= 0, got -1"),
])
def test_bad_limits_are_usage_errors(kernel, flags, message):
    run = kernel.run(f"%%sage_pipeline bad {flags}\nenv.from_source(Count).sink(print)")
    assert not run.ok
    assert run.stream("stderr").startswith("UsageError: ") and message in run.stream("stderr")
    assert value(kernel, "__import__('sage_jupyter.jupyter.jobs').jupyter.jobs.JOBS.find('bad')") == "None"
