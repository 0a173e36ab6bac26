/**
 * The sidebar: the jobs and services of the current notebook's kernel, read over one comm
 * to the kernel's "sage_jupyter" target (registered by `%load_ext sage_jupyter`).
 *
 * The kernel only answers, so the sidebar polls: every second while a job runs, backing
 * off to ten seconds when nothing does. The comm is reopened whenever the kernel
 * restarts or the current notebook (or its kernel) changes.
 */
import { ISessionContext } from '@jupyterlab/apputils';
import { Kernel, KernelMessage } from '@jupyterlab/services';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

/** The comm target that `%load_ext sage_jupyter` registers in the kernel. */
export const COMM_TARGET = 'sage_jupyter';

/** Poll delays in milliseconds. */
const POLL_RUNNING = 1000;
const POLL_IDLE_FIRST = 2000;
const POLL_MAX = 10000;
/** After a cell ran, look again soon: it may have started a job or loaded the extension. */
const POLL_AFTER_CELL = 300;

const TERMINAL = new Set(['FINISHED', 'STOPPED', 'FAILED']);
/** Kernel states in which no comm can be opened. */
const KERNEL_DOWN = new Set(['restarting', 'autorestarting', 'dead']);
/** Kernel states that mean a new kernel process: comms of the old one are gone. */
const KERNEL_NEW = new Set(['restarting', 'autorestarting', 'starting', 'dead']);

export const sageIcon = new LabIcon({
  name: 'sage-jupyter:jobs',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">' +
    '<g class="jp-icon3" fill="#616161">' +
    '<circle cx="5" cy="6" r="2.5"/><circle cx="5" cy="18" r="2.5"/><circle cx="19" cy="12" r="2.5"/>' +
    '<path d="M7 6.5h4.5l4 4.5h-2.2L10.6 8H7zM7 17.5h4.5l4-4.5h-2.2l-2.7 3H7z"/></g></svg>'
});

/** One service of a job, as `ServiceStatus` in the kernel. */
export interface IServiceEntry {
  name: string;
  kind: string;
  state: string;
  calls: number;
  actor_id: string | null;
  node_label: string | null;
  error: IErrorEntry | null;
}

export interface IErrorEntry {
  where: string;
  type: string;
  message: string;
}

export interface ITaskEntry {
  stage: string;
  records_in: number;
  records_out: number;
}

/** One job, as `JobStatus.to_dict()` plus the name it is tracked under. */
export interface IJobEntry {
  job_id: string;
  name: string;
  display_name: string;
  state: string;
  backend: string;
  location: string;
  started_at: number | null;
  ended_at: number | null;
  taken_at: number;
  tasks: ITaskEntry[];
  services: IServiceEntry[];
  nodes: string[];
  error: IErrorEntry | null;
}

interface IReply {
  jobs?: IJobEntry[];
  pid?: number;
  error?: string;
}

type Phase = 'no-notebook' | 'no-kernel' | 'kernel-down' | 'connecting' | 'missing' | 'connected';

/** The sidebar widget. Call `follow()` with the current notebook's session context. */
export class SageSidebar extends Widget {
  constructor() {
    super();
    this.addClass('sage-jp-Sidebar');
    this.title.icon = sageIcon;
    this.title.caption = 'SAGE jobs';

    const header = Private.el('div', 'sage-jp-Sidebar-header');
    header.appendChild(Private.el('h2', 'sage-jp-Sidebar-title', 'SAGE jobs'));
    this._stopAllButton = Private.button('Stop all', 'sage-jp-StopAll');
    this._stopAllButton.title = 'Stop every running job of this kernel';
    this._stopAllButton.addEventListener('click', () => this.stopAll());
    header.appendChild(this._stopAllButton);
    this._kernelLine = Private.el('div', 'sage-jp-Sidebar-kernel');
    this._message = Private.el('div', 'sage-jp-Sidebar-message');
    this._list = Private.el('ul', 'sage-jp-JobList');
    this.node.append(header, this._kernelLine, this._message, this._list);
    this._render();
  }

  /** Whether a job of the current kernel is still running (not in a terminal state). */
  get hasRunningJobs(): boolean {
    return this._jobs.some(job => !TERMINAL.has(job.state));
  }

