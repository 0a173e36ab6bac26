/**
 * The sidebar's model: the last job list the kernel pushed, and where the connection is.
 * Entries come ready to show (the kernel works out every number and text); nothing here
 * derives state of its own.
 */
import { ISignal, Signal } from '@lumino/signaling';

/** An error, as `ErrorInfo` in the kernel (without the traceback). */
export interface IErrorEntry {
  where: string;
  type: string;
  message: string;
  /** "where: type: message", as the row shows it. */
  text: string;
}

/** One service of a job. */
export interface IServiceEntry {
  name: string;
  kind: string;
  state: string;
  calls: number;
  error: IErrorEntry | null;
}

/** One job, as `sidebar.job_entry` in the kernel builds it. */
export interface IJobEntry {
  job_id: string;
  name: string;
  job_name: string;
  state: string;
  terminal: boolean;
  backend: string;
  location: string;
  cell_id: string | null;
  elapsed_s: number;
  elapsed: string;
  records_in: number;
  records_out: number;
  records: string;
  error: IErrorEntry | null;
  /** Where its tasks and services run (Ray): each node's IP, with its short id when two share one. */
  nodes: string[];
  services: IServiceEntry[];
  /** True while the job is stopping (its Stop is greyed out). */
  stopping: boolean;
  /** The backend, and the JobManager's address for a remote job. */
  where: string;
}

/** A Ray actor left behind by a kernel that died (`orphan_actors.Orphan` in the kernel). */
export interface IOrphanEntry {
  name: string;
  host: string;
  pid: number;
  job: string;
  role: string;
}

/** What the kernel sends: pushes and answers to actions alike. */
export interface IJobList {
  jobs?: IJobEntry[];
  orphans?: IOrphanEntry[];
  pid?: number;
  palette?: Record<string, string>;
  error?: string;
}

/** Where the connection to the current notebook's kernel is. */
export type Phase =
  | 'no-notebook'
  | 'no-kernel'
  | 'kernel-down'
  | 'connecting'
  | 'missing'
  | 'connected';

export class JobsModel {
  /** Emitted whenever the list or the phase changed. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get jobs(): readonly IJobEntry[] {
    return this._jobs;
  }

  /** Ray actors of dead kernels, as the kernel's last look found them. */
  get orphans(): readonly IOrphanEntry[] {
    return this._orphans;
  }

  get phase(): Phase {
    return this._phase;
  }

  get pid(): number | null {
    return this._pid;
  }

  get error(): string {
    return this._error;
  }

  get hasRunningJobs(): boolean {
    return this._jobs.some(job => !job.terminal);
  }

  get hasEndedJobs(): boolean {
    return this._jobs.some(job => job.terminal);
  }

  /** The inline style of a state's badge, from the kernel's one palette. */
  badgeStyle(state: string): string {
    return this._palette[state] ?? '';
  }

  /** Take a list the kernel sent. */
  update(list: IJobList): void {
    if (list.jobs) {
      this._jobs = list.jobs;
    }
    if (list.orphans) {
      this._orphans = list.orphans;
    }
    if (typeof list.pid === 'number') {
      this._pid = list.pid;
    }
    if (list.palette) {
      this._palette = list.palette;
    }
    this._error = list.error ?? '';
    this._phase = 'connected';
    this._changed.emit();
  }

  setPhase(phase: Phase): void {
    if (phase !== 'connected') {
      this._jobs = [];
      this._orphans = [];
      this._pid = null;
      this._error = '';
    }
    this._phase = phase;
    this._changed.emit();
  }

  private _jobs: IJobEntry[] = [];
  private _orphans: IOrphanEntry[] = [];
  private _phase: Phase = 'no-notebook';
  private _pid: number | null = null;
  private _error = '';
  private _palette: Record<string, string> = {};
  private _changed = new Signal<this, void>(this);
}
