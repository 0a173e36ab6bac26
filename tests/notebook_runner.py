"""Run a notebook the way a user does in the loop: Run All, then Run All again in the same kernel."""

from __future__ import annotations

import nbformat
from nbclient import NotebookClient


def run_all(client: NotebookClient, book: nbformat.NotebookNode, env: dict[str, str], runs: int = 2) -> None:
    """Execute every cell `runs` times in one kernel (the same cells, so the same cell ids, as a
    second Run All sends); the outputs kept are those of the last run."""
    cells = book.cells
    book.cells = cells * runs
    try:
        client.execute(env=env)
    finally:
        book.cells = cells
