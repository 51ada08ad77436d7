"""The console: what the commands print and how (stdout for results, stderr for messages and
progress), usage errors and help in the tool's own form. Part of the command-line layer with
cli.py; like it, it imports nothing from the engine or the search layer."""

from __future__ import annotations

import contextlib
import datetime
import io
import logging
import os
from pathlib import Path
from typing import Any, TextIO

import typer
from rich.console import Console
from rich.table import Table
from typer._click.exceptions import NoArgsIsHelpError, UsageError  # Typer's own click: no public name
from typer.core import TyperCommand, TyperGroup

from .app.options import PANELS
from .core.errors import FmnistSearchError

EXIT_USAGE = 2  # bad input, as click uses for usage errors
LOG_ENV = "FMNIST_LOG_FILE"  # --log-file's environment variable (how `run --jobs` hands it to its workers)

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
_log: list[TextIO] = []  # --log-file: every line the console shows, timestamped


def log_to(path: Path) -> None:
    """Also write every line the console shows to ``path`` (appended, each with its time): a long
    study on a remote machine leaves a record. Worker processes started by `run --jobs` inherit it."""
    try:
        _log[:] = [path.open("a", buffering=1, encoding="utf-8")]  # a line at a time: a killed run keeps its lines
    except OSError as e:
        raise FmnistSearchError(f"cannot write the log file {path}: {e.strerror}") from None
    os.environ[LOG_ENV] = str(path.absolute())


def quiet_warnings() -> None:
    """Libraries' warnings (Optuna's importance estimates, torch's deprecations) go to the
    ``py.warnings`` logger at debug level: the console shows the tool's lines, not a library's
    site-packages paths; ``--log-file`` keeps them."""
    logging.captureWarnings(True)
    logger = logging.getLogger("py.warnings")
    logger.propagate = False  # not to logging's last-resort handler (stderr)
    if not logger.handlers:
        logger.addHandler(_WarningsToLog())


class _WarningsToLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _logged(f"debug: {record.getMessage().strip()}")


def _logged(text: str) -> None:
    if _log:
        stamp = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
        _log[0].write("".join(f"{stamp} {line}\n" for line in text.splitlines() or [""]))


def _text(renderable: Any) -> str:
    """A rich renderable (a table) as the plain text a 100-column terminal shows."""
    buffer = io.StringIO()
    Console(file=buffer, width=100, color_system=None).print(renderable)
    return buffer.getvalue().rstrip("\n")


class UsageLine(UsageError):
    """A usage error (a bad value, a missing argument) as the one ``error:`` line every other error
    is, naming the help to read, instead of click's usage block."""

    def __init__(self, e: UsageError) -> None:
        super().__init__(e.format_message())
        self.command_path = e.ctx.command_path if e.ctx is not None else "fmnist-search"

    def show(self, file: Any = None) -> None:
        err.print(
            f"error: {self.message.rstrip('.')} (see `{self.command_path} --help`)", markup=False, highlight=False
        )


@contextlib.contextmanager
def one_line_usage() -> Any:
    try:
        yield
    except NoArgsIsHelpError:  # a bare command shows its help, as it asks
        raise
    except UsageError as e:
        if isinstance(e, UsageLine):
            raise
        raise UsageLine(e) from None


