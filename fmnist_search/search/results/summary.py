"""A study on one page (``plot``'s index.html): settings, trial counts, the best trial, the
report's table, then every figure inline, learning curves first.

Self-contained and offline: the figures are embedded as ``<div>``s drawn by the one
``plotly.min.js`` written beside the page (``plots.write_html``); no network is needed.
"""

from __future__ import annotations

import html
import math
from typing import Any

import optuna
import pandas as pd
import plotly.graph_objects as go

from ...core.config import setting_text
from ..study import stored_spec
from ..trials.objectives import objectives_of
from ..trials.record import TrialRecord
from .export import best_trial, state_counts
from .front import accuracy, describe_objectives
from .report import PUBLISHED_TITLE, front_frame, front_table, published_table, report_frame, report_table

PLOTLY_JS = "plotly.min.js"  # what fig.write_html(include_plotlyjs="directory") writes beside the files

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
h2 { margin-top: 1.5em; border-bottom: 1px solid #ddd; }
"""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = "—" if math.isnan(value) else f"{value:.6g}"
        return f'<td class="num">{text}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value:,}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def _table(rows: list[tuple[str, Any]], table_id: str) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th>{_cell(v)}</tr>" for k, v in rows)
    return f'<table id="{table_id}">{body}</table>'


def _best(study: optuna.Study) -> str:
    best = best_trial(study)
    if best is None:
        return '<p id="best">No completed trial yet.</p>'
    r = TrialRecord.of(best)
    val = accuracy(best, objectives_of(study))
    rows: list[tuple[str, Any]] = [("trial", best.number), ("validation accuracy", val)]
    rows += [("test accuracy", r.test_accuracy if r.test_accuracy is not None else math.nan)]
    rows += [(f"param {k}", v) for k, v in best.params.items()]
    rows += [
        ("throughput (samples/s)", r.throughput or math.nan),
        ("hardware", r.device_name or r.device or "?"),
        ("precision", r.precision or "?"),
        ("trained with", f"a population of {r.population}" if (r.population or 1) > 1 else "alone"),
        ("epochs", r.epochs_completed or 0),
        ("torch", r.torch_version or "?"),
        ("weights artifact", r.weights_artifact or "—"),
    ]
    return _table(rows, "best")


def _html(table: pd.DataFrame, table_id: str) -> str:
    return table.to_html(index=False, table_id=table_id, border=0, na_rep="—")


def _report(study: optuna.Study) -> str:
    """The report's table (or, with several objectives, the front and the report's rows of its
    models): the same shown tables ``report`` prints as Markdown, rendered as HTML."""
    objectives = objectives_of(study)
    if len(objectives) > 1:
        frame = front_frame(study)
        if frame.empty:
            return "<p>No completed trial yet.</p>"
        intro = f"<p>Objectives: {html.escape(describe_objectives(objectives))}; chosen on validation.</p>"
        published = published_table(list(dict.fromkeys(frame["model"])))
        rest = f"<p>{html.escape(PUBLISHED_TITLE)}</p>{_html(published, 'front1')}" if not published.empty else ""
        return intro + _html(front_table(frame, objectives), "front") + rest
    frame = report_frame([study])
    if frame.empty:
        return "<p>No completed trial yet.</p>"
    return _html(report_table(frame), "report")


def summary_page(study: optuna.Study, figures: dict[str, go.Figure], title: str) -> str:
    """The page's HTML; ``figures`` in the order given (learning curves first)."""
    spec = stored_spec(study)
    settings = [(k, setting_text(v)) for k, v in spec.to_attrs().items()]
    counts = list(state_counts(study).items())
    figures_html = "".join(
        f"<h3>{html.escape(name.replace('_', ' '))}</h3>"
        + fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{name}")
        for name, fig in figures.items()
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style><script src='{PLOTLY_JS}'></script></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<h2>Settings</h2>{_table(settings, 'settings')}"
        f"<h2>Trials</h2>{_table(counts, 'counts')}"
        f"<h2>Best trial (chosen on validation)</h2>{_best(study)}"
        + ("<h2>The Pareto front</h2>" if len(objectives_of(study)) > 1 else "<h2>The report's table</h2>")
        + f"{_report(study)}"
        f"<h2>Figures</h2>{figures_html}"
        "</body></html>\n"
    )
