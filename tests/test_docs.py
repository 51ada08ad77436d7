"""README.md and docs/ stay true: every fmnist-search command line shown parses, every link resolves."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.test_docker import check_cli

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)  # ```text blocks are diagrams, not commands
INLINE = re.compile(r"`(fmnist-search [^`]+)`")
ASSIGNMENT = re.compile(r"^\w+=\S*$")  # VAR=value before a command


def command_lines(text: str) -> list[str]:
    """Each `fmnist-search ...` command in fenced blocks (one per line) and in inline code."""
    found = []
    for language, block in FENCE.findall(text):
        if language != "text":
            found += [line for line in block.splitlines() if "fmnist-search " in line.split("#", 1)[0]]
    # inline: command lines with options; a bare `fmnist-search worker` names a command
    found += [" ".join(span.split()) for span in INLINE.findall(FENCE.sub("", text)) if " --" in span]
    return found


def _args(line: str) -> list[str] | None:
    words = shlex.split(line, comments=True)
    for i, word in enumerate(words):  # the shell's redirections and pipes are not arguments
        if word in (">", ">>", "|", "2>", "&&"):
            words = words[:i]
            break
    while words and ASSIGNMENT.match(words[0]):
        words = words[1:]
    if not words or words[0] != "fmnist-search":
        return None  # docker, kubectl, make, ...: checked elsewhere or not ours
    return words[1:]


CASES = [(page.relative_to(ROOT).as_posix(), line) for page in PAGES for line in command_lines(page.read_text())]


def test_the_pages_show_commands():
    assert len(CASES) > 40  # the extraction works: the docs are full of examples
    assert {page for page, _ in CASES} >= {"README.md", "docs/commands.md", "docs/scale-out.md", "docs/presets.md"}


@pytest.mark.parametrize(("page", "line"), CASES, ids=[f"{p}:{i}" for i, (p, _) in enumerate(CASES)])
def test_every_documented_command_line_is_valid(page, line):
    args = _args(line)
    if args is None or args in ([], ["--help"]):
        return
    if "--help" in args:
        args = [a for a in args if a != "--help"]
    check_cli(args)


def test_a_wrong_command_line_is_caught():
    with pytest.raises(Exception, match="No such option"):
        check_cli(_args("fmnist-search run --model lenet --trails 3"))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
