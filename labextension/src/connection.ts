/**
 * The comm to the current notebook's kernel (target "sage_jupyter", registered by
 * `%load_ext sage_jupyter`). The kernel pushes the job list on every change; this side
 * sends only user actions, and opens the comm again when the kernel restarts, the
 * notebook changes or a cell ran while the extension was not loaded. It never polls: every
 * request is a shell message whose busy/idle status would make a busy kernel look idle.
 */
import { ISessionContext } from '@jupyterlab/apputils';
import {
  CommsOverSubshells,
  Kernel,
  KernelMessage
} from '@jupyterlab/services';

import { IJobList, JobsModel } from './model';

/** The comm target that `%load_ext sage_jupyter` registers in the kernel. */
export const COMM_TARGET = 'sage_jupyter';

/** An action of the sidebar protocol (see sage_jupyter/jupyter/sidebar.py). */
export type Action =
  | { action: 'list' }
  | { action: 'stop'; job_id: string }
  | { action: 'stop_all' }
  | { action: 'clear_finished' }
  | { action: 'kill_orphans'; names?: string[] };

/** Reconnect delays (ms) after a comm was lost: doubling up to the maximum. */
const RETRY_FIRST = 500;
const RETRY_MAX = 10000;

/** How long (ms) a comm opened on a subshell may take to answer before the subshell is
 * deemed to be of a kernel process that is gone. */
const SUBSHELL_ANSWER_TIMEOUT = 5000;

/** Answers from a restarting kernel's old process to ignore before believing them. */
const MAX_STALE_ANSWERS = 5;

/** Kernel states in which no comm can be opened. */
const KERNEL_DOWN = new Set([
  'restarting',
  'autorestarting',
  'dead',
  'unknown'
]);

/**
 * Whether a new comm of this kernel will be handled on a subshell. The comm learns its
 * subshell asynchronously: a message sent before `subshellStarted` goes to the main shell.
 */
export function onSubshell(kernel: Kernel.IKernelConnection): boolean {
  return (
    kernel.supportsSubshells &&
    kernel.commsOverSubshells !== CommsOverSubshells.Disabled
  );
}

/** Resolves once the comm knows its subshell (CommHandler has it; IComm does not say). */
export function subshellStarted(comm: Kernel.IComm): Promise<void> {
  const started = (comm as { subshellStarted?: Promise<void> }).subshellStarted;
  return started ?? Promise.resolve();
}

export class KernelConnection {
  constructor(readonly model: JobsModel) {}

  /** Follow another notebook's session (or none): drop the old comm, open a new one. */
  follow(context: ISessionContext | null): void {
    if (context === this._context) {
      return;
    }
    if (this._context) {
      this._context.kernelChanged.disconnect(this._reconnect, this);
      this._context.statusChanged.disconnect(this._onStatus, this);
    }
    this._context = context;
    if (context) {
      context.kernelChanged.connect(this._reconnect, this);
      context.statusChanged.connect(this._onStatus, this);
    }
    this._reconnect();
  }

  /** Send a user action; the kernel answers with the new list. */
  send(data: Action): void {
    const comm = this._comm;
    if (comm && !comm.isDisposed && this.model.phase === 'connected') {
      comm.send(
        data as unknown as KernelMessage.ICommMsgMsg['content']['data']
      );
    }
  }

  /**
   * Send an action to a given kernel and resolve with its answer: over this comm when it is
   * the followed kernel's, else over a comm opened for it and closed after the answer. A comm
   * the frontend opened is handled on a subshell, so this works while a cell runs.
   */
  request(kernel: Kernel.IKernelConnection, data: Action): Promise<IJobList> {
    const comm = this._comm;
    if (
      kernel === this._kernel &&
      comm &&
      !comm.isDisposed &&
      this.model.phase === 'connected'
    ) {
      return new Promise(resolve => {
        this._answers.push(resolve);
        comm.send(
          data as unknown as KernelMessage.ICommMsgMsg['content']['data']
        );
      });
    }
    return Private.requestOnce(kernel, data);
  }

  dispose(): void {
    this.follow(null);
  }

  private _reconnect(): void {
    this._drop();
    this._retry = RETRY_FIRST;
    this._connect();
  }

