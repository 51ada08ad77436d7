"""Plotly figures of a study: compute the data first, then draw. Written as HTML files.

Learning curves come from each trial's per-epoch ``history`` attr; the rest are Optuna's
own visualizations (optuna.visualization), the same plots optuna-dashboard draws.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import plotly.colors
import plotly.graph_objects as go
from optuna.trial import TrialState
from plotly.subplots import make_subplots

from .record import TrialRecord

CURVES = (("train_loss", "train loss"), ("train_accuracy", "train accuracy"), ("val_accuracy", "validation accuracy"))


def curves_data(study: optuna.Study) -> list[dict[str, Any]]:
    """Per trial: number, state, params and its per-epoch history (completed and pruned trials)."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        history = TrialRecord.of(t).history
        if history:
            out.append({"number": t.number, "state": t.state.name, "params": t.params, "history": history})
    return out


def learning_curves(study_name: str, data: list[dict[str, Any]]) -> go.Figure:
    """The report's figures 2-10 in one: a trace per trial in each of three panels."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=[title for _, title in CURVES])
    palette = plotly.colors.qualitative.Plotly
    for i, trial in enumerate(data):
        label = f"trial {trial['number']} " + ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial["params"].items()
        )
        epochs = [h["epoch"] for h in trial["history"]]
        dash = None if trial["state"] == "COMPLETE" else "dot"  # pruned trials dotted
        for col, (key, _) in enumerate(CURVES, start=1):
            ys = [h[key] for h in trial["history"]]
            line = {"dash": dash, "color": palette[i % len(palette)]}  # one colour per trial in every panel
            trace = go.Scatter(x=epochs, y=ys, mode="lines+markers", name=label, legendgroup=label, line=line)
            fig.add_trace(trace.update(showlegend=col == 1), row=1, col=col)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(title=f"{study_name}: learning curves", height=450)
    return fig


def confusion_figure(matrix: list[list[int]], classes: list[str], title: str) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=matrix, x=classes, y=classes, colorscale="Blues", text=matrix, texttemplate="%{text}"))
    fig.update_layout(title=title, xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed")
    return fig


def study_figures(study: optuna.Study) -> dict[str, go.Figure]:
    """Every figure that applies to this study, by file stem."""
    vis = optuna.visualization
    figures = {"learning_curves": learning_curves(study.study_name, curves_data(study))}
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    params = {p for t in completed for p in t.params}
    if completed:
        figures["optimization_history"] = vis.plot_optimization_history(study)
        figures["slice"] = vis.plot_slice(study)  # each param (lr first of all) against val accuracy
        if len(params) > 1:
            figures["param_importances"] = vis.plot_param_importances(study)
            figures["contour"] = vis.plot_contour(study)
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        figures["intermediate_values"] = vis.plot_intermediate_values(study)
    figures["timeline"] = vis.plot_timeline(study)
    return figures


def write_html(figures: dict[str, go.Figure], out_dir: Path, title: str, page: str | None = None) -> list[Path]:
    """One HTML file per figure plus index.html (``page``, e.g. ``summary.summary_page``, else a
    list of links); plotly.js is written once beside them, so the folder works offline and
    each file stays small."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, fig in figures.items():
        path = out_dir / f"{stem}.html"
        fig.write_html(path, include_plotlyjs="directory", full_html=True)
        paths.append(path)
    links = "\n".join(f'<li><a href="{p.name}">{p.stem.replace("_", " ")}</a></li>' for p in paths)
    files = f"<h2>Files</h2><ul id='files'>\n{links}\n</ul>"
    if page is None:
        head = f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        page = f"{head}<body><h1>{title}</h1></body></html>"
    index = out_dir / "index.html"
    index.write_text(page.replace("</body>", files + "</body>", 1))
    return [*paths, index]