  /** Follow another notebook's session (or none): drop the old comm, open a new one. */
  follow(context: ISessionContext | null): void {
    if (context === this._context) {
      return;
    }
    if (this._context) {
      this._context.kernelChanged.disconnect(this._onKernelChanged, this);
      this._context.statusChanged.disconnect(this._onStatusChanged, this);
    }
    this._context = context;
    if (context) {
      context.kernelChanged.connect(this._onKernelChanged, this);
      context.statusChanged.connect(this._onStatusChanged, this);
    }
    this._reset();
  }

  /** Ask the kernel for the job list now. */
  refresh(): void {
    this._delay = POLL_RUNNING;
    this._schedule(0);
  }

  /** Stop every running job of the current kernel. */
  stopAll(): void {
    this._send({ action: 'stop_all' });
  }

  /** Stop one job, named by its id. */
  stopJob(jobId: string): void {
    this._send({ action: 'stop', job_id: jobId });
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.follow(null);
    window.clearTimeout(this._timer);
    super.dispose();
  }

  protected onAfterShow(): void {
    this.refresh();
  }

  private _onKernelChanged(): void {
    this._reset();
  }

  private _onStatusChanged(_: ISessionContext, status: Kernel.Status): void {
    if (KERNEL_NEW.has(status)) {
      // A restart disposes the kernel's comms; forget ours so the next poll opens one
      // (a restarted kernel may stay 'starting' until it gets a message: ours wakes it).
      this._dropComm(false);
      this._setPhase('kernel-down');
      this._schedule(POLL_RUNNING);
    } else if (this._phase === 'kernel-down') {
      this.refresh();
    }
  }

  private _onIOPub(_: Kernel.IKernelConnection, msg: KernelMessage.IIOPubMessage): void {
    // The sidebar's own comm messages also make the kernel busy and idle: react only to
    // cells that finished running.
    if (
      msg.header.msg_type === 'status' &&
      (msg.content as KernelMessage.IStatusMsg['content']).execution_state === 'idle' &&
      (msg.parent_header as KernelMessage.IHeader).msg_type === 'execute_request'
    ) {
      this._delay = POLL_RUNNING;
      this._schedule(POLL_AFTER_CELL);
    }
  }

  /** Start over for the current session: new kernel, new comm, fresh backoff. */
  private _reset(): void {
    this._dropComm(true);
    this._jobs = [];
    this._pid = null;
    this._error = '';
    this._delay = POLL_RUNNING;
    this._setPhase(this._context ? 'connecting' : 'no-notebook');
    this._schedule(0);
  }

  private _schedule(delay: number): void {
    window.clearTimeout(this._timer);
    if (this.isDisposed || !this._context) {
      return;
    }
    this._timer = window.setTimeout(() => this._tick(), delay);
  }

  private _tick(): void {
    const kernel = this._context?.session?.kernel ?? null;
    if (kernel !== this._kernel) {
      this._dropComm(true);
      this._kernel = kernel;
      if (kernel) {
        kernel.iopubMessage.connect(this._onIOPub, this);
      }
    }
    if (!kernel) {
      this._setPhase('no-kernel');
      this._schedule(POLL_MAX); // kernelChanged brings us back sooner
      return;
    }
    if (KERNEL_DOWN.has(kernel.status)) {
      this._setPhase('kernel-down');
      this._schedule(POLL_RUNNING);
      return;
    }
    if (!this.isVisible) {
      // A collapsed sidebar costs the kernel nothing; showing it again refreshes at once.
      this._schedule(POLL_MAX);
      return;
    }
    if (!this._comm || this._comm.isDisposed) {
      this._openComm(kernel);
    } else if (this._pending.size === 0) {
      this._send({ action: 'list' });
    }
    // While a request waits (the kernel may be running a long cell), only look again later.
    this._schedule(this._delay);
  }

  private _openComm(kernel: Kernel.IKernelConnection): void {
    const comm = kernel.createComm(COMM_TARGET);
    let answered = false;
    comm.onMsg = msg => {
      answered = true;
      this._pending.delete(msg.parent_header.msg_id as string);
      this._onReply(comm, msg.content.data as unknown as IReply);
    };
    comm.onClose = () => {
      if (comm !== this._comm) {
        return;
      }
      this._comm = null;
      this._pending.clear();
      if (!answered) {
        // The kernel closes a comm at once when nothing registered its target.
        this._jobs = [];
        this._pid = null;
        this._setPhase('missing');
        this._delay = Math.min(Math.max(this._delay * 2, POLL_IDLE_FIRST), POLL_MAX);
      }
      this._schedule(this._delay);
    };
    this._comm = comm;
    if (this._phase !== 'connected' && this._phase !== 'missing') {
      this._setPhase('connecting');
    }
    try {
      this._watch(comm, comm.open({})); // the kernel answers the opening with the job list
    } catch {
      // The kernel went away between the status check and now; the next poll retries.
      this._comm = null;
    }
  }

