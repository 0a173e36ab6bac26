"""How jobs look: small functions turning `JobStatus` snapshots into HTML and plain text.

Presentation only. The widget and the status table hold state and call these; the same
HTML is the live widget's body and the static fallback saved in the notebook, so it uses
inline styles with Lab CSS variables (and plain colours where those are undefined).
"""

from __future__ import annotations

import html
import time
from typing import Any, Iterable, Mapping

from ..runtime.job import CleanupReport, ErrorInfo, JobStatus, ServiceStatus, TaskStatus
from .graph_svg import graph_svg
from .palette import background, badge_style
from .progress import StageProgress

MAX_TASK_ROWS = 40
RECORDS = "records in -> out"  # records the sources produced -> records the sinks took

_BOX = ("font-family:var(--jp-ui-font-family,sans-serif);font-size:12px;"
        "color:var(--jp-ui-font-color1,#212121);line-height:1.4")
_TABLE = "border-collapse:collapse;margin:4px 0;font-size:12px"
_CELL = "padding:1px 8px;text-align:left;border-bottom:1px solid var(--jp-border-color2,#e0e0e0)"
_NUM = _CELL.replace("text-align:left", "text-align:right")
_PRE = ("white-space:pre-wrap;font-size:11px;margin:2px 0;padding:4px 6px;max-height:40em;overflow:auto;"
        "border-left:3px solid var(--jp-error-color1,#d32f2f);background:var(--jp-layout-color2,#eee);"
        "color:var(--jp-ui-font-color1,#212121)")


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def colour(state: Any) -> str:
    """The state's colour for markers without text (graph borders and dots)."""
    return background(state)


def badge(state: Any, text: str | None = None) -> str:
    """A state as a coloured pill (the palette keeps its text readable in every theme)."""
    return (f'<span class="sage-badge" data-state="{esc(state)}" style="display:inline-block;padding:0 6px;'
            f'border-radius:8px;{badge_style(state)};font-size:11px;font-weight:600">'
            f'{esc(state if text is None else text)}</span>')


