"""A stopped trial queued again: a WAITING copy with the same params, for the next free worker.

Every way a trial can be stopped from outside ends here: Ctrl-C and SIGTERM (the worker's
``release``), a lost store, and a dead worker whose heartbeat went stale (``RequeueStale``,
the storage's stale-trial callback). The copy names its original in ``retry_history``
exactly as Optuna's ``RetryHeartbeatStaleTrialCallback`` does, so ``workers.census`` counts
the copy toward the study's target and not the original, and ``checkpoints.find`` continues
it from the original's last checkpoint.

The copy starts with clean pruning state: successive halving's ``completed_rung_*`` attrs
belong to the curve that reached them, and a retry that starts over would otherwise skip
rung 0 while its original's value was still counted there.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

PRUNING_PREFIX = "completed_rung_"  # Optuna's SuccessiveHalvingPruner's (and Hyperband's) system attrs
STALE_RETRIES = "stale_retries"  # system attr: how many of a trial's ancestors died without a word


def requeue(study: optuna.Study, trial: FrozenTrial, *, stale: bool = False) -> None:
    """A WAITING copy of ``trial`` (same params, clean pruning state) that records it as its retry."""
    inherited = {k: v for k, v in trial.system_attrs.items() if not k.startswith(PRUNING_PREFIX)}
    system_attrs: dict[str, Any] = {"failed_trial": trial.number, **inherited}
    system_attrs["retry_history"] = [*inherited.get("retry_history", ()), trial.number]
    system_attrs[STALE_RETRIES] = inherited.get(STALE_RETRIES, 0) + int(stale)
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions, system_attrs=system_attrs
        )
    )


class RequeueStale:
    """The storage's stale-trial callback: a trial whose worker died is queued again, up to
    ``max_retry`` times for deaths without a word (a trial that kills its worker, say by running
    out of memory, is not retried forever). Deliberate stops (Ctrl-C, SIGTERM) do not count."""

    def __init__(self, max_retry: int = 1) -> None:
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.system_attrs.get(STALE_RETRIES, 0) < self.max_retry:
            requeue(study, trial, stale=True)
