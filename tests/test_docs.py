"""The documentation holds together: README.md is a short front door whose command table covers
every command of the CLI, each row linking a docs page that describes it, and every relative
link (and anchor) in README.md, BENCHMARKS.md, docs/*.md and the pipelines/ and schemas/ READMEs
resolves. Fast, no data."""

import re
from pathlib import Path

import pytest

from clanet_store.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKDOWN = [
    README,
    ROOT / "BENCHMARKS.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "pipelines" / "README.md",
    ROOT / "schemas" / "README.md",
]
README_MAX_LINES = 250

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^()\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
TABLE_ROW = re.compile(r"^\|\s*`([a-z][a-z-]*)`\s*\|(.*)\|\s*$", re.MULTILINE)


def prose(path: Path) -> str:
    """The file's text without fenced code blocks (a link or '#' inside code is not markdown)."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(prose(path)):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(path: Path) -> list[str]:
    """The relative links of one file whose target file or heading does not exist."""
    broken = []
    for target in LINK.findall(prose(path)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    return broken


def command_table() -> dict[str, list[str]]:
    """README's command table: command name -> the link targets of its row."""
    return {name: LINK.findall(rest) for name, rest in TABLE_ROW.findall(prose(README))}


def cli_commands() -> set[str]:
    return {name for name, command in main.commands.items() if not command.hidden}


def test_readme_is_a_short_front_door() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines < README_MAX_LINES, f"README.md has {lines} lines (limit {README_MAX_LINES})"


def test_command_table_lists_exactly_the_cli_commands() -> None:
    table = set(command_table())
    commands = cli_commands()
    assert commands - table == set(), "CLI commands missing from README's command table"
    assert table - commands == set(), "README's command table lists commands the CLI lacks"


@pytest.mark.parametrize("name", sorted(cli_commands()))
def test_each_command_links_a_docs_page_that_mentions_it(name: str) -> None:
    pages = [t.partition("#")[0] for t in command_table().get(name, []) if t.startswith("docs/")]
    assert pages, f"README's command table links no docs/ page for {name!r}"
    for page in pages:
        text = (ROOT / page).read_text(encoding="utf-8")
        mention = re.compile(rf"(?:`|clanet-store ){re.escape(name)}(?![\w-])")
        assert mention.search(text), f"{page} does not mention the command {name!r}"


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    assert broken_links(path) == []


def test_the_link_checker_finds_broken_links(tmp_path: Path) -> None:
    """The checker itself: a missing file and a missing heading are reported, good ones are not."""
    (tmp_path / "other.md").write_text("# Other page\n\n## `run`, `demo` (issue 7)\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md#run-demo-issue-7) [self](#page) [web](https://example.org)\n"
        "[gone](missing.md) [no heading](other.md#nowhere)\n\n```\n[in code](ignored.md)\n```\n"
    )
    assert broken_links(page) == [
        "missing.md: no such file",
        "other.md#nowhere: no heading with anchor #nowhere",
    ]
