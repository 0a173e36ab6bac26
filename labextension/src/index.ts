/**
 * sage-jupyter: a left-sidebar panel with the current notebook's sage_jupyter jobs and
 * services, and the job widgets' Stop made to work while a cell runs. This file only wires
 * the pieces: model, kernel connection, panel, commands, widget Stop.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';

import { addCommands } from './commands';
import { KernelConnection } from './connection';
import { JobsModel } from './model';
import { SageSidebar } from './sidebar';
import { WidgetStop } from './widgetstop';

export { CommandIDs } from './commands';

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
    const connection = new KernelConnection(new JobsModel());
    const revealCell = (cellId: string) => {
      const panel = notebooks.currentWidget;
      if (!panel) {
        return;
      }
      const notebook = panel.content;
      const index = notebook.widgets.findIndex(
        cell => cell.model.id === cellId
      );
      if (index < 0) {
        return; // the cell was deleted since
      }
      notebook.deselectAll();
      notebook.activeCellIndex = index;
      void notebook.scrollToCell(notebook.widgets[index], 'center');
      app.shell.activateById(panel.id);
    };
    const sidebar = new SageSidebar(connection, revealCell);
    sidebar.id = 'sage-jupyter-sidebar';
    app.shell.add(sidebar, 'left', { rank: 650 });
    restorer?.add(sidebar, sidebar.id);

    const followCurrent = () => {
      const panel = notebooks.currentWidget;
      sidebar.path = panel?.context.path ?? '';
      connection.follow(panel?.sessionContext ?? null);
    };
    notebooks.currentChanged.connect(followCurrent);
    followCurrent();
    addCommands(app, sidebar, palette);
    new WidgetStop(notebooks, connection); // lives as long as the page
  }
};

export default plugin;
