"""Remote mode on loopback: submit-to-first-record round trip, and what status polling
costs the JobManager.

    .venv/bin/python benchmarks/bench_remote.py [--runs 30] [--seconds 5] [--json]

round trip: from `submit()` until the client has seen the first record reach the sink
(the sink prints it on the daemon; the client's output long-poll returns it), for a
3-stage pipeline of 3 records; the same pipeline in-process gives the local reference.
output: a chatty job's speed (the issue measured 1,600 records/s once its buffer was full),
one write into a full ring beside one into an empty ring (O(1): about 1), the daemon's RSS growth after
`--jobs` chatty jobs ended and after one 50 M-character write (target < 64 MB: a ring per
job, bounded totals over ended jobs), and the longest /info answer while another client
reads whole outputs page by page (`--output-only` runs just this part).
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


def remote_rate(port: int, token: str, name: str, records: int, sink) -> float:
    """Records per second of a remote batch job, from its own start and end times."""
    env = RemoteEnvironment(name, port=port, token=token, config={"forward_output": False})
    env.from_batch(range(records)).sink(sink)
    job = env.submit(autostop=True)
    status = job.status()
    env.close()
    return records / max(1e-9, status.ended_at - status.started_at)


def ring_write_s(fill: bool, writes: int = 200_000) -> float:
    """Seconds per write into one job's output ring, empty or already at its bound (in this process)."""
    from sage_jupyter.runtime.output import OutputBuffer

    buffer = OutputBuffer()
    if fill:
        for _ in range(20_000):
            buffer.write("stdout", "f" * 99)
    t0 = time.perf_counter()
    for _ in range(writes):
        buffer.write("stdout", "record 12345\n")
    return (time.perf_counter() - t0) / writes


def output_cost(port: int, token: str, pid: int, jobs: int) -> dict[str, float]:
    """What a chatty job's captured output costs: its speed beside the same job silent, the
    daemon's RSS after `jobs` chatty jobs ended and after one 50 M-character write, and the
    longest /info answer while a whole output is read page by page."""
    records = 300_000  # short lines: about 3 M characters, three times a job's bound
    quiet = remote_rate(port, token, "quiet", records, lambda x: None)
    chatty = remote_rate(port, token, "chatty", records, lambda x: print(f"record {x}"))
    empty, full = ring_write_s(fill=False), ring_write_s(fill=True)
    proc = psutil.Process(pid)
    rss0 = proc.memory_info().rss
    for i in range(jobs):
        remote_rate(port, token, f"chatty{i}", 20_000, lambda x: print("z" * 99))  # 2 M characters each
    rss_jobs = proc.memory_info().rss
    remote_rate(port, token, "one-huge-write", 1, lambda x: print("h" * 50_000_000))
    rss_huge = proc.memory_info().rss

    client = JobManagerClient(port=port, token=token)
    env = RemoteEnvironment("reader", port=port, token=token, config={"forward_output": False})
    env.from_batch(range(20_000)).sink(lambda x: print("r" * 99))
    job = env.submit(autostop=True)
    latencies: list[float] = []
    stop = threading.Event()

    def ask_info() -> None:
        other = JobManagerClient(port=port, token=token)
        while not stop.is_set():
            t0 = time.perf_counter()
            other.info()
            latencies.append(time.perf_counter() - t0)
        other.close()

    asker = threading.Thread(target=ask_info)
    asker.start()
    for _ in range(20):
        job.output()  # every page of about 1 M characters
    stop.set()
    asker.join()
    env.close()
    client.close()
    return {
        "chatty_records_per_s": chatty,
        "quiet_records_per_s": quiet,
        "ring_write_us_full": 1e6 * full,
        "ring_write_us_empty": 1e6 * empty,
        "ring_write_full_over_empty": full / empty,
        "ended_chatty_jobs": jobs,
        "daemon_rss_growth_mb_after_ended_jobs": (rss_jobs - rss0) / 2**20,
        "daemon_rss_growth_mb_after_50M_write": (rss_huge - rss0) / 2**20,
        "daemon_rss_growth_target_mb": 64,
        "info_ms_max_while_reading_output": 1000 * max(latencies),
        "info_ms_median_while_reading_output": 1000 * statistics.median(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="round trips to time (default 30)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each CPU measurement (default 10)")
    parser.add_argument("--hz", type=float, default=10.0, help="status polls per second (default 10)")
    parser.add_argument("--jobs", type=int, default=100, help="chatty jobs ended for the RSS figure (default 100)")
    parser.add_argument("--output-only", action="store_true", help="measure only what captured output costs")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of name=value lines")
    args = parser.parse_args()

    daemon = start_daemon()
    try:
        if args.output_only:
            results = {**output_cost(daemon.port, daemon.token, daemon.pid, args.jobs)}
            return report(results, args.json)
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
        results.update(output_cost(daemon.port, daemon.token, daemon.pid, args.jobs))
    finally:
        daemon.stop()
    report(results, args.json)


def report(results: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        for name, value in results.items():
            print(f"{name}={value:.3f}" if isinstance(value, float) else f"{name}={value}")


if __name__ == "__main__":
    main()
