#!/usr/bin/env python3
"""Peer benchmark: upstream SAGE (PyPI ``isage-kernel``) measured on its own.

This script is standalone: it imports only the standard library and upstream
``sage`` (never sage_jupyter), so it must run under an interpreter that has
``isage-kernel`` installed. The conventional name for that interpreter is the
environment variable ``SAGE_PEER_PYTHON``::

    python3 -m venv /tmp/sage_peer_venv && /tmp/sage_peer_venv/bin/pip install isage-kernel==0.2.5.3
    export SAGE_PEER_PYTHON=/tmp/sage_peer_venv/bin/python
    "$SAGE_PEER_PYTHON" benchmarks/peer_sage.py           # one text line per figure
    "$SAGE_PEER_PYTHON" benchmarks/peer_sage.py --json    # one JSON dict on stdout

Figures (all on upstream's ``LocalEnvironment``, class-based functions):

a) throughput, stock upstream: ``--n`` ints (default 2000) through
   map(x*2) -> filter(x%3==0) -> sink(count), ``submit(autostop=True)`` timed
   from the call to its return. The sink count is compared with the expected
   count and any shortfall is reported as ``lost``.
b) the same with upstream's per-record sleep PATCHED OUT. Upstream hard-codes
   ``TaskContext.delay = 0.01`` and its task worker loop sleeps that long after
   every record a source emits (about 10 ms per record). For this run only the
   script monkeypatches ``BaseTask.delay`` to return 0 in this process (the
   installed package is not modified); the output says ``patched_sleep=True``.
   Upstream still writes per-record DEBUG logs to files, which bounds this run.
   ``--patch-sleep`` picks stock, patched or both (default both).
c) autostop latency, stock upstream: a small batch (``--latency-n``, default 20)
   through the same pipeline with three registered ``BaseService`` subclasses
   whose ``cleanup`` records a timestamp; the figure is the time from the sink
   receiving its last record to ``submit(autostop=True)`` returning, median of
   ``--runs`` runs (default 3). Upstream ends a batch with quiet-period timers
   (each map/filter drains its queue until 0.5 s pass without input, the sink
   until 0.3 s pass), then stops the services one after another (each stop
   joins a request listener that polls with a 1 s timeout), and ``submit``
   polls for completion once per second, so expect several seconds.

Side effects of upstream: its local JobManager binds 127.0.0.1:19001 and
installs SIGINT/SIGTERM handlers, it prints to stdout and writes logs under
``$SAGE_OUTPUT_DIR`` (default ``~/.sage``). The script redirects upstream's
stdout to stderr (stdout carries only the figures), points ``SAGE_OUTPUT_DIR``
at a temporary directory (removed at exit) unless it is already set, and ends
with ``os._exit`` because upstream may leave threads running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

# Keep stdout for our figures only; everything upstream prints goes to stderr.
_OUT = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)

_TMP_OUTPUT_DIR: str | None = None
if "SAGE_OUTPUT_DIR" not in os.environ:
    _TMP_OUTPUT_DIR = tempfile.mkdtemp(prefix="sage_peer_")
    os.environ["SAGE_OUTPUT_DIR"] = _TMP_OUTPUT_DIR

from sage.common.core.functions import (  # noqa: E402
    BatchFunction,
    FilterFunction,
    MapFunction,
    SinkFunction,
)
from sage.kernel.api.local_environment import LocalEnvironment  # noqa: E402
from sage.kernel.api.service import BaseService  # noqa: E402
from sage.kernel.runtime.task.base_task import BaseTask  # noqa: E402

N_SERVICES = 3
SLEEP_PATCH = "BaseTask.delay:0.01->0"  # what per_record_sleep_removed() does, for the output


@dataclass
class _Probe:
    """Observations made from inside the pipeline (tasks run as threads of this process)."""

    sink_count: int = 0
    last_sink_t: float = 0.0
    cleanup_ts: list[float] = field(default_factory=list)


_probe = _Probe()


class RangeSource(BatchFunction):
    def __init__(self, n: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._n = n
        self._i = 0

    def execute(self) -> int | None:
        if self._i >= self._n:
            return None  # upstream's end-of-batch marker
        self._i += 1
        return self._i - 1


class Double(MapFunction):
    def execute(self, data: int) -> int:
        return data * 2


class DivisibleBy3(FilterFunction):
    def execute(self, data: object) -> bool:
        # Upstream also hands the end-of-batch StopSignal to filter functions.
        return isinstance(data, int) and data % 3 == 0


class CountSink(SinkFunction):
    def execute(self, data: int) -> None:
        _probe.sink_count += 1
        _probe.last_sink_t = time.perf_counter()


class ProbeService(BaseService):
    def cleanup(self) -> None:
        _probe.cleanup_ts.append(time.perf_counter())


def expected_count(n: int) -> int:
    return sum(1 for i in range(n) if (i * 2) % 3 == 0)


@contextlib.contextmanager
def per_record_sleep_removed(active: bool) -> Iterator[None]:
    """Make upstream's hard-coded per-record delay 0 while active (runtime monkeypatch)."""
    if not active:
        yield
        return
    original = BaseTask.__dict__["delay"]
    BaseTask.delay = property(lambda self: 0.0)  # type: ignore[assignment,method-assign]
    try:
        yield
    finally:
        BaseTask.delay = original  # type: ignore[method-assign]