def duration(seconds: float) -> str:
    if seconds < 1:
        return ms(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def ms(seconds: float) -> str:
    millis = seconds * 1000
    return f"{millis:.1f} ms" if millis < 10 else f"{millis:.0f} ms"


def rate(value: float | None, average: bool = False) -> str:
    """Records per second; `average` marks a rate over the job's whole run ("avg")."""
    if value is None:
        return ""
    if value >= 1e6:
        text = f"{value / 1e6:.1f} M/s"
    elif value >= 1e3:
        text = f"{value / 1e3:.1f} k/s"
    else:
        text = f"{value:.0f}/s"
    return f"avg {text}" if average else text


def service_kind(s: ServiceStatus) -> str:
    if s.kind == "ray":
        actor = f"Ray actor {s.actor_id[:12]}" if s.actor_id else "Ray actor"
        return f"{actor} on {s.node_label}" if s.node_label else actor
    return s.kind


def job_nodes(s: JobStatus) -> list[str]:
    """The nodes the job's tasks and services run (or ran) on, as views show them."""
    labels = [t.node_label for t in s.tasks] + [svc.node_label for svc in s.services]
    return sorted({label for label in labels if label})


def error_mark(err: ErrorInfo) -> str:
    """Where an error happened (a task or service row): a badge naming it; the traceback
    itself is shown once, under the job (`job_error_html`)."""
    return (f'<span class="sage-error-mark" title="{esc(err.type)}: {esc(err.message)}">'
            f'{badge("FAILED", f"raised {err.type}")}</span>')


def error_block(err: ErrorInfo) -> str:
    """The error and its traceback (the user's frames only), open, without a scroll box for
    a short stack; the full text with the runtime's frames unfolds below it."""
    full = ""
    if err.full_traceback and err.full_traceback != err.traceback:
        full = (f'<details class="sage-full-traceback"><summary style="cursor:pointer;'
                f'color:var(--jp-ui-font-color2,#616161)">full traceback (with sage_jupyter frames)</summary>'
                f'<pre style="{_PRE}">{esc(err.full_traceback.rstrip())}</pre></details>')
    return (f'<pre class="sage-traceback" style="{_PRE}">{esc((err.traceback or str(err)).rstrip())}</pre>{full}')


# ---- pieces ---------------------------------------------------------------------------


def header_html(s: JobStatus) -> str:
    where = "" if s.location == "local" else f" &middot; on {esc(s.location)}"
    autostop = " &middot; autostop" if s.autostop else ""
    return (f'<div style="display:flex;gap:10px;align-items:center;margin-bottom:4px">'
            f'<b style="font-size:13px">{esc(s.name)}</b>{badge(s.state.value)}'
            f'<span>{duration(s.elapsed_s)}</span>'
            f'<span>{RECORDS}: {s.records_out:,} -&gt; {s.records_in:,}</span>'
            f'<span style="color:var(--jp-ui-font-color2,#616161)">{esc(s.backend)} backend{autostop}{where}'
            f' &middot; {esc(s.job_id)}</span></div>')


def stage_state(stage: str, tasks: Iterable[TaskStatus]) -> str:
    """One state for a stage from its task instances: the most telling one wins."""
    states = {t.state.value for t in tasks if t.stage == stage}
    for state in ("FAILED", "RUNNING", "STOPPED"):
        if state in states:
            return state
    if states == {"FINISHED"}:
        return "FINISHED"
    return "CREATED"


def graph_html(s: JobStatus) -> str:
    """The pipeline as a DAG (fan-in and fan-out drawn as edges), each stage coloured by state."""
    return graph_svg(s.stages, lambda stage: stage_state(stage, s.tasks), colour, esc)


def tasks_html(s: JobStatus, rates: Mapping[str, float] | None = None) -> str:
    if not s.tasks:
        return ""
    rates = rates or {}
    average = s.state.terminal  # a final rate is over the whole run
    show_worker = any(t.worker != "thread" for t in s.tasks)
    show_node = any(t.node_label for t in s.tasks)
    head = ["task", "state", "in", "out", "rate", ""] + (["worker"] if show_worker else []) + \
        (["node"] if show_node else [])
    rows = []
    for t in s.tasks[:MAX_TASK_ROWS]:
        cells = [f'<td style="{_CELL}">{esc(t.name)}</td>', f'<td style="{_CELL}">{badge(t.state.value)}</td>',
                 f'<td style="{_NUM}">{t.records_in:,}</td>', f'<td style="{_NUM}">{t.records_out:,}</td>',
                 f'<td style="{_NUM}">{rate(rates.get(t.name), average)}</td>',
                 f'<td style="{_CELL}">{error_mark(t.error) if t.error else ""}</td>']
        if show_worker:
            cells.append(f'<td style="{_CELL}"><code>{esc(t.worker[:12])}</code></td>')
        if show_node:
            cells.append(f'<td style="{_CELL}">{esc(t.node_label or "")}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    if len(s.tasks) > MAX_TASK_ROWS:
        rows.append(f'<tr><td style="{_CELL}" colspan="{len(head)}">&hellip; '
                    f'{len(s.tasks) - MAX_TASK_ROWS} more tasks</td></tr>')
    return _table(head, rows)


def services_html(s: JobStatus) -> str:
    if not s.services:
        return ""
    rows = []
    for svc in s.services:
        rows.append(f'<tr><td style="{_CELL}">{esc(svc.name)}</td><td style="{_CELL}">{esc(service_kind(svc))}</td>'
                    f'<td style="{_CELL}">{badge(svc.state.value)}</td><td style="{_NUM}">{svc.calls:,}</td>'
                    f'<td style="{_CELL}">{error_mark(svc.error) if svc.error else ""}</td></tr>')
    return _table(["service", "kind", "state", "calls", ""], rows)


def cleanup_html(report: CleanupReport | None) -> str:
    if report is None:
        return ""
    head = (f'<div style="margin-top:4px"><b>Cleanup</b> ({esc(report.reason)}): '
            f'{badge(*cleanup_verdict(report))} in {ms(report.duration_s)}</div>')
    rows = []
    for c in report.services:
        killed = "" if c.killed is None else ("actor killed" if c.killed else "actor NOT killed")
        rows.append(f'<tr><td style="{_CELL}">{esc(c.name)}</td><td style="{_CELL}">{esc(c.kind)}</td>'
                    f'<td style="{_CELL}">{badge("cleaned" if c.cleaned else "failed", c.describe())}</td>'
                    f'<td style="{_CELL}">{killed}</td><td style="{_NUM}">{ms(c.duration_s)}</td></tr>')
    table = _table(["service", "kind", "result", "", "took"], rows) if rows else ""
    left = ""
    if report.tasks_left_running:
        left = f'<div>{badge("FAILED", "tasks still running")} {esc(", ".join(report.tasks_left_running))}</div>'
    if report.calls_left_running:
        left += (f'<div>{badge("FAILED", "service calls still running")} '
                 f'{esc(", ".join(report.calls_left_running))}</div>')
    return head + table + left


def cleanup_verdict(report: CleanupReport) -> tuple[str, str]:
    """(state, text) of a cleanup: ok only when every service ran and was cleaned."""
    if report.ok and all(c.cleaned for c in report.services):
        return "ok", "all services cleaned"
    if report.ok:
        return "failed", "cleaned; a service failed to start"
    return "incomplete", "incomplete"


def job_error_html(s: JobStatus) -> str:
    """The job's error, shown once: where, what, then the user's frames."""
    if s.error is None:
        return ""
    return (f'<div class="sage-job-error" style="margin:4px 0">{badge("FAILED", "error")} '
            f'<b>{esc(s.error.where)}</b>: {esc(s.error.type)}: {esc(s.error.message)}{error_block(s.error)}</div>')


def progress_bar(fraction: float, width: int = 120) -> str:
    """A bar filled to `fraction` (0..1), in the theme's brand colour on its layout colour."""
    return (f'<span class="sage-progress" role="progressbar" aria-valuenow="{fraction * 100:.0f}" '
            f'aria-valuemin="0" aria-valuemax="100" style="display:inline-block;vertical-align:middle;'
            f'width:{width}px;height:8px;border-radius:4px;background:var(--jp-layout-color3,#bdbdbd)">'
            f'<span style="display:block;height:100%;width:{fraction * 100:.1f}%;border-radius:4px;'
            f'background:var(--jp-brand-color1,#1976d2)"></span></span>')


def sparkline(values: tuple[float, ...], width: int = 120, height: int = 16) -> str:
    """Rates over the last minute as a line (newest at the right); empty until two points."""
    if len(values) < 2:
        return ""
    top = max(values) or 1.0
    step = width / (len(values) - 1)
    points = " ".join(f"{i * step:.1f},{height - 1 - (v / top) * (height - 2):.1f}" for i, v in enumerate(values))
    return (f'<svg class="sage-sparkline" width="{width}" height="{height}" style="vertical-align:middle">'
            f'<title>records/s over the last {len(values)} s (max {rate(top)})</title>'
            f'<polyline points="{points}" fill="none" style="stroke:var(--jp-brand-color1,#1976d2);'
            f'stroke-width:1.5"/></svg>')


def progress_html(rows: list[StageProgress], ended: bool = False) -> str:
    """Per stage: "n of N", a bar and an ETA when N is known, else the last minute's rate;
    a mark on a stage whose input channel is full."""
    if not rows:
        return ""
    body = []
    for p in rows:
        fraction = p.fraction
        if fraction is not None and p.total is not None:
            count = f"{p.done:,} of {p.total:,}"
            picture = progress_bar(fraction)
            eta = f"ETA {duration(p.eta_s)}" if p.eta_s is not None and not ended and fraction < 1 else ""
        else:
            count = f"{p.done:,}"
            picture = sparkline(p.history)
            eta = ""
        full = badge("full", "input full") if p.full and not ended else ""
        queued = f"{p.queued:,} queued" if p.queued and not ended else ""
        body.append(f'<tr class="sage-stage-progress" data-stage="{esc(p.stage)}">'
                    f'<td style="{_CELL}">{esc(p.stage)}</td><td style="{_CELL}">{picture}</td>'
                    f'<td style="{_NUM}">{count}</td><td style="{_NUM}">{rate(p.rate, ended)}</td>'
                    f'<td style="{_CELL}">{eta}</td><td style="{_CELL}">{queued} {full}</td></tr>')
    return _table(["stage", "progress", "records", "rate", "", "input"], body)


def progress_text(rows: list[StageProgress]) -> list[str]:
    lines = []
    for p in rows:
        if p.total is not None:
            lines.append(f"  stage {p.stage}: {p.done:,} of {p.total:,}")
    return lines


def peek_html(samples: Mapping[str, list[Any]]) -> str:
    """The newest records of each peeked stage, newest last."""
    parts = []
    for stage, records in samples.items():
        lines = "\n".join(esc(r) for r in records) or "(no records yet)"
        parts.append(f'<div class="sage-peek" data-stage="{esc(stage)}" style="{_BOX}"><b>{esc(stage)}</b>'
                     f'<pre style="font-size:11px;margin:2px 0;padding:2px 6px;white-space:pre-wrap;'
                     f'background:var(--jp-layout-color2,#eee);color:var(--jp-ui-font-color1,#212121)">'
                     f'{lines}</pre></div>')
    return "".join(parts)


def _table(head: list[str], rows: list[str]) -> str:
    th = "".join(f'<th style="{_CELL};font-weight:600">{esc(h)}</th>' for h in head)
    return f'<table style="{_TABLE}"><thead><tr>{th}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


# ---- whole views ----------------------------------------------------------------------


def job_html(s: JobStatus, rates: Mapping[str, float] | None = None, note: str = "",
             progress: list[StageProgress] | None = None) -> str:
    """The full job view: header, graph, stage progress, tasks, services, error, cleanup report."""
    extra = f'<div>{badge("STOPPING", "note")} {esc(note)}</div>' if note else ""
    return (f'<div class="sage-job" style="{_BOX}">{header_html(s)}{extra}{graph_html(s)}'
            f'{progress_html(progress or [], s.state.terminal)}{tasks_html(s, rates)}{services_html(s)}'
            f'{job_error_html(s)}{cleanup_html(s.cleanup_report)}</div>')


def job_text(s: JobStatus, progress: list[StageProgress] | None = None) -> str:
    """Plain-text fallback of the job view."""
    lines = [f"Job {s.name!r} ({s.job_id}) {s.state.value} after {duration(s.elapsed_s)}, "
             f"{s.backend} backend" + (", autostop" if s.autostop else "")
             + f", {RECORDS}: {s.records_out:,} -> {s.records_in:,}"]
    lines.extend(progress_text(progress or []))
    for t in s.tasks[:MAX_TASK_ROWS]:
        err = f"  error: {t.error.type}: {t.error.message}" if t.error else ""
        node = f" on {t.node_label}" if t.node_label else ""
        lines.append(f"  task {t.name}: {t.state.value}, in {t.records_in}, out {t.records_out}{node}{err}")
    for svc in s.services:
        lines.append(f"  service {svc.name} ({service_kind(svc)}): {svc.state.value}, {svc.calls} calls")
    if s.error is not None:
        lines.append(f"  failed in {s.error.where}: {s.error.type}: {s.error.message}")
        lines.extend(f"    {line}" for line in s.error.traceback.rstrip().splitlines())
    r = s.cleanup_report
    if r is not None:
        verdict = cleanup_verdict(r)[1]
        lines.append(f"  cleanup ({r.reason}): {verdict} in {ms(r.duration_s)}")
        lines.extend(f"    {c.name}: {c.describe()}" for c in r.services)
        if r.calls_left_running:
            lines.append(f"    service calls still running: {', '.join(r.calls_left_running)}")
    return "\n".join(lines)


def job_row(s: JobStatus, now: float | None = None) -> dict[str, str]:
    """One row of the kernel's job table."""
    now = time.time() if now is None else now
    services = ", ".join(f"{svc.name}: {svc.state.value}" for svc in s.services) or "-"
    return {"name": s.name, "state": s.state.value, RECORDS: f"{s.records_out:,} -> {s.records_in:,}",
            "services": services, "age": duration(max(0.0, now - s.created_at)), "backend": s.backend,
            "job_id": s.job_id, "nodes": ", ".join(job_nodes(s)) or "-"}


JOB_COLUMNS = ("name", "state", RECORDS, "services", "nodes", "age")
SERVICE_COLUMNS = ("name", "class", "kind")


def rows_html(rows: list[dict[str, str]], columns: tuple[str, ...], empty: str) -> str:
    """A kernel-level table (`%sage_status`, `%sage_services`); a "state" column gets badges."""
    if not rows:
        return f'<div style="{_BOX}">{esc(empty)}</div>'
    body = []
    for r in rows:
        cells = "".join(f'<td style="{_CELL}">{badge(r[c]) if c == "state" else esc(r[c])}</td>' for c in columns)
        body.append(f"<tr>{cells}</tr>")
    return f'<div style="{_BOX}">{_table(list(columns), body)}</div>'


def rows_text(rows: list[dict[str, str]], columns: tuple[str, ...], empty: str) -> str:
    if not rows:
        return empty
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    out = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    out += ["  ".join(r[c].ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in out)