class Group(TyperGroup):
    """The command group: usage errors in one line (``UsageLine``), the commands' and its own."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with one_line_usage():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with one_line_usage():
            return super().invoke(ctx)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """Each command with its whole summary (its help's first paragraph), wrapped, not cut at
        the terminal's width with "..." as click does."""
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, " ".join((cmd.help or "").split("\n\n")[0].split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    err.print(f"error: {message}", markup=False, highlight=False)
    _logged(f"error: {message}")
    return typer.Exit(code)


class Panelled(TyperCommand):
    """Plain click help (no boxes, like the errors), its options grouped under their help panels."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        panels: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                panels.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(record)
        for name, records in sorted(panels.items(), key=lambda p: PANELS.index(p[0]) if p[0] in PANELS else 99):
            with formatter.section(name):
                formatter.write_dl(records)


def say(message: str) -> None:
    err.print(message, markup=False, highlight=False)
    _logged(message)


def echo(text: str, **kwargs: Any) -> None:
    out.print(text, markup=False, highlight=False, **kwargs)
    _logged(text)


def table(columns: tuple[str, ...], rows: list[tuple[str, ...]], **kwargs: Any) -> Table:
    """A table that wraps rather than cuts: the first column (the names a user types next) and
    columns of single words (figures) stay whole on one line; the others' text wraps at spaces
    (a word wider than its column folds) when the terminal is narrow."""
    table = Table(**kwargs)
    for i, name in enumerate(columns):
        cells = [row[i] for row in rows]
        whole = i == 0 or all(" " not in cell for cell in cells)
        widest = max((len(cell) for cell in cells), default=0)
        table.add_column(name, no_wrap=whole, min_width=widest if whole else None, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


class RunProgress:
    """Rich progress: the study's trials (done/target, pruned, the best validation accuracy so far,
    time run and an ETA) and the latest epoch with its accuracy, plus a line per trial. Off when
    stderr is not a terminal (rich's own rule) or with --no-bars.

    The study bar counts work in trial-epochs, not trials: its total is the target's trials times
    their epochs, less the epochs a trial did not train here (pruned, or resumed from a
    checkpoint), and every member of a population advances it each epoch. Its ETA (rich's, from
    the recent pace) is then the epochs left over the rows' pace: a population of K finishing K
    trials at once, or trials pruned early, do not throw it off as a count of trials would."""

    def __init__(self, trials: int | None, epochs: int, bars: bool = True, prefix: str = "") -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.trials = trials
        self.epochs = epochs
        self.prefix = prefix
        self.waited = False
        self.done = 0
        self.pruned = 0
        self.best: float | None = None
        self.trained: dict[int, int] = {}  # trial number -> epochs trained in this run
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=err,
            transient=True,  # the bars go when done; the per-trial lines stay
            disable=not bars,
        )
        self.study_task = self.progress.add_task(self.study_line(), total=None if trials is None else trials * epochs)
        self.epoch_task = self.progress.add_task("epochs", total=epochs)

    def study_line(self) -> str:
        best = "" if self.best is None else f", best val {self.best:.4f}"
        target = "" if self.trials is None else f"/{self.trials}"
        return f"trials {self.done}{target} ({self.pruned} pruned{best})"

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def stop(self) -> None:
        self.progress.stop()

    def on_epoch(self, number: int, m: Any) -> None:
        self.trained[number] = self.trained.get(number, 0) + 1
        self.progress.advance(self.study_task)
        self.progress.update(
            self.epoch_task,
            completed=m.epoch,
            description=f"trial {number}: epoch {m.epoch}/{self.epochs} val {m.val_accuracy:.4f}",
        )

    def on_trial(self, study: Any, trial: Any) -> None:
        from .app.results import trial_accuracy, trial_line

        line = trial_line(trial, self.prefix)
        self.done += 1
        self.pruned += trial.state.name == "PRUNED"
        if trial.state.name == "COMPLETE":
            accuracy = trial_accuracy(study, trial)
            self.best = accuracy if self.best is None else max(self.best, accuracy)
        self.progress.update(self.study_task, description=self.study_line())
        if self.progress.disable:
            say(line)
        else:
            self.progress.console.print(line, markup=False, highlight=False)
            _logged(line)
        total = self.progress.tasks[self.study_task].total
        if total is not None:  # the epochs it did not train here are no longer to come
            untrained = self.epochs - self.trained.pop(trial.number, 0)
            self.progress.update(self.study_task, total=max(total - untrained, 0))
        self.progress.reset(self.epoch_task, description="epochs")

    def on_wait(self, census: Any) -> None:
        if not self.waited:
            say(f"{self.prefix}all trials handed out; waiting for {census.running} running trial(s) to finish")
            self.waited = True


def print_summary(study: Any) -> None:
    from .app.results import study_summary

    counts, best = study_summary(study)
    summary = table(
        ("trials", *counts),
        [(str(sum(counts.values())), *map(str, counts.values()))],
        title=f"study {study.study_name}",
    )
    out.print(summary)
    _logged(_text(summary))
    echo(best or "no completed trial yet")
