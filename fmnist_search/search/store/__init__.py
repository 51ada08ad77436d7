"""The study store: storage URLs, retried storage calls, Optuna's RDB storage and its private
names (``internals``, the one module that may use them), the study's lock and heartbeats.

    urls         storage URLs: kind, SQLite file, read-only URI, a store's identity, masked passwords
    retry        the bounded, logged retry of storage calls
    storage      RDBStorage with pre-pinged pools, bounded retries, batched upserts, signal shielding
    internals    every private Optuna name the project uses, each with why
    locks        one lock per study, keyed inside the store; an interruptible, bounded wait
    heartbeats   a worker's heartbeats: each trial beats from its ask on
"""

from ...core.faces import lazy_face

FACE = {
    "mask_url": "urls",
    "sqlite_path": "urls",
    "store_identity": "urls",
    "ResilientStorage": "storage",
    "make_storage": "storage",
    "study_lock": "locks",
}
__all__ = sorted(FACE)
__getattr__, __dir__ = lazy_face(__name__, FACE)
