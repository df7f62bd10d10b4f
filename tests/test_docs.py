"""docs/methods.md, the project's reference of every method: every citation of it resolves, no citation of the
old spec file (absent from the repository) remains, and every registered method has a section (issue #14)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from mkdlab.methods.registry import available_methods

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "methods.md"
SCANNED = ("mkdlab", "notebooks", "tests", "scripts", "benchmarks", "README.md")
SUFFIXES = {".py", ".yaml", ".yml", ".md", ".ipynb", ".toml", ".cfg", ".txt"}
SECTION = r"§(\d+(?:\.\d+)?)"
CITATION = re.compile(rf"docs/methods\.md {SECTION}((?:(?:, |–){SECTION})*)")
LINKED_SECTION = re.compile(rf"\[{SECTION}\]\((?:\.\./)*docs/methods\.md")
LINK = re.compile(r"\[([^\]]*)\]\(((?:\.\./)*docs/methods\.md)(?:#([\w\-]+))?\)")
ROW = re.compile(r"§7 #(\d+)")


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading's text: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(doc: str) -> list[tuple[int, str]]:
    """(level, text) of every ATX heading outside fenced code blocks."""
    out, fenced = [], False
    for line in doc.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"^(#{1,6}) (.+)$", line)):
            out.append((len(m.group(1)), m.group(2)))
    return out


def anchors(doc: str) -> set[str]:
    """Every heading anchor, with GitHub's ``-1``, ``-2`` suffixes for repeated headings."""
    seen: Counter[str] = Counter()
    out = set()
    for _, text in headings(doc):
        anchor = github_anchor(text)
        out.add(anchor if not seen[anchor] else f"{anchor}-{seen[anchor]}")
        seen[anchor] += 1
    return out


def numbered_sections(doc: str) -> dict[str, str]:
    """``{"4.1": "41-kd", ...}``: the number each ``##``/``###`` heading starts with, and its anchor."""
    out = {}
    for level, text in headings(doc):
        if level in (2, 3) and (m := re.match(r"(\d+(?:\.\d+)?) ", text)):
            assert m.group(1) not in out, f"section {m.group(1)} appears twice in docs/methods.md"
            out[m.group(1)] = github_anchor(text)
    return out


