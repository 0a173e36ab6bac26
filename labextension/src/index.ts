/**
 * sage-jupyter: a left-sidebar panel with the current notebook's sage_jupyter jobs and
 * services, and commands to open it, refresh it and stop every job.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';

import { SageSidebar } from './sidebar';

/** The commands this extension adds (also in the palette, under "SAGE"). */
export namespace CommandIDs {
  /** Show the SAGE jobs sidebar. */
  export const open = 'sage-jupyter:open';
  /** Ask the current kernel for its jobs now, without waiting for the next poll. */
  export const refresh = 'sage-jupyter:refresh';
  /** Stop every running job of the current notebook's kernel. */
  export const stopAll = 'sage-jupyter:stop-all';
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'sage-jupyter:sidebar',
  description:
    "A sidebar with the current notebook's sage_jupyter jobs and services.",
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    notebooks: INotebookTracker,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null
  ) => {
    const sidebar = new SageSidebar();
    sidebar.id = 'sage-jupyter-sidebar';
    app.shell.add(sidebar, 'left', { rank: 650 });
    restorer?.add(sidebar, sidebar.id);

    const followCurrent = () =>
      sidebar.follow(notebooks.currentWidget?.sessionContext ?? null);
    notebooks.currentChanged.connect(followCurrent);
    followCurrent();

    app.commands.addCommand(CommandIDs.open, {
      label: 'Show SAGE Jobs',
      execute: () => app.shell.activateById(sidebar.id)
    });
    app.commands.addCommand(CommandIDs.refresh, {
      label: 'Refresh SAGE Jobs',
      execute: () => sidebar.refresh()
    });
    app.commands.addCommand(CommandIDs.stopAll, {
      label: 'Stop All SAGE Jobs',
      isEnabled: () => sidebar.hasRunningJobs,
      execute: () => sidebar.stopAll()
    });
    for (const command of [
      CommandIDs.open,
      CommandIDs.refresh,
      CommandIDs.stopAll
    ]) {
      palette?.addItem({ command, category: 'SAGE' });
    }
  }
};

export default plugin;
