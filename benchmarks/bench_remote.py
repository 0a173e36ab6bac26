"""Remote mode on loopback: submit-to-first-record round trip, and what status polling
costs the JobManager.

    .venv/bin/python benchmarks/bench_remote.py [--runs 30] [--seconds 5] [--json]

round trip: from `submit()` until the client has seen the first record reach the sink
(the sink prints it on the daemon; the client's output long-poll returns it), for a
3-stage pipeline of 3 records; the same pipeline in-process gives the local reference.
polling: the daemon's CPU time while a client polls one job's status at `--hz` (10 Hz,
the widget's rate for local jobs), and while the notebook widget itself follows the job
(it polls remote handles at 2 Hz, plus its subscription), each minus the daemon's CPU time
over the same span without polling. Targets: < 100 ms and < 1 % of a core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time

import psutil

from sage_jupyter import LocalEnvironment, RemoteEnvironment, SourceFunction
from sage_jupyter.jobmanager import JobManagerClient
from sage_jupyter.jobmanager.launch import start_daemon


class SlowTicks(SourceFunction):
    """Unbounded and nearly idle: the job runs while the daemon's CPU is measured."""

    def execute(self):
        time.sleep(0.05)
        return 1


def remote_round_trip(port: int, token: str, i: int) -> tuple[float, float]:
    """(submit -> first record seen by the client, submit -> finished and cleaned) in s."""
    env = RemoteEnvironment(f"rt{i}", port=port, token=token, config={"forward_output": False})
    env.from_batch([1, 2, 3]).map(lambda x: x + 1).sink(print)
    client = env._client
    t0 = time.perf_counter()
    job = env.submit(autostop=True, block=False)
    while not client.output(job.job_id, since=0, wait=2.0)["chunks"]:
        pass
    first = time.perf_counter() - t0
    job.wait()
    done = time.perf_counter() - t0
    env.close()
    return first, done


def local_round_trip(i: int) -> float:
    seen = threading.Event()
    env = LocalEnvironment(f"lrt{i}")
    env.from_batch([1, 2, 3]).map(lambda x: x + 1).sink(lambda x: seen.set())
    t0 = time.perf_counter()
    env.submit(autostop=True, block=False)
    seen.wait(10)
    first = time.perf_counter() - t0
    env.job.wait()
    return first


class CpuClock:
    """CPU time of one process. Linux: nanosecond run times of its threads from
    /proc/PID/task/*/schedstat (psutil's 10 ms ticks are too coarse for a < 1 % figure)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.proc = psutil.Process(pid)
        self.precise = os.path.exists(f"/proc/{pid}/task/{pid}/schedstat")

    def _threads(self) -> dict[str, int]:
        out = {}
        for task in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{task}/schedstat") as f:
                    out[task] = int(f.read().split()[0])
            except OSError:  # the thread ended meanwhile
                pass
        return out

    def measure(self, action) -> float:
        """Run `action()` and return the process's CPU seconds per wall second meanwhile."""
        t0 = time.perf_counter()
        if self.precise:
            before = self._threads()
            action()
            after = self._threads()
            used = sum(after[t] - before[t] for t in after.keys() & before.keys()) / 1e9
        else:
            c0 = self.proc.cpu_times()
            action()
            c1 = self.proc.cpu_times()
            used = (c1.user + c1.system) - (c0.user + c0.system)
        return used / (time.perf_counter() - t0)


def polling_cost(port: int, token: str, seconds: float, hz: float) -> dict[str, float]:
    from sage_jupyter.jupyter.widget import JobWidget

    env = RemoteEnvironment("polled", port=port, token=token, config={"forward_output": False})
    env.from_source(SlowTicks).sink(lambda x: None)
    job = env.submit(autostop=True, block=False)
    clock = CpuClock(JobManagerClient(port=port, token=token).info()["pid"])
    time.sleep(0.5)

    idle = clock.measure(lambda: time.sleep(seconds))

    latencies: list[float] = []

    def poll() -> None:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            r0 = time.perf_counter()
            job.status()
            latencies.append(time.perf_counter() - r0)
            time.sleep(max(0.0, 1.0 / hz - (time.perf_counter() - r0)))

    polled = clock.measure(poll)

    # The notebook widget itself following the remote job (its own rate and subscription).
    widget = JobWidget(job)
    widget.start()
    watched = clock.measure(lambda: time.sleep(seconds))
    updates = widget.updates
    job.stop()
    widget.close()
    env.close()
    return {
        "daemon_cpu_idle_pct": 100 * idle,
        "status_poll_cpu_pct": 100 * max(0.0, polled - idle),
        "status_poll_requests": len(latencies),
        "status_request_ms_median": 1000 * statistics.median(latencies),
        "widget_poll_interval_s": widget.interval,
        "widget_updates": updates,
        "widget_cpu_pct": 100 * max(0.0, watched - idle),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="round trips to time (default 30)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each CPU measurement (default 10)")
    parser.add_argument("--hz", type=float, default=10.0, help="status polls per second (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of name=value lines")
    args = parser.parse_args()

    daemon = start_daemon()
    try:
        remote_round_trip(daemon.port, daemon.token, -1)  # warm up imports on both sides
        local_round_trip(-1)
        trips = [remote_round_trip(daemon.port, daemon.token, i) for i in range(args.runs)]
        local = [local_round_trip(i) for i in range(args.runs)]
        first = sorted(t[0] for t in trips)
        results: dict[str, float | int | str] = {
            "runs": args.runs,
            "remote_first_record_ms_median": 1000 * statistics.median(first),
            "remote_first_record_ms_p90": 1000 * first[int(0.9 * (len(first) - 1))],
            "remote_finished_and_cleaned_ms_median": 1000 * statistics.median(t[1] for t in trips),
            "local_first_record_ms_median": 1000 * statistics.median(local),
            "first_record_target_ms": 100,
        }
        results["remote_over_local_first_record"] = (
            results["remote_first_record_ms_median"] / results["local_first_record_ms_median"])
        results["status_poll_hz"] = args.hz
        results.update(polling_cost(daemon.port, daemon.token, args.seconds, args.hz))
        results["status_poll_target_pct"] = 1.0
    finally:
        daemon.stop()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, value in results.items():
            print(f"{name}={value:.3f}" if isinstance(value, float) else f"{name}={value}")


if __name__ == "__main__":
    main()