def section_bodies(doc: str) -> dict[str, str]:
    """Section number → the text up to the next numbered heading."""
    parts = re.split(r"^#{2,3} (\d+(?:\.\d+)?) .*$", doc, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def scanned_texts() -> dict[Path, str]:
    """The text of every scanned file (but this one, whose strings are examples); for notebooks, their cells'
    sources joined."""
    files = []
    for name in SCANNED:
        path = ROOT / name
        files += [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES)
    texts = {}
    for path in files:
        if "__pycache__" in path.parts or not path.is_file() or path == Path(__file__).resolve():  # its examples
            continue
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".ipynb":
            text = "\n".join("".join(cell["source"]) for cell in json.loads(text)["cells"])
        texts[path] = text
    return texts


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def texts() -> dict[Path, str]:
    return scanned_texts()


def cited_sections(text: str) -> list[str]:
    """Every section number cited as ``docs/methods.md §N`` (with the ``, §M`` / ``–§M`` that follow it) or as a
    link labelled ``[§N]`` into docs/methods.md."""
    out = []
    for match in CITATION.finditer(text):
        out.append(match.group(1))
        out += re.findall(SECTION, match.group(2))
    return out + LINKED_SECTION.findall(text)


def test_the_helpers_parse_citations_and_anchors():
    assert github_anchor("4.1 KD") == "41-kd"
    assert github_anchor("5.2 DE-MKD") == "52-de-mkd"
    assert github_anchor("7 Parity switches") == "7-parity-switches"
    assert cited_sections("see docs/methods.md §4.4, §7 #3 and docs/methods.md §4.6–§4.9.") == ["4.4", "7", "4.6",
                                                                                                   "4.9"]
    linked = "[docs/methods.md §5.3](../docs/methods.md#53-mmkd), [§7](../docs/methods.md#7-parity-switches)"
    assert cited_sections(linked) == ["5.3", "7"]
    assert [m.group(3) for m in LINK.finditer(linked)] == ["53-mmkd", "7-parity-switches"]


def test_the_citations_are_many(texts):
    """A regression guard for the scan itself: the code, notebooks and README cite the reference often."""
    assert sum(len(cited_sections(t)) for t in texts.values()) > 100
    assert any(p.suffix == ".ipynb" and LINK.search(t) for p, t in texts.items())
    assert LINK.search(texts[ROOT / "README.md"])


def test_every_cited_section_exists(doc, texts):
    sections = numbered_sections(doc)
    missing = [f"{path.relative_to(ROOT)}: §{number}" for path, text in texts.items()
               for number in cited_sections(text) if number not in sections]
    assert not missing, f"citations of sections that docs/methods.md does not have: {missing}"


def test_every_link_resolves_to_the_file_and_an_anchor(doc, texts):
    known = anchors(doc)
    sections = numbered_sections(doc)
    problems = []
    for path, text in texts.items():
        for label, target, anchor in LINK.findall(text):
            where = f"{path.relative_to(ROOT)}: [{label}]({target}#{anchor})"
            base = path.parent if path.suffix in {".md", ".ipynb"} else ROOT  # docstrings cite from the root
            if (base / target).resolve() != DOC:
                problems.append(f"{where}: the path does not lead to docs/methods.md")
            if anchor and anchor not in known:
                problems.append(f"{where}: no such anchor")
            if anchor and (m := re.search(SECTION, label)) and sections.get(m.group(1)) != anchor:
                problems.append(f"{where}: the label's section is at #{sections.get(m.group(1))}")
    assert not problems, "\n".join(problems)


def test_every_cited_row_of_section_7_exists(doc, texts):
    rows = {int(n) for n in re.findall(r"^\| (\d+) \|", section_bodies(doc)["7"], flags=re.MULTILINE)}
    assert rows == set(range(1, len(rows) + 1)) and rows
    cited = {int(n) for text in [*texts.values(), doc] for n in ROW.findall(text)}
    assert cited <= rows, f"§7 rows cited but absent: {sorted(cited - rows)}"


def test_no_citation_of_the_absent_spec_remains(texts):
    """The spec file ``methods.md`` is not in the repository: every citation must name ``docs/methods.md``.
    scripts/cite_methods_doc.py, which rewrites the old form, is the one file allowed to name it bare."""
    old = re.compile(r"(?<!docs/)methods\.md §")
    bare = re.compile(r"(?<![\w/.])methods\.md")
    stale = [f"{p.relative_to(ROOT)}: {m.group(0)!r}" for p, t in texts.items() for m in old.finditer(t)]
    stale += [f"{p.relative_to(ROOT)}: bare mention" for p, t in texts.items()
              if p.name != "cite_methods_doc.py" and bare.search(t)]
    assert not stale, stale


def test_every_registered_method_has_a_section(doc):
    """Each method section says ``mkdlab name: `X``` right under its numbered heading."""
    owner = {}
    for number, body in section_bodies(doc).items():
        for name in re.findall(r"^mkdlab name: `(\w+)`", body, flags=re.MULTILINE):
            assert name not in owner, f"method {name} has two sections: §{owner[name]} and §{number}"
            owner[name] = number
    missing = sorted(set(available_methods()) - set(owner))
    assert not missing, f"registered methods without a section in docs/methods.md: {missing}"
    unknown = sorted(set(owner) - set(available_methods()))
    assert not unknown, f"docs/methods.md has sections for methods that are not registered: {unknown}"


@pytest.mark.parametrize("number", ["1", "2", "3", "4.1", "4.9", "5.1", "5.2", "5.3", "5.4", "5.5", "6.2", "6.3", "7"])
def test_the_numbering_keeps_the_cited_sections(doc, number):
    """The sections the code cites most keep their numbers (renumbering would silently re-point citations)."""
    assert number in numbered_sections(doc)


def test_the_reference_holds_no_control_characters():
    """A LaTeX command written into a Python string without ``r""`` loses its backslash (``\\theta`` becomes a tab
    and "heta", ``\\beta`` a backspace and "eta"): the rendered equation is then garbage. Checked in the
    reference, the READMEs and every notebook cell."""
    texts = {path.name: path.read_text(encoding="utf-8")
             for path in (DOC, ROOT / "README.md", ROOT / "notebooks" / "README.md")}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for index, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
            texts[f"{path.name} cell {index}"] = "".join(cell["source"])
    for name, text in texts.items():
        bad = [(text.count("\n", 0, m.start()) + 1, repr(m.group()))
               for m in re.finditer(r"[\x00-\x08\x0b-\x1f]|\t", text)]
        assert not bad, f"{name}: control characters at (line, char) {bad[:5]}"
