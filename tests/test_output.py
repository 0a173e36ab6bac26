"""Output routing in one process: the stdout/stderr proxy and the job's Output sink."""

from __future__ import annotations

import contextlib
import io
import sys
import threading

from sage_jupyter import BaseService, LocalEnvironment, MapFunction
from sage_jupyter.runtime import output as routing
from sage_jupyter.jupyter.output import JobOutput


@contextlib.contextmanager
def routed_streams():
    """sys.stdout/stderr replaced by StringIOs with the proxy over them. Entered inside the
    test body: pytest's capture resets sys.stdout between the setup and call phases."""
    saved = sys.stdout, sys.stderr
    out, err = io.StringIO(), io.StringIO()
    sys.stdout, sys.stderr = out, err
    routing.install()
    try:
        yield out, err
    finally:
        routing.uninstall()
        sys.stdout, sys.stderr = saved


class Echo(BaseService):
    def setup(self) -> None:
        print("service setup")

    def shout(self, x):
        print(f"service saw {x}", file=sys.stderr)
        return x

    def cleanup(self) -> None:
        print("service cleanup")


class CallEcho(MapFunction):
    def execute(self, x):
        return self.call_service["echo"].shout(x)


def test_prints_from_stages_and_services_go_to_their_job(no_thread_leak):
    first: list[tuple[str, str]] = []
    env = LocalEnvironment("printing")
    env.register_service("echo", Echo)
    env._output = lambda stream, text: first.append((stream, text))
    env.from_batch(range(3)).map(lambda x: (print(f"stage saw {x}"), x)[1]).sink(lambda x: None)

    second: list[tuple[str, str]] = []
    env2 = LocalEnvironment("calling")
    env2.register_service("echo", Echo)
    env2._output = lambda stream, text: second.append((stream, text))
    env2.from_batch(range(2)).map(CallEcho).sink(lambda x: None)

    with routed_streams() as (out, err):
        print("main thread text")
        env.submit(autostop=True)
        env2.submit(autostop=True)

    text = "".join(t for s, t in first if s == "stdout")
    assert "stage saw 0" in text and "stage saw 2" in text
    assert "service setup" in text and "service cleanup" in text
    assert "service saw 1" in "".join(t for s, t in second if s == "stderr")
    assert "service saw" not in "".join(t for _, t in first)  # each job gets only its own text
    assert out.getvalue() == "main thread text\n"
    assert err.getvalue() == ""


def test_other_threads_write_to_the_original_stream():
    with routed_streams() as (out, _):
        t = threading.Thread(target=lambda: print("plain thread"))
        t.start()
        t.join()
    assert out.getvalue() == "plain thread\n"


def test_a_failing_sink_falls_back_to_the_original_stream():
    def broken(stream, text):
        raise RuntimeError("view closed")

    def run() -> None:
        print("still visible")

    from sage_jupyter.runtime.threads import spawn

    with routed_streams() as (out, _):
        spawn(run, "sage-test:broken", broken).join()
    assert out.getvalue() == "still visible\n"


def test_uninstall_restores_and_is_idempotent(monkeypatch):
    original = io.StringIO()
    monkeypatch.setattr(sys, "stdout", original)
    routing.install()
    routing.install()
    assert isinstance(sys.stdout, routing.RoutedStream) and sys.stdout.original is original
    routing.uninstall()
    assert sys.stdout is original


def test_uninstall_under_another_wrapper_turns_the_proxy_off(monkeypatch):
    original = io.StringIO()
    monkeypatch.setattr(sys, "stdout", original)
    routing.install()
    proxy = sys.stdout

    class Wrapper:  # e.g. a capture tool that wrapped our proxy after we installed it
        def __init__(self, inner):
            self.original = inner

        def write(self, text):
            return self.original.write(text)

    monkeypatch.setattr(sys, "stdout", Wrapper(proxy))
    routing.uninstall()
    from sage_jupyter.runtime.threads import spawn

    got = []
    spawn(lambda: print("after unload"), "sage-test:off", lambda s, t: got.append(t)).join()
    assert got == [] and original.getvalue() == "after unload\n"
    assert not isinstance(sys.stderr, routing.RoutedStream)  # the one not wrapped was restored


def test_job_output_coalesces_runs_into_one_update_per_flush():
    sink = JobOutput()
    sink.direct = False
    for i in range(100):
        sink("stdout", f"line {i}\n")
        if i % 50 == 0:
            sink("stderr", f"err {i}\n")
    assert sink.widget.outputs == ()
    sink.flush()
    outs = sink.widget.outputs
    assert [o["name"] for o in outs] == ["stdout", "stderr", "stdout", "stderr", "stdout"]
    assert sink.text("stdout").count("line") == 100
    assert sink.text("stderr") == "err 0\nerr 50\n"


def test_job_output_keeps_only_a_bounded_tail():
    sink = JobOutput(max_chars=1000)
    for i in range(2000):
        sink("stdout", f"{i:05d}\n")  # direct mode: every write flushes
    shown = sink.text()
    body = list(sink.widget.outputs)[1:]
    assert sum(len(o["text"]) for o in body) <= 1000
    assert shown.endswith("01999\n")
    assert "earlier characters not shown" in sink.widget.outputs[0]["text"]
    assert sink.trimmed_chars == 2000 * 6 - sum(len(o["text"]) for o in body)
