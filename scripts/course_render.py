"""The rendered edition: the executed series as static HTML pages and an index in reading order.

``python scripts/course.py render [--profile smoke|quick|full] [--executed DIR] [--out site/]`` executes every
notebook of the series with ``MKDLAB_PROFILE`` set (nbclient, one kernel per notebook, working directory
``notebooks/``) or takes the outputs of already-executed copies from ``--executed``, converts each with nbconvert's
HTML exporter (figures are embedded as ``data:`` images, so every page is one self-contained file) and writes
``index.html``: ``notebooks/README.md`` (the reading order) followed by the list of every lesson. Links between
notebooks (``NN_….ipynb``) are rewritten to the HTML pages. nbconvert rather than Jupyter Book: it is already a
dependency and needs nothing from the network.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import nbformat
from course_common import CourseError, lessons
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbconvert import HTMLExporter
from nbconvert.filters.markdown_mistune import markdown2html_mistune

#: ``href="03_x.ipynb"`` or ``href="03_x.ipynb#section"`` -> the rendered page.
NOTEBOOK_LINK = re.compile(r'href="(\./)?(\d\d_[^"#/]*)\.ipynb(#[^"]*)?"')

INDEX_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.5; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 0.2rem 0.5rem; }}
</style>
</head>
<body>
{readme}
<h2>All lessons</h2>
<ol start="0" id="lessons">
{items}
</ol>
<p><small>{note}</small></p>
</body>
</html>
"""


def link_pages(text: str) -> str:
    """Point links to notebooks of the series at their HTML pages, and links to the reading order at the index."""
    text = NOTEBOOK_LINK.sub(lambda m: f'href="{m.group(2)}.html{m.group(3) or ""}"', text)
    return text.replace('href="README.md"', 'href="index.html"')


def title_of(notebook: nbformat.NotebookNode, fallback: str) -> str:
    """The first ``# `` heading of the notebook's first markdown cell."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
            break
    return fallback


def execute(path: Path, profile: str, timeout: int) -> nbformat.NotebookNode:
    """Run one notebook top to bottom in a fresh kernel, in the given profile, from its own folder."""
    notebook = nbformat.read(path, as_version=4)
    os.environ["MKDLAB_PROFILE"] = profile
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except CellExecutionError as err:
        raise CourseError(f"{path.name} failed in the {profile} profile:\n{str(err)[-2000:]}") from None
    return notebook


def executed_copy(folder: Path, path: Path) -> nbformat.NotebookNode:
    """The lesson as it is now, with the outputs of its already-executed copy (looked up by file name).

    Markdown may have changed since the copy was executed (the text shown is the current one); the code cells
    must be the same, else the copy is stale and the outputs would not belong to the code shown.
    """
    copy = folder / path.name
    if not copy.is_file():
        raise CourseError(f"no executed copy {copy}: execute the lesson there, or drop --executed")
    notebook, executed = nbformat.read(path, as_version=4), nbformat.read(copy, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    ran = [c for c in executed.cells if c.cell_type == "code"]
    if [c.source for c in code] != [c.source for c in ran]:
        raise CourseError(f"{copy} is stale: its code cells differ from {path}; execute the lesson again")
    for cell, result in zip(code, ran, strict=True):
        cell.outputs, cell.execution_count = result.outputs, result.execution_count
    return notebook


def render(notebooks: Path, out: Path, profile: str = "quick", executed: Path | None = None,
           timeout: int = 3600) -> Path:
    """Write one HTML page per lesson and ``index.html`` into ``out``; return the index's path."""
    sources = lessons(notebooks)
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab", embed_images=True)
    items = []
    for path in sources:
        notebook = executed_copy(executed, path) if executed else execute(path, profile, timeout)
        body, _ = exporter.from_notebook_node(notebook, resources={"metadata": {"path": str(path.parent),
                                                                               "name": path.stem}})
        (out / f"{path.stem}.html").write_text(link_pages(body), encoding="utf-8")
        title = html.escape(title_of(notebook, path.stem))
        items.append(f'<li><a href="{path.stem}.html">{title}</a></li>')
    readme = notebooks / "README.md"
    intro = markdown2html_mistune(readme.read_text(encoding="utf-8")) if readme.is_file() else "<h1>mkdlab</h1>"
    note = f"Rendered from the executed copies in {executed}." if executed else f"Executed in the {profile} profile."
    index = out / "index.html"
    index.write_text(INDEX_TEMPLATE.format(title="mkdlab — the course", readme=link_pages(intro),
                                           items="\n".join(items), note=html.escape(note)), encoding="utf-8")
    return index