_run_no = 0


def run_pipeline(n: int, services: int) -> tuple[float, float | None]:
    """Run one autostop batch; return seconds from submit to its return and to the last record."""
    global _run_no, _probe
    _run_no += 1
    _probe = _Probe()
    env = LocalEnvironment(f"peer_sage_{_run_no}")
    env.set_console_log_level("WARNING")
    for s in range(services):
        env.register_service(f"probe_{s}", ProbeService)
    env.from_batch(RangeSource, n=n).map(Double).filter(DivisibleBy3).sink(CountSink)
    t0 = time.perf_counter()
    env.submit(autostop=True)
    t1 = time.perf_counter()
    return t1 - t0, (_probe.last_sink_t - t0 if _probe.sink_count else None)


def throughput(n: int, patched: bool) -> dict[str, Any]:
    with per_record_sleep_removed(patched):
        elapsed, last = run_pipeline(n, services=0)
    expected = expected_count(n)
    return {
        "records_per_s": n / elapsed,
        "elapsed_s": elapsed,
        "last_record_s": last,
        "sink_count": _probe.sink_count,
        "expected": expected,
        "lost": expected - _probe.sink_count,
    }


def autostop_latency(n: int, runs: int) -> dict[str, Any]:
    latencies: list[float] = []
    cleanup_offsets: list[float] = []
    cleanups = 0
    lost = 0
    for _ in range(runs):
        elapsed, last = run_pipeline(n, services=N_SERVICES)
        cleanups += len(_probe.cleanup_ts)
        lost += expected_count(n) - _probe.sink_count
        if last is None:  # sink saw nothing: no reference point for this run
            continue
        latencies.append(elapsed - last)
        if _probe.cleanup_ts:
            cleanup_offsets.append(max(_probe.cleanup_ts) - _probe.last_sink_t)
    return {
        "median_s": statistics.median(latencies) if latencies else None,
        "runs_s": latencies,
        "cleanup_after_last_record_median_s": (
            statistics.median(cleanup_offsets) if cleanup_offsets else None
        ),
        "service_cleanups": cleanups,
        "service_cleanups_expected": runs * N_SERVICES,
        "lost": lost,
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ",".join(_fmt(x) for x in v)
    return str(v)


def _line(**fields: Any) -> str:
    return "peer_sage " + " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="records for the throughput runs")
    ap.add_argument(
        "--patch-sleep",
        choices=("both", "off", "on"),
        default="both",
        help="throughput with stock upstream (off), per-record sleep patched out (on), or both",
    )
    ap.add_argument("--latency-n", type=int, default=20, help="records per autostop-latency run")
    ap.add_argument("--runs", type=int, default=3, help="autostop-latency runs (0 skips)")
    ap.add_argument("--json", action="store_true", help="print one JSON dict instead of lines")
    with contextlib.redirect_stdout(_OUT):  # --help belongs on the real stdout
        args = ap.parse_args()

    # Start upstream's JobManager singleton (port 19001, log setup) outside the timed runs.
    LocalEnvironment("peer_sage_warmup").jobmanager  # noqa: B018

    figures: dict[str, Any] = {"sage_kernel_version": version("isage-kernel"), "n": args.n}
    lines: list[str] = []
    modes = {"both": (False, True), "off": (False,), "on": (True,)}[args.patch_sleep]
    for patched in modes:
        tp = throughput(args.n, patched)
        prefix = "throughput_patched" if patched else "throughput_stock"
        figures.update({f"{prefix}_{k}": v for k, v in tp.items()})
        lines.append(
            _line(
                throughput_records_per_s=tp["records_per_s"],
                **{k: tp[k] for k in ("elapsed_s", "last_record_s", "sink_count", "expected")},
                lost=tp["lost"],
                n=args.n,
                patched_sleep=patched,
                **({"sleep_patch": SLEEP_PATCH} if patched else {}),
            )
        )
    if True in modes:
        figures["sleep_patch"] = SLEEP_PATCH
    if args.runs > 0:
        lat = autostop_latency(args.latency_n, args.runs)
        figures.update({f"autostop_latency_{k}": v for k, v in lat.items()})
        figures["autostop_latency_n"] = args.latency_n
        figures["autostop_latency_services"] = N_SERVICES
        figures["autostop_latency_patched_sleep"] = False
        lines.append(
            _line(
                autostop_latency_median_s=lat["median_s"],
                runs_s=lat["runs_s"],
                cleanup_after_last_record_median_s=lat["cleanup_after_last_record_median_s"],
                service_cleanups=f"{lat['service_cleanups']}/{lat['service_cleanups_expected']}",
                lost=lat["lost"],
                n=args.latency_n,
                services=N_SERVICES,
                patched_sleep=False,
            )
        )

    if args.json:
        _OUT.write(json.dumps(figures) + "\n")
    else:
        _OUT.write("".join(line + "\n" for line in lines))
    return 0


if __name__ == "__main__":
    code: int = 1
    try:
        code = main()
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:  # noqa: BLE001 - any failure is printed, then cleaned up; the exit code stays 1
        traceback.print_exc()
    finally:
        if _TMP_OUTPUT_DIR:
            shutil.rmtree(_TMP_OUTPUT_DIR, ignore_errors=True)
        _OUT.flush()
        sys.stderr.flush()
        os._exit(code)
