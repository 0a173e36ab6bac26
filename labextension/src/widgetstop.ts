/**
 * The job widget's Stop button, made to work while another cell of its kernel runs.
 *
 * The widget is displayed from a cell, and ipykernel answers a comm on the shell it last
 * sent from: a click sent over the widget's own comm waits on the busy main shell. So a
 * click on a button the kernel marked (`sage-stop`, `sage-stop-job-<job id>`, see
 * sage_jupyter/jupyter/busy_stop.py) is taken here and sent as a "stop" over a
 * "sage_jupyter" comm this frontend opened, which the kernel handles on a subshell. Where
 * that cannot help (a kernel without subshells, subshells turned off, no notebook panel
 * around the button), the click goes to the widget as usual.
 */
import { INotebookTracker } from '@jupyterlab/notebook';

import { KernelConnection, onSubshell } from './connection';

/** The DOM class of the widget's Stop button. */
export const STOP_CLASS = 'sage-stop';
/** Followed by the URI-encoded job id. */
const JOB_CLASS_PREFIX = 'sage-stop-job-';

/** The job a marked Stop button stops, from its DOM classes. */
export function jobIdOf(button: Element): string | null {
  for (const name of Array.from(button.classList)) {
    if (name.startsWith(JOB_CLASS_PREFIX)) {
      return decodeURIComponent(name.slice(JOB_CLASS_PREFIX.length));
    }
  }
  return null;
}

export class WidgetStop {
  constructor(
    private readonly _notebooks: INotebookTracker,
    private readonly _connection: KernelConnection
  ) {
    // Capture phase: the widget's own handler must not send the click as well.
    document.addEventListener('click', this._onClick, true);
  }

  dispose(): void {
    document.removeEventListener('click', this._onClick, true);
  }

  private _onClick = (event: MouseEvent): void => {
    const target = event.target as Element | null;
    const button = target?.closest?.(`.${STOP_CLASS}`) as HTMLButtonElement;
    if (!button || button.disabled || button === this._passing) {
      return;
    }
    const jobId = jobIdOf(button);
    const panel = this._notebooks.find(p => p.node.contains(button));
    const kernel = panel?.sessionContext.session?.kernel ?? null;
    if (!jobId || !kernel || !onSubshell(kernel)) {
      return;
    }
    event.stopImmediatePropagation();
    event.preventDefault();
    button.disabled = true; // the kernel disables it for good when the job ended
    void this._connection
      .request(kernel, { action: 'stop', job_id: jobId })
      .then(answer => {
        if (answer.error) {
          // Let the widget's own comm try (it waits for a running cell, but it is heard).
          console.warn(
            `sage-jupyter: Stop over the sidebar comm: ${answer.error}`
          );
          button.disabled = false;
          this._passing = button;
          button.click();
          this._passing = null;
        }
      });
  };

  private _passing: HTMLButtonElement | null = null;
}