  private _onStatus(_: ISessionContext, status: Kernel.Status): void {
    if (KERNEL_DOWN.has(status) || status === 'starting') {
      // A restart disposes the kernel's comms: forget ours and open one when it is up.
      if (status === 'restarting' || status === 'autorestarting') {
        this._oldPid = this.model.pid ?? this._oldPid;
      }
      this._drop();
      this.model.setPhase('kernel-down');
    } else if (this.model.phase === 'kernel-down') {
      this._reconnect();
    }
  }

  private _onIOPub(
    _: Kernel.IKernelConnection,
    msg: KernelMessage.IIOPubMessage
  ): void {
    const state =
      msg.header.msg_type === 'status'
        ? (msg.content as KernelMessage.IStatusMsg['content']).execution_state
        : null;
    // A restarted kernel announces itself with "starting", but a restart made through the
    // REST API (another tab, a script) sends no "restarting" and iopub often misses the
    // new process's "starting". Every message of a kernel process carries its session
    // id, so a status from another session means our comm died with the old process.
    const otherProcess =
      state !== null &&
      this._session !== null &&
      msg.header.session !== this._session;
    if (
      (state === 'starting' || otherProcess) &&
      this.model.phase === 'connected'
    ) {
      this._oldPid = this.model.pid ?? this._oldPid;
      this._reconnect();
      return;
    }
    // A cell finished: if the extension was not loaded, the cell may have loaded it now.
    if (
      state === 'idle' &&
      (msg.parent_header as KernelMessage.IHeader).msg_type ===
        'execute_request'
    ) {
      this._executedSinceOpen = true;
      if (this.model.phase === 'missing') {
        this._connect();
      }
    }
  }

  private _connect(): void {
    window.clearTimeout(this._timer);
    const context = this._context;
    const kernel = context?.session?.kernel ?? null;
    if (!context) {
      this.model.setPhase('no-notebook');
      return;
    }
    if (!kernel) {
      this.model.setPhase('no-kernel'); // kernelChanged brings us back
      return;
    }
    if (kernel !== this._kernel) {
      this._kernel?.iopubMessage.disconnect(this._onIOPub, this);
      this._kernel = kernel;
      kernel.iopubMessage.connect(this._onIOPub, this);
    }
    if (KERNEL_DOWN.has(kernel.status)) {
      this.model.setPhase('kernel-down'); // statusChanged brings us back
      return;
    }
    if (this._comm && !this._comm.isDisposed) {
      return;
    }
    const comm = kernel.createComm(COMM_TARGET);
    let answered = false;
    comm.onMsg = msg => {
      if (comm === this._comm) {
        const pid = (msg.content.data as unknown as IJobList).pid;
        if (
          pid !== undefined &&
          pid === this._oldPid &&
          this._staleAnswers < MAX_STALE_ANSWERS
        ) {
          // The process being restarted answered before it went: ask its successor later.
          this._staleAnswers += 1;
          this._drop();
          this._later();
          return;
        }
        this._oldPid = null;
        this._staleAnswers = 0;
        this._session = msg.header.session;
        answered = true;
        this._retry = RETRY_FIRST;
        const list = msg.content.data as unknown as IJobList;
        this.model.update(list);
        this._answers.shift()?.(list); // a push may come first: it is a list all the same
      }
    };
    comm.onClose = () => {
      if (comm !== this._comm) {
        return;
      }
      this._comm = null;
      if (!answered && !this._executedSinceOpen) {
        // The kernel closes a comm at once when nothing registered its target: wait for
        // the next cell to run rather than asking again and again.
        this.model.setPhase('missing');
      } else if (!answered) {
        // A cell ran while the kernel refused the comm (a subshell can take the opening
        // while the cell is still loading the extension): ask once more.
        this._connect();
      } else {
        this._later();
      }
    };
    this._comm = comm;
    this._executedSinceOpen = false;
    if (this.model.phase !== 'connected') {
      this.model.setPhase('connecting');
    }
    const open = () => {
      if (comm !== this._comm) {
        return;
      }
      try {
        comm.open({}); // the kernel answers the opening with the job list, then pushes
      } catch {
        this._comm = null;
        this._later();
        return;
      }
      if (onSubshell(kernel)) {
        this._watchSubshell(comm, () => answered);
      }
    };
    // Opened before the comm knows its subshell, the kernel would answer it from the main
    // shell, and then route every later message of it there: a Stop would wait for a cell.
    void kernel.info
      .then(() => (onSubshell(kernel) ? subshellStarted(comm) : undefined))
      .then(open, open);
  }

