"""Plotly figures of a study: compute the data first, then draw. Written as HTML files.

Learning curves come from each trial's per-epoch ``history`` attr; the rest are Optuna's
own visualizations (optuna.visualization), the same plots optuna-dashboard draws.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
import plotly.colors
import plotly.graph_objects as go
from optuna.trial import TrialState
from plotly.subplots import make_subplots

from ..trials.objectives import ACCURACY, CRITERIA, objectives_of, scored_trials, values_of
from ..trials.record import TrialRecord
from .front import front

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


def front_data(study: optuna.Study) -> list[dict[str, Any]]:
    """Per completed or pruned trial: number, state, model, objective values (a pruned trial's
    accuracy is its last one), whether it is on the front."""
    objectives = objectives_of(study)
    on_front = {t.number for t in front(study)}
    out = []
    for t in scored_trials(study, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        values = values_of(t, objectives)
        if len(values) == len(objectives):
            model = TrialRecord.of(t).model or str(t.params.get("model", "?"))
            out.append(
                {
                    "number": t.number,
                    "state": t.state.name,
                    "model": model,
                    "values": values,
                    "front": t.number in on_front,
                }
            )
    return out


def pareto_figure(study_name: str, objectives: tuple[str, ...], data: list[dict[str, Any]]) -> go.Figure:
    """Validation accuracy against the first other objective: every trial, coloured by model
    (pruned ones open, at their last accuracy), the front joined by a line."""
    x_name = next(n for n in objectives if n != ACCURACY)
    palette = plotly.colors.qualitative.Plotly
    fig = go.Figure()
    for i, model in enumerate(sorted({d["model"] for d in data})):
        for state, symbol in (("COMPLETE", "circle"), ("PRUNED", "circle-open")):
            rows = [d for d in data if d["model"] == model and d["state"] == state]
            if rows:
                fig.add_trace(
                    go.Scatter(
                        x=[d["values"][x_name] for d in rows],
                        y=[d["values"][ACCURACY] for d in rows],
                        mode="markers",
                        name=f"{model} ({state.lower()})",
                        text=[f"trial {d['number']}" for d in rows],
                        marker={"color": palette[i % len(palette)], "symbol": symbol, "size": 9},
                    )
                )
    front = sorted((d for d in data if d["front"]), key=lambda d: d["values"][x_name])
    fig.add_trace(
        go.Scatter(
            x=[d["values"][x_name] for d in front],
            y=[d["values"][ACCURACY] for d in front],
            mode="lines+markers",
            name="Pareto front",
            text=[f"trial {d['number']}" for d in front],
            line={"color": "black", "dash": "dash"},
            marker={"color": "rgba(0,0,0,0)", "size": 15, "line": {"width": 2}},
        )
    )
    x_log = x_name in ("throughput", "params")  # spans orders of magnitude across models
    fig.update_xaxes(title_text=f"{x_name} ({CRITERIA[x_name].unit})", type="log" if x_log else None)
    fig.update_yaxes(title_text="validation accuracy")
    fig.update_layout(title=f"{study_name}: Pareto front", height=500)
    return fig


def reference_point(study: optuna.Study, objectives: tuple[str, ...]) -> list[float]:
    """The hypervolume's reference: 0 for what is maximised, 10% above the worst seen for what is minimised."""
    done = scored_trials(study, states=(TrialState.COMPLETE,))
    return [0.0 if CRITERIA[n].maximize else 1.1 * max(values_of(t, objectives)[n] for t in done) for n in objectives]


def _importances(study: optuna.Study, objectives: tuple[str, ...]) -> go.Figure:
    """Which params matter for validation accuracy. Optuna's default evaluator (PED-ANOVA) ranks
    them by how they reach *low* values of a given target, and Optuna passes each objective of a
    multi-objective study as one: accuracy is negated here so high accuracy is what counts."""
    if len(objectives) == 1:
        return optuna.visualization.plot_param_importances(study)
    with warnings.catch_warnings():  # the evaluator's reminder of exactly that
        warnings.filterwarnings("ignore", "PedAnovaImportanceEvaluator computes")
        return optuna.visualization.plot_param_importances(
            study, target=lambda t: -values_of(t, objectives)[ACCURACY], target_name="val_accuracy"
        )


def study_figures(study: optuna.Study) -> dict[str, go.Figure]:
    """Every figure that applies to this study, by file stem."""
    vis = optuna.visualization
    figures = {"learning_curves": learning_curves(study.study_name, curves_data(study))}
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    params = {p for t in completed for p in t.params}
    objectives = objectives_of(study)
    if completed and len(objectives) > 1:
        figures["pareto_front"] = pareto_figure(study.study_name, objectives, front_data(study))
        with warnings.catch_warnings():  # experimental in name only since Optuna 3.3
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            figures["hypervolume"] = vis.plot_hypervolume_history(study, reference_point(study, objectives))
    # Optuna's single-value plots: of validation accuracy, whatever else the study optimises.
    target = (
        {}
        if len(objectives) == 1
        else {"target": lambda t: values_of(t, objectives)[ACCURACY], "target_name": "val_accuracy"}
    )
    if completed:
        figures["optimization_history"] = vis.plot_optimization_history(study, **target)
        figures["slice"] = vis.plot_slice(study, **target)  # each param (lr first of all) against val accuracy
        if len(params) > 1:
            figures["param_importances"] = _importances(study, objectives)
        if len(params) > 1 and "model" not in params:  # a comparison's lrs are per model: never in one trial
            figures["contour"] = vis.plot_contour(study, **target)
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
