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
    if args is None or args in ([], ["--help"], ["--version"]):  # (the eager ones exit before parsing on)
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


# --- values the docs state, where the code can answer ---

ROW = re.compile(r"^\| (`--[^|]+) \| ([^|]+) \|", re.M)


def _run_defaults() -> dict[str, object]:
    """Each `run` option's effective default: the CLI's, else the study setting's it stands for."""
    import dataclasses

    import typer.main

    from fmnist_search.cli import app
    from fmnist_search.core.config import StudySpec

    spec = {f.name: f.default for f in dataclasses.fields(StudySpec)}
    run = typer.main.get_command(app).commands["run"]
    found = {}
    for param in run.params:
        name = param.name or ""
        default = param.default if param.default is not None else spec.get(name)
        found["--" + name.replace("_", "-")] = default
    return found


def _same(stated: str, default: object) -> bool:
    stated = stated.strip().strip("`").removesuffix(" s")
    if isinstance(default, tuple):  # a list option, written as its command-line value
        return stated == ",".join(default)
    try:
        return float(stated) == float(default)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return stated == str(default)


def test_the_option_tables_defaults_are_the_clis():
    """docs/commands.md's `run` table: each stated default (and LeNet's, in parentheses) is the code's."""
    from fmnist_search.core.presets import base_recipe

    defaults, lenet = _run_defaults(), base_recipe("lenet")
    checked = 0
    for options, cell in ROW.findall((ROOT / "docs" / "commands.md").read_text()):
        names = re.findall(r"`(--[a-z-]+)", options)
        main, _, per_model = cell.partition("(")
        values = [v for v in main.split(",") if v.strip()]
        for name, value in zip(names, values, strict=False):
            default = defaults.get(name)
            if default is None or isinstance(default, bool) or not re.match(r"\s*`?[\w.:/-]+`?\s*$", value):
                continue  # no default to compare ("—", "model name", "all") or a flag
            if value.strip() in ("1 process", "auto") and default in (1, "auto"):
                checked += 1
                continue
            assert _same(value, default), f"docs/commands.md says {name} defaults to {value.strip()}, the CLI {default}"
            checked += 1
        if per_model.startswith("LeNet"):
            stated = [v.strip(" )") for v in per_model.split(":", 1)[1].split(",")]
            for name, value in zip(names, stated, strict=True):
                key = name.removeprefix("--").replace("-", "_")
                assert _same(value, lenet[key]), (
                    f"docs/commands.md says LeNet's {name} is {value}, its recipe {lenet[key]}"
                )
                checked += 1
    assert checked >= 15  # the table was read


def _sections() -> dict[str, str]:
    """docs/commands.md by command: each `## `name`` section (a title may name two commands)."""
    out = {}
    for part in re.split(r"^## ", (ROOT / "docs" / "commands.md").read_text(), flags=re.M)[1:]:
        for name in re.findall(r"`([a-z-]+)`", part.splitlines()[0]):
            out[name] = part
    return out


# the command line's newer options: each documented with its default where the command is
NEW_OPTIONS = {
    "studies": ("--json",),
    "show": ("--json", "--trial", "--curve"),
    "report": ("--json",),
    "export": ("--history",),
    "delete": ("--yes", "--force"),
    "run": ("--bars", "--log-file"),
}


def test_every_commands_options_are_documented_and_the_new_ones_with_their_default():
    """Every option of every command is in its section of docs/commands.md, or in `run`'s (the
    options shared with it; `worker`'s: tested against docs/scale-out.md)."""
    import typer.main

    from fmnist_search.cli import app

    sections = _sections()
    commands = typer.main.get_command(app).commands
    assert "`fmnist-search --version` names" in (ROOT / "docs/commands.md").read_text()
    for name, command in commands.items():
        if name == "worker":
            continue
        page = sections.get(name, "") + sections["run"]
        options = [[*p.opts, *p.secondary_opts] for p in command.params if p.opts[0] != "--help"]
        missing = [o[0] for o in options if not any(re.search(re.escape(x) + r"(?![\w-])", page) for x in o)]
        assert not missing, f"docs/commands.md does not document {name}'s {', '.join(missing)}"
    for name, options in NEW_OPTIONS.items():
        text = " ".join(sections[name].split())
        for option in options:
            said = [s for s in re.split(r"(?<=[.;|])\s", text) if re.search(re.escape(option) + r"\b", s)]
            assert any("default" in s or "|" in s for s in said), f"{name} {option}: no default stated"


def test_the_export_columns_are_the_codes():
    from fmnist_search.search.results.export import ATTR_COLUMNS

    text = " ".join((ROOT / "docs" / "commands.md").read_text().split("## `export`")[1].split())
    stated = re.search(r"Columns: `([^`]+)`", text).group(1)
    assert [c.strip() for c in stated.split(",")] == ["trial", "state", "val_accuracy", *ATTR_COLUMNS, "duration_s"]


PATH = re.compile(r"`((?:[\w.-]+/)+[\w.-]+\.(?:py|md|json|csv|toml|sh|txt|log|png|yaml|yml))`")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_file_a_page_names_exists(page):
    for path in PATH.findall(page.read_text()):
        if re.search(r"\b[A-Z]{2,}\b", path):
            continue  # a placeholder: studies/NAME.toml
        places = (ROOT / path, ROOT / "fmnist_search" / path, page.parent / path)
        assert any(p.exists() for p in places), f"{page.name} names {path}, which does not exist"


def test_the_worker_options_listed_are_the_workers():
    import typer.main

    from fmnist_search.cli import app

    text = " ".join((ROOT / "docs" / "scale-out.md").read_text().split())
    listed = set(re.findall(r"`(--[a-z-]+)`", text.split("`worker` options:")[1].split(". A worker")[0]))
    worker = typer.main.get_command(app).commands["worker"]
    real = {opt for p in worker.params for opt in p.opts if opt != "--help"}
    assert listed - {"--no-bars"} == real


def test_every_trial_attr_is_documented():
    """docs/commands.md names every trial user attr the project writes (search/trials/record.py)."""
    from fmnist_search.search.trials.record import FIELDS

    text = (ROOT / "docs" / "commands.md").read_text()
    missing = sorted(f for f in FIELDS if f"`{f}`" not in text)
    assert not missing, f"docs/commands.md does not name the trial attrs {missing}"


def test_a_presets_stated_time_is_the_same_everywhere():
    """`train --preset NAME` ... (~N min): one figure per preset across the README, docs/ and the presets."""
    import re

    pages = [*PAGES, *sorted((ROOT / "fmnist_search" / "presets").glob("*.toml"))]
    stated: dict[str, set[str]] = {}
    for page in pages:
        for line in page.read_text().splitlines():
            m = re.search(r"train --preset ([a-z0-9-]+)`?\s*(?:#\s*|\()~(\d+) min", line)
            if m:
                stated.setdefault(m.group(1), set()).add(m.group(2))
    assert stated, "no preset states its time: the pattern no longer matches the pages"
    differing = {name: sorted(times) for name, times in stated.items() if len(times) > 1}
    assert not differing, f"presets stated with different times: {differing}"
