"""Trials: what a trial samples, trains, reports and records, and how many processes share one
study's trials.

    coordination  THE point every write that changes what a shared study runs passes: targets,
                  asks (the budget), sampler streams, stale trials, a stopped worker's release
    workers       the worker loop: ask, train, wait for running trials, run their retries
    lifecycle     THE trial lifecycle: one or K asked trials trained, reported, pruned, told
    context       what a study's trials train with (``TrialContext``): data, teacher, recipes, records
    space         search spaces: which hyperparameters a trial samples
    objectives    the objectives registry (accuracy, throughput, params, latency)
    pruning       pruning decisions for trials in lockstep (median, SHA, Hyperband, MOASHA)
    requeue       a stopped trial queued again (a retry), and the stale-trial callback
    checkpoints   a trial's training state saved each epoch; a retry resumes from it
    record        ``TrialRecord``: every trial user attr the project writes, one typed field each
"""

from ...core.faces import lazy_face

FACE = {
    "BudgetedStudy": "coordination",
    "adopt_heartbeat": "coordination",
    "Census": "coordination",
    "census": "coordination",
    "claim_stream": "coordination",
    "raise_target": "coordination",
    "release": "coordination",
    "set_target": "coordination",
    "stream_seed": "coordination",
    "trials_left": "coordination",
    "wait_for_study": "workers",
    "wait_for_store": "workers",
    "work": "workers",
    "TrialContext": "context",
    "occupancy": "context",
    "model_of": "space",
    "objectives_of": "objectives",
    "in_use": "checkpoints",
    "TrialRecord": "record",
    "lr_of": "record",
}
__all__ = sorted(FACE)
__getattr__, __dir__ = lazy_face(__name__, FACE)
