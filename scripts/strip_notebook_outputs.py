"""Strip notebook outputs before committing, keeping only nbval's reference outputs.

Usage: ``python scripts/strip_notebook_outputs.py notebooks/*.ipynb`` (``--execute`` runs each notebook in the
``smoke`` profile first, to refresh the reference outputs of ``# NBVAL_CHECK_OUTPUT`` cells).

Cells marked ``# NBVAL_CHECK_OUTPUT`` keep their text outputs and an execution count: nbval compares them on every
run. Every other output, image and execution count is removed (``tests/test_notebooks.py`` enforces this).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import nbformat

CHECK = "# NBVAL_CHECK_OUTPUT"
TEXT_OUTPUTS = {"stream", "execute_result"}


def is_checked(cell: nbformat.NotebookNode) -> bool:
    """Whether nbval compares this cell's output."""
    return cell.cell_type == "code" and cell.source.lstrip().startswith(CHECK)


def strip(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove outputs and execution counts, keeping the text outputs (and a count) of checked cells."""
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    for number, cell in enumerate(code_cells, start=1):
        cell.metadata.pop("execution", None)
        # nbval treats a reference output without an execution count as an "unrun cell"
        cell.execution_count = number if is_checked(cell) else None
        if is_checked(cell):
            kept = []
            for output in cell.outputs:
                if output.output_type == "execute_result":
                    output.execution_count = cell.execution_count
                    output.data = {k: v for k, v in output.data.items() if k == "text/plain"}
                if output.output_type in TEXT_OUTPUTS:
                    kept.append(output)
            cell.outputs = kept
        else:
            cell.outputs = []
    notebook.metadata.pop("widgets", None)
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--execute", action="store_true", help="run each notebook (smoke profile) before stripping")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        if args.execute:
            env = {**os.environ, "MKDLAB_PROFILE": "smoke"}
            subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                            "--inplace", "--ExecutePreprocessor.timeout=600", str(path)], check=True, env=env,
                           cwd=path.parent)
        notebook = nbformat.read(path, as_version=4)
        nbformat.write(strip(notebook), path)
        print(f"stripped {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
