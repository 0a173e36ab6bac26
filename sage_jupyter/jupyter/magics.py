"""The magics of `%load_ext sage_jupyter`.

``%%sage_service NAME [--remote]``
    The cell defines one `BaseService` subclass; it is registered under NAME for every
    later pipeline of this kernel (a Ray actor with `--remote`). Redefining replaces it.

``%sage_services`` / ``%sage_services --remove NAME [NAME ...]`` / ``%sage_services --clear``
    List this kernel's services (name, class, kind), or remove some or all of them.

``%%sage_pipeline [NAME] [--autostop] [--services a,b] [--backend thread|ray] [--wait] [--timeout S]
[--max-records N] [--max-duration S] [-o VAR]``
    The cell builds a pipeline on a ready `env` (this kernel's services registered, or only
    those named by `--services`; `--services ""` registers none); the
    magic submits it without blocking, shows the job's widget and returns the `JobHandle`
    (or stores it in VAR). `--wait` blocks until the job ended; the interrupt button then
    stops it and cleans up. `--timeout S` stops the job after S seconds (STOPPED);
    `--max-records N` / `--max-duration S` end the sources after N records in total or S
    seconds as if they were exhausted (FINISHED, every record reaches the sinks). Running the same
    cell again (or the same NAME) first stops the job it started before.

``%sage_status``
    A table of this kernel's jobs: name, state, records, services, age.

``%sage_stop NAME`` / ``%sage_stop --all``
    Stop jobs and clean their services.

``%sage_orphans`` / ``%sage_orphans --kill``
    List the Ray actors left by kernels of this host that died (or kill them). Looks only
    when this kernel is connected to Ray or `RAY_ADDRESS` is set; never starts a Ray.
"""

from __future__ import annotations

import inspect
import math
import threading
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from ..api.environment import BACKENDS, LocalEnvironment
from ..api.service import BaseService
from ..runtime.errors import PipelineError
from ..runtime.extras import MissingExtraError
from . import templates
from .jobs import (JOBS, SERVICES, JobTable, ServiceDef, ServiceTable, TrackedJob, adopt_plain_jobs, service_rows,
                   stop_jobs)
from .orphan_actors import ORPHANS, NoRay, OrphanTable, orphan_rows
from .output import JobOutput
from .widget import JobWidget

REPLACE_TIMEOUT = 10.0  # s to wait for a re-run cell's previous job to be cleaned


def current_cell_id(shell: Any) -> str | None:
    """The frontend's id of the executing cell (JupyterLab, nbclient), if it sent one."""
    get_parent = getattr(shell, "get_parent", None)
    if not callable(get_parent):
        return None
    try:
        parent = get_parent() or {}
    except Exception:  # noqa: BLE001 - no kernel behind this shell
        return None
    return (parent.get("metadata") or {}).get("cellId")


def run_body(shell: Any, body: str) -> None:
    """Run a cell body in the user namespace like a cell, with a traceback that starts
    at the user's code instead of in IPython's and our frames."""
    source = shell.transform_cell(body)
    filename = shell.compile.cache(source, shell.execution_count)
    try:
        code = shell.compile(source, filename, "exec")
    except SyntaxError as exc:
        _render_only(exc, shell.SyntaxTB.structured_traceback(type(exc), exc, None))
        raise
    try:
        exec(code, shell.user_ns)  # running the user's own cell is the point
    except Exception as exc:
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        _render_only(exc, shell.InteractiveTB.structured_traceback(type(exc), exc, tb))
        raise


def _render_only(exc: BaseException, lines: list[str]) -> None:
    """IPython shows `_render_traceback_()` instead of its own traceback when present."""
    try:
        exc._render_traceback_ = lambda: lines  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - an exception type that refuses attributes: full traceback then
        pass


def known_names(names: list[str], where: str) -> None:
    """UsageError naming the first service name this kernel has not declared."""
    for name in names:
        if name not in SERVICES:
            known = ", ".join(SERVICES) or "none (declare one with %%sage_service NAME)"
            raise UsageError(f"{where}: no service named {name!r} in this kernel (services: {known})")


