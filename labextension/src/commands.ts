/**
 * The extension's commands (also in the palette, under "SAGE").
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';

import { SageSidebar } from './sidebar';

export namespace CommandIDs {
  /** Show the SAGE jobs sidebar. */
  export const open = 'sage-jupyter:open';
  /** Stop every running job of the current notebook's kernel. */
  export const stopAll = 'sage-jupyter:stop-all';
  /** Remove the ended jobs from the list. */
  export const clearFinished = 'sage-jupyter:clear-finished';
}

export function addCommands(app: JupyterFrontEnd, sidebar: SageSidebar, palette: ICommandPalette | null): void {
  const model = sidebar.model;
  app.commands.addCommand(CommandIDs.open, {
    label: 'Show SAGE Jobs',
    execute: () => app.shell.activateById(sidebar.id)
  });
  app.commands.addCommand(CommandIDs.stopAll, {
    label: 'Stop All SAGE Jobs',
    isEnabled: () => model.hasRunningJobs,
    execute: () => sidebar.connection.send({ action: 'stop_all' })
  });
  app.commands.addCommand(CommandIDs.clearFinished, {
    label: 'Clear Finished SAGE Jobs',
    isEnabled: () => model.hasEndedJobs,
    execute: () => sidebar.connection.send({ action: 'clear_finished' })
  });
  for (const command of [CommandIDs.open, CommandIDs.stopAll, CommandIDs.clearFinished]) {
    palette?.addItem({ command, category: 'SAGE' });
  }
}
