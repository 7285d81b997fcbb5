import { JupyterFrontEnd } from '@jupyterlab/application';
import { NotebookPanel } from '@jupyterlab/notebook';

import { Finding } from './findings.gen';

/**
 * The index of the finding's cell in the notebook as it is now: by cell id when the notebook
 * has changed since the review (cells inserted or moved), else by the reviewed index.
 */
export function cellIndexFor(panel: NotebookPanel, f: Finding): number | null {
  const cells = panel.content.model?.cells;
  if (!cells || f.cell === null) {
    return null;
  }
  if (f.cell_id) {
    if (f.cell < cells.length && cells.get(f.cell).id === f.cell_id) {
      return f.cell;
    }
    for (let i = 0; i < cells.length; i++) {
      if (cells.get(i).id === f.cell_id) {
        return i;
      }
    }
  }
  return f.cell < cells.length ? f.cell : null;
}

/**
 * Jump to a finding, as jupyterlab-lsp's diagnostics listing does: activate the notebook and the
 * cell, scroll it into view, put the cursor on the line and column, reveal it and focus.
 */
export async function jumpToFinding(
  app: JupyterFrontEnd,
  panel: NotebookPanel,
  f: Finding
): Promise<boolean> {
  const index = cellIndexFor(panel, f);
  if (index === null) {
    return false;
  }
  app.shell.activateById(panel.id);
  const notebook = panel.content;
  notebook.deselectAll();
  notebook.activeCellIndex = index;
  await notebook.scrollToItem(index, 'smart');
  const cell = notebook.widgets[index];
  if (!cell) {
    return false;
  }
  await cell.ready;
  if (cell.model.type === 'markdown') {
    (cell as any).rendered = false; // show the markdown source so the line can be selected
  }
  notebook.mode = 'edit';
  const editor = cell.editor;
  if (!editor) {
    return false;
  }
  const line = Math.max(0, Math.min(f.line - 1, editor.lineCount - 1));
  const column = Math.max(0, f.column - 1);
  const position = { line, column };
  editor.setCursorPosition(position);
  editor.revealPosition(position);
  editor.focus();
  return true;
}