def selected_services(spec: str | None) -> list[ServiceDef]:
    """`--services a,b`: those kernel services, in that order; None means all of them."""
    if spec is None:
        return list(SERVICES.values())
    spec = spec.strip().strip("'\"")  # IPython's argument splitting keeps the quotes of ""
    names = [n.strip() for n in spec.split(",")] if spec else []
    if any(not n for n in names):
        raise UsageError(f"%%sage_pipeline: --services {spec!r} has an empty name; use a,b (or \"\" for none)")
    known_names(names, "%%sage_pipeline --services")
    return [SERVICES[n] for n in dict.fromkeys(names)]


def stopped_line(name: str, handle: Any, why: str) -> str:
    state = handle.state.value
    report = handle.cleanup_report
    if report is None:
        return f"job {name!r} {why}: {state}, services not cleaned yet"
    if report.ok and all(c.cleaned for c in report.services):
        return f"job {name!r} {why}: {state}, services cleaned in {templates.ms(report.duration_s)}"
    bad = "; ".join(f"{c.name}: {c.describe()}" for c in report.services if not c.cleaned)
    return f"job {name!r} {why}: {state}, cleanup incomplete ({bad or 'tasks or service calls left running'})"


def _stop_quietly(handle: Any, timeout: float) -> None:
    """Stop and wait; a second interrupt while cleaning only stops the waiting."""
    try:
        handle.stop(wait=True, timeout=timeout)
    except KeyboardInterrupt:
        pass


def stop_after(handle: Any, seconds: float, output: JobOutput, name: str) -> threading.Thread:
    """`--timeout S` without `--wait`: a daemon thread stops the job after S seconds."""
    ended = threading.Event()
    subscribe = getattr(handle, "subscribe", None)
    unsubscribe = subscribe(lambda s: ended.set() if s.state.terminal else None) if callable(subscribe) else None

    def watch() -> None:
        try:
            if not ended.wait(seconds) and not handle.state.terminal:
                output("stderr", f"[sage_jupyter] stopping job {name!r}: --timeout {seconds:g} s passed\n")
                handle.stop(wait=False)
        finally:
            if unsubscribe is not None:
                unsubscribe()

    if handle.state.terminal:
        ended.set()
    thread = threading.Thread(target=watch, name=f"sage-timeout:{name}", daemon=True)
    thread.start()
    return thread


