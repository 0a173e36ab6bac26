/**
 * The sidebar panel: the current notebook's kernel's jobs, rendered from the model in the
 * kernel's order (a re-run job keeps its place), with Stop all and Clear finished; below
 * them, Ray actors left by dead kernels (when the kernel found any), with Kill.
 */
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { KernelConnection } from './connection';
import { button, el, JobRow } from './jobrow';
import { IOrphanEntry, JobsModel, Phase } from './model';

export const sageIcon = new LabIcon({
  name: 'sage-jupyter:jobs',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">' +
    '<g class="jp-icon3" fill="#616161">' +
    '<circle cx="5" cy="6" r="2.5"/><circle cx="5" cy="18" r="2.5"/><circle cx="19" cy="12" r="2.5"/>' +
    '<path d="M7 6.5h4.5l4 4.5h-2.2L10.6 8H7zM7 17.5h4.5l4-4.5h-2.2l-2.7 3H7z"/></g></svg>'
});

export class SageSidebar extends Widget {
  constructor(
    readonly connection: KernelConnection,
    private readonly _revealCell: (cellId: string) => void
  ) {
    super();
    this.addClass('sage-jp-Sidebar');
    this.title.icon = sageIcon;
    this.title.caption = 'SAGE jobs';
    const header = el('div', 'sage-jp-Sidebar-header');
    header.appendChild(el('h2', 'sage-jp-Sidebar-title', 'SAGE jobs'));
    this._stopAll.title = 'Stop every running job of this kernel';
    this._stopAll.addEventListener('click', () =>
      this.connection.send({ action: 'stop_all' })
    );
    this._clear.title = 'Remove the jobs that ended from this list';
    this._clear.addEventListener('click', () =>
      this.connection.send({ action: 'clear_finished' })
    );
    header.append(this._clear, this._stopAll);
    this._killAll.title = 'Kill every Ray actor left by a dead kernel';
    this._killAll.addEventListener('click', () => {
      this._killAll.disabled = true;
      this.connection.send({ action: 'kill_orphans' });
    });
    const orphansHead = el('div', 'sage-jp-Orphans-head');
    orphansHead.append(
      el('h3', 'sage-jp-Orphans-title', 'Left by dead kernels'),
      this._killAll
    );
    this._orphans.append(orphansHead, this._orphanList);
    this.node.append(
      header,
      this._kernelLine,
      this._message,
      this._list,
      this._orphans
    );
    this.model.changed.connect(this._render, this);
    this._render();
  }

  get model(): JobsModel {
    return this.connection.model;
  }

  /** The path shown above the list (the current notebook). */
  set path(value: string) {
    this._path = value;
    this._render();
  }

  private _render(): void {
    const model = this.model;
    this.node.dataset.phase = model.phase;
    this._kernelLine.textContent = this._path
      ? `${this._path}${model.pid !== null ? ` · kernel pid ${model.pid}` : ''}`
      : '';
    this._message.textContent =
      model.error || phaseMessage(model.phase, model.jobs.length);
    this._message.classList.toggle('sage-jp-mod-error', !!model.error);
    const connected = model.phase === 'connected';
    this._stopAll.disabled = !connected || !model.hasRunningJobs;
    this._clear.disabled = !connected || !model.hasEndedJobs;
    const seen = new Set<string>();
    for (const job of model.jobs) {
      seen.add(job.job_id);
      let row = this._rows.get(job.job_id);
      if (!row) {
        row = new JobRow(
          model,
          job.job_id,
          id => this.connection.send({ action: 'stop', job_id: id }),
          this._revealCell
        );
        this._rows.set(job.job_id, row);
      }
      row.update(job);
      this._list.appendChild(row.node); // in the kernel's order; existing nodes move, not rebuilt
    }
    for (const [id, row] of this._rows) {
      if (!seen.has(id)) {
        row.node.remove();
        this._rows.delete(id);
      }
    }
    this._renderOrphans(connected ? model.orphans : []);
  }

  private _renderOrphans(orphans: readonly IOrphanEntry[]): void {
    this._orphans.hidden = orphans.length === 0;
    this._killAll.disabled = orphans.length === 0;
    this._orphanList.replaceChildren(
      ...orphans.map(orphan => {
        const item = el('li', 'sage-jp-Orphan');
        item.dataset.actorName = orphan.name;
        const kill = button('Kill', 'sage-jp-Orphan-kill');
        kill.title = 'Kill this Ray actor (its kernel is gone)';
        kill.addEventListener('click', () => {
          kill.disabled = true;
          this.connection.send({
            action: 'kill_orphans',
            names: [orphan.name]
          });
        });
        const what = el(
          'span',
          'sage-jp-Orphan-name',
          `${orphan.job} · ${orphan.role}`
        );
        what.title = orphan.name;
        item.append(
          what,
          el('span', 'sage-jp-Orphan-pid', `kernel pid ${orphan.pid}`),
          kill
        );
        return item;
      })
    );
  }

  private _path = '';
  private _rows = new Map<string, JobRow>();
  private _stopAll = button('Stop all', 'sage-jp-StopAll');
  private _clear = button('Clear finished', 'sage-jp-ClearFinished');
  private _kernelLine = el('div', 'sage-jp-Sidebar-kernel');
  private _message = el('div', 'sage-jp-Sidebar-message');
  private _list = el('ul', 'sage-jp-JobList');
  private _orphans = el('section', 'sage-jp-Orphans');
  private _orphanList = el('ul', 'sage-jp-OrphanList');
  private _killAll = button('Kill all', 'sage-jp-KillOrphans');
}

function phaseMessage(phase: Phase, jobCount: number): string {
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