  /**
   * Keep track of one request until the kernel is idle after it. Idle without an answer
   * means the kernel no longer knows this comm (it restarted without telling us): reopen.
   */
  private _watch(comm: Kernel.IComm, future: Kernel.IShellFuture): void {
    const id = future.msg.header.msg_id;
    this._pending.add(id);
    const settled = () => {
      if (this._pending.delete(id) && comm === this._comm && !comm.isDisposed) {
        this._dropComm(true);
        this._schedule(0);
      }
    };
    future.done.then(settled, settled);
  }

  private _dropComm(closeIt: boolean): void {
    const comm = this._comm;
    this._comm = null;
    this._pending.clear();
    if (this._kernel) {
      this._kernel.iopubMessage.disconnect(this._onIOPub, this);
      this._kernel = null;
    }
    if (closeIt && comm && !comm.isDisposed) {
      try {
        comm.close();
      } catch {
        // The kernel is already gone; nothing to close.
      }
    }
  }

  private _send(data: { action: string; job_id?: string }): void {
    const comm = this._comm;
    if (!comm || comm.isDisposed || this._phase !== 'connected') {
      return;
    }
    this._watch(comm, comm.send(data));
    if (data.action !== 'list') {
      // A stop: watch the job go STOPPING then STOPPED.
      this._delay = POLL_RUNNING;
      this._schedule(POLL_RUNNING);
    }
  }

  private _onReply(comm: Kernel.IComm, reply: IReply): void {
    if (comm !== this._comm) {
      return;
    }
    if (reply.jobs) {
      this._jobs = reply.jobs;
    }
    if (typeof reply.pid === 'number') {
      this._pid = reply.pid;
    }
    this._error = reply.error ?? '';
    this._delay = this.hasRunningJobs
      ? POLL_RUNNING
      : Math.min(Math.max(this._delay * 2, POLL_IDLE_FIRST), POLL_MAX);
    this._setPhase('connected');
    this._schedule(this._delay);
  }

  private _setPhase(phase: Phase): void {
    this._phase = phase;
    this.node.dataset.phase = phase;
    this._render();
  }

  private _render(): void {
    const name = this._context?.path ?? '';
    this._kernelLine.textContent = name
      ? `${name}${this._pid !== null ? ` · kernel pid ${this._pid}` : ''}`
      : '';
    this._message.textContent = this._error || Private.phaseMessage(this._phase, this._jobs.length);
    this._message.classList.toggle('sage-jp-mod-error', !!this._error);
    this._stopAllButton.disabled = this._phase !== 'connected' || !this.hasRunningJobs;
    this._renderJobs();
  }

  /** Update job rows in place, keyed by job id, so a click never lands on a replaced node. */
  private _renderJobs(): void {
    const seen = new Set<string>();
    for (const job of this._jobs) {
      seen.add(job.job_id);
      let row = this._rows.get(job.job_id);
      if (!row) {
        row = new Private.JobRow(job.job_id, id => this.stopJob(id));
        this._rows.set(job.job_id, row);
      }
      row.update(job, this._phase === 'connected');
      this._list.appendChild(row.node); // keeps the kernel's order
    }
    for (const [id, row] of this._rows) {
      if (!seen.has(id)) {
        row.node.remove();
        this._rows.delete(id);
      }
    }
  }

  private _context: ISessionContext | null = null;
  private _kernel: Kernel.IKernelConnection | null = null;
  private _comm: Kernel.IComm | null = null;
  private _pending = new Set<string>(); // ids of requests the kernel has not answered yet
  private _timer = 0;
  private _delay = POLL_RUNNING;
  private _phase: Phase = 'no-notebook';
  private _jobs: IJobEntry[] = [];
  private _pid: number | null = null;
  private _error = '';
  private _rows = new Map<string, Private.JobRow>();
  private _stopAllButton: HTMLButtonElement;
  private _kernelLine: HTMLElement;
  private _message: HTMLElement;
  private _list: HTMLElement;
}

