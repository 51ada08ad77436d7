"""What a study shows: the Pareto front and the one ranking of trials, tables, the report, figures.

front     the front, the one order of "best" (``rank_key``), the pick within ``--where``
export    the trials table (CSV), learning curves, trial counts by state
report    the report's table: the course report's rows beside the study's
plots     figures (plotly): learning curves, the front, a confusion matrix
summary   the study on one page (``plot``'s index.html)
"""

from ...core.faces import lazy_face

FACE = {
    "accuracy": "front",
    "describe_objectives": "front",
    "pick": "front",
    "best_trial": "export",
    "history_frame": "export",
    "state_counts": "export",
    "trials_frame": "export",
    "front_frame": "report",
    "front_markdown": "report",
    "report_frame": "report",
    "to_markdown": "report",
    "confusion_figure": "plots",
    "study_figures": "plots",
    "write_html": "plots",
    "summary_page": "summary",
}
__all__ = sorted(FACE)
__getattr__, __dir__ = lazy_face(__name__, FACE)
