"""The search: Optuna studies, their store and their trials. Start here:

    study.py     create, resume or load a study; the sampler and pruner registries
    store/       where a study lives: URLs, retried storage calls, the study's lock, heartbeats
    trials/      what a trial runs and how processes share a study (coordination, workers, lifecycle)
    results/     what a study shows: the front and the one ranking, tables, report, figures
    artifacts/   trial weights, and which are kept

The application layer (app/) imports each package's face (its ``__init__``: the names it offers);
inside search/, modules import each other by module.
"""