namespace Private {
  export function el(tag: string, className: string, text?: string): HTMLElement {
    const node = document.createElement(tag);
    node.className = className;
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  }

  export function button(label: string, className: string): HTMLButtonElement {
    const node = el('button', `jp-mod-styled ${className}`, label) as HTMLButtonElement;
    node.type = 'button';
    return node;
  }

  export function phaseMessage(phase: Phase, jobCount: number): string {
    switch (phase) {
      case 'no-notebook':
        return 'Open a notebook to see its jobs.';
      case 'no-kernel':
        return 'This notebook has no kernel.';
      case 'kernel-down':
        return 'Waiting for the kernel to start…';
      case 'connecting':
        return 'Connecting to the kernel…';
      case 'missing':
        return 'sage_jupyter is not loaded in this kernel: run %load_ext sage_jupyter in this notebook.';
      case 'connected':
        return jobCount ? '' : 'No jobs in this kernel yet.';
    }
  }

  function elapsed(job: IJobEntry): string {
    if (job.started_at === null) {
      return '';
    }
    const seconds = Math.max(0, (job.ended_at ?? job.taken_at) - job.started_at);
    return seconds < 60 ? `${seconds.toFixed(1)} s` : `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  }

  function records(job: IJobEntry): number {
    return job.tasks.filter(t => t.stage.startsWith('sink')).reduce((sum, t) => sum + t.records_in, 0);
  }

  /** One job: name, state, a Stop button, its services. */
  export class JobRow {
    readonly node = el('li', 'sage-jp-Job');

    constructor(jobId: string, onStop: (jobId: string) => void) {
      this.node.dataset.jobId = jobId;
      const head = el('div', 'sage-jp-Job-head');
      this._stop.title = 'Stop this job and clean its services';
      this._stop.addEventListener('click', () => onStop(jobId));
      head.append(this._name, this._state, this._stop);
      this.node.append(head, this._meta, this._error, this._services);
    }

    update(job: IJobEntry, connected: boolean): void {
      this.node.dataset.jobName = job.display_name;
      this.node.dataset.state = job.state;
      this._name.textContent = job.display_name;
      this._name.title = `job ${job.name} (${job.job_id})`;
      this._state.textContent = job.state;
      this._state.className = `sage-jp-State sage-jp-State-${job.state}`;
      this._stop.disabled = !connected || TERMINAL.has(job.state) || job.state === 'STOPPING';
      const where = job.location === 'local' ? job.backend : `${job.backend} @ ${job.location}`;
      const nodes = job.nodes && job.nodes.length ? `on ${job.nodes.join(', ')}` : '';
      this._meta.textContent = [where, nodes, elapsed(job), `${records(job)} records`].filter(Boolean).join(' · ');
      this._error.textContent = job.error ? `${job.error.where}: ${job.error.type}: ${job.error.message}` : '';
      this._error.hidden = !job.error;
      this._services.replaceChildren(...job.services.map(serviceItem));
    }

    private _name = el('span', 'sage-jp-Job-name');
    private _state = el('span', 'sage-jp-State');
    private _stop = button('Stop', 'sage-jp-Job-stop');
    private _meta = el('div', 'sage-jp-Job-meta');
    private _error = el('div', 'sage-jp-Job-error');
    private _services = el('ul', 'sage-jp-ServiceList');
  }

  function serviceItem(service: IServiceEntry): HTMLElement {
    const item = el('li', 'sage-jp-Service');
    item.dataset.serviceName = service.name;
    item.dataset.state = service.state;
    const actor = service.actor_id ? `ray actor ${service.actor_id.slice(0, 8)}` : service.kind;
    const kind = service.node_label ? `${actor} on ${service.node_label}` : actor;
    item.append(
      el('span', 'sage-jp-Service-name', service.name),
      el('span', 'sage-jp-Service-kind', kind),
      el('span', `sage-jp-Service-state sage-jp-Service-${service.state}`, service.state),
      el('span', 'sage-jp-Service-calls', `${service.calls} calls`)
    );
    if (service.error) {
      item.title = `${service.error.type}: ${service.error.message}`;
    }
    return item;
  }
}
