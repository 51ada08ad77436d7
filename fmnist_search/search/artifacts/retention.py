"""A study's disk use, bounded: only the best N completed trials keep their weights.

Every completed trial saves its weights (a ResNet18's are ~44 MB), so a long study grows
without bound. A study with a ``keep_weights`` user attr (``run``/``create --keep-weights N``)
keeps the weights of its best N completed trials (``front.ranked``: by validation accuracy, or
front by front in a multi-objective study) and removes the others' as they fall out, after each
trial that completes. A file a reader (``evaluate``, ``train --from-study``, ``predict``) is
loading is never removed under it: readers hold a shared lock on the folder while they copy a
file out (``artifacts.reading``), and removal skips a round while one does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ..results.front import ranked
from ..store.internals import store_folder
from ..trials.record import TrialRecord
from .weights import removing

KEEP_ATTR = "keep_weights"  # study user attr: completed trials whose weights are kept (absent: all)


def kept(study: optuna.Study) -> int | None:
    value = study.user_attrs.get(KEEP_ATTR)
    return None if value is None else int(value)


def keep_best(study: optuna.Study, store: Any) -> list[int]:
    """Remove the weights of the completed trials outside the study's best ``keep_weights``; the
    trial numbers whose weights went (none while a reader holds the folder)."""
    n = kept(study)
    if n is None:
        return []
    folder = Path(store_folder(store))
    best = {t.number for t in ranked(study, limit=n)}
    doomed = [
        (t.number, artifact)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.number not in best and (artifact := TrialRecord.of(t).weights_artifact) and (folder / artifact).is_file()
    ]
    if not doomed:
        return []
    with removing(folder) as free:
        if not free:
            return []  # a reader is loading weights: the next completed trial removes them
        for _, artifact in doomed:
            store.remove(artifact)
    return [number for number, _ in doomed]