  /**
   * A comm opened on a subshell that neither answers nor closes was sent to a subshell of a
   * kernel process that is gone (a restart that sent no "restarting" keeps the per-target
   * subshell id): forget that subshell, so the next comm gets one of the new process.
   */
  private _watchSubshell(comm: Kernel.IComm, answered: () => boolean): void {
    window.clearTimeout(this._subshellTimer);
    this._subshellTimer = window.setTimeout(() => {
      if (comm === this._comm && !answered()) {
        comm.commsOverSubshells = CommsOverSubshells.Disabled;
        this._comm = null;
        comm.dispose();
        this._connect();
      }
    }, SUBSHELL_ANSWER_TIMEOUT);
  }

  /** Try again after a growing delay (the kernel went away under us). */
  private _later(): void {
    window.clearTimeout(this._timer);
    this._timer = window.setTimeout(() => this._connect(), this._retry);
    this._retry = Math.min(this._retry * 2, RETRY_MAX);
  }

  private _drop(): void {
    window.clearTimeout(this._timer);
    window.clearTimeout(this._subshellTimer);
    for (const answer of this._answers.splice(0)) {
      answer({ error: 'the connection to the kernel was lost' });
    }
    const comm = this._comm;
    this._comm = null;
    this._session = null;
    this._kernel?.iopubMessage.disconnect(this._onIOPub, this);
    this._kernel = null;
    if (comm && !comm.isDisposed) {
      try {
        comm.close();
      } catch {
        // The kernel is already gone; nothing to close.
      }
    }
  }

  private _context: ISessionContext | null = null;
  private _kernel: Kernel.IKernelConnection | null = null;
  private _comm: Kernel.IComm | null = null;
  private _timer = 0;
  private _subshellTimer = 0;
  private _retry = RETRY_FIRST;
  private _oldPid: number | null = null; // the kernel process a restart replaces
  private _staleAnswers = 0;
  private _session: string | null = null; // iopub session id of the process that answered
  private _answers: ((list: IJobList) => void)[] = []; // requests waiting, in order
  private _executedSinceOpen = false; // a cell ended since the comm was opened
}

namespace Private {
  /** How long a one-off request waits for the kernel's answer. */
  const ANSWER_TIMEOUT = 30000;

  /** Open a comm to `kernel`, send one action, close it after the answer to that action. */
  export async function requestOnce(
    kernel: Kernel.IKernelConnection,
    data: Action
  ): Promise<IJobList> {
    let comm: Kernel.IComm;
    try {
      comm = kernel.createComm(COMM_TARGET);
      if (onSubshell(kernel)) {
        await subshellStarted(comm);
      }
    } catch (err) {
      return { error: `no comm to the kernel: ${err}` };
    }
    return new Promise(resolve => {
      let seen = 0;
      let done = false;
      const finish = (list: IJobList) => {
        if (done) {
          return;
        }
        done = true;
        window.clearTimeout(timer);
        resolve(list);
        if (!comm.isDisposed) {
          comm.close();
        }
      };
      const timer = window.setTimeout(
        () => finish({ error: 'the kernel did not answer' }),
        ANSWER_TIMEOUT
      );
      comm.onMsg = msg => {
        seen += 1;
        if (seen === 2) {
          // 1 answers the opening; 2 the action (or a push: a list all the same)
          finish(msg.content.data as unknown as IJobList);
        }
      };
      comm.onClose = () =>
        finish({ error: 'sage_jupyter is not loaded in this kernel' });
      try {
        comm.open({});
        comm.send(
          data as unknown as KernelMessage.ICommMsgMsg['content']['data']
        );
      } catch (err) {
        finish({ error: `the kernel is not reachable: ${err}` });
      }
    });
  }
}
