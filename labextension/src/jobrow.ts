/**
 * One job of the sidebar: name, state badge, Stop (while it has not ended), what it did,
 * the Ray nodes it runs on, its error and its services. Clicking the row (not Stop) asks to reveal its cell.
 */
import { IJobEntry, IServiceEntry, JobsModel } from './model';

export function el(tag: string, className: string, text?: string): HTMLElement {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

export function button(label: string, className: string): HTMLButtonElement {
  const node = el(
    'button',
    `jp-mod-styled ${className}`,
    label
  ) as HTMLButtonElement;
  node.type = 'button';
  return node;
}

/** A state as a badge coloured by the kernel's palette. */
export function badge(
  model: JobsModel,
  state: string,
  className: string
): HTMLElement {
  const node = el('span', `sage-jp-State ${className}`, state);
  node.dataset.state = state;
  node.style.cssText = model.badgeStyle(state);
  return node;
}

export class JobRow {
  readonly node = el('li', 'sage-jp-Job');

  constructor(
    private readonly _model: JobsModel,
    jobId: string,
    onStop: (jobId: string) => void,
    onSelect: (cellId: string) => void
  ) {
    this.node.dataset.jobId = jobId;
    this._stop.title = 'Stop this job and clean its services';
    this._stop.addEventListener('click', event => {
      event.stopPropagation();
      this._stop.disabled = true;
      onStop(jobId);
    });
    this.node.addEventListener('click', () => {
      if (this._cellId) {
        onSelect(this._cellId);
      }
    });
    this._head.append(this._name, this._state);
    this.node.append(
      this._head,
      this._meta,
      this._nodes,
      this._error,
      this._services
    );
  }

  update(job: IJobEntry): void {
    this._cellId = job.cell_id;
    this.node.dataset.jobName = job.name;
    this.node.dataset.state = job.state;
    this.node.classList.toggle('sage-jp-mod-linked', !!job.cell_id);
    this.node.title = job.cell_id ? 'Show the cell that started this job' : '';
    this._name.textContent = job.name;
    this._name.title = `job ${job.job_name} (${job.job_id})`;
    const state = badge(this._model, job.state, 'sage-jp-Job-state');
    this._state.replaceWith(state);
    this._state = state;
    if (job.terminal) {
      this._stop.remove(); // an ended job has nothing to stop
    } else {
      this._stop.disabled = job.stopping;
      if (!this._stop.isConnected) {
        this._head.append(this._stop);
      }
    }
    this._meta.textContent = [job.where, job.elapsed, job.records]
      .filter(Boolean)
      .join(' · ');
    const nodes = job.nodes ?? [];
    this._nodes.textContent = nodes.length
      ? `${nodes.length === 1 ? 'node' : 'nodes'}: ${nodes.join(', ')}`
      : '';
    this._nodes.title = nodes.length
      ? 'The Ray nodes where its tasks and services run (or ran)'
      : '';
    this._nodes.hidden = !nodes.length;
    this._error.textContent = job.error ? job.error.text : '';
    this._error.hidden = !job.error;
    this._services.replaceChildren(...job.services.map(s => this._service(s)));
  }

  private _service(service: IServiceEntry): HTMLElement {
    const item = el('li', 'sage-jp-Service');
    item.dataset.serviceName = service.name;
    item.dataset.state = service.state;
    item.append(
      el('span', 'sage-jp-Service-name', service.name),
      el('span', 'sage-jp-Service-kind', service.kind),
      badge(this._model, service.state, 'sage-jp-Service-state'),
      el('span', 'sage-jp-Service-calls', `${service.calls} calls`)
    );
    if (service.error) {
      item.title = `${service.error.type}: ${service.error.message}`;
    }
    return item;
  }

  private _cellId: string | null = null;
  private _head = el('div', 'sage-jp-Job-head');
  private _name = el('span', 'sage-jp-Job-name');
  private _state = el('span', 'sage-jp-State');
  private _stop = button('Stop', 'sage-jp-Job-stop');
  private _meta = el('div', 'sage-jp-Job-meta');
  private _nodes = el('div', 'sage-jp-Job-nodes');
  private _error = el('div', 'sage-jp-Job-error');
  private _services = el('ul', 'sage-jp-ServiceList');
}