@magics_class
class SageMagics(Magics):
    """`%%sage_pipeline`, `%%sage_service`, `%sage_services`, `%sage_status`, `%sage_stop`."""

    # ---- %%sage_service -------------------------------------------------------------

    @magic_arguments()
    @argument("name", help="name the pipelines call the service by (call_service[NAME])")
    @argument("--remote", action="store_true", help="run the service as a Ray actor")
    @cell_magic
    def sage_service(self, line: str, cell: str) -> None:
        """Register the one BaseService subclass this cell defines, for later pipelines."""
        args = parse_argstring(self.sage_service, line)
        name = args.name.strip()
        if not name.replace("-", "_").isidentifier():
            raise UsageError(f"%%sage_service: {name!r} is not a usable service name (letters, digits, _ or -)")
        ns = self.shell.user_ns
        before = dict(ns)
        run_body(self.shell, cell)
        defined: list[type] = []
        for key, value in ns.items():
            if (inspect.isclass(value) and issubclass(value, BaseService) and value is not BaseService
                    and before.get(key) is not value and value not in defined):
                defined.append(value)
        if len(defined) != 1:
            found = ", ".join(c.__name__ for c in defined) or "none"
            raise UsageError(
                f"%%sage_service {name}: the cell must define exactly one BaseService subclass (found: {found})"
            )
        replaced = name in SERVICES
        SERVICES[name] = ServiceDef(name, defined[0], bool(args.remote))
        where = "Ray actor" if args.remote else "thread"
        print(f"service {name!r} = {defined[0].__name__} ({where})"
              + (", replacing the previous one" if replaced else ""))

    # ---- %sage_services -------------------------------------------------------------

    @magic_arguments()
    @argument("--remove", nargs="+", default=None, metavar="NAME", help="remove these services")
    @argument("--clear", action="store_true", help="remove every service of this kernel")
    @line_magic
    def sage_services(self, line: str) -> ServiceTable:
        """List this kernel's services, or remove some (`--remove`) or all (`--clear`)."""
        args = parse_argstring(self.sage_services, line)
        if args.clear and args.remove:
            raise UsageError("%sage_services: give --remove NAME ... or --clear, not both")
        if args.remove:
            known_names(args.remove, "%sage_services --remove")
            for name in args.remove:
                del SERVICES[name]
            print("removed " + ", ".join(repr(n) for n in args.remove))
        elif args.clear:
            removed = len(SERVICES)
            SERVICES.clear()
            print(f"removed {removed} service{'s' if removed != 1 else ''}")
        return ServiceTable(service_rows())

    # ---- %%sage_pipeline ------------------------------------------------------------

    @magic_arguments()
    @argument("name", nargs="?", default=None, help="job name (default: pipeline-N)")
    @argument("--autostop", action="store_true", help="clean every service when the pipeline ends")
    @argument("--services", default=None, metavar="a,b",
              help="start only these kernel services for this job (default: all; \"\" for none)")
    @argument("--backend", default="thread", choices=BACKENDS, help="run tasks on threads or Ray actors")
    @argument("--wait", action="store_true", help="block until the job ended (interrupt stops it)")
    @argument("--timeout", type=float, default=None, metavar="S", help="stop the job after S seconds")
    @argument("--max-records", dest="max_records", type=int, default=None, metavar="N",
              help="the sources end (as if exhausted) after N records in total")
    @argument("--max-duration", dest="max_duration", type=float, default=None, metavar="S",
              help="the sources end (as if exhausted) after S seconds")
    @argument("-o", "--output", dest="var", default=None, metavar="VAR", help="store the JobHandle in VAR")
    @cell_magic
    def sage_pipeline(self, line: str, cell: str) -> Any:
        """Build the cell's pipeline on `env`, submit it, show its widget."""
        args = parse_argstring(self.sage_pipeline, line)
        if args.timeout is not None and not args.timeout > 0:
            raise UsageError(f"%%sage_pipeline: --timeout must be a number of seconds > 0, got {args.timeout:g}")
        if args.max_records is not None and args.max_records < 0:
            raise UsageError(f"%%sage_pipeline: --max-records must be a whole number of records >= 0, "
                             f"got {args.max_records}")
        if args.max_duration is not None and not (math.isfinite(args.max_duration) and args.max_duration >= 0):
            raise UsageError(f"%%sage_pipeline: --max-duration must be a finite number of seconds >= 0, "
                             f"got {args.max_duration:g}")
        if args.var is not None and not args.var.isidentifier():
            raise UsageError(f"%%sage_pipeline: -o needs a variable name, got {args.var!r}")
        if not cell.strip():
            raise UsageError("%%sage_pipeline: the cell is empty; build a pipeline on `env` ending in .sink(...)")
        if args.name is not None and not args.name.strip():
            raise UsageError("%%sage_pipeline: the job name is empty")

        services = selected_services(args.services)
        cell_id = current_cell_id(self.shell)
        previous = JOBS.previous_runs(args.name, cell_id)
        slot = None  # a re-run keeps its place in %sage_status and the sidebar
        if previous:
            stop_jobs(previous, REPLACE_TIMEOUT)
            places = [p for p in (JOBS.remove(job) for job in previous) if p is not None]
            slot = min(places, default=None)
        name = args.name or JOBS.next_name()

        env = LocalEnvironment(name, backend=args.backend)
        for service in services:
            env.register_service(service.name, service.cls, remote=service.remote)
        output = JobOutput()
        env.route_output(output)
        self.shell.user_ns["env"] = env
        try:
            run_body(self.shell, cell)
        except BaseException:
            if env.job is not None:  # the body submitted, then failed: leave nothing running
                env.job.stop(wait=False)
            raise

        handle = env.job
        if handle is None:
            if not env.has_sink:
                raise UsageError(f"%%sage_pipeline {name}: the cell defined no sink; end the pipeline "
                                 "with .sink(...) on a stream of `env`")
            try:
                handle = env.submit(autostop=args.autostop, block=False, max_records=args.max_records,
                                    max_duration=args.max_duration)
            except (ValueError, TypeError, MissingExtraError) as exc:
                raise UsageError(f"%%sage_pipeline {name}: {exc}") from None

        widget = JobWidget(handle, output=output)
        JOBS.add(TrackedJob(name, handle, widget, cell_id), at=slot)
        if args.var:  # before waiting: an interrupted cell still leaves the handle in VAR
            self.shell.user_ns[args.var] = handle
        if args.wait:
            self._show_and_wait(name, handle, widget, args.timeout)
        else:
            widget.display()
            widget.start()
            if args.timeout is not None:
                stop_after(handle, args.timeout, output, name)
        return None if args.var else handle

    def _show_and_wait(self, name: str, handle: Any, widget: JobWidget, timeout: float | None) -> None:
        try:  # an interrupt at any point from here on stops the job
            widget.display()
            widget.start()
            handle.wait(timeout)
        except KeyboardInterrupt:
            _stop_quietly(handle, REPLACE_TIMEOUT)
            widget.wait_final(1.0)
            interrupted = KeyboardInterrupt(stopped_line(name, handle, "stopped by interrupt"))
            _render_only(interrupted, [f"KeyboardInterrupt: {interrupted}"])
            raise interrupted from None
        except TimeoutError:
            _stop_quietly(handle, REPLACE_TIMEOUT)
            print(stopped_line(name, handle, f"stopped after --timeout {timeout:g} s"))
        except PipelineError as exc:
            widget.wait_final(1.0)
            lines = [f"PipelineError: {exc.summary}", stopped_line(name, handle, "ended")]
            if exc.traceback:
                lines += ["", "Original traceback:", exc.traceback.rstrip()]
            _render_only(exc, lines)
            raise exc from None
        widget.wait_final(1.0)

    # ---- %sage_status / %sage_stop --------------------------------------------------

    @line_magic
    def sage_status(self, line: str) -> JobTable:
        """Table of this kernel's jobs."""
        if line.strip():
            raise UsageError(f"%sage_status takes no arguments, got {line.strip()!r}")
        adopt_plain_jobs()
        return JobTable(JOBS.rows())

    @magic_arguments()
    @argument("name", nargs="?", default=None, help="name (or job id) of the job to stop")
    @argument("--all", action="store_true", help="stop every job of this kernel")
    @line_magic
    def sage_stop(self, line: str) -> None:
        """Stop a job by name (or every job with --all) and clean its services."""
        args = parse_argstring(self.sage_stop, line)
        if args.all == (args.name is not None):
            raise UsageError("%sage_stop: give a job name or --all (not both)")
        adopt_plain_jobs()
        if args.all:
            jobs = [j for j in JOBS.all() if not j.handle.state.terminal]
            if not jobs:
                print("no running jobs")
                return
        else:
            job = JOBS.find(args.name)
            if job is None:
                known = ", ".join(j.name for j in JOBS.all()) or "none"
                raise UsageError(f"%sage_stop: no job named {args.name!r} in this kernel (jobs: {known})")
            if job.handle.state.terminal:
                print(f"job {job.name!r} already ended: {job.handle.state.value}")
                return
            jobs = [job]
        try:
            stop_jobs(jobs, REPLACE_TIMEOUT)
        except KeyboardInterrupt:
            pass
        for job in jobs:
            job.widget.wait_final(1.0)
            print(stopped_line(job.name, job.handle, "stopped"))

    # ---- %sage_orphans --------------------------------------------------------------

    @magic_arguments()
    @argument("--kill", action="store_true", help="kill them (their kernels are gone)")
    @line_magic
    def sage_orphans(self, line: str) -> OrphanTable:
        """List (or `--kill`) the Ray actors left behind by kernels of this host that died."""
        args = parse_argstring(self.sage_orphans, line)
        try:
            found = ORPHANS.look(connect=True)
        except NoRay as exc:
            print(f"no Ray to look at: {exc}")
            return OrphanTable([])
        if args.kill and found:
            killed = ORPHANS.kill([o.name for o in found])
            print(f"killed {len(killed)} orphaned Ray actor{'s' if len(killed) != 1 else ''}: {', '.join(killed)}")
            found = ORPHANS.found()
        elif args.kill:
            print("no orphaned Ray actors to kill")
        return OrphanTable(orphan_rows(found))
