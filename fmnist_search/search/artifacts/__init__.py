"""Trial weights: stored as Optuna artifacts, loaded safely, and kept only for the best trials.

weights     trial weights in Optuna's artifact store; which stores write into a folder; readers' lock
retention   ``--keep-weights``: only the best N completed trials keep their weights
"""

from ...core.faces import lazy_face

FACE = {
    "OWNERS": "weights",
    "default_dir": "weights",
    "open_store": "weights",
    "owners": "weights",
    "trial_model": "weights",
    "KEEP_ATTR": "retention",
}
__all__ = sorted(FACE)
__getattr__, __dir__ = lazy_face(__name__, FACE)
