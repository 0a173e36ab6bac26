"""A remote job's captured output: a ring bounded in characters (O(1) per write), a write
larger than the bound cut with a notice, bounded totals over ended jobs, and paged reads.
The memory and speed side of it is measured by benchmarks/bench_remote.py."""

from __future__ import annotations

import threading

from sage_jupyter import JobState, RemoteEnvironment
from sage_jupyter.jobmanager import JobManagerClient
from sage_jupyter.jobmanager.manager import ENDED_OUTPUT_CHARS
from sage_jupyter.runtime.output import MAX_BUFFER_CHARS, PAGE_CHARS, OutputBuffer

LINE = 1000  # characters per printed line, newline included


def kept_text(buffer: OutputBuffer) -> str:
    text, since = [], 0
    while True:
        page, since, _ = buffer.since(since)
        if not page:
            return "".join(text)
        text.extend(t for _, _, t in page)


def test_the_ring_keeps_the_newest_text_within_its_bound():
    buffer = OutputBuffer(limit=200_000)
    written = "".join(f"{i:07d}\n" for i in range(100_000))  # 800,000 characters in 100,000 writes
    for i in range(100_000):
        buffer.write("stdout", written[8 * i:8 * i + 8])
    assert buffer.size <= 200_000
    kept = kept_text(buffer)
    assert written.endswith(kept) and len(kept) > 0
    assert buffer.dropped_chars == len(written) - len(kept)


def test_a_write_larger_than_the_bound_is_cut_and_the_cut_is_said():
    buffer = OutputBuffer(limit=200_000)
    buffer.write("stdout", "a" * 5_000_000 + "END")
    kept = kept_text(buffer)
    assert buffer.size <= 200_000 and kept.endswith("aEND")
    assert "characters of one write were cut" in kept and "4,900,003" in kept
    assert buffer.dropped_chars >= 4_800_000


def test_reads_come_in_pages_and_count_what_was_dropped_unread():
    buffer = OutputBuffer(limit=MAX_BUFFER_CHARS)
    for i in range(300):
        buffer.write("stdout", f"{i:04d}" + "x" * (LINE - 5) + "\n")
    page, after, missed = buffer.since(0)
    assert sum(len(t) for _, _, t in page) <= PAGE_CHARS and after < buffer.next_seq and missed == 0
    assert page[0][2].startswith("0000")
    for _ in range(2000):  # 2 MB more: the first chunks are gone
        buffer.write("stderr", "z" * (LINE - 1) + "\n")
    page, after, missed = buffer.since(0)
    assert missed > 0 and page[0][0] == missed and page[0][1] == "stderr"


def chatty_env(daemon, name: str, lines: int) -> RemoteEnvironment:
    env = RemoteEnvironment(name, port=daemon.port, token=daemon.token, config={"forward_output": False})
    env.from_batch(range(lines)).sink(lambda i: print(f"{i:06d} " + "y" * (LINE - 8)))
    return env


def test_a_chatty_remote_job_keeps_its_last_output_and_serves_it_page_by_page(daemon):
    env = chatty_env(daemon, "chatty", 3000)  # 3,000,000 characters: three times the bound
    job = env.submit(autostop=True)
    assert job.state is JobState.FINISHED
    client = JobManagerClient(port=daemon.port, token=daemon.token)
    first = client.output(job.job_id, since=0)
    assert sum(len(c[2]) for c in first["chunks"]) <= PAGE_CHARS and first["more"] and not first["done"]
    assert first["missed"] > 0 and first["dropped_chars"] >= 2_000_000
    text = job.output()
    assert len(text) <= MAX_BUFFER_CHARS and text.endswith("002999 " + "y" * (LINE - 8) + "\n")
    assert not text.startswith("000000")
    # Forwarding from the start says that the beginning is gone, then gives what is kept.
    got: list[str] = []
    done = threading.Event()

    def sink(stream: str, t: str) -> None:
        got.append(t)
        if t == "\n" and got[-2].startswith("002999"):  # print() writes the line, then its newline
            done.set()

    job.forward_output(sink)
    assert done.wait(30)
    assert "were dropped by the JobManager" in got[0] and "".join(got[1:]) == text
    job.close()
    client.close()


def test_ended_jobs_output_is_bounded_in_total(daemon):
    per_job = 800  # lines: within one job's bound (with the cost of each chunk), 1/20 of ENDED_OUTPUT_CHARS
    jobs = []
    for i in range(ENDED_OUTPUT_CHARS // (per_job * LINE) + 2):
        job = chatty_env(daemon, f"ended{i}", per_job).submit(autostop=True)
        jobs.append(job)
    oldest, newest = jobs[0].output(), jobs[-1].output()
    assert "this job's output was dropped" in oldest and len(oldest) < LINE
    assert newest.startswith("000000") and newest.endswith("000799 " + "y" * (LINE - 8) + "\n")
