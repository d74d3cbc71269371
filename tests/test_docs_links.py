"""README.md and docs/*.md: every relative link and #anchor resolves, every test they name exists, every
table row is in a table, and the README stays a front door."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import attrs

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 320

FENCE = re.compile(r"^\s{0,3}(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
# [text](target "title") and ![alt](target); the text may hold one level of brackets.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.I)
LINK_TEXT = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
TABLE_ROW = re.compile(r"^\s{0,3}\|")
TABLE_DELIMITER = re.compile(r"^\s{0,3}\|(\s*:?-+:?\s*\|)+\s*$")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)
# A test file a page names ("tests/faults/test_x.py"), and a test in it ("tests/test_x.py::test_y"); a
# name after "…::" is of the test file named last before it on the page.
TEST_FILE = re.compile(r"(?<![\w/])tests/[\w/]+\.py")
TEST_NAME = re.compile(r"(tests/[\w/]+\.py|…)::(\w+)")
# A page of docs/ named in a comment or string of the code, the build or the config: "docs/media.md".
DOCS_PATH = re.compile(r"\bdocs/[\w./-]+?\.md(?:#[\w-]+)?")
NAMING_DOCS = (
    "Makefile",
    "pyproject.toml",
    "taskd.toml",
    "alerts.yaml",
    "systemd/*",
    ".ci/*",
    "taskd/**/*.py",
    "bench/**/*.py",
    "scripts/**/*.py",
    "tests/**/*.py",
)


@attrs.frozen
class Link:
    """A link found in a markdown file: where it is and what it points at."""

    source: Path
    line: int
    target: str
    base: Path  # the directory a relative target starts from


def documentation_files() -> list[Path]:
    """README.md and every markdown file under docs/."""
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def prose(text: str) -> str:
    """The text with fenced code blocks blanked and code spans neutralised, line numbers kept."""
    lines = []
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    # A code span may hold brackets that are not a link; keep its length in lines, not its text.
    return CODE_SPAN.sub(lambda m: "code" + "\n" * m.group(0).count("\n"), "\n".join(lines))


def links_in(path: Path) -> Iterator[Link]:
    """Every inline link and reference definition of a markdown file."""
    text = prose(path.read_text("utf-8"))
    for pattern in (INLINE_LINK, REFERENCE_DEFINITION):
        for match in pattern.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            yield Link(path, line, match.group(1), path.parent)


def docs_named_outside_docs() -> Iterator[Link]:
    """Every docs/*.md path that the code, the build files and the config name, relative to the repo root."""
    for pattern in NAMING_DOCS:
        for path in sorted(ROOT.glob(pattern)):
            if not path.is_file():
                continue
            for number, line in enumerate(path.read_text("utf-8", "replace").splitlines(), start=1):
                for match in DOCS_PATH.finditer(line):
                    yield Link(path, number, match.group(0), ROOT)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lower-cased, punctuation dropped, spaces as hyphens."""
    text = LINK_TEXT.sub(r"\1", heading).replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors_of(path: Path) -> set[str]:
    """The anchors of a markdown file's headings (with GitHub's -1, -2 for repeats) and HTML anchors."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    text = path.read_text("utf-8")
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        heading = None if fenced else HEADING.match(line)
        if heading is None:
            continue
        slug = github_slug(heading.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    anchors.update(HTML_ANCHOR.findall(text))
    return anchors


def is_relative(target: str) -> bool:
    """A link into this checkout (not http:, mailto:, a protocol-relative URL)."""
    return bool(target) and not SCHEME.match(target) and not target.startswith("//")


def broken(link: Link) -> str | None:
    """Why a relative link does not resolve, or None when it does."""
    path_part, _, anchor = link.target.partition("#")
    target = (link.base / unquote(path_part)).resolve() if path_part else link.source
    shown = link.source.relative_to(ROOT) if link.source.is_relative_to(ROOT) else link.source
    where = f"{shown}:{link.line}: {link.target}"
    if not target.exists():
        return f"{where}: no file {target}"
    if not anchor:
        return None
    if target.suffix != ".md":
        return f"{where}: an anchor into a file that is not markdown"
    if unquote(anchor) not in anchors_of(target):
        return f"{where}: no heading with the anchor #{anchor} in {target.name}"
    return None


def problems(files: list[Path]) -> list[str]:
    """Every relative link of `files` that does not resolve."""
    found = (broken(link) for path in files for link in links_in(path) if is_relative(link.target))
    return [problem for problem in found if problem is not None]


def defined_names(path: Path) -> set[str]:
    """The functions and classes a Python file defines, at any depth."""
    tree = ast.parse(path.read_text("utf-8"))
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }


def missing_tests(path: Path, root: Path = ROOT) -> list[str]:
    """Each `tests/….py::name` (or `…::name`) of a page whose file does not define that name."""
    text = path.read_text("utf-8")
    files = {match.start(): match.group(0) for match in TEST_FILE.finditer(text)}
    missing = []
    for match in TEST_NAME.finditer(text):
        before = [start for start in files if start < match.start()]
        named = match.group(1) if match.group(1) != "…" else files[max(before)] if before else None
        line = text.count("\n", 0, match.start()) + 1
        where = f"{path.name}:{line}: {match.group(0)}"
        if named is None or not (root / named).is_file():
            missing.append(f"{where}: no test file {named}")
        elif match.group(2) not in defined_names(root / named):
            missing.append(f"{where}: {named} has no {match.group(2)}")
    return missing


def stray_table_rows(path: Path) -> list[str]:
    """Lines that look like a table row but start no table and continue none: a blank line cut them off
    their table (or they have no header), so they show as text with pipes in it."""
    lines = prose(path.read_text("utf-8")).splitlines()
    stray = []
    for number, line in enumerate(lines, start=1):
        starts_table = number < len(lines) and TABLE_DELIMITER.match(lines[number]) is not None
        continues_table = number > 1 and TABLE_ROW.match(lines[number - 2]) is not None
        if TABLE_ROW.match(line) and not starts_table and not continues_table:
            stray.append(f"{path.relative_to(ROOT)}:{number}: {line[:60]}")
    return stray


def test_github_slugs_are_made_as_github_makes_them() -> None:
    assert github_slug("Prometheus: `GET /metrics`") == "prometheus-get-metrics"
    assert (
        github_slug("`generate_video` (queue `gpu_heavy`, soft/hard limit 540/600 s)")
        == "generate_video-queue-gpu_heavy-softhard-limit-540600-s"
    )
    assert (
        github_slug("Headers and signature ([Standard Webhooks](https://www.standardwebhooks.com/))")
        == "headers-and-signature-standard-webhooks"
    )


def test_the_link_check_reports_a_missing_file_and_a_missing_anchor(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## A section\n\n## A section\n", "utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[fine](other.md#a-section) [repeat](other.md#a-section-1) [self](#page) [web](https://example.com)\n"
        "[gone](missing.md) [no such heading](other.md#nowhere)\n"
        "```\n[inside a code block](missing-too.md)\n```\n"
        "`[inside a code span](missing-as-well.md)`\n",
        "utf-8",
    )
    links = [link for link in links_in(page) if is_relative(link.target)]

    found = [problem for problem in (broken(link) for link in links) if problem is not None]

    assert [link.target for link in links] == [
        "other.md#a-section",
        "other.md#a-section-1",
        "#page",
        "missing.md",
        "other.md#nowhere",
    ]
    assert len(found) == 2
    assert "missing.md: no file" in found[0]
    assert "no heading with the anchor #nowhere" in found[1]


def test_every_relative_link_and_anchor_in_readme_and_docs_resolves() -> None:
    files = documentation_files()
    checked = [link for path in files for link in links_in(path) if is_relative(link.target)]

    found = problems(files)

    assert len(checked) > 50, "the link check found almost no links: is the pattern broken?"
    assert found == []


def test_the_test_check_reports_a_test_its_file_lacks(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("def test_here():\n    pass\n", "utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "`tests/test_a.py::test_here`, `…::test_gone`, `tests/test_b.py::test_x`\n"
        "(`tests/test_a.py`, then `…::test_here`)\n",
        "utf-8",
    )

    assert missing_tests(page, tmp_path) == [
        "page.md:1: …::test_gone: tests/test_a.py has no test_gone",
        "page.md:1: tests/test_b.py::test_x: no test file tests/test_b.py",
    ]


def test_every_test_readme_and_docs_name_exists() -> None:
    named = [match for path in documentation_files() for match in TEST_NAME.finditer(path.read_text("utf-8"))]

    found = [problem for path in documentation_files() for problem in missing_tests(path)]

    assert len(named) > 50, "the test check found almost no tests named: is the pattern broken?"
    assert found == []


def test_every_docs_page_named_by_the_code_build_and_config_exists() -> None:
    named = list(docs_named_outside_docs())

    found = [problem for problem in (broken(link) for link in named) if problem is not None]

    assert named, "no docs/ page is named outside docs/: is the pattern broken?"
    assert found == []


def test_readme_is_at_most_320_lines() -> None:
    lines = README.read_text("utf-8").splitlines()

    assert len(lines) <= MAX_README_LINES


def test_readme_starts_with_make_run_and_make_test() -> None:
    lines = [line for line in README.read_text("utf-8").splitlines() if line.strip()]

    assert lines[0].startswith("# ")
    assert lines[1].startswith("```")
    assert lines[2].startswith("make run")
    assert lines[3].startswith("make test")
    assert lines[4] == "```"


def test_every_table_row_in_readme_and_docs_belongs_to_a_table() -> None:
    found = [row for path in documentation_files() for row in stray_table_rows(path)]

    assert found == []
