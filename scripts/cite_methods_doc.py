"""Rewrite the old citations of the spec file (``methods.md``, a section sign and a number, e.g. section 4.1) into
references to docs/methods.md (issue #14, item 5).

* Python and YAML files: the citation gets the prefix ``docs/``, so it reads ``docs/methods.md §4.1`` (the text
  after it is kept).
* Markdown (README.md and the markdown cells of notebooks/*.ipynb): the citation and any ``, §N`` / ``–§N`` that
  follow it become relative links to the sections' anchors, e.g.
  ``[docs/methods.md §4.4](docs/methods.md#44-dkd), [§7](docs/methods.md#7-parity-switches)``
  (``../docs/methods.md`` from the notebooks).

Idempotent: citations that already say ``docs/methods.md`` are left alone. Notebooks are rewritten with the layout
they are stored in (``indent=1``, UTF-8, trailing newline), changing only the markdown cells' source strings.
Run from the repository root: ``python scripts/cite_methods_doc.py``; tests/test_docs.py checks the result.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "methods.md"
SOURCE_DIRS = ("mkdlab", "tests", "scripts", "benchmarks")
HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?) .*$", re.MULTILINE)
SECTION = r"§\d+(?:\.\d+)?"
OLD_CITATION = re.compile(rf"(?<![/\w])methods\.md ({SECTION}(?:(?:, |–){SECTION})*)")


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading's text: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def section_anchors(doc: str) -> dict[str, str]:
    """``{"4.1": "41-kd", ...}`` for every numbered ``##``/``###`` heading of docs/methods.md."""
    return {m.group(1): github_anchor(m.group(0).lstrip("#")) for m in HEADING.finditer(doc)}


def rewrite_code(text: str) -> str:
    """Prefix every old citation with ``docs/``."""
    return OLD_CITATION.sub(lambda m: f"docs/methods.md {m.group(1)}", text)


def rewrite_markdown(text: str, anchors: dict[str, str], doc_path: str) -> str:
    """Turn every old citation into links to the cited sections (``doc_path`` relative to the markdown file)."""

    def link(match: re.Match[str]) -> str:
        parts = re.split(rf"({SECTION})", match.group(1))
        out, first = [], True
        for part in parts:
            if not part.startswith("§"):
                out.append(part)
                continue
            number = part[1:]
            if number not in anchors:
                raise SystemExit(f"cite_methods_doc: error: docs/methods.md has no section {part}")
            label = f"docs/methods.md {part}" if first else part
            out.append(f"[{label}]({doc_path}#{anchors[number]})")
            first = False
        return "".join(out)

    return OLD_CITATION.sub(link, text)


def rewrite_notebook(path: Path, anchors: dict[str, str]) -> bool:
    """Rewrite the markdown cells (links) and code cells (plain prefix) of one notebook; True if it changed."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    changed = False
    for cell in notebook["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            new = rewrite_markdown(source, anchors, "../docs/methods.md")
        else:
            new = rewrite_code(source)
        if new != source:
            cell["source"] = new.splitlines(keepends=True)
            changed = True
    if changed:
        path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return changed


def rewrite_file(path: Path, rewrite) -> bool:
    text = path.read_text(encoding="utf-8")
    new = rewrite(text)
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def main() -> int:
    anchors = section_anchors(DOC.read_text(encoding="utf-8"))
    changed = []
    for directory in SOURCE_DIRS:
        for path in sorted((ROOT / directory).rglob("*")):
            if path.suffix in {".py", ".yaml", ".yml"} and path.is_file() and rewrite_file(path, rewrite_code):
                changed.append(path)
    readme = ROOT / "README.md"
    if rewrite_file(readme, lambda text: rewrite_markdown(text, anchors, "docs/methods.md")):
        changed.append(readme)
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        if rewrite_notebook(path, anchors):
            changed.append(path)
    for path in changed:
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
