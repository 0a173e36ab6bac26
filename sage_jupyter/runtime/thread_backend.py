"""Thread backend: one daemon thread per chain instance, bounded channels between them."""

from __future__ import annotations

from .backend import JobRuntime, TaskBackend, chain_statuses
from .channels import END, Aborted, Channel
from .job import ErrorInfo, TaskState, TaskStatus
from .limits import SharedBudget, SourceBounds
from .operators import ChainRunner
from .routes import end_targets, make_route
from .peek import Sample
from .plan import ChainSpec, EdgeSpec, Plan
from .services import error_info
from .threads import spawn

CHANNEL_CAPACITY = 16  # batches per consumer instance: at most ~16k records in flight


class ThreadTask:
    def __init__(self, chain: ChainSpec, index: int, job: JobRuntime,
                 inbox: Channel | None, outputs: list[tuple[EdgeSpec, list[Channel]]],
                 bounds: SourceBounds | None = None) -> None:
        self.chain = chain
        self.index = index
        self.job = job
        self.name = chain.task_name(index)
        self.runner = ChainRunner(chain, index, job.make_ctx, bounds)
        self.inbox = inbox
        self.outputs = outputs  # (edge, consumer channels)
        self.state = TaskState.CREATED
        self.error: ErrorInfo | None = None
        self.failing: str | None = None  # label of the operator (or key function) that raised
        self.thread = spawn(self.run, f"sage:{job.job_name}:{self.name}", job.output, start=False,
                            job=job.job_id)

    def run(self) -> None:
        self.state = TaskState.RUNNING
        stop = self.job.stop_requested
        routes = [make_route(edge, self.index, [c.put for c in chans]) for edge, chans in self.outputs]
        try:
            self.runner.open()
            get = self.inbox.get if self.inbox is not None else None
            stopped = self.runner.run_to_end(get, routes, stop.is_set, stop.wait)
            for edge, chans in self.outputs:
                for i in end_targets(edge, self.index, len(chans)):
                    chans[i].put(END)
            self.state = TaskState.STOPPED if stopped else TaskState.FINISHED
        except Aborted:
            self.state = TaskState.STOPPED
            self.runner.close_quietly()
        except BaseException as exc:  # noqa: BLE001 - reported to the dispatcher
            self.failing = self.runner.failing_label
            where = f"stage {self.failing!r} (instance {self.index})"
            self.error = error_info(where, exc)
            self.state = TaskState.FAILED
            self.runner.close_quietly()
        self.job.on_task_end(self.name, self.state, self.error)

    def statuses(self) -> list[TaskStatus]:
        counters = {op.label: (op.records_in, op.records_out) for op in list(self.runner.ops)}
        inbox = self.inbox
        return chain_statuses(self.chain, self.index, self.state, counters, self.error, self.failing,
                              total=self.runner.source_total,
                              queued=inbox.queued_records if inbox is not None else 0,
                              input_full=inbox is not None and inbox.full)


class ThreadBackend(TaskBackend):
    name = "thread"

    def __init__(self) -> None:
        self.tasks: list[ThreadTask] = []
        self.channels: dict[int, list[Channel]] = {}

    def launch(self, plan: Plan, job: JobRuntime) -> None:
        for chain in plan.chains:
            if chain.inputs:
                self.channels[chain.id] = [Channel(CHANNEL_CAPACITY) for _ in range(chain.parallelism)]
        bounds = source_bounds(plan, job)
        for chain, index in plan.instances():
            inbox = self.channels[chain.id][index] if chain.inputs else None
            outputs = [(edge, self.channels[edge.dst]) for edge in chain.outputs]
            self.tasks.append(ThreadTask(chain, index, job, inbox, outputs, bounds if chain.is_source else None))
        for task in self.tasks:
            task.thread.start()

    def request_stop(self) -> None:
        """Sources watch the job's stop event; nothing more to do here."""

    def abort(self) -> None:
        for chans in self.channels.values():
            for chan in chans:
                chan.abort()

    def join(self, timeout: float) -> list[str]:
        from .executor import join_all

        return join_all([t.thread for t in self.tasks], timeout)

    def task_statuses(self) -> list[TaskStatus]:
        return [s for t in self.tasks for s in t.statuses()]

    def samples(self) -> list[dict[str, list[Sample]]]:
        return [t.runner.samples() for t in list(self.tasks)]


def source_bounds(plan: Plan, job: JobRuntime) -> SourceBounds | None:
    """What the job's source instances run under; one budget shared by all of them."""
    limits = job.limits
    if not limits.bounded:
        return None
    sources = sum(c.parallelism for c in plan.chains if c.is_source)
    budget = SharedBudget(limits.max_records) if limits.max_records is not None else None
    return SourceBounds(budget, limits.max_records, limits.max_duration, sources)
